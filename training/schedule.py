"""The learning rate of each epoch: constant with --lr-decay, cosine, or one-cycle (with warm-up).

E = config.epochs, W = the warm-up epochs, α = config.lr; epochs count from 1 and the rate is
held for the whole epoch (training/train.py asks once per epoch):

    constant   α·lr_decay^(e − s), s the epoch the current settings started (a resumed run)
    cosine     e ≤ W: α·e/W;  then α·½·(1 + cos(π·(e − W − 1)/(E − W))): α at epoch W + 1,
               falling to just above 0 at epoch E (never 0: a step must move)
    onecycle   e ≤ W: from α/25 up to α, linearly (W: warmup_epochs, or 30 % of E when 0);
               then the cosine tail as above
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine", "onecycle")
ONECYCLE_START = 1 / 25  # one-cycle's warm-up starts at this share of α (PyTorch's div_factor)
ONECYCLE_WARMUP_SHARE = 0.3  # one-cycle without --warmup-epochs: this share of E (pct_start)


def warmup_epochs(schedule: str, warmup: int, epochs: int) -> int:
    """The warm-up length W in epochs that `schedule` uses (one-cycle always warms up)."""
    if schedule == "onecycle" and warmup == 0:
        return max(1, round(ONECYCLE_WARMUP_SHARE * epochs))
    return min(warmup, epochs)


def learning_rate(
    schedule: str,
    lr: float,
    epoch: int,
    epochs: int,
    *,
    warmup: int = 0,
    lr_decay: float = 1.0,
    since_epoch: int = 1,
) -> float:
    """The rate (> 0) of epoch `epoch` (1-based) of `epochs` under `schedule` (SCHEDULES)."""
    if schedule == "constant":
        return lr * lr_decay ** (epoch - since_epoch)
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; one of {SCHEDULES}")
    width = warmup_epochs(schedule, warmup, epochs)
    if epoch <= width:
        if schedule == "onecycle":
            share = (epoch - 1) / (width - 1) if width > 1 else 1.0
            return lr * (ONECYCLE_START + (1 - ONECYCLE_START) * share)
        return lr * epoch / width
    return lr * 0.5 * (1 + math.cos(math.pi * (epoch - width - 1) / (epochs - width)))
