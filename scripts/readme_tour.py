"""Follow README.md's tour in a scratch directory; compare what each command prints with the page.

Every ``` block with `$ ` lines is the tour, run in order in one directory (`tour/`, as the README
says; the script gives it `../scripts`, `../tests/export/fixtures` and
`../tests/training/fixtures` beside it). A block right
after `<!-- tour: skip (why) -->` is not run; one after `<!-- tour: slow (why) -->` only with
--slow. What a command prints (stderr and stdout together, unbuffered) must match the lines shown
under it, after masking what varies from run to run on both sides: timestamps, run ids, progress
bars, the tune's seconds column. In the page's output `…` stands for anything within a line, and a
line of `…` alone for any lines.

Servers: a command ending in ` &` runs in the background until `kill $!; wait $!` (its output is
compared then); a command whose output shows `^C` serves in the background until the tour ends,
then gets SIGINT. Both are waited for until they log that they serve. The page's ports (gRPC
50051, 50718, 50719 and 50720, HTTP 8000, 8001 and 8002, metrics 9090) become free loopback ports,
on both sides.

    python scripts/readme_tour.py [--readme README.md] [--slow] [--update] [--keep DIR]

Exit 0 when every command printed what the page shows, 1 with a diff per drifted command.
--update rewrites the page's outputs of drifted commands that show no `…` (the others are for a
person to edit, with the diff as a guide).
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^<!-- tour: (skip|slow)\b.*-->$")
PAGE_PORTS = {
    "50051": "grpc",
    "50718": "grpc_import",
    "50719": "grpc_penguins",
    "50720": "grpc_loop",
    "8000": "http",
    "8001": "http_penguins",
    "8002": "http_loop",
    "9090": "metrics",
}
READY = "Ctrl-C or SIGTERM stops"  # the server's last start-up line
COMMAND_TIMEOUT_S = 600
SERVER_START_S = 120
# (pattern, replacement), applied to the page's lines and to what the commands print
MASKS = [
    (re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "), "<time> "),
    (re.compile(r"^(\S*?:? ?)\s*\d+%\|.*$"), r"\1<progress bar>"),  # tqdm
    (re.compile(r"\(([0-9a-f]{12})\)"), "(<run id>)"),
    # bnserve tune's table: the trailing seconds column
    (re.compile(r"^(\s+\d+\s+\d+\s+\d+\s+(?:finished|pruned|failed)\s.*?\S)\s+[\d.]+$"), r"\1 <s>"),
]


@dataclass
class Command:
    text: str  # as shown after `$ ` (a heredoc's lines included)
    line: int  # its line in the page (1-based)
    shown: list[str] = field(default_factory=list)  # the output lines under it
    shown_at: int = 0  # line of the first output line
    slow: bool = False


def parse(page: str, slow: bool) -> list[Command]:
    """The tour's commands in page order, with what the page shows under each."""
    commands: list[Command] = []
    lines = page.splitlines()
    marker, in_block, heredoc = "", False, ""
    current: Command | None = None  # the block's last command
    index = 0
    while index < len(lines):
        line = lines[index]
        if not in_block:
            if line.startswith("```"):
                in_block, block_marker, current = True, marker, None
            elif line.strip():
                marker = match.group(1) if (match := MARKER.match(line)) else ""
            index += 1
            continue
        if line.startswith("```"):
            in_block, marker = False, ""
        elif block_marker == "skip" or (block_marker == "slow" and not slow):
            pass
        elif line.startswith("$ "):
            command = Command(line[2:], index + 1, slow=block_marker == "slow")
            if match := re.search(r"<<'(\w+)'$", line):
                heredoc = match.group(1)
                while lines[index + 1] != heredoc:
                    index += 1
                    command.text += "\n" + lines[index]
                index += 1
                command.text += "\n" + heredoc
            command.shown_at = index + 2
            commands.append(command)
            current = command
        elif current is not None:
            current.shown.append(line)
        index += 1
    return commands


def mask(line: str) -> str:
    line = line.rsplit("\r", 1)[-1]  # a progress bar redrawn in place: its last state
    for pattern, replacement in MASKS:
        line = pattern.sub(replacement, line)
    return line


def pattern_of(shown: list[str]) -> re.Pattern[str]:
    """The page's lines as a regex: `…` is anything within a line; `…` alone, any lines."""
    parts = []
    for line in shown:
        if line.strip() == "…":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(".*?".join(re.escape(piece) for piece in mask(line).split("…")) + r"\n")
    return re.compile("".join(parts))


def printed_lines(printed: str) -> list[str]:
    """Lines as a terminal leaves them (a progress bar redraws its line with \\r)."""
    return [mask(line) for line in printed.removesuffix("\n").split("\n")] if printed else []


def matches(command: Command, shown: list[str], printed: str) -> bool:
    if command.text.startswith("ls "):  # a terminal lays the names out in columns, a pipe not
        return " ".join(shown).split() == printed.split()
    text = "".join(line + "\n" for line in printed_lines(printed))
    return pattern_of(shown).fullmatch(text) is not None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Drift:
    command: Command
    printed: str

    def report(self) -> str:
        printed = printed_lines(self.printed)
        diff = difflib.unified_diff(
            [mask(line) for line in self.command.shown], printed, "page", "printed", lineterm=""
        )
        return f"README line {self.command.line}: $ {self.command.text}\n" + "\n".join(diff)


