"""--processes N: each child's drift gauges in a file, merged by the supervisor's collector."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from bnserve.server.drift.metrics import ChildDriftCollector, ChildDriftWriter, child_drift_file

CHILD = """# HELP bnserve_drift_examples Examples in the drift statistics.
# TYPE bnserve_drift_examples gauge
bnserve_drift_examples{{model="m",version="1",window="life",process="{index}"}} {value}
"""


def test_the_children_files_merge_into_one_family_per_name(tmp_path: Path) -> None:
    child_drift_file(str(tmp_path), 101).write_text(CHILD.format(index=0, value=3.0))
    child_drift_file(str(tmp_path), 102).write_text(CHILD.format(index=1, value=5.0))
    (tmp_path / "counter_101.db").write_bytes(b"")  # prometheus-client's own files: not read
    registry = CollectorRegistry()
    registry.register(ChildDriftCollector(str(tmp_path)))
    text = generate_latest(registry).decode()
    assert text.count("# HELP bnserve_drift_examples") == 1
    assert 'process="0",version="1",window="life"} 3.0' in text
    assert 'process="1",version="1",window="life"} 5.0' in text


def test_a_removed_child_file_leaves_no_gauge(tmp_path: Path) -> None:
    path = child_drift_file(str(tmp_path), 101)
    path.write_text(CHILD.format(index=0, value=3.0))
    registry = CollectorRegistry()
    registry.register(ChildDriftCollector(str(tmp_path)))
    path.unlink()  # the supervisor's _forget_metrics of a dead child
    assert "bnserve_drift_examples" not in generate_latest(registry).decode()


class _NoModels:
    def names(self) -> list[str]:
        return []


def test_a_file_that_cannot_be_written_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk, or a directory gone: the process keeps serving and says why once a write."""
    not_a_directory = tmp_path / "metrics"
    not_a_directory.write_text("")
    writer = ChildDriftWriter(_NoModels(), str(not_a_directory), 0, interval_s=60)
    with caplog.at_level(logging.WARNING, logger="bnserve.server.drift.metrics"):
        writer.start()
        writer.stop()
    assert any("drift gauges not written" in record.getMessage() for record in caplog.records)
