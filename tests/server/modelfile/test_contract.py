"""server/modelfile/contract.py: the model file's keys as docs/contracts.md lists them, the
tolerance and label rule both sides apply, and an import light enough for the exporter and the
serving image."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from bnserve.export.fold import FOLDED_ACTIVATIONS
from bnserve.export.graph import ACTIVATION_OPS
from bnserve.server.modelfile.contract import (
    FORMAT_SCHEMA,
    FORMAT_VERSION,
    FORMAT_VERSIONS,
    INPUT_NAME,
    OUTPUT_NAMES,
    PREFIX,
    TASKS,
    MetadataKey,
    Tolerance,
    decisive_rows,
    output_names_key,
)
from bnserve.training import config as training_config

CONTRACTS = Path(__file__).resolve().parents[3] / "docs" / "contracts.md"


def _model_section() -> str:
    text = CONTRACTS.read_text(encoding="utf-8")
    start = text.index("## The ONNX model")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_the_keys_are_the_ones_docs_contracts_md_lists() -> None:
    section = _model_section()
    table = dict(re.findall(r"^\| `(bnserve\.[a-z0-9_]+)` \| (.*) \|$", section, re.MULTILINE))
    assert "one more key, `bnserve.import`" in section  # imported models only, in the prose
    assert {key.full for key in MetadataKey} == set(table) | {"bnserve.import"}
    assert all(key.full == PREFIX + key.value for key in MetadataKey)
    assert table["bnserve.format"].startswith(f'`"{FORMAT_VERSION}"`')
    assert FORMAT_VERSIONS == (FORMAT_VERSION, FORMAT_SCHEMA)
    assert all(f'`"{version}"`' in table["bnserve.format"] for version in FORMAT_VERSIONS)
    assert "format 2 only" in table[MetadataKey.SCHEMA.full]
    assert table["bnserve.task"] == " / ".join(f"`{task}`" for task in TASKS)
    # what export/ensemble.py writes under bnserve.ensemble (tests/export/test_ensemble.py)
    for field in ('"layout"', '"source"', '"members"', '"run_id"', '"params_sha256"', '"run_dir"'):
        assert field in table["bnserve.ensemble"]


def test_the_graph_tensors_are_the_ones_design_md_fixes() -> None:
    """DESIGN.md: input `x`; `probabilities` and `label`, or `y` (export and server use these)."""
    assert INPUT_NAME == "x"
    assert OUTPUT_NAMES == {"classification": ("probabilities", "label"), "regression": ("y",)}
    assert set(OUTPUT_NAMES) == set(TASKS)
    section = _model_section()
    assert all(f"`{name}`" in section for names in OUTPUT_NAMES.values() for name in names)


def test_output_names_key_follows_the_task() -> None:
    assert output_names_key("classification") is MetadataKey.CLASS_NAMES
    assert output_names_key("regression") is MetadataKey.TARGET_NAMES
    assert MetadataKey.CLASS_NAMES.full == "bnserve.class_names"


def test_training_and_export_lists_agree_with_the_contract() -> None:
    # training may not import server: its own TASKS is checked against the contract's here
    assert training_config.TASKS == TASKS
    assert FOLDED_ACTIVATIONS[: len(training_config.ACTIVATIONS)] == training_config.ACTIVATIONS
    assert set(ACTIVATION_OPS) == set(FOLDED_ACTIVATIONS)


def test_tolerance_bound_and_json() -> None:
    regression = Tolerance(abs=0.5, rel=1e-3)
    np.testing.assert_allclose(regression.bound(np.array([-1000.0, 0.0, 2.0])), [1.5, 0.5, 0.502])
    assert json.loads(regression.as_json()) == {"rel": 1e-3, "abs": 0.5}
    assert json.loads(Tolerance(abs=1e-5).as_json()) == {"abs": 1e-5}


def test_a_label_must_match_only_where_the_top_two_are_more_than_twice_abs_apart() -> None:
    probabilities = np.array([[0.5, 0.5, 0.0], [0.5 + 1.5e-5, 0.5 - 1.5e-5, 0.0], [0.1, 0.2, 0.7]])
    tolerance = Tolerance(abs=1e-5)
    np.testing.assert_array_equal(decisive_rows(probabilities, tolerance), [False, True, True])
    near = np.array([[0.5 + 0.9e-5, 0.5 - 0.9e-5]])  # 1.8e-5 apart: within 2·abs, may flip
    np.testing.assert_array_equal(decisive_rows(near, tolerance), [False])


def test_importing_the_contract_pulls_in_nothing_heavy() -> None:
    code = (
        "import sys, bnserve.server.modelfile.contract; "
        "heavy = [m for m in ('onnx', 'onnxruntime', 'grpc', 'training', 'export') "
        "if m in sys.modules]; print(heavy)"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert completed.stdout.strip() == "[]", completed.stdout