class Tour:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ports = {role: str(free_port()) for role in set(PAGE_PORTS.values())}
        self.last_status = 0
        self.background: list[tuple[subprocess.Popen[bytes], Path, Command]] = []
        self.servers: list[tuple[subprocess.Popen[bytes], Path, Command]] = []
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "PYTHONUNBUFFERED": "1",
            "BNSERVE_CACHE_DIR": str(directory.parent / "cache"),
            "BNSERVE_PORT": self.ports["grpc"],
            "BNSERVE_HTTP_PORT": self.ports["http"],
            "BNSERVE_METRICS_PORT": self.ports["metrics"],
            "COLUMNS": "80",
        }

    def local(self, text: str) -> str:
        """The page's text with its ports replaced by this tour's."""
        for port, role in PAGE_PORTS.items():
            text = re.sub(rf"(?<![\d.]){port}(?!\d)", self.ports[role], text)
        return text

    def run(self, commands: list[Command]) -> Iterator[Drift]:
        try:
            for command in commands:
                yield from self._step(command)
        finally:
            for process, log, command in self.servers:
                process.send_signal(signal.SIGINT)
                process.wait(timeout=60)
                yield from self._compare(command, command.shown, log.read_text())
            for process, _, _ in self.background:
                process.kill()
                process.wait()

    def _step(self, command: Command) -> Iterator[Drift]:
        text = self.local(command.text)
        if text.strip() == "kill $!; wait $!":
            process, log, started = self.background.pop()
            process.terminate()
            self.last_status = process.wait(timeout=60)
            yield from self._compare(started, started.shown + command.shown, log.read_text())
        elif text.endswith(" &") or "^C" in command.shown:
            log = self.directory.parent / f"server-{command.line}.log"
            with log.open("wb") as sink:
                process = subprocess.Popen(
                    ["bash", "-c", "exec " + text.removesuffix(" &")],
                    cwd=self.directory,
                    env=self.env,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self._wait_until_serving(process, log, command)
            if text.endswith(" &"):
                self.background.append((process, log, command))
            else:
                before = command.shown[: command.shown.index("^C")]
                after = command.shown[command.shown.index("^C") + 1 :]
                command.shown = before + after
                self.servers.append((process, log, command))
        else:
            completed = subprocess.run(
                ["bash", "-c", f"(exit {self.last_status}); {text}"],
                cwd=self.directory,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=COMMAND_TIMEOUT_S,
            )
            self.last_status = completed.returncode
            yield from self._compare(command, command.shown, completed.stdout.decode())

    def _wait_until_serving(
        self, process: subprocess.Popen[bytes], log: Path, command: Command
    ) -> None:
        deadline = time.monotonic() + SERVER_START_S
        while READY not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"README line {command.line}: the server did not start:\n{log.read_text()}"
                )
            time.sleep(0.1)

    def _compare(self, command: Command, shown: list[str], printed: str) -> Iterator[Drift]:
        local_shown = [self.local(line) for line in shown]
        if not matches(command, local_shown, printed):
            yield Drift(command, self._page_ports(printed))

    def _page_ports(self, printed: str) -> str:
        """Printed text with this tour's ports put back to the page's."""
        for port, role in PAGE_PORTS.items():
            printed = re.sub(rf"(?<![\d.]){self.ports[role]}(?!\d)", port, printed)
        return printed


def scratch(root: Path) -> Path:
    """root/tour, beside the two repository folders the tour reads (copied, so that anything
    the tour writes outside its own directory shows up)."""
    shutil.copytree(REPO / "scripts", root / "scripts", ignore=shutil.ignore_patterns("__py*"))
    fixtures = root / "tests" / "export" / "fixtures"
    fixtures.mkdir(parents=True)
    shutil.copy2(REPO / "tests" / "export" / "fixtures" / "torch_digits.onnx", fixtures)
    tables = root / "tests" / "training" / "fixtures"
    tables.mkdir(parents=True)
    shutil.copy2(REPO / "tests" / "training" / "fixtures" / "penguins.csv", tables)
    (root / "tour").mkdir()
    return root / "tour"


def update(page: str, drifts: list[Drift]) -> tuple[str, list[Drift]]:
    """The page with each drifted output that shows no `…` replaced; the drifts left."""
    lines, left = page.splitlines(), []
    for drift in sorted(drifts, key=lambda d: -d.command.line):
        command = drift.command
        if any("…" in line for line in command.shown) or "^C" in command.text:
            left.append(drift)
            continue
        start = command.shown_at - 1
        lines[start : start + len(command.shown)] = [
            line.rsplit("\r", 1)[-1] for line in drift.printed.removesuffix("\n").split("\n")
        ]
    return "\n".join(lines) + "\n", sorted(left, key=lambda d: d.command.line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--slow", action="store_true", help="also the blocks marked slow")
    parser.add_argument("--update", action="store_true", help="rewrite drifted outputs")
    parser.add_argument("--keep", type=Path, help="run here (a new directory) and keep it")
    args = parser.parse_args(argv)
    page = args.readme.read_text()
    commands = parse(page, args.slow)
    with tempfile.TemporaryDirectory(prefix="bnserve-tour-") as temporary:
        root = args.keep or Path(temporary)
        root.mkdir(parents=True, exist_ok=args.keep is None)
        drifts = list(Tour(scratch(root)).run(commands))
        written = sorted(
            str(path.relative_to(root))
            for path in root.iterdir()
            if path.name not in ("tour", "scripts", "tests", "cache")
            and not path.name.startswith("server-")
        )
    if written:
        print(f"the tour wrote outside its directory: {written}")
    if args.update and drifts:
        page, drifts = update(page, drifts)
        args.readme.write_text(page)
    for drift in drifts:
        print(drift.report(), end="\n\n")
    print(f"{len(commands)} commands, {len(drifts)} drifted from the page")
    return 1 if drifts or written else 0


if __name__ == "__main__":
    sys.exit(main())
