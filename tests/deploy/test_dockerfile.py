"""Dockerfile and .dockerignore: lint-clean, the shape the image needs, nothing extra in context.

deploy/check-image.sh builds and runs the image for real (`make image-check`, .ci/run); these are
the quick checks that run with every `make test`.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.support.deploy_support import REPO, parse_dockerfile, runtime_stage

HADOLINT = Path(sys.executable).with_name("hadolint")


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    command = [str(HADOLINT), "--no-color", "--failure-threshold", "info", str(dockerfile)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_hadolint_finds_nothing():
    completed = hadolint(REPO / "Dockerfile")
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_hadolint_flags_a_careless_dockerfile(tmp_path: Path):
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM debian:latest\nRUN apt-get install -y curl\nCMD python serve.py\n")
    completed = hadolint(careless)
    assert completed.returncode == 1
    for rule in ("DL3007", "DL3015", "DL3025"):  # :latest, no --no-install-recommends, shell CMD
        assert rule in completed.stdout, rule


def test_dockerfile_shape():
    instructions = parse_dockerfile(REPO / "Dockerfile")
    froms = [arguments for keyword, arguments in instructions if keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage: a builder and a runtime stage"
    assert all(arguments.startswith("${BASE_IMAGE}") for arguments in froms)
    assert ("ARG", "BASE_IMAGE=python:3.11-slim") in instructions
    runtime = runtime_stage(instructions)
    arguments_of = dict(runtime)
    for needed in ("USER", "EXPOSE", "HEALTHCHECK", "STOPSIGNAL", "ENTRYPOINT"):
        assert needed in arguments_of, needed
    assert arguments_of["USER"].split(":")[0] not in ("0", "root")
    assert arguments_of["STOPSIGNAL"] == "SIGTERM"
    assert arguments_of["ENTRYPOINT"].startswith("["), "exec form: the server is PID 1"
    assert "bnserve.server.clients.healthcheck" in arguments_of["HEALTHCHECK"]
    assert importlib.util.find_spec("bnserve.server.clients.healthcheck"), (
        "the HEALTHCHECK probe module"
    )
    # The runtime stage installs nothing itself: it copies the builder's venv.
    assert not any("pip install" in arguments for keyword, arguments in runtime if keyword == "RUN")


def test_builder_installs_the_base_package_only():
    instructions = parse_dockerfile(REPO / "Dockerfile")
    installs = [arguments for keyword, arguments in instructions if "pip install" in arguments]
    assert installs, "the builder installs the package"
    for arguments in installs:
        assert not re.search(r"\.\[\w", arguments), f"no extras (train/test): {arguments}"
        assert "optional-dependencies" not in arguments, arguments
    copied = [arguments for keyword, arguments in instructions if keyword == "COPY"]
    for left_out in ("training", "export", "tests", " . "):
        assert not any(left_out in f" {arguments} " for arguments in copied), left_out


def dockerignore_patterns() -> set[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def test_dockerignore_keeps_the_context_to_serving_code():
    patterns = dockerignore_patterns()
    for kept_out in (".git", ".venv", "tests", "training", "export", "runs", "demo/run"):
        assert kept_out in patterns, kept_out


def test_everything_the_dockerfile_copies_exists_and_is_not_ignored():
    patterns = dockerignore_patterns()
    for keyword, arguments in parse_dockerfile(REPO / "Dockerfile"):
        if keyword != "COPY" or "--from=" in arguments:
            continue
        *sources, _destination = arguments.split()
        for source in sources:
            assert (REPO / source).exists(), source
            assert source.rstrip("/") not in patterns, f"{source} is in .dockerignore"


def _pins() -> dict[str, str]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    pins = [line.split("==") for line in lines if line and not line.startswith("#")]
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pins}


def test_constraints_pin_every_dependency_within_pyproject_ranges():
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        declared += [line for line in extra if not line.startswith("bnserve")]
    pins = _pins()
    for line in declared:
        requirement = Requirement(line)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in pins, f"constraints.txt does not pin {name} (make lock)"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject's {line!r} (make lock)"
        )


def test_image_and_venv_install_with_the_constraints():
    installs = [
        arguments
        for keyword, arguments in parse_dockerfile(REPO / "Dockerfile")
        if "pip install --requirement" in arguments
    ]
    assert installs and all("--constraint constraints.txt" in line for line in installs)
    assert "--constraint constraints.txt" in (REPO / "Makefile").read_text()
