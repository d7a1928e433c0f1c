"""ModelDrift's answer: a model version's drift report (server/drift/monitor.py) as protobuf."""

from __future__ import annotations

from typing import Any

from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
from bnserve.server.models.model import Model


def drift_response(model: Model) -> pb.ModelDriftResponse:
    """Both windows of the model's drift statistics; monitored=False (with the reason) without."""
    response = pb.ModelDriftResponse(
        model_name=model.name, model_version=model.version, status=model.drift_status
    )
    monitor = model.drift
    if monitor is None:
        return response
    report = monitor.report()
    response.monitored = True
    response.window = monitor.settings.window
    response.reference = monitor.reference.source
    _fill_window(response.life, report["life"])
    _fill_window(response.recent, report["recent"])
    return response


def _fill_window(window: pb.DriftWindow, figures: dict[str, Any]) -> None:
    window.examples = figures["examples"]
    window.out_of_range_share = figures["out_of_range_share"]
    window.score = figures["score"]
    window.flagged_features.extend(figures["flagged_features"])
    window.flagged_layers.extend(figures["flagged_layers"])
    window.features.extend(pb.FeatureDrift(**feature) for feature in figures["features"])
    window.layers.extend(pb.LayerDrift(**layer) for layer in figures["layers"])
    window.flagged_columns.extend(figures["flagged_columns"])
    for column in figures["columns"]:
        levels = [pb.LevelShare(**level) for level in column["levels"]]
        window.columns.append(pb.ColumnDrift(**{**column, "levels": levels}))
