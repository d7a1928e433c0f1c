"""`bnserve export` failing on bad input: exit ≠ 0, the error names the problem, nothing written.
Shared by the tests of the CLI, the exporter and the network checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from bnserve.export.cli import main


def assert_fails_cleanly(
    capsys: pytest.CaptureFixture[str], argv: list[str], out_dir: Path, *fragments: str
) -> str:
    """Run `bnserve export argv`; assert it failed with every fragment in stderr and left
    out_dir as it was (no model, no temp file); return stderr."""
    before = sorted(path.name for path in out_dir.iterdir())
    code = main(argv)
    error = capsys.readouterr().err
    assert code != 0
    for fragment in fragments:
        assert fragment in error, error
    assert sorted(path.name for path in out_dir.iterdir()) == before  # no model, no temp file
    return error
