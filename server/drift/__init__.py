"""server/drift."""
