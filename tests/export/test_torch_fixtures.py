"""Real PyTorch exports (scripts/make_torch_import_fixtures.py: trained nn.Sequential with
BatchNorm1d, eval mode, torch.onnx.export) imported without torch: the folded models answer
like torch itself did, and their model cards state PyTorch's conventions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from bnserve.export.importer import ImportSettings, import_model
from bnserve.export.verify import onnx_session
from bnserve.server.modelfile.metadata import parse_model_card
from bnserve.server.models.model import Model, SessionThreads

FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXPECTED = np.load(FIXTURES / "torch_import_fixtures.npz", allow_pickle=False)
CASES = {  # fixture → (--task, head the source ends in, BatchNormalization nodes in it)
    "torch_digits": ("classification", "logits", 2),
    "torch_binary_fixed_batch": (None, "sigmoid", 1),
    "torch_regression_dynamo": (None, "none", 2),
}


def _import_without_torch(source: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    """`bnserve import` in a fresh interpreter where `import torch` fails."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import bnserve.cli\n"
        f"sys.exit(bnserve.cli.main(['import', {str(source)!r}, '--out', {str(out)!r}, "
        f"*{list(flags)!r}]))"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)


def test_fixtures_import_without_torch(tmp_path: Path) -> None:
    for name, (task, _, norms) in CASES.items():
        flags = ("--task", task) if task else ()
        result = _import_without_torch(FIXTURES / f"{name}.onnx", tmp_path / f"{name}.onnx", *flags)
        assert result.returncode == 0, result.stderr
        assert f"({norms} BatchNormalization node(s) folded)" in result.stdout


@pytest.mark.parametrize("name", CASES)
def test_imported_torch_model_answers_like_torch(name: str, tmp_path: Path) -> None:
    task, head, norms = CASES[name]
    source = FIXTURES / f"{name}.onnx"
    source_ops = [node.op_type for node in onnx.load(str(source)).graph.node]
    assert source_ops.count("BatchNormalization") == norms
    x, expected = EXPECTED[f"{name}.x"], EXPECTED[f"{name}.torch"]
    reference = tmp_path / "rows.npz"
    np.savez(reference, x=x, y=np.zeros(len(x)))  # the target column is not used
    out = tmp_path / f"{name}.onnx"
    report = import_model(
        ImportSettings(source=source, out=out, reference_data=reference, task=task)
    )
    assert report.chain.head == head
    model = onnx.load(str(out))
    assert "BatchNormalization" not in {node.op_type for node in model.graph.node}
    card = parse_model_card({p.key: p.value for p in model.metadata_props}, str(out))
    served = onnx_session(out.read_bytes()).run(None, {"x": x})[0]
    if card.task == "classification":
        np.testing.assert_allclose(served, expected, atol=1e-5, rtol=0)
    else:
        np.testing.assert_allclose(served, expected, atol=1e-4 * expected.std(), rtol=1e-4)
    Model.load(out, name, "1", SessionThreads()).check_parity()


def test_model_card_states_pytorchs_conventions(tmp_path: Path) -> None:
    out = tmp_path / "digits.onnx"
    import_model(
        ImportSettings(
            source=FIXTURES / "torch_digits.onnx",
            out=out,
            task="classification",
            class_names=tuple("0123456789"),
        )
    )
    metadata = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert metadata["bnserve.epsilon"] == "1e-05"  # BatchNorm1d's default eps
    assert metadata["bnserve.bn_momentum"] == "0.1"  # BatchNorm1d's default momentum
    assert metadata["bnserve.stats"] == "ema"
    assert metadata["bnserve.running_var"] == "unbiased"
    record = json.loads(metadata["bnserve.import"])
    assert record["producer"].startswith("pytorch 2.13")
    assert record["head"] == "logits"
    assert [entry["onnx_momentum"] for entry in record["batchnorm"]] == [0.9, 0.9]
    assert record["input_normalization"] == ["Sub", "Div"]
