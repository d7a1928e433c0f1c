"""`bnserve import STATE_DICT.pt`: layers from the keys and shapes, the activation and task
from flags. The graph building is tested on numpy arrays in torch's layout (no torch needed);
reading real .pt files needs torch and is skipped without it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bnserve.export.errors import ExportError
from bnserve.export.importer import fold_chain
from bnserve.export.onnx_chain import parse_chain
from bnserve.export.state_dict import StateDictSpec, graph_from_state_dict
from bnserve.export.verify import onnx_session
from tests.support.folded_forward import forward_folded


def torch_layout(seed: int = 0) -> dict[str, np.ndarray]:
    """nn.Sequential(Linear(5, 8), BatchNorm1d(8), act, Linear(8, 6), BatchNorm1d(6), act,
    Linear(6, 3)).state_dict() as numpy: Linear.weight is (out, in)."""
    rng = np.random.default_rng(seed)
    state: dict[str, np.ndarray] = {}
    for index, (fan_in, width) in [(0, (5, 8)), (3, (8, 6)), (6, (6, 3))]:
        state[f"{index}.weight"] = rng.normal(0, 0.5, (width, fan_in)).astype(np.float32)
        state[f"{index}.bias"] = rng.normal(0, 0.3, width).astype(np.float32)
        if index < 6:
            norm = index + 1
            state[f"{norm}.weight"] = rng.uniform(0.5, 1.5, width).astype(np.float32)
            state[f"{norm}.bias"] = rng.normal(0, 0.3, width).astype(np.float32)
            state[f"{norm}.running_mean"] = rng.normal(0, 0.5, width).astype(np.float32)
            state[f"{norm}.running_var"] = rng.uniform(0.3, 2.0, width).astype(np.float32)
            state[f"{norm}.num_batches_tracked"] = np.array(7, dtype=np.int64)
    return state


def torch_semantics(state: dict[str, np.ndarray], x: np.ndarray, epsilon: float) -> np.ndarray:
    """What the nn.Sequential computes in eval mode (ReLU), float64: softmax probabilities."""
    state = {key: value.astype(np.float64) for key, value in state.items()}
    a = x.astype(np.float64)
    for index in (0, 3, 6):
        a = a @ state[f"{index}.weight"].T + state[f"{index}.bias"]
        if index < 6:
            n = index + 1
            a = (a - state[f"{n}.running_mean"]) / np.sqrt(state[f"{n}.running_var"] + epsilon)
            a = np.maximum(a * state[f"{n}.weight"] + state[f"{n}.bias"], 0.0)
    shifted = np.exp(a - a.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def test_state_dict_graph_folds_to_what_the_sequential_computes() -> None:
    state = torch_layout()
    spec = StateDictSpec(activation="relu", task="classification", epsilon=1e-3)
    graph = graph_from_state_dict(state, spec, "net.pt")
    chain = parse_chain(graph, "net.pt")
    assert chain.summary() == "5→8+BN → Relu → 8→6+BN → Relu → 6→3 → Softmax"
    assert [node.epsilon for node in chain.batchnorms] == [np.float32(1e-3)] * 2
    x = np.random.default_rng(1).normal(1, 2, (40, 5))
    expected = torch_semantics(state, x, float(np.float32(1e-3)))
    np.testing.assert_allclose(forward_folded(fold_chain(chain), x), expected, atol=1e-12)
    # and the unfolded graph itself, under onnxruntime, computes the same
    ort_out = onnx_session(graph.SerializeToString()).run(None, {"x": x.astype(np.float32)})[0]
    np.testing.assert_allclose(ort_out, expected, atol=1e-5)


def test_one_output_classifier_gets_a_sigmoid_and_regression_nothing() -> None:
    state = {k: v for k, v in torch_layout().items() if not k.startswith("6.")}
    state["6.weight"] = np.ones((1, 6), np.float32)
    assert (
        parse_chain(
            graph_from_state_dict(state, StateDictSpec("tanh", "classification"), "b.pt"), "b.pt"
        ).head
        == "sigmoid"
    )
    assert (
        parse_chain(
            graph_from_state_dict(state, StateDictSpec("tanh", "regression"), "r.pt"), "r.pt"
        ).head
        == "none"
    )


@pytest.mark.parametrize(
    "change, spec, fragment",
    [
        (lambda s: s, StateDictSpec(None, "classification"), "pass --activation relu|tanh"),
        (lambda s: s, StateDictSpec("relu", None), "pass --task classification"),
        (
            lambda s: {k: v for k, v in s.items() if "running" not in k or k.startswith("4.")},
            StateDictSpec("relu", "classification"),
            "module '1' (['bias', 'weight']) has no running statistics",
        ),
        (
            lambda s: {
                "1.running_mean": s["1.running_mean"],
                "1.running_var": s["1.running_var"],
                **s,
            },
            StateDictSpec("relu", "classification"),
            "BatchNorm1d '1' does not follow a Linear layer",
        ),
        (
            lambda s: {**s, "3.weight": s["3.weight"][:, :7]},
            StateDictSpec("relu", "classification"),
            "Linear '3' takes 7 inputs, but the layer before gives 8",
        ),
        (
            lambda s: {**s, "9.kernel": np.ones((2, 2, 2), np.float32)},
            StateDictSpec("relu", "classification"),
            "module '9' with {'kernel': [2, 2, 2]} is neither a Linear nor a BatchNorm1d",
        ),
        (
            lambda s: {**s, "0.weight": np.full((8, 5), np.nan, np.float32)},
            StateDictSpec("relu", "classification"),
            "0.weight has 40 non-finite value(s)",
        ),
    ],
)
def test_state_dicts_that_do_not_fold_are_refused(change, spec, fragment) -> None:
    with pytest.raises(ExportError, match=r"^net\.pt: ") as caught:
        graph_from_state_dict(change(torch_layout()), spec, "net.pt")
    assert fragment in str(caught.value)


def test_without_torch_a_state_dict_gets_one_clear_line(tmp_path: Path) -> None:
    source = tmp_path / "net.pt"
    source.write_bytes(b"PK\x03\x04 not really")
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import bnserve.cli\n"
        f"sys.exit(bnserve.cli.main(['import', {str(source)!r}, '--out', "
        f"{str(tmp_path / 'out.onnx')!r}, '--task', 'classification']))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"bnserve import: error: {source}: reading a PyTorch state dict needs torch, which is not "
        "installed here (pip install 'bnserve[torch]'), or export the model with "
        "torch.onnx.export and import the .onnx file"
    ]
    assert not (tmp_path / "out.onnx").exists()


def test_real_state_dict_through_the_cli(tmp_path: Path, capsys) -> None:
    torch = pytest.importorskip("torch")
    from bnserve.export.import_cli import main

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(5, 8),
        torch.nn.BatchNorm1d(8),
        torch.nn.LeakyReLU(0.1),
        torch.nn.Linear(8, 6),
        torch.nn.LeakyReLU(0.1),
        torch.nn.Linear(6, 3),
    )
    net.train()
    for _ in range(4):  # move the running statistics away from 0 and 1
        net(torch.randn(16, 5) * 3 + 1)
    net.eval()
    torch.save(net.state_dict(), tmp_path / "net.pt")
    torch.save(net, tmp_path / "whole.pt")  # the pickled module: never unpickled
    out = tmp_path / "net.onnx"
    flags = ["--task", "classification", "--activation", "leaky_relu", "--leaky-relu-alpha", "0.1"]
    assert main([str(tmp_path / "net.pt"), "--out", str(out), *flags]) == 0
    assert "(1 BatchNormalization node(s) folded)" in capsys.readouterr().out
    x = torch.randn(30, 5) * 2
    with torch.no_grad():
        expected = torch.softmax(net(x), dim=1).numpy()
    served = onnx_session(out.read_bytes()).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert main([str(tmp_path / "whole.pt"), "--out", str(tmp_path / "w.onnx"), *flags]) == 2
    assert "not a state dict that torch.load(weights_only=True) reads" in capsys.readouterr().err
    assert not (tmp_path / "w.onnx").exists()
