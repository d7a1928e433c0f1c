"""server/grpc."""
