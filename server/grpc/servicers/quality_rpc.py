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
    for pair in quality.shadows:
        if version and version not in (pair.primary, pair.shadow):
            continue
        response.shadows.append(
            pb.ShadowPair(
                primary_version=pair.primary,
                shadow_version=pair.shadow,
                calls=pair.calls,
                agreement=pair.agreement,
                delta_mean=pair.delta_mean,
                delta_max=pair.delta_max,
                shadow_ms_mean=pair.shadow_ms_mean,
                shadow_ms_max=pair.shadow_ms_max,
                primary_ms_mean=pair.primary_ms_mean,
                primary_quality=_window(pair.primary_quality),
                shadow_quality=_window(pair.shadow_quality),
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
