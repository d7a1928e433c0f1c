"""server/process."""
