"""Server: grpcio + onnxruntime, the native bnserve.v1 API and the Open Inference Protocol."""
