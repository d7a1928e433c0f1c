"""README's "A real table" section: the curl request it shows (a tour block skipped because curl
may be absent), sent to a real server with the model the section's commands make (`bnserve train`
and `bnserve export` with their defaults), gets the answer the page shows, within the model's
reference tolerance."""

from __future__ import annotations

import http.client
import json
import re
from pathlib import Path

import numpy as np

from bnserve.export.exporter import ExportSettings, export_run
from bnserve.training.cli import main as train_main
from tests.support.deploy_support import REPO
from tests.support.server_process import ServerProcess

README = (REPO / "README.md").read_text()
PENGUINS_CSV = REPO / "tests" / "training" / "fixtures" / "penguins.csv"
TOLERANCE = 1e-5  # a classifier's bnserve.reference_tolerance


def _curl_block() -> tuple[dict, dict]:
    """The request body and the answer the README's curl block shows."""
    block = README[README.index("$ cat body.json\n") :]
    body_text = block[len("$ cat body.json\n") : block.index("\n$ curl ")]
    answer_line = block[block.index("\n$ curl ") :].split("\n")[2]
    return json.loads(body_text), json.loads(answer_line)


def test_the_readme_curl_request_gets_the_answer_it_shows(tmp_path: Path) -> None:
    body, shown = _curl_block()
    # the section's own commands, with their defaults
    train_line = re.search(r"\$ bnserve train --data \S+penguins.csv (.*)\n", README)
    assert train_line and train_line.group(1) == (
        "--target species --out runs/penguins --no-progress"
    )
    assert (
        train_main(
            [
                "--data",
                str(PENGUINS_CSV),
                "--target",
                "species",
                "--out",
                str(tmp_path / "run"),
                "--no-progress",
                "--no-plot",
            ]
        )
        == 0
    )
    model = tmp_path / "penguins.onnx"
    export_run(ExportSettings(run_dir=tmp_path / "run", out=model))
    server = ServerProcess(["--model", str(model)])
    try:
        server.wait_ready()
        connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
        connection.request(
            "POST",
            "/v2/models/penguins/infer",
            json.dumps(body),
            {"Content-Type": "application/json"},
        )
        response = connection.getresponse()
        answer = json.loads(response.read())
        connection.close()
        assert response.status == 200, answer
    finally:
        assert server.stop() == 0
    assert re.fullmatch("[0-9a-f]{32}", answer["id"]) and answer["id"] != shown["id"]
    outputs = {output["name"]: output for output in answer["outputs"]}
    shown_outputs = {output["name"]: output for output in shown["outputs"]}
    assert outputs["label"]["data"] == shown_outputs["label"]["data"] == [0, 2]
    assert outputs["probabilities"]["shape"] == shown_outputs["probabilities"]["shape"]
    assert np.allclose(
        outputs["probabilities"]["data"],
        shown_outputs["probabilities"]["data"],
        rtol=0,
        atol=TOLERANCE,
    )
