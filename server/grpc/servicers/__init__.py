"""gRPC servicers: protobuf ↔ numpy, nothing else (validation lives in the model)."""
