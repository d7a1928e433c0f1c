"""In-process cost of capture per call (issue 27 §1): the capture writer alone, no server.

Single-example calls of a 64-feature, 10-class model (the digits model of bench/serve.py, its
inputs whole numbers 0-16 and its probabilities peaked) are offered to a CaptureWriter writing a
real store under a temporary directory:
- offer: the request path's CPU per call (`CaptureWriter.offer`), blocks of 3,000 calls timed
  by the calling thread's CPU clock, the median block;
- writer: the writer thread's CPU per call (text, compression, the file), read from
  /proc/self/task/TID/stat over `--calls` calls offered at about `--rate` calls/s (so drains are
  the size a served rate makes), the median of `--rounds`.
Not the judge of capture's cost in a server (bench/serve.py --capture is, side by side with the
server without capture); this one separates the parts and needs no sockets.

Usage: python bench/capture_writer.py [--calls 20000] [--rate 10000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import types
from pathlib import Path

import numpy as np

from bnserve.server.capture.writer import CaptureOptions, CaptureWriter

FEATURES = 64
CLASSES = 10


def _model() -> types.SimpleNamespace:
    card = types.SimpleNamespace(
        feature_names=[f"pixel{i}" for i in range(FEATURES)],
        class_names=[str(c) for c in range(CLASSES)],
        target_names=[],
    )
    return types.SimpleNamespace(name="digits", version="1", is_classification=True, card=card)


def _thread_cpu_s(native_id: int) -> float:
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _calls(count: int) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    rng = np.random.default_rng(0)
    calls = []
    for _ in range(count):
        probabilities = rng.dirichlet(np.full(CLASSES, 0.1), 1).astype(np.float32)
        x = rng.integers(0, 17, (1, FEATURES)).astype(np.float32)
        calls.append((x, [probabilities, probabilities.argmax(axis=1)]))
    return calls


def offer_us(rounds: int) -> float:
    """The request path: µs of CPU per `offer`, median of `rounds` blocks of 3,000."""
    model, calls, block = _model(), _calls(500), 3000
    times = []
    with tempfile.TemporaryDirectory(prefix="bnserve-capture-") as scratch:
        writer = CaptureWriter(CaptureOptions(Path(scratch), 1.0, 1 << 30, 60.0))
        writer.prepare()
        writer.start()
        for _ in range(rounds * 4):
            started = time.thread_time()
            for i in range(block):
                x, outputs = calls[i % len(calls)]
                writer.offer(model, x, outputs, f"{i:032x}", 500_000)
            times.append((time.thread_time() - started) / block * 1e6)
            writer.flush()
        writer.stop()
    return statistics.median(times)


def writer_us(count: int, rate: float, rounds: int) -> tuple[float, int]:
    """The writer thread: µs of CPU per call, median of `rounds`; and the rows dropped."""
    model, calls = _model(), _calls(500)
    burst = 8
    pause_s = burst / rate
    times, dropped = [], 0
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="bnserve-capture-") as scratch:
            writer = CaptureWriter(CaptureOptions(Path(scratch), 1.0, 1 << 30, 60.0))
            writer.prepare()
            writer.start()
            thread = writer._thread.native_id  # the thread whose CPU is measured
            assert thread is not None
            before = _thread_cpu_s(thread)
            for i in range(count):
                x, outputs = calls[i % len(calls)]
                writer.offer(model, x, outputs, f"{i:032x}", 500_000)
                if i % burst == burst - 1:
                    time.sleep(pause_s)
            writer.flush()
            times.append((_thread_cpu_s(thread) - before) / count * 1e6)
            writer.stop()
            dropped += writer.dropped_rows
    return statistics.median(times), dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rate", type=float, default=10000.0, help="calls/s offered")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    load = os.getloadavg()
    request_path = offer_us(args.rounds)
    writer, dropped = writer_us(args.calls, args.rate, args.rounds)
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1, 5, 15 min)")
    print(f"capture of a single-example call ({FEATURES} features, {CLASSES} classes), µs of CPU:")
    print(f"  request path (offer)      {request_path:6.1f}")
    offered = args.calls * args.rounds
    print(f"  writer thread             {writer:6.1f}   ({dropped} of {offered} rows dropped)")
    print(f"  in all                    {request_path + writer:6.1f}")


if __name__ == "__main__":
    main()
