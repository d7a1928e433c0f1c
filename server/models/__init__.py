"""server/models."""
