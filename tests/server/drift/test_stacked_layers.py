"""Layers read from a stack [K, N, H] (a batched ensemble's `hidden{i}.z`, `"member": m`) or from
the columns of a wide tensor (a grouped or blockdiag ensemble's, `"offset": o`): the monitor takes
each member's [N, H] from it and reports exactly what it reports for the same values given one
tensor per layer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bnserve.server.drift.monitor import (
    DriftMetadataError,
    DriftMonitor,
    DriftSettings,
    parse_reference,
)


def _reference(layers: list[dict[str, object]]) -> str:
    features = {
        "mean": [0.0], "std": [1.0], "min": [-3.0], "max": [3.0],
        "edges": [[0.0]], "shares": [[0.5, 0.5]],
    }  # fmt: skip
    return json.dumps({"format": 1, "source": "training split", "rows": 100,
                       "features": features, "layers": layers})  # fmt: skip


def _layer(name: str, output: str, **extra: object) -> dict[str, object]:
    width = 3
    return {"name": name, "output": output, "running_mean": [0.0] * width,
            "running_var": [1.0] * width, "gamma": [1.0, 2.0, 0.5], "beta": [0.0, 0.1, -0.1],
            **extra}  # fmt: skip


def test_members_of_a_stack_report_as_separate_tensors_do() -> None:
    stacked = parse_reference(
        _reference([_layer("m1.hidden1", "hidden1.z", member=0),
                    _layer("m2.hidden1", "hidden1.z", member=1)]),
        ("a",),
    )  # fmt: skip
    separate = parse_reference(
        _reference([_layer("m1.hidden1", "m1.hidden1.z"), _layer("m2.hidden1", "m2.hidden1.z")]),
        ("a",),
    )
    assert stacked.layer_tensors == [("hidden1.z", 3)]
    assert stacked.stacked_tensors == {"hidden1.z"} and separate.stacked_tensors == set()
    settings = DriftSettings(min_examples=1)
    one, two = (
        DriftMonitor(stacked, settings, warn=False),
        DriftMonitor(separate, settings, warn=False),
    )
    assert one.layer_outputs == ["hidden1.z"]
    assert two.layer_outputs == ["m1.hidden1.z", "m2.hidden1.z"]
    rng = np.random.default_rng(0)
    for rows in (5, 300, 40):
        x = rng.normal(size=(rows, 1)).astype(np.float32)
        stack = rng.normal(size=(2, rows, 3)).astype(np.float32) * [[[1.0]], [[3.0]]]
        one.observe(x, [stack])
        two.observe(x, [stack[0], stack[1]])
    mine, theirs = one.report()["life"]["layers"], two.report()["life"]["layers"]
    assert [layer["score"] for layer in mine] == [layer["score"] for layer in theirs]
    assert mine[0]["score"] != mine[1]["score"]  # each member's own values
    with pytest.raises(ValueError, match="observe needs 1 pre-activation tensors"):
        one.observe(x, [stack[0], stack[1]])


@pytest.mark.parametrize("member", [-1, 1.5, "0", True])
def test_a_member_that_is_not_a_whole_number_is_malformed(member: object) -> None:
    text = _reference([_layer("m1.hidden1", "hidden1.z", member=member)])
    with pytest.raises(DriftMetadataError, match="member is not a whole number"):
        parse_reference(text, ("a",))


@pytest.mark.parametrize("trailing", [False, True], ids=["[N, W]", "[N, W, 1]"])
def test_columns_of_a_wide_tensor_report_as_separate_tensors_do(trailing: bool) -> None:
    """`"offset": o` (a grouped or blockdiag ensemble): the layer is columns o … o + H − 1 of
    the members' side-by-side tensor [N, W] or [N, W, 1]."""
    wide = parse_reference(
        _reference([_layer("m1.hidden1", "hidden1.z", offset=0),
                    _layer("m2.hidden1", "hidden1.z", offset=4)]),
        ("a",),
    )  # fmt: skip
    separate = parse_reference(
        _reference([_layer("m1.hidden1", "m1.hidden1.z"), _layer("m2.hidden1", "m2.hidden1.z")]),
        ("a",),
    )
    assert wide.wide_tensors == {"hidden1.z"} and wide.stacked_tensors == set()
    assert separate.wide_tensors == set()
    settings = DriftSettings(min_examples=1)
    one, two = (
        DriftMonitor(wide, settings, warn=False),
        DriftMonitor(separate, settings, warn=False),
    )
    rng = np.random.default_rng(1)
    for rows in (5, 300, 40):
        x = rng.normal(size=(rows, 1)).astype(np.float32)
        columns = rng.normal(size=(rows, 8)).astype(np.float32) * np.repeat([1.0, 3.0], 4)
        one.observe(x, [columns[:, :, None] if trailing else columns])
        two.observe(x, [columns[:, 0:3], columns[:, 4:7]])  # column 3 and 7 belong to no layer
    mine, theirs = one.report()["life"]["layers"], two.report()["life"]["layers"]
    assert [layer["score"] for layer in mine] == [layer["score"] for layer in theirs]
    assert mine[0]["score"] != mine[1]["score"]


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"offset": -1}, "offset is not a whole number"),
        ({"offset": 2.0}, "offset is not a whole number"),
        ({"offset": 0, "member": 0}, "has both a member and an offset"),
    ],
)
def test_a_bad_offset_is_malformed(extra: dict[str, object], says: str) -> None:
    text = _reference([_layer("m1.hidden1", "hidden1.z", **extra)])
    with pytest.raises(DriftMetadataError, match=says):
        parse_reference(text, ("a",))
