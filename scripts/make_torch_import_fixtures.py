"""Write the PyTorch exports that tests/export/test_torch_fixtures.py imports (without torch).

Trains three small `nn.Sequential` MLPs with `BatchNorm1d` on the CPU, puts them in eval mode
and exports them with `torch.onnx.export`, the way a PyTorch user would:

- torch_digits.onnx: the built-in digits, (x − mean)/std as buffers (Sub/Div in the graph),
  64→32→BN→ReLU→16→BN→ReLU→10 logits; the TorchScript exporter (dynamo=False), batch "batch".
- torch_binary_fixed_batch.onnx: two blobs, LeakyReLU(0.1), BN after the first layer only, one
  output through Sigmoid; exported with a FIXED batch of 1 (no dynamic_axes), a common default.
- torch_regression_dynamo.onnx: two smooth targets, Tanh, BN after both layers; the dynamo
  exporter (opset 20) with optimize=False, so its BatchNormalization nodes stay in the graph.

torch_import_fixtures.npz holds, per fixture, rows "NAME.x" (float32) and torch's own outputs on
them "NAME.torch" (probabilities or y, float64), so the tests compare with torch, not only with
onnxruntime. PyTorch (and onnxscript, for the dynamo exporter) are needed only here:

    .venv/bin/pip install torch==2.13.0 onnxscript==0.7.2
    .venv/bin/python scripts/make_torch_import_fixtures.py
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bnserve.training.data.loading import load_dataset  # noqa: E402

OUT = ROOT / "tests" / "export" / "fixtures"
SEED = 20261201


class Standardize(torch.nn.Module):
    """(x − mean)/std with the training split's statistics as buffers."""

    def __init__(self, x: np.ndarray) -> None:
        super().__init__()
        std = x.std(axis=0)
        self.register_buffer("mean", torch.tensor(x.mean(axis=0), dtype=torch.float32))
        self.register_buffer("std", torch.tensor(np.where(std > 0, std, 1.0), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def train(net: torch.nn.Module, x: np.ndarray, y: np.ndarray, loss_fn, epochs: int) -> None:
    """Adam on mini-batches of 32 in train mode (so the running statistics move), then eval."""
    generator = torch.Generator().manual_seed(SEED)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    inputs, targets = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(inputs) - 1, 32):
            batch = order[start : start + 32]
            if len(batch) < 2:
                continue
            optimizer.zero_grad()
            loss_fn(net(inputs[batch]), targets[batch]).backward()
            optimizer.step()
    net.eval()


def export_legacy(net: torch.nn.Module, x: np.ndarray, dynamic: bool) -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(
        net,
        (torch.tensor(x[:1], dtype=torch.float32),),
        buffer,
        dynamo=False,
        input_names=["features"],
        output_names=["output"],
        dynamic_axes={"features": {0: "batch"}, "output": {0: "batch"}} if dynamic else None,
        opset_version=17,
    )
    return buffer.getvalue()


def export_dynamo(net: torch.nn.Module, x: np.ndarray) -> bytes:
    program = torch.onnx.export(
        net,
        (torch.tensor(x[:4], dtype=torch.float32),),
        dynamo=True,
        optimize=False,  # its optimizer would fold BN itself; keep the graph as trained
        input_names=["features"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    return program.model_proto.SerializeToString()


def torch_outputs(net: torch.nn.Module, x: np.ndarray, head: str) -> np.ndarray:
    with torch.no_grad():
        out = net(torch.tensor(x, dtype=torch.float32)).double()
    if head == "logits":
        out = torch.softmax(out, dim=1)
    if head == "sigmoid":
        out = torch.cat([1 - out, out], dim=1)
    return out.numpy()


def main() -> None:
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    arrays: dict[str, np.ndarray] = {}
    models: dict[str, bytes] = {}

    digits = load_dataset("digits")
    x = np.asarray(digits.x, dtype=np.float32)
    net = torch.nn.Sequential(
        Standardize(x[:1500]),
        torch.nn.Linear(64, 32),
        torch.nn.BatchNorm1d(32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 16),
        torch.nn.BatchNorm1d(16),
        torch.nn.ReLU(),
        torch.nn.Linear(16, 10),
    )
    train(net, x[:1500], digits.y[:1500], torch.nn.functional.cross_entropy, epochs=20)
    models["torch_digits"] = export_legacy(net, x, dynamic=True)
    arrays["torch_digits.x"] = x[1500:1564]
    arrays["torch_digits.torch"] = torch_outputs(net, x[1500:1564], "logits")
    accuracy = (arrays["torch_digits.torch"].argmax(1) == digits.y[1500:1564]).mean()

    centres = rng.normal(0, 3, (2, 6))
    labels = rng.integers(0, 2, 600)
    blobs = (centres[labels] + rng.normal(0, 1.5, (600, 6))).astype(np.float32)
    net = torch.nn.Sequential(
        torch.nn.Linear(6, 12),
        torch.nn.BatchNorm1d(12),
        torch.nn.LeakyReLU(0.1),
        torch.nn.Linear(12, 8),
        torch.nn.LeakyReLU(0.1),
        torch.nn.Linear(8, 1),
        torch.nn.Sigmoid(),
    )
    train(
        net,
        blobs,
        labels[:, None].astype(np.float32),
        torch.nn.functional.binary_cross_entropy,
        epochs=10,
    )
    models["torch_binary_fixed_batch"] = export_legacy(net, blobs, dynamic=False)
    arrays["torch_binary_fixed_batch.x"] = blobs[:40]
    arrays["torch_binary_fixed_batch.torch"] = torch_outputs(net, blobs[:40], "sigmoid")

    inputs = rng.uniform(-2, 2, (800, 4)).astype(np.float32)
    targets = np.stack(
        [np.sin(inputs[:, 0]) + inputs[:, 1] ** 2, 10 * inputs[:, 2] - inputs[:, 3]], axis=1
    ).astype(np.float32)
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 16),
        torch.nn.BatchNorm1d(16),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 16),
        torch.nn.BatchNorm1d(16),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 2),
    )
    train(net, inputs, targets, torch.nn.functional.mse_loss, epochs=10)
    models["torch_regression_dynamo"] = export_dynamo(net, inputs)
    arrays["torch_regression_dynamo.x"] = inputs[:40]
    arrays["torch_regression_dynamo.torch"] = torch_outputs(net, inputs[:40], "none")
    arrays["torch_version"] = np.array(torch.__version__)

    OUT.mkdir(parents=True, exist_ok=True)
    for name, payload in models.items():
        temporary = OUT / f".tmp-{name}.onnx"
        temporary.write_bytes(payload)
        temporary.replace(OUT / f"{name}.onnx")
        print(f"wrote {(OUT / name).relative_to(ROOT)}.onnx ({len(payload):,} bytes)")
    temporary = OUT / ".tmp-torch_import_fixtures.npz"
    with open(temporary, "wb") as handle:
        np.savez(handle, **arrays)
    temporary.replace(OUT / "torch_import_fixtures.npz")
    print(f"digits accuracy on 64 rows after 20 epochs: {accuracy:.3f} (torch {torch.__version__})")


if __name__ == "__main__":
    main()
