"""server/observability."""
