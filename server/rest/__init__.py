"""The Open Inference Protocol over HTTP/REST (server/rest/server.py), beside the gRPC server."""
