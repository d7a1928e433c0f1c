"""`bnserve serve` and `bnserve predict` as processes: start, score a CSV, stop on SIGTERM."""

from __future__ import annotations

import csv
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from tests.support.model_builder import CLASS_NAMES, NUM_FEATURES, ModelFiles, numpy_forward


def _lines(stream, sink: queue.Queue) -> None:
    for line in stream:
        sink.put(line)


def _wait_for(lines: queue.Queue, pattern: str, seen: list[str], timeout_s: float = 60) -> re.Match:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            continue
        seen.append(line)
        if match := re.search(pattern, line):
            return match
    raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(seen)}")


def _bnserve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bnserve.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_serve_predict_csv_and_stop(tmp_path: Path, test_models: ModelFiles) -> None:
    environment = {
        **os.environ,
        "BNSERVE_WORKERS": "6",
        "BNSERVE_MAX_INFLIGHT": "4",
        "BNSERVE_METRICS_PORT": "0",  # several test servers at once: 9090 would collide
        "BNSERVE_HTTP_PORT": "0",  # and 8000 too
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bnserve.server",
            "--model",
            str(test_models.classification),
            "--port",
            "0",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=_lines, args=(process.stderr, lines), daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        port = _wait_for(lines, r"serving on port (\d+), ready", seen).group(1)
        settings_lines = [line for line in seen if "bnserve settings:" in line]
        assert len(settings_lines) == 1
        assert "workers=6" in settings_lines[0] and "from env: BNSERVE_WORKERS" in settings_lines[0]

        rows = np.random.default_rng(2).normal(0, 1, (30, NUM_FEATURES)).round(4)
        examples = tmp_path / "examples.csv"
        with examples.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["target", *reversed([f"f{i}" for i in range(NUM_FEATURES)])])
            writer.writerows([[0, *reversed(row.tolist())] for row in rows])  # by name, any order
        out = tmp_path / "predictions.csv"
        scored = _bnserve("predict", "--target", f"127.0.0.1:{port}", "--csv", str(examples),
                          "--out", str(out), "--no-progress")  # fmt: skip
        assert scored.returncode == 0, scored.stderr
        with out.open() as handle:
            table = list(csv.DictReader(handle))
        expected = numpy_forward(
            test_models.classification_weights, rows.astype(np.float32), "classification"
        )
        assert [int(r["line"]) for r in table] == list(range(2, 32))
        assert [int(r["label"]) for r in table] == expected["label"].tolist()
        probabilities = np.array([[float(r[f"p_{c}"]) for c in CLASS_NAMES] for r in table])
        np.testing.assert_allclose(probabilities, expected["probabilities"], atol=1e-5)

        one = _bnserve("predict", "--target", f"127.0.0.1:{port}", "--features", "1,2,3,4,5,6")
        assert one.returncode == 0 and "(label " in one.stdout
        bad = _bnserve("predict", "--target", f"127.0.0.1:{port}", "--features", "1,2")
        assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr and "got 2" in bad.stderr

        with_id = tmp_path / "with_id.csv"  # headerless, an id column first: F + 1 columns
        with_id.write_text(
            "".join(f"{i}," + ",".join(map(str, r)) + "\n" for i, r in enumerate(rows))
        )
        shifted = _bnserve("predict", "--target", f"127.0.0.1:{port}", "--csv", str(with_id),
                           "--no-progress")  # fmt: skip
        assert shifted.returncode == 2 and shifted.stdout == ""
        assert shifted.stderr.count("\n") == 1, shifted.stderr
        assert f"{NUM_FEATURES + 1} columns but the model takes {NUM_FEATURES}" in shifted.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=30)
        reader.join(timeout=10)
        process.stderr.close()
    assert returncode == 0


def test_a_server_whose_only_model_fails_exits_2_naming_it(tmp_path: Path) -> None:
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("these are my notes, not a model\n")
    served = subprocess.run(
        [sys.executable, "-m", "bnserve.server", "--model", str(not_onnx), "--port", "0",
         "--metrics-port", "0", "--http-port", "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert served.returncode == 2
    last = served.stderr.strip().splitlines()[-1]
    assert last.startswith("bnserve serve: error: no model could be loaded (notes version 1:")
    assert "notes.onnx" in last and "--wait-for-model" in last


def test_wait_for_model_keeps_it_up_and_predict_names_the_failed_model(tmp_path: Path) -> None:
    from tests.support.server_process import ServerProcess

    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("these are my notes, not a model\n")
    server = ServerProcess(["--model", str(not_onnx), "--wait-for-model"])
    try:
        port = int(server.wait_for(r"serving on port (\d+), NOT ready").group(1))
        asked = _bnserve("predict", "--target", f"127.0.0.1:{port}", "--features", "1,2,3")
        assert asked.returncode == 1
        assert "model 'notes' version '1' is failed: model " in asked.stderr
        assert "notes.onnx: not a well-formed ONNX file" in asked.stderr
    finally:
        assert server.stop() == 0
