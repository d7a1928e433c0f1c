"""Write the PyTorch golden fixtures that tests/training/test_torch_parity.py compares against.

Runs Linear(bias=False) → BatchNorm1d → ReLU → Linear → cross-entropy, and Adam, on fixed
inputs, and saves inputs, outputs, gradients, running statistics and parameters after Adam steps
to tests/training/fixtures/torch_bn_mlp.npz (no pickle). PyTorch is needed only here:

    python3 -m venv /work/torchvenv && /work/torchvenv/bin/pip install torch==2.13.0 numpy
    /work/torchvenv/bin/python scripts/make_torch_fixtures.py

Arithmetic is float64 so the comparison can be tight; the layout is ours: W is (in, out), i.e.
torch's Linear.weight transposed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

OUT = (
    Path(__file__).resolve().parent.parent / "tests" / "training" / "fixtures" / "torch_bn_mlp.npz"
)
N, F, H, C = 8, 5, 4, 3
STEPS = 3  # Adam steps (each on its own batch) to follow the running statistics and moments
MOMENTUM, EPSILON, LR = 0.1, 1e-5, 0.05
BETAS, ADAM_EPSILON = (0.9, 0.999), 1e-8


def build(rng: np.random.Generator) -> tuple[torch.nn.Module, dict[str, np.ndarray]]:
    """The torch net with fixed random parameters, and those parameters in our layout."""
    linear1 = torch.nn.Linear(F, H, bias=False).double()
    norm = torch.nn.BatchNorm1d(H, eps=EPSILON, momentum=MOMENTUM).double()
    linear2 = torch.nn.Linear(H, C).double()
    initial = {
        "hidden1.W": rng.normal(0, 0.7, (F, H)),
        "hidden1.gamma": rng.uniform(0.5, 1.5, H),
        "hidden1.beta": rng.normal(0, 0.3, H),
        "output.W": rng.normal(0, 0.5, (H, C)),
        "output.b": rng.normal(0, 0.1, C),
    }
    with torch.no_grad():
        linear1.weight.copy_(torch.from_numpy(initial["hidden1.W"].T))
        norm.weight.copy_(torch.from_numpy(initial["hidden1.gamma"]))
        norm.bias.copy_(torch.from_numpy(initial["hidden1.beta"]))
        linear2.weight.copy_(torch.from_numpy(initial["output.W"].T))
        linear2.bias.copy_(torch.from_numpy(initial["output.b"]))
    net = torch.nn.Sequential(linear1, norm, torch.nn.ReLU(), linear2)
    return net, initial


def ours(net: torch.nn.Module) -> dict[str, np.ndarray]:
    """The net's current parameters and running statistics in params.npz names and layout."""
    linear1, norm, _, linear2 = net
    return {
        "hidden1.W": linear1.weight.detach().numpy().T.copy(),
        "hidden1.gamma": norm.weight.detach().numpy().copy(),
        "hidden1.beta": norm.bias.detach().numpy().copy(),
        "hidden1.running_mean": norm.running_mean.numpy().copy(),
        "hidden1.running_var": norm.running_var.numpy().copy(),
        "output.W": linear2.weight.detach().numpy().T.copy(),
        "output.b": linear2.bias.detach().numpy().copy(),
    }


def main() -> None:
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(20240601)
    net, initial = build(rng)
    fixture = {f"initial.{name}": value for name, value in initial.items()}
    optimizer = torch.optim.Adam(net.parameters(), lr=LR, betas=BETAS, eps=ADAM_EPSILON)
    linear1, norm, _, _ = net
    for step in range(1, STEPS + 1):
        x = torch.from_numpy(rng.normal(1.0, 2.0, (N, F))).requires_grad_(True)
        labels = torch.from_numpy(rng.integers(0, C, N))
        net.train()
        z = linear1(x)
        z.retain_grad()
        normalized = norm(z)
        normalized.retain_grad()
        scores = net[3](net[2](normalized))
        loss = torch.nn.functional.cross_entropy(scores, labels)
        optimizer.zero_grad()
        loss.backward()
        prefix = f"step{step}"
        fixture[f"{prefix}.x"] = x.detach().numpy().copy()
        fixture[f"{prefix}.labels"] = labels.numpy().copy()
        fixture[f"{prefix}.z"] = z.detach().numpy().copy()
        fixture[f"{prefix}.bn_out"] = normalized.detach().numpy().copy()
        fixture[f"{prefix}.scores"] = scores.detach().numpy().copy()
        fixture[f"{prefix}.loss"] = np.array(loss.item())
        fixture[f"{prefix}.dx"] = x.grad.numpy().copy()
        fixture[f"{prefix}.dz"] = z.grad.numpy().copy()
        fixture[f"{prefix}.dbn_out"] = normalized.grad.numpy().copy()
        fixture[f"{prefix}.grad.hidden1.W"] = linear1.weight.grad.numpy().T.copy()
        fixture[f"{prefix}.grad.hidden1.gamma"] = norm.weight.grad.numpy().copy()
        fixture[f"{prefix}.grad.hidden1.beta"] = norm.bias.grad.numpy().copy()
        fixture[f"{prefix}.grad.output.W"] = net[3].weight.grad.numpy().T.copy()
        fixture[f"{prefix}.grad.output.b"] = net[3].bias.grad.numpy().copy()
        optimizer.step()
        for name, value in ours(net).items():
            fixture[f"{prefix}.after.{name}"] = value
    net.eval()
    x_eval = torch.from_numpy(rng.normal(1.0, 2.0, (N, F)))
    with torch.no_grad():
        fixture["eval.x"] = x_eval.numpy().copy()
        fixture["eval.scores"] = net(x_eval).numpy().copy()
    fixture["settings"] = np.array([MOMENTUM, EPSILON, LR, BETAS[0], BETAS[1], ADAM_EPSILON])
    fixture["torch_version"] = np.array(torch.__version__)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    temporary = OUT.with_name(".tmp-" + OUT.name)
    with open(temporary, "wb") as handle:
        np.savez(handle, **fixture)
    temporary.replace(OUT)
    print(f"wrote {OUT} ({len(fixture)} arrays, torch {torch.__version__})")


if __name__ == "__main__":
    main()
