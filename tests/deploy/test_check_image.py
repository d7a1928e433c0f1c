"""deploy/check-image.sh with stand-in podman, runc and debootstrap (this machine has none): what
it says when it cannot run, and that it removes the untagged build-stage images it made.

The real run is `make image-check` (root, podman); these check its own logic in a second.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from tests.support.deploy_support import REPO

FAKE_PODMAN = r"""#!/usr/bin/env bash
# podman as far as check-image.sh needs it; images live in $FAKE_STATE/images ("ID TAG" lines)
images=$FAKE_STATE/images
echo "$*" >>"$FAKE_STATE/calls"
case "$1" in
  images) awk '$2 == "<none>" { print $1 }' "$images" ;;
  build)  printf 'sha-stage-requirements <none>\nsha-stage-builder <none>\nsha-final %s\n' \
            localhost/bnserve:check >>"$images" ;;
  rmi)    grep -v "^${@: -1} " "$images" >"$images.new"; mv "$images.new" "$images" ;;
  run)    echo "fake podman: no containers on this machine" >&2; exit 125 ;;
  *)      exit 0 ;;
esac
"""


def _tools(tmp_path: Path, uid: int = 0) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {"podman": FAKE_PODMAN, "runc": "#!/bin/sh\n", "debootstrap": "#!/bin/sh\n"}
    if uid != 0:
        scripts["id"] = f'#!/bin/sh\n[ "$1" = -u ] && echo {uid} || /usr/bin/id "$@"\n'
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    state = tmp_path / "state"
    state.mkdir()
    (state / "images").write_text("sha-someone-else <none>\nsha-base localhost/python-base:x\n")
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_STATE": str(state)}


def _check_image(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO / "deploy" / "check-image.sh")],
        capture_output=True,
        text=True,
        env={**env, "TMPDIR": env.get("TMPDIR", "/tmp")},
        timeout=300,
    )


def test_not_root_says_what_it_needs_in_words(tmp_path: Path) -> None:
    """The bug: the message pointed at ../shared/notes/containers.md, outside the repository."""
    result = _check_image(_tools(tmp_path, uid=1000))
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("image-check: FAILED: runs rootful podman")
    assert "run it as root" in message
    assert "../" not in message and "/shared/" not in message and "notes/" not in message


def test_the_script_cites_no_path_outside_the_repository() -> None:
    text = (REPO / "deploy" / "check-image.sh").read_text()
    assert "../shared" not in text and "/work/" not in text


def test_the_build_stage_images_it_made_are_removed_and_no_others(tmp_path: Path) -> None:
    """The bug: two untagged build-stage images (requirements, builder) stayed after each run."""
    env = _tools(tmp_path)
    result = _check_image(env)  # trains and exports a real tiny model, then `podman run` fails
    assert result.returncode == 1, result.stderr
    assert "image-check: FAILED: podman run" in result.stderr
    images = (tmp_path / "state" / "images").read_text().splitlines()
    assert images == [
        "sha-someone-else <none>",  # untagged before this build: not its to remove
        "sha-base localhost/python-base:x",
        "sha-final localhost/bnserve:check",
    ]
    calls = (tmp_path / "state" / "calls").read_text()
    assert (
        "rmi --force sha-stage-requirements" in calls and "rmi --force sha-stage-builder" in calls
    )
