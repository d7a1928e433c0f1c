"""`bnserve predict`: score one example (--features) or a CSV (--csv, through PredictStream)."""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import grpc

from bnserve import atomic
from bnserve.header_hints import delimiter_hint, parse_delimiter
from bnserve.server.clients.connect import ConnectError, open_channel, read_token
from bnserve.server.clients.records import (
    RecordError,
    missing_tokens,
    parse_record,
    read_records,
)
from bnserve.server.clients.targets import TargetError, check_target, connection_failure
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc


class InputError(ValueError):
    """Bad client input; the message names the file, row and column."""


@dataclass(frozen=True)
class ClientSettings:
    """What `bnserve predict` was asked to do."""

    target: str  # HOST:PORT of the server
    model: str  # model name; empty: the server's only model
    model_version: str  # empty: newest
    features: str  # comma-separated values or name=value pairs; empty when csv is set
    csv_path: Path | None  # CSV of examples to stream
    out: Path | None  # where the CSV predictions go; None: stdout
    timeout_s: float  # per call (a whole CSV stream gets it per 1000 rows, at least once)
    progress: bool  # tqdm bar on stderr for --csv
    tls_ca: str = ""  # PEM CA that signed the server's certificate; empty: plaintext
    tls_cert: str = ""  # PEM client certificate (servers that require one)
    tls_key: str = ""  # its PEM private key
    token: str = ""  # bearer token sent as `authorization` metadata; empty: none
    delimiter: str = ","  # the CSV's field separator


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bnserve predict", description="Score examples against a running bnserve server."
    )
    parser.add_argument("--target", required=True, help="server address HOST:PORT")
    parser.add_argument("--model", default="", help="model name (default: the server's only one)")
    parser.add_argument("--model-version", default="", help="model version (default: newest)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--features", help="one example: 5.1,3.5,... in feature order, or name=value,name=value"
    )
    source.add_argument(
        "--csv", type=Path, help="CSV of examples (header with feature names, or none)"
    )
    parser.add_argument(
        "--delimiter",
        default=",",
        help="field separator of --csv: one character, \\t for a tab (default: ,)",
    )
    parser.add_argument("--out", type=Path, help="write --csv predictions here (default: stdout)")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds per call (default: 10)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar for --csv")
    parser.add_argument("--tls-ca", default="", help="PEM CA of the server's certificate (TLS)")
    parser.add_argument("--tls-cert", default="", help="PEM client certificate (mutual TLS)")
    parser.add_argument("--tls-key", default="", help="PEM private key of --tls-cert")
    parser.add_argument(
        "--token-file",
        default="",
        help="file holding the bearer token (default: env BNSERVE_AUTH_TOKEN, if set)",
    )
    return parser


