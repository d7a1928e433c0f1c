"""server/security."""
