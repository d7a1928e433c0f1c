"""ModelQuality's answer: a model's realized quality (server/capture/quality.py) as protobuf."""

from __future__ import annotations

from bnserve.server.capture.quality import ModelQuality, Window
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb


def quality_response(
    name: str, version: str, quality: ModelQuality | None
) -> pb.ModelQualityResponse:
    """Every version's windows (only `version` when set); captured=False without a store."""
    response = pb.ModelQualityResponse(model_name=name, captured=quality is not None)
    if quality is None:
        return response
    response.labels, response.unknown_labels = quality.labels, quality.unknown
    response.late_labels = quality.late
    for version_name, figures in sorted(quality.versions.items()):
        if version and version_name != version:
            continue
        response.versions.append(
            pb.VersionQuality(
                model_version=version_name,
                task=figures.task,
                recent=_window(figures.recent),
                life=_window(figures.life),
            )
        )
    return response


def _window(window: Window) -> pb.QualityWindow:
    return pb.QualityWindow(
        labelled=window.labelled,
        accuracy=window.accuracy,
        log_loss=window.log_loss,
        confusion=[
            pb.ConfusionCell(true_class=t, predicted_class=p, count=n)
            for (t, p), n in sorted(window.confusion.items())
        ],
        rmse=window.rmse,
        mae=window.mae,
    )
