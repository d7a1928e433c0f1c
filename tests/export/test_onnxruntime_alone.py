"""onnxruntime alone scores raw penguins records from the exported file (issue 26, "Must show").

The file is made by the `penguins_model` fixture (tests/export/conftest.py); this module imports
only onnxruntime, numpy and the standard library: nothing from bnserve is needed to score."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort

COLUMNS = ["island", "bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "sex"]


def _feeds(session: ort.InferenceSession, record: dict) -> dict:
    """One raw record as the graph takes it: each column a [1, 1] array, strings or float32."""
    feeds = {}
    for graph_input in session.get_inputs():
        value = record[graph_input.name]
        if graph_input.type == "tensor(string)":
            feeds[graph_input.name] = np.array([[value]], dtype=object)
        else:
            feeds[graph_input.name] = np.array([[np.nan if value is None else value]], np.float32)
    return feeds


def test_onnxruntime_alone_scores_a_raw_penguins_record(penguins_model):
    session = ort.InferenceSession(str(penguins_model.model), providers=["CPUExecutionProvider"])
    inputs = {graph_input.name: graph_input for graph_input in session.get_inputs()}
    assert list(inputs) == [*COLUMNS, "year"]  # one per column, in the file's order
    assert inputs["island"].type == inputs["sex"].type == "tensor(string)"
    assert inputs["body_mass_g"].type == "tensor(float)"
    assert inputs["island"].shape == ["N", 1]
    meta = session.get_modelmeta().custom_metadata_map
    classes = json.loads(meta["bnserve.class_names"])

    gentoo = {
        "island": "Biscoe",
        "bill_length_mm": 50.0,
        "bill_depth_mm": 15.2,
        "flipper_length_mm": 220.0,
        "body_mass_g": 5700.0,
        "sex": "male",
        "year": 2008.0,
    }
    probabilities, label = session.run(["probabilities", "label"], _feeds(session, gentoo))
    assert probabilities.shape == (1, 3)
    assert abs(float(probabilities.sum()) - 1.0) < 1e-5
    assert classes[int(label[0])] == "Gentoo"
    # a record with gaps and text the graph never saw is still scored
    odd = {**gentoo, "bill_depth_mm": None, "sex": "NA", "island": "Atlantis"}
    probabilities, _ = session.run(["probabilities", "label"], _feeds(session, odd))
    assert np.all(np.isfinite(probabilities))

    # the file's own reference records, one at a time, give the numpy path's answers
    references = json.loads(meta["bnserve.reference_inputs"])
    expected = json.loads(meta["bnserve.reference_outputs"])
    rows = len(expected["label"])
    assert all(len(values) == rows for values in references.values())
    for row in range(rows):
        record = {name: values[row][0] for name, values in references.items()}
        probabilities, label = session.run(["probabilities", "label"], _feeds(session, record))
        np.testing.assert_allclose(probabilities[0], expected["probabilities"][row], atol=1e-5)
        assert int(label[0]) == expected["label"][row]
