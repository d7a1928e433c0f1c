"""server/modelfile."""
