"""Clients that call ModelInfer back to back and retry a refusal after 10 ms, as clients do during a
Kubernetes rollout while the endpoint is still listed: over gRPC (v2 ModelInfer) and over REST
(POST /v2/models/NAME/infer on a keep-alive connection). Every outcome is counted."""

from __future__ import annotations

import collections
import http.client
import json
import threading
import time

import grpc
import numpy as np

from bnserve.server.grpc.gen.inference import grpc_service_pb2 as v2_pb
from bnserve.server.grpc.gen.inference import grpc_service_pb2_grpc

RETRY_AFTER_S = 0.01


class RetryingClients:
    """`grpc_threads` gRPC and `rest_threads` REST callers of model `name` until `stop()`.

    Outcomes: gRPC by status code name; REST as "200", "503" (with Retry-After and Connection:
    close: anything else is "503 without …"), "refused" (connect refused), or "lost: <error>"
    (the connection ended under a request that was sent)."""

    def __init__(
        self,
        grpc_target: str,
        http_port: int | None,
        name: str,
        example: np.ndarray,
        grpc_threads: int,
        rest_threads: int,
    ) -> None:
        self.grpc: collections.Counter[str] = collections.Counter()
        self.rest: collections.Counter[str] = collections.Counter()
        self._name = name
        self._example = np.asarray(example, np.float32).reshape(1, -1)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._channels = [grpc.insecure_channel(grpc_target) for _ in range(2)]
        self._threads = [
            threading.Thread(target=self._grpc_loop, args=(self._channels[i % 2],), daemon=True)
            for i in range(grpc_threads)
        ]
        if http_port is not None:
            self._threads += [
                threading.Thread(target=self._rest_loop, args=(http_port,), daemon=True)
                for _ in range(rest_threads)
            ]
        for thread in self._threads:
            thread.start()

    def answered(self) -> int:
        return self.grpc["OK"] + self.rest["200"]

    def _count(self, counter: collections.Counter[str], outcome: str) -> None:
        with self._lock:
            counter[outcome] += 1

    def _grpc_loop(self, channel: grpc.Channel) -> None:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = v2_pb.ModelInferRequest(model_name=self._name)
        request.inputs.add(name="x", datatype="FP32", shape=self._example.shape)
        request.raw_input_contents.append(self._example.tobytes())
        while not self._stopping.is_set():
            try:
                answer = stub.ModelInfer(request, timeout=30)
            except grpc.RpcError as error:
                self._count(self.grpc, error.code().name)
                time.sleep(RETRY_AFTER_S)
                continue
            self._count(self.grpc, "OK" if len(answer.raw_output_contents) == 2 else "bad answer")

    def _rest_loop(self, port: int) -> None:
        body = json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": list(self._example.shape),
                        "data": self._example.ravel().tolist(),
                    }
                ]
            }
        ).encode()
        path = f"/v2/models/{self._name}/infer"
        connection: http.client.HTTPConnection | None = None
        while not self._stopping.is_set():
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                try:
                    connection.connect()
                except ConnectionRefusedError:
                    self._count(self.rest, "refused")
                    connection = None
                    time.sleep(RETRY_AFTER_S)
                    continue
            try:
                connection.request("POST", path, body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as error:
                self._count(self.rest, f"lost: {type(error).__name__}")
                connection.close()
                connection = None
                time.sleep(RETRY_AFTER_S)
                continue
            outcome = str(response.status)
            if response.status == 503:
                if response.getheader("Retry-After") is None:
                    outcome += " without Retry-After"
                if (response.getheader("Connection") or "").lower() != "close":
                    outcome += " without Connection: close"
            self._count(self.rest, outcome)
            if response.will_close or response.status != 200:
                connection.close()
                connection = None
            if response.status != 200:
                time.sleep(RETRY_AFTER_S)
        if connection is not None:
            connection.close()

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=60)
        for channel in self._channels:
            channel.close()
