"""Feedback: true answers for scored calls, checked against the model and turned into a labels
file's rows (bnserve/capture_store.py). The join itself is server/capture/quality.py's."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import NamedTuple

from bnserve import capture_store as store
from bnserve.server.capture.writer import CapturedModel
from bnserve.server.plane.errors import InvalidInput

MAX_ANSWERS = 1000  # true answers per call at most (each is a few dozen bytes in the store)
MAX_ID_CHARS = 256


class TrueAnswer(NamedTuple):
    """One true answer: the call's request id and the example's row in it (0 for a single
    example); label (classification: a class name) or values (regression: one per target)."""

    id: str
    row: int
    label: str
    values: Sequence[float]


def label_rows(
    model: CapturedModel, answers: Sequence[TrueAnswer]
) -> tuple[list[str], list[list[str]]]:
    """The labels file's header and rows for answers to `model`; InvalidInput names the first
    bad answer (its index) and what it must be."""
    if not answers:
        raise InvalidInput("no true answers: send a list of (id, row, label or values)")
    if len(answers) > MAX_ANSWERS:
        raise InvalidInput(
            f"{len(answers)} true answers in one call; at most {MAX_ANSWERS} (send several calls)"
        )
    card = model.card
    received = f"{time.time():.6f}"
    rows = []
    if model.is_classification:
        classes = set(card.class_names)
        header = [store.ID, store.ROW, store.RECEIVED, store.TRUE_LABEL]
        for index, answer in enumerate(answers):
            _check_key(index, answer)
            if answer.label not in classes:
                raise InvalidInput(
                    f"true answer {index}: label {answer.label[:100]!r} is not a class of model "
                    f"{model.name!r} ({', '.join(card.class_names[:10])})"
                )
            rows.append([answer.id, str(answer.row), received, answer.label])
        return header, rows
    targets = list(card.target_names)
    header = [store.ID, store.ROW, store.RECEIVED, *targets]
    for index, answer in enumerate(answers):
        _check_key(index, answer)
        if len(answer.values) != len(targets) or not all(math.isfinite(v) for v in answer.values):
            raise InvalidInput(
                f"true answer {index}: model {model.name!r} needs {len(targets)} finite value(s) "
                f"({', '.join(targets[:10])}); got {len(answer.values)}"
            )
        rows.append(
            [answer.id, str(answer.row), received, *(store.format_number(v) for v in answer.values)]
        )
    return header, rows


def _check_key(index: int, answer: TrueAnswer) -> None:
    if not answer.id or len(answer.id) > MAX_ID_CHARS:
        raise InvalidInput(
            f"true answer {index}: id must be the call's request id (1..{MAX_ID_CHARS} chars)"
        )
    if answer.row < 0:
        raise InvalidInput(f"true answer {index}: row must be ≥ 0, not {answer.row}")
