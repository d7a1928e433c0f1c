"""README.md and docs/ as a newcomer follows them: the venv, the example files it says how to make,
names that do not collide between sections, the Python equivalent of the grpcurl calls, links
that resolve."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bnserve.server.clients.predict import InputError, read_examples
from bnserve.training.cli import main as train_main
from bnserve.training.data.loading import load_dataset
from tests.support.deploy_support import REPO, DemoRun

README = (REPO / "README.md").read_text()
SERVING = (REPO / "docs" / "serving.md").read_text()
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _section(title: str) -> str:
    """The text of `## title` up to the next `## ` heading."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else len(README)]


def test_it_says_to_use_the_venv_before_the_first_bnserve_command() -> None:
    """The bug: `bnserve train …` right after `make demo` gave "command not found"."""
    first_command = README.index("$ bnserve ")
    assert README.index("source .venv/bin/activate") < first_command
    assert ".venv/bin/bnserve" in README[:first_command]


def test_the_example_files_are_made_by_the_command_it_gives(
    tmp_path: Path, small_demo: DemoRun, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bug: digits.csv, bad.csv and heldout.csv were described but never made."""
    for command in ("$ python ../scripts/example_files.py\n", "scripts/example_files.py --run "):
        assert command in README
    run_dir = small_demo.out_dir / "run"
    made = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "example_files.py"), "--run", str(run_dir)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    assert "wrote digits.csv (1797 rows)\nwrote bad.csv (200 rows; line 3, column 3: x)\n" in (
        made.stdout
    )
    digits = load_dataset(str(tmp_path / "digits.csv"), target="digit")
    builtin = load_dataset("digits")
    assert np.array_equal(np.asarray(digits.x), np.asarray(builtin.x))
    assert digits.feature_names == builtin.feature_names
    assert (tmp_path / "heldout.csv").read_text()[:60] == (
        "pixel_0_0,pixel_0_1,pixel_0_2,pixel_0_3,pixel_0_4,pixel_0_5,"
    )
    # the errors the README shows for bad.csv, from bnserve.training and from the client
    assert train_main(["--out", str(tmp_path / "x"), "--data", str(tmp_path / "bad.csv")]) == 2
    train_error = capsys.readouterr().err.strip().replace(str(tmp_path) + "/", "")
    assert f"$ bnserve train --out runs/x --data bad.csv\n{train_error}\n" in README
    with pytest.raises(InputError) as raised:
        read_examples(tmp_path / "bad.csv", builtin.feature_names)
    predict_error = str(raised.value).replace(str(tmp_path) + "/", "")
    assert f"bnserve predict: error: {predict_error}\n" in README


def test_tune_and_export_write_different_model_files() -> None:
    """The bug: followed in order, Tune and Export both wrote model.onnx; the second failed."""
    outputs = {
        title: set(re.findall(r"^\$ bnserve export \S+ --out (\S+\.onnx)", _section(title), re.M))
        for title in ("Tune", "Export")
    }
    assert outputs["Tune"] and outputs["Export"]
    assert not outputs["Tune"] & outputs["Export"], outputs
    from bnserve.training.tune.cli import build_parser  # the tune's own hint names the Tune file

    assert f"--out {sorted(outputs['Tune'])[0]}" in build_parser().epilog


def test_the_python_equivalent_of_the_grpcurl_calls_runs(served_demo_model: str) -> None:
    match = re.search(r"^\$ python - <<'EOF'\n(.*?)^EOF\n(.*?)^```", SERVING, re.M | re.S)
    assert match, "no Python block for the grpcurl calls"
    code, shown = match.group(1), match.group(2).splitlines()
    assert "grpcurl" in SERVING[: match.start()][-3000:]  # next to the grpcurl examples
    assert "127.0.0.1:50051" in code  # the Serve tour's server, replaced by the test's own
    code = code.replace("127.0.0.1:50051", served_demo_model)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    printed = result.stdout.splitlines()
    served = shown.index("SERVING") + 1
    assert printed[:served] == shown[:served]  # services and SERVING
    assert printed[served].startswith("model 1 ")  # this model's class and probability may differ
    assert printed[served + 1] == shown[served + 1]


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for the `#` headings of a Markdown page (code blocks skipped)."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_every_relative_link_in_readme_and_docs_resolves() -> None:
    """README.md and docs/*.md link to each other: every file and #anchor they name exists."""
    links = 0
    for page in PAGES:
        text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name}: link {target!r}: no file {linked}"
            if anchor:
                assert anchor in _anchors(linked), f"{page.name}: link {target!r}: no such heading"
            links += 1
    assert links >= 20  # the README's index of docs/ and the docs' links back


TOUR = REPO / "scripts" / "readme_tour.py"


def _tour(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TOUR), *args], capture_output=True, text=True, timeout=900, cwd=REPO
    )


def test_the_tour_prints_what_the_page_shows() -> None:
    """Every README command outside the blocks marked slow or skip, run in order in a scratch
    tour/ directory: what it prints is what the page shows (timestamps, run ids, progress bars
    and timings masked), and it writes nothing outside tour/."""
    followed = _tour()
    assert followed.returncode == 0, followed.stdout[-6000:] + followed.stderr[-3000:]
    assert "0 drifted from the page" in followed.stdout


@pytest.mark.slow
def test_the_whole_tour_with_its_slow_blocks_prints_what_the_page_shows() -> None:
    """The Tune block too (40 trials: about a minute of 2 cores)."""
    followed = _tour("--slow")
    assert followed.returncode == 0, followed.stdout[-6000:] + followed.stderr[-3000:]


def test_the_tour_check_fails_when_a_recorded_output_drifts(tmp_path: Path) -> None:
    """A page whose recorded output no longer matches: exit 1 and a diff naming the line."""
    page = tmp_path / "README.md"
    shown = [
        "```",
        "$ printf 'run runs/a (0123456789ab): 2 epochs\\n'",
        "run runs/a (ba9876543210): 2 epochs",  # another run id: masked
        "$ bnserve --version",
        "bnserve …",
        "$ printf 'wrote 377,570 bytes\\n'",
        "wrote 377,570 bytes",
        "```",
    ]
    page.write_text("\n".join(shown) + "\n")
    assert _tour("--readme", str(page)).returncode == 0
    page.write_text("\n".join(shown).replace("wrote 377,570 bytes\n", "wrote 377,528 bytes\n"))
    drifted = _tour("--readme", str(page))
    assert drifted.returncode == 1
    assert "README line 6: $ printf 'wrote 377,570 bytes\\n'" in drifted.stdout
    assert "-wrote 377,528 bytes\n+wrote 377,570 bytes" in drifted.stdout
    assert "1 drifted from the page" in drifted.stdout


def test_a_block_marked_skip_is_not_run_and_one_marked_slow_only_with_slow(tmp_path: Path) -> None:
    page = tmp_path / "README.md"
    page.write_text(
        "<!-- tour: skip (docker) -->\n```\n$ false\nnot this\n```\n\n"
        "<!-- tour: slow (long) -->\n```\n$ echo slow\nslow\n```\n"
    )
    assert "0 commands" in _tour("--readme", str(page)).stdout
    assert "1 commands, 0 drifted" in _tour("--readme", str(page), "--slow").stdout


def test_the_tour_directory_is_ignored_by_git() -> None:
    """README: the tour runs in tour/ of the clone, so `git status` lists nothing it wrote."""
    written = ["tour/runs/d/params.npz", "tour/digits.csv", "tour/serve.log"]
    ignored = subprocess.run(
        ["git", "check-ignore", *written], cwd=REPO, capture_output=True, text=True
    )
    assert ignored.stdout.split() == written
    assert "(`mkdir\ntour && cd tour` first;" in README
