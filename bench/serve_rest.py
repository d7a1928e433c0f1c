"""REST rows of bench/serve.py: bnserve's HTTP/REST v2 infer next to a bare aiohttp echo server.

The same h2load load over HTTP/1.1 (keep-alive; `--h1`, one request in flight per connection,
so concurrency = connections) goes to
  (a) a bare aiohttp echo server on one event loop thread, as bnserve's HTTP transport runs:
      the request body read, a fixed response of bnserve's answer size written (that stack's
      transport limit);
  (b) a minimal aiohttp + onnxruntime server on the same loop: the binary request parsed, the
      model run, the binary answer written, and nothing else (no validation, admission,
      deadline or metrics): the floor of REST infer on that stack;
  (c) bnserve `POST /v2/models/digits/infer` with the body tritonclient.http sends for one
      example (JSON header + binary tensor, Inference-Header-Content-Length), binary output.
The ratios are requests/s over (a)'s and over (b)'s. Success is checked by status (h2load's log)
and by the body bytes received: (successful requests) × (that server's answer size).

Run by bench/serve.py after its gRPC rows; alone: python bench/serve_rest.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve

ECHO_LABEL = "bare aiohttp echo"
MINIMAL_LABEL = "minimal aiohttp + onnxruntime"
REST_LABEL = "bnserve REST infer"
INFER_PATH = "/v2/models/digits/infer"


@dataclass(frozen=True)
class RestTarget:
    label: str
    port: int
    body: bytes
    headers: tuple[str, ...]
    response_bytes: int
    server_pid: int


def infer_body(row: np.ndarray) -> tuple[bytes, int]:
    """What tritonclient.http sends for one example: JSON header, then the raw float32 row."""
    x = row.reshape(1, -1).astype("<f4")
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return header + x.tobytes(), len(header)


def serve_until_sigterm(port: int, handler: Any) -> None:
    """aiohttp on one event loop, POST INFER_PATH → handler, on 127.0.0.1:port until SIGTERM."""
    import asyncio
    import signal

    from aiohttp import web

    async def main() -> None:
        app = web.Application()
        app.router.add_post(INFER_PATH, handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


def echo_server(port: int, response_hex: str) -> None:
    """aiohttp on one event loop: read the body, answer fixed bytes (until SIGTERM)."""
    from aiohttp import web

    response = bytes.fromhex(response_hex)

    async def echo(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=response, content_type="application/octet-stream")

    serve_until_sigterm(port, echo)


def minimal_server(port: int, model: str) -> None:
    """aiohttp + onnxruntime on one event loop: parse, run, answer, nothing else (until SIGTERM)."""
    import onnxruntime as ort
    from aiohttp import web

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    output_names = [output.name for output in session.get_outputs()]

    async def infer(request: web.Request) -> web.Response:
        body = await request.read()
        header_length = int(request.headers["Inference-Header-Content-Length"])
        shape = json.loads(body[:header_length])["inputs"][0]["shape"]
        x = np.frombuffer(body, dtype="<f4", offset=header_length).reshape(shape)
        outputs = session.run(output_names, {"x": x})
        header = json.dumps(
            {
                "model_name": "digits",
                "model_version": "1",
                "outputs": [
                    {
                        "name": name,
                        "datatype": "FP32" if value.dtype == np.float32 else "INT64",
                        "shape": list(value.shape),
                        "parameters": {"binary_data_size": value.nbytes},
                    }
                    for name, value in zip(output_names, outputs, strict=True)
                ],
            },
            separators=(",", ":"),
        ).encode()
        return web.Response(
            body=header + b"".join(value.tobytes() for value in outputs),
            headers={"Inference-Header-Content-Length": str(len(header))},
            content_type="application/octet-stream",
        )

    serve_until_sigterm(port, infer)


@contextmanager
def running_http(
    command: list[str], port: int, body: bytes, headers: dict[str, str]
) -> Iterator[int]:
    """Start a server, wait until POST INFER_PATH answers 200, yield its pid, stop it."""
    environment = {**os.environ, "BNSERVE_METRICS_PORT": "0"}  # 9090 may be taken here
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=environment
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise SystemExit(
                    f"server exited early: {' '.join(command)}\n{process.stderr.read()}"
                )
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}{INFER_PATH}", data=body, headers=headers
                )
                with urllib.request.urlopen(request, timeout=5) as answer:
                    answer.read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stderr.close()


def _without_id(answer: bytes) -> bytes:
    """bnserve's answer without the `"id":"…",` it made for an id-less call
    (server/plane/request_ids.py), which the minimal server does not make: the same bytes
    otherwise."""
    return re.sub(rb'"id":"[0-9a-f]{32}",', b"", answer, count=1)


def answer_size(port: int, body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{INFER_PATH}", data=body, headers=headers
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.read(), dict(answer.headers)


def h2load_h1(
    target: RestTarget,
    concurrency: int,
    requests: int,
    settings: serve.BenchSettings,
    scratch: Path,
) -> serve.LoadResult:
    body = scratch / "rest-body.bin"
    body.write_bytes(target.body)
    log = scratch / "rest-requests.tsv"
    log.unlink(missing_ok=True)
    command = serve.pinned(
        settings.load_cpu,
        [
            serve.ensure_h2load(),
            "--h1",
            "-n",
            str(requests),
            "-c",
            str(concurrency),
            "-d",
            str(body),
            *[part for header in target.headers for part in ("-H", header)],
            "--log-file",
            str(log),
            f"http://127.0.0.1:{target.port}{INFER_PATH}",
        ],
    )
    return serve.run_h2load(command, log, requests, target.server_pid, target.response_bytes)


def measure_rest(
    model: Path, row: np.ndarray, settings: serve.BenchSettings, scratch: Path
) -> bool:
    """Print the REST table; True when every call answered fully."""
    body, header_length = infer_body(row)
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(header_length),
    }
    header_list = tuple(f"{key}: {value}" for key, value in headers.items())
    ports = {"bnserve": serve.free_port(), "echo": serve.free_port(), "minimal": serve.free_port()}
    with ExitStack() as stack:
        command = serve.bnserve_command(model, serve.free_port(), settings, batching=False)
        command += ["--http-port", str(ports["bnserve"])]
        bnserve_pid = stack.enter_context(running_http(command, ports["bnserve"], body, headers))
        answer, _ = answer_size(ports["bnserve"], body, headers)
        echo_command = serve.pinned(
            settings.server_cpu,
            [sys.executable, __file__, "echo-server", "--port", str(ports["echo"]),
             "--response-hex", answer.hex()],
        )  # fmt: skip
        echo_pid = stack.enter_context(running_http(echo_command, ports["echo"], body, headers))
        minimal_command = serve.pinned(
            settings.server_cpu,
            [sys.executable, __file__, "minimal-server", "--port", str(ports["minimal"]),
             "--model", str(model)],
        )  # fmt: skip
        minimal_pid = stack.enter_context(
            running_http(minimal_command, ports["minimal"], body, headers)
        )
        minimal_answer, _ = answer_size(ports["minimal"], body, headers)
        if minimal_answer != _without_id(answer):
            raise SystemExit(f"the minimal REST server answers {minimal_answer!r}, not {answer!r}")
        targets = [
            RestTarget(ECHO_LABEL, ports["echo"], body, header_list, len(answer), echo_pid),
            RestTarget(MINIMAL_LABEL, ports["minimal"], body, header_list, len(minimal_answer),
                       minimal_pid),
            RestTarget(REST_LABEL, ports["bnserve"], body, header_list, len(answer), bnserve_pid),
        ]  # fmt: skip
        results = {
            c: serve.interleaved(targets, c, settings, scratch, load=h2load_h1)
            for c in settings.concurrencies
        }
    print_rest_table(results, settings)
    return all(r.verified for rows in results.values() for r in rows.values())


def print_rest_table(
    results: dict[int, dict[str, serve.LoadResult]], settings: serve.BenchSettings
) -> None:
    """Requests/s, latency and both ratios per server and concurrency; server CPU per call."""
    print(
        "\nREST (HTTP/1.1 keep-alive, binary tensors as tritonclient.http sends; ratios: "
        "requests/s over the bare aiohttp echo server, and over the minimal one)"
    )
    print(f"{'':<30}" + "".join(f"{f'concurrency {c}':>41}" for c in settings.concurrencies))
    print(
        f"{'server':<30}"
        + f"{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'/echo':>8}{'/min':>8}" * len(results)
    )
    for label in (ECHO_LABEL, MINIMAL_LABEL, REST_LABEL):
        cells = []
        for c in settings.concurrencies:
            result = results[c][label]
            echo, minimal = results[c][ECHO_LABEL], results[c][MINIMAL_LABEL]
            mark = " " if result.verified else "!"
            cells.append(
                f"{result.requests_per_s:>8.0f}{mark}{result.p50_ms:>8.2f}{result.p99_ms:>8.2f}"
                f"{result.requests_per_s / echo.requests_per_s:>8.2f}"
                f"{result.requests_per_s / minimal.requests_per_s:>8.2f}"
            )
        print(f"{label:<30}" + "".join(cells))
    print("server CPU µs per call")
    for label in (ECHO_LABEL, MINIMAL_LABEL, REST_LABEL):
        cpu = "".join(f"{results[c][label].server_cpu_us:>41.0f}" for c in settings.concurrencies)
        print(f"  {label:<28}{cpu}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode")
    echo = sub.add_parser("echo-server")
    echo.add_argument("--port", type=int, required=True)
    echo.add_argument("--response-hex", required=True)
    minimal = sub.add_parser("minimal-server")
    minimal.add_argument("--port", type=int, required=True)
    minimal.add_argument("--model", required=True)
    parser.add_argument("--quick", action="store_true", help="0.7 s per cell, one round")
    args = parser.parse_args(argv)
    if args.mode == "echo-server":
        echo_server(args.port, args.response_hex)
        return 0
    if args.mode == "minimal-server":
        minimal_server(args.port, args.model)
        return 0
    settings = serve.BenchSettings()
    if args.quick:
        settings = replace(settings, duration_s=0.7, rounds=1)
    serve.ensure_h2load()
    with tempfile.TemporaryDirectory(prefix="bnserve-bench-rest-") as scratch_name:
        scratch = Path(scratch_name)
        model = serve.build_model(scratch, settings.hidden)
        return 0 if measure_rest(model, serve.example_row(model), settings, scratch) else 1


if __name__ == "__main__":
    sys.exit(main())
