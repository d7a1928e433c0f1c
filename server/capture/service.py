"""The capture store as the data plane sees it: the writer (calls and true answers in) and the
quality join (realized quality out), started and stopped together."""

from __future__ import annotations

from pathlib import Path

from bnserve.server.capture.quality import QualityJoiner
from bnserve.server.capture.shadow import ShadowScorer
from bnserve.server.capture.writer import CaptureCounters, CaptureOptions, CaptureWriter


class Capture:
    """writer: sampled calls and posted true answers into the store; joiner: the store's
    realized quality (every process's files); shadow: a model's shadow version scoring the
    sampled calls its served version answered."""

    def __init__(
        self,
        options: CaptureOptions,
        recent_s: float,
        window_s: float,
        counters: CaptureCounters | None = None,
    ) -> None:
        self.writer = CaptureWriter(options, counters)
        self.joiner = QualityJoiner(Path(options.directory), recent_s, window_s)
        self.shadow = ShadowScorer(self.writer)

    def prepare(self) -> None:
        """OSError naming the store's directory when it cannot be made private (0700)."""
        self.writer.prepare()

    def start(self) -> None:
        self.writer.start()
        self.shadow.start()

    def stop(self) -> None:
        self.shadow.stop()
        self.writer.stop()