def parse_features(text: str, missing_cells: frozenset[str] = frozenset()) -> pb.PredictRequest:
    """`1,2,3` → features by position; `a=1,b=2` → named_features. A value in `missing_cells`
    (a model that fills gaps: empty, NA, …) is sent as NaN."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or (not missing_cells and any(not item for item in items)):
        raise InputError(f"--features {text!r}: expected comma-separated numbers, none empty")
    named = "=" in text
    request = pb.PredictRequest()
    for position, item in enumerate(items, start=1):
        name, _, value = item.rpartition("=") if named else ("", "", item)
        if named and not name:
            raise InputError(f"--features item {position} {item!r}: expected name=value")
        where = f"--features item {position}{f' ({name})' if name else ''}"
        number = math.nan if value.strip() in missing_cells else _number(value, where)
        if named:
            request.named_features[name] = number
        else:
            request.features.append(number)
    return request


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise InputError(f"{where}: {text!r} is not a finite number")
    return value


def read_examples(
    path: Path,
    feature_names: Sequence[str],
    delimiter: str = ",",
    missing_cells: frozenset[str] = frozenset(),
) -> tuple[list[int], list[list[float]]]:
    """(line numbers, rows in model feature order) from a CSV with or without a header; a cell
    in `missing_cells` (a model that fills gaps: its missing tokens) is sent as NaN.

    With a header, the model's feature columns are picked by name (others, like a target column,
    are ignored); without one, every row must have exactly the model's F values in order. A UTF-8
    byte-order mark is skipped, as every reader of bnserve skips it.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            lines = list(csv.reader(handle, delimiter=delimiter))
    except OSError as error:
        raise InputError(f"{path}: cannot read it ({error.strerror})") from None
    except (csv.Error, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not a readable CSV ({error})") from None
    if not lines:
        raise InputError(f"{path}: empty file, no examples")
    first = [cell.strip() for cell in lines[0]]
    has_header = not all(_is_number(cell) for cell in first)
    if hint := delimiter_hint(first, delimiter):
        raise InputError(f"{path}: line 1: {hint}")
    if has_header:
        missing = [name for name in feature_names if name not in first]
        if missing:
            raise InputError(
                f"{path}: line 1: header lacks the model's feature column(s) {missing[:6]}"
                f"{' …' if len(missing) > 6 else ''} (it takes {len(feature_names)} features)"
            )
        columns = [first.index(name) for name in feature_names]
        header_names = first
    else:
        if len(first) != len(feature_names):
            raise InputError(
                f"{path}: line 1: {len(first)} columns but the model takes {len(feature_names)}"
                " features; a CSV without a header must hold exactly the features, in order"
                " (add a header line naming them to pick columns by name)"
            )
        columns = list(range(len(feature_names)))
        header_names = list(feature_names)
    line_numbers, rows = [], []
    for line_number, cells in enumerate(
        lines[1:] if has_header else lines, start=2 if has_header else 1
    ):
        if not cells or all(not cell.strip() for cell in cells):
            continue
        expected = len(first)
        if len(cells) != expected:
            raise InputError(
                f"{path}: line {line_number}: {len(cells)} columns, expected {expected}"
            )
        rows.append(
            [
                math.nan
                if cells[c].strip() in missing_cells
                else _number(
                    cells[c].strip(),
                    f"{path}: line {line_number}, column {c + 1} ({header_names[c]!r})",
                )
                for c in columns
            ]
        )
        line_numbers.append(line_number)
    if not rows:
        raise InputError(f"{path}: no example rows")
    return line_numbers, rows


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def format_prediction(response: pb.PredictResponse, info: pb.ModelInfoResponse) -> str:
    """One human-readable line for a single prediction."""
    if info.task == "classification":
        probabilities = " ".join(
            f"{name}={p:.4f}"
            for name, p in zip(info.class_names, response.probabilities, strict=True)
        )
        return f"{response.class_name} (label {response.label})  {probabilities}"
    return " ".join(
        f"{name}={v:.6g}" for name, v in zip(info.target_names, response.values, strict=True)
    )


def prediction_header(info: pb.ModelInfoResponse) -> list[str]:
    if info.task == "classification":
        return ["line", "label", "class_name", *(f"p_{name}" for name in info.class_names)]
    return ["line", *info.target_names]


def prediction_row(line: int, response: pb.PredictResponse) -> list[str]:
    if response.class_name or response.probabilities:
        probabilities = [f"{p:.7g}" for p in response.probabilities]
        return [str(line), str(response.label), response.class_name, *probabilities]
    return [str(line), *(f"{v:.7g}" for v in response.values)]


def stream_csv(
    stub: predictor_pb2_grpc.PredictorStub, settings: ClientSettings, info: pb.ModelInfoResponse
) -> int:
    """Stream every CSV row through PredictStream and write the predictions (atomically)."""
    from tqdm import tqdm

    assert settings.csv_path is not None
    if info.columns:  # a model with per-column inputs: raw records, text and gaps
        records = read_records(settings.csv_path, info, settings.delimiter)
        if records.ignored:
            print(
                f"bnserve predict: ignoring column(s) {', '.join(records.ignored)} of "
                f"{settings.csv_path}: not model inputs",
                file=sys.stderr,
            )
        line_numbers, rows = records.lines, records.values
    else:
        # A format-2 model of numbers only fills gaps: its missing cells go as NaN.
        gaps = missing_tokens(info) if "bnserve.schema" in info.metadata else frozenset()
        line_numbers, rows = read_examples(  # type: ignore[assignment]
            settings.csv_path, info.feature_names, settings.delimiter, gaps
        )

    def requests() -> Iterator[pb.PredictRequest]:
        for line, row in zip(line_numbers, rows, strict=True):
            request = pb.PredictRequest(
                model_name=info.model_name, model_version=info.model_version, id=str(line)
            )
            if isinstance(row, dict):
                for name, value in row.items():
                    request.values[name].CopyFrom(value)
            else:
                request.features.extend(row)
            yield request

    timeout = settings.timeout_s * max(1.0, len(rows) / 1000)
    table = [prediction_header(info)]
    with tqdm(total=len(rows), unit="ex", disable=not settings.progress, file=sys.stderr) as bar:
        try:
            for response in stub.PredictStream(requests(), timeout=timeout):
                table.append(prediction_row(int(response.id), response))
                bar.update(1)
        except grpc.RpcError as error:
            refused = _refused_line(error)
            if refused is None:
                raise
            line, reason = refused
            raise InputError(f"{settings.csv_path} line {line}: {reason}") from None
    write_table(table, settings.out)
    if settings.out is not None:
        print(f"wrote {len(rows)} predictions to {settings.out}", file=sys.stderr)
    return 0


# The server names a refused stream message "stream message K (id 'ID'): why"; our ids are the
# CSV's line numbers (server/grpc/servicers/native.py's PredictStream).
_REFUSED_MESSAGE = re.compile(r"stream message \d+ \(id '(\d+)'\): (.*)", re.DOTALL)


def _refused_line(error: grpc.RpcError) -> tuple[str, str] | None:
    """(CSV line, the server's reason) of a stream message the server refused as invalid (an
    unseen level under --unseen-levels error, a value out of range), else None."""
    if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
        return None
    found = _REFUSED_MESSAGE.fullmatch(error.details() or "")
    return (found[1], found[2]) if found else None


def write_table(table: list[list[str]], out: Path | None) -> None:
    """CSV to stdout, or to `out` atomically (bnserve/atomic.py: a reader never sees half)."""
    if out is None:
        csv.writer(sys.stdout, lineterminator="\n").writerows(table)
        return
    text = io.StringIO(newline="")
    csv.writer(text, lineterminator="\n").writerows(table)
    atomic.write_bytes(out, text.getvalue().encode("utf-8"))


def run(settings: ClientSettings) -> int:
    channel = open_channel(
        settings.target,
        ca_file=settings.tls_ca,
        cert_file=settings.tls_cert,
        key_file=settings.tls_key,
        token=settings.token,
    )
    with channel:
        stub = predictor_pb2_grpc.PredictorStub(channel)
        info = stub.ModelInfo(
            pb.ModelInfoRequest(model_name=settings.model, model_version=settings.model_version),
            timeout=settings.timeout_s,
        )
        if settings.csv_path is not None:
            return stream_csv(stub, settings, info)
        if info.columns:
            request = pb.PredictRequest()
            for name, value in parse_record(settings.features, info).items():
                request.values[name].CopyFrom(value)
        else:
            gaps = missing_tokens(info) if "bnserve.schema" in info.metadata else frozenset()
            request = parse_features(settings.features, gaps)
        request.model_name, request.model_version = info.model_name, info.model_version
        response = stub.Predict(request, timeout=settings.timeout_s)
        print(format_prediction(response, info))
        return 0


def _delimiter(text: str) -> str:
    try:
        return parse_delimiter(text)
    except ValueError as error:
        raise InputError(str(error)) from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.out is not None and args.csv is None:
        print("bnserve predict: error: --out goes with --csv", file=sys.stderr)
        return 2
    settings = ClientSettings(
        target=args.target,
        model=args.model,
        model_version=args.model_version,
        features=args.features or "",
        csv_path=args.csv,
        out=args.out,
        timeout_s=args.timeout,
        progress=not args.no_progress,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )
    try:
        settings = replace(settings, delimiter=_delimiter(args.delimiter))
        settings = replace(
            settings, token=read_token(args.token_file, os.environ.get("BNSERVE_AUTH_TOKEN", ""))
        )
        check_target(settings.target)
        return run(settings)
    except (InputError, RecordError, ConnectError, TargetError) as error:
        print(f"bnserve predict: error: {error}", file=sys.stderr)
        return 2
    except grpc.RpcError as error:
        if (reason := connection_failure(settings.target, error)) is not None:
            print(f"bnserve predict: error: {reason}", file=sys.stderr)
            return 2
        print(
            f"bnserve predict: error: {settings.target} answered {error.code().name}: "
            f"{error.details()}",
            file=sys.stderr,
        )
        return 1
