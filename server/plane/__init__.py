"""server/plane."""
