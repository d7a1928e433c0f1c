"""The server's one settings object: defaults here, then BNSERVE_<FIELD> env vars, then flags."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from bnserve.flags import field_types
from bnserve.server.process.cores import usable_cores
from bnserve.server.process.placement import setting_problem

ENV_PREFIX = "BNSERVE_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


# A field's own check: its value → what the value must be ("must be ≥ 1"), None when fine.
Check = Callable[[Any], str | None]


def _setting(
    default: Any, help_text: str, check: Check | None = None, *, metavar: str | None = None
) -> Any:
    """A settings field: its help and metavar (bnserve/flags.py reads them) and its check."""
    return field(default=default, metadata={"help": help_text, "check": check, "metavar": metavar})


def _at_least(low: float, note: str = "") -> Check:
    return lambda value: None if value >= low else f"must be ≥ {low}{note}"


def _above(low: float) -> Check:
    return lambda value: None if value > low else f"must be > {low}"


def _port(note: str = "") -> Check:
    return lambda value: None if 0 <= value <= 65535 else f"must be in 0..65535{note}"


def _share(low_open: bool = False, high_open: bool = False) -> Check:
    """A value in [0, 1], either end open."""
    interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"

    def check(value: float) -> str | None:
        low_ok = value > 0 if low_open else value >= 0
        high_ok = value < 1 if high_open else value <= 1
        return None if low_ok and high_ok and not math.isnan(value) else f"must be in {interval}"

    return check


def _one_of(*choices: str) -> Check:
    allowed = " or ".join(repr(choice) for choice in choices)
    return lambda value: None if value in choices else f"must be {allowed}"


def _process_count(value: str) -> str | None:
    if value == "auto" or (value.isascii() and value.isdigit() and int(value) >= 1):
        return None
    return "must be a whole number ≥ 1 or 'auto'"


@dataclass(frozen=True)
class ServerSettings:
    """Everything `bnserve serve` can be told. Each field is also env var BNSERVE_<FIELD>."""

    model: tuple[str, ...] = _setting(
        (),
        "Model to serve (required unless --model-root), repeatable (env: comma-separated): a "
        "model.onnx file, a model directory NAME/VERSION/model.onnx, or a root of such "
        "directories.",
        metavar="PATH",
    )
    name: str = _setting("", "Model name clients use; empty: the file's stem or directory name.")
    model_version: str = _setting("1", "Version label of a model given as a single file.")
    model_root: str = _setting(
        "",
        "Directory every model path must resolve inside (symlinks followed); with no --model, "
        "every model under it is served.",
    )
    wait_for_model: bool = _setting(
        False,
        "Keep running, NOT ready, when no configured model loads at start-up (a model directory "
        "filled later); without it the server exits 2 naming each model's reason.",
    )
    max_versions: int = _setting(
        0,
        "Serve the newest N good versions of each model directory; 0: every version on disk.",
        _at_least(0, " (0: all)"),
    )
    reload_interval_s: float = _setting(
        2.0,
        "Seconds between model directory scans for new versions; 0: only on SIGHUP.",
        _at_least(0),
    )
    reload_settle_s: float = _setting(
        2.0,
        "A version file written in place is read only once unmodified this long (files moved "
        "in whole, e.g. with mv, keep their old mtime and load at once).",
        _at_least(0),
    )
    host: str = _setting(
        "127.0.0.1", "Address to listen on (127.0.0.1: loopback only; 0.0.0.0 in containers)."
    )
    port: int = _setting(50051, "TCP port; 0 picks a free one (tests).", _port())
    workers: int = _setting(
        16,
        "gRPC handler threads. The sync server with a thread pool beat grpc.aio in bench/serve.py.",
        _at_least(2),
    )
    stream_workers: int = _setting(
        8,
        "Threads for streaming calls (PredictStream, ModelStreamInfer, reflection), apart from "
        "`workers`, so streams that stall between messages cannot take the unary calls' threads.",
        _at_least(1),
    )
    request_timeout_s: float = _setting(
        10.0,
        "A call whose (first) request message has not fully arrived this long after its headers "
        "is answered DEADLINE_EXCEEDED (HTTP: a body, 408). Calls hold no thread while their "
        "message is on its way.",
        _above(0),
    )
    stream_idle_timeout_s: float = _setting(
        300.0,
        "A stream that has sent a message and then sends none for this long is cancelled "
        "DEADLINE_EXCEEDED, giving its stream_workers thread back; 0: streams may idle forever.",
        _at_least(0),
    )
    max_waiting_calls: int = _setting(
        256,
        "Calls waiting for their request message at once; past it the oldest is answered "
        "RESOURCE_EXHAUSTED (a slow-loris client cannot pile them up).",
        _at_least(1),
    )
    max_streams_per_connection: int = _setting(
        256,
        "HTTP/2 streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS). "
        "A gRPC client multiplexes all its calls on one connection: keep this well above a "
        "client's concurrency (at 100, 64 concurrent callers saw REFUSED_STREAM).",
        _at_least(1),
    )
    allow_unpinned_grpcio: bool = _setting(
        False,
        "Start on a grpcio other than the pinned one, without the protection against stalled "
        "calls (grpcio's own pool gives a thread per call as soon as its headers arrive); logged "
        "at start, and bnserve_grpc_stall_protection reads 0.",
    )
    grpc_max_connection_idle_s: float = _setting(
        300.0,
        "A gRPC connection with no call for this long is closed (GOAWAY; grpc.max_connection_"
        "idle_ms); 0: never.",
        _at_least(0),
    )
    grpc_max_connection_age_s: float = _setting(
        0.0,
        "A gRPC connection older than this is closed (GOAWAY, its calls get grace_s to finish; "
        "grpc.max_connection_age_ms), so clients rebalance across replicas; 0: no limit.",
        _at_least(0),
    )
    grpc_fd_reserve: int = _setting(
        256,
        "File descriptors HTTP may never take: the HTTP connection cap is lowered so that this "
        "many of the process's file limit stay free for gRPC connections and models.",
        _at_least(0),
    )
    http_max_connections: int = _setting(
        1000,
        "HTTP connections open at once; a new one past it evicts the oldest that is idle or "
        "still sending its request head (all busy: it is answered 503 and closed).",
        _at_least(1),
    )
    http_header_timeout_s: float = _setting(
        10.0,
        "An HTTP request head must be complete this long after its first byte, or the "
        "connection is closed (a slow-loris client holds nothing).",
        _above(0),
    )
    http_keepalive_timeout_s: float = _setting(
        75.0,
        "An HTTP connection idle this long after opening or after its last response is closed; "
        "keep it above the idle timeout of any load balancer in front (AWS ALB: 60 s).",
        _above(0),
    )
    max_inflight: int = _setting(
        12,
        "Inference calls admitted at once (being scored or waiting for a batch); more are refused "
        "at once with RESOURCE_EXHAUSTED. Below `workers`, so health and metadata always find "
        "a thread.",
    )
    max_concurrent_rpcs: int = _setting(
        1000,
        "Calls of any kind the server holds at once, running or queued for a thread; more are "
        "refused at once with RESOURCE_EXHAUSTED, so a flood cannot grow grpc's queue without "
        "bound. Above max_inflight, so health and metadata calls still get in; 0: no bound.",
    )
    intra_op_threads: int = _setting(
        1,
        "onnxruntime threads inside one operator; one example of a small MLP costs far less "
        "than the gRPC call around it (bench/serving_floor.py prints both), so extra threads "
        "only add wake-ups and take cores from the gRPC threads.",
        _at_least(0, " (0: onnxruntime picks)"),
    )
    inter_op_threads: int = _setting(
        1,
        "onnxruntime threads across independent operators (sequential execution uses none).",
        _at_least(0, " (0: onnxruntime picks)"),
    )
    batching: bool = _setting(
        False,
        "Gather concurrent single-example calls into one onnxruntime run (pays off for large "
        "models; for a small MLP the gRPC cost per call dominates — see bench/serve.py).",
    )
    max_batch_size: int = _setting(
        64, "Most examples scored in one batched onnxruntime run.", _at_least(1)
    )
    max_batch_delay_ms: float = _setting(
        0.0,
        "Once the model frees with calls queued behind it, how long (ms) their batch may wait "
        "for more calls to fill max_batch_size; 0: run what queued at once. A call that finds "
        "the model idle runs at once whatever this says.",
        _at_least(0),
    )
    processes: str = _setting(
        "1",
        "Serving processes sharing the gRPC and HTTP ports (SO_REUSEPORT), each with its own "
        "onnxruntime session, under a supervisor that restarts any that dies; 'auto': the cores "
        "this process may use (affinity within the cgroup cpuset, capped by a CPU quota).",
        _process_count,
    )
    cpu_affinity: str = _setting(
        "auto",
        "Cores each serving process runs on: 'auto' pins process i of several to the i-th core "
        "this process may use (affinity mask within the cgroup cpuset) and one process to the "
        "core it starts on, since a server whose threads roam over cores spends more CPU per "
        "call (docs/serving.md, Placement); it pins nothing under a CPU quota smaller than the "
        "mask or with --intra-op-threads other than 1. 'none': the kernel places threads. A "
        "CPU list (0-1,3): split among the processes; it must lie inside the mask.",
        setting_problem,
    )
    max_message_bytes: int = _setting(
        4 * 1024 * 1024,
        "Largest request or response message in bytes; larger ones get RESOURCE_EXHAUSTED.",
        _at_least(1024),
    )
    max_model_bytes: int = _setting(
        1 << 30,
        "Largest model file loaded, in bytes; a larger one is refused before it is read.",
        _at_least(1),
    )
    max_model_nodes: int = _setting(
        10_000,
        "Most nodes a model graph may have (a folded MLP has a few per layer); a file of 10⁶ "
        "nodes took 2.6 GB and 33 s in onnxruntime before this bound.",
        _at_least(1),
    )
    max_parity_tolerance_abs: float = _setting(
        1e-4,
        "Loosest absolute tolerance on probabilities a model file may state for its parity gate "
        "(bnserve export states 1e-5); a looser model is refused. Regression outputs may add "
        "max_parity_tolerance_rel of their largest reference value.",
        _at_least(0),
    )
    max_parity_tolerance_rel: float = _setting(
        1e-3,
        "Loosest relative tolerance a model file may state for its parity gate.",
        _share(high_open=True),
    )
    health: bool = _setting(True, "Serve grpc.health.v1.Health.")
    reflection: bool = _setting(True, "Serve gRPC server reflection (grpcurl, grpcui).")
    grace_s: float = _setting(
        5.0, "Seconds in-flight calls get to finish on shutdown.", _at_least(0)
    )
    drain_s: float = _setting(
        0.0,
        "Seconds to go on answering calls after SIGTERM while readiness reports NOT_SERVING, so "
        "load balancers stop routing here before calls are refused (a second signal ends it "
        "early). 0: refuse new calls at once (Kubernetes: a preStop sleep does the same).",
        _at_least(0),
    )
    log_level: str = _setting("INFO", "Python logging level name.")
    log_format: str = _setting(
        "text", "Log lines as 'text' or 'json' (one object a line).", _one_of("text", "json")
    )
    access_log_sample: float = _setting(
        0.0,
        "Share of calls written to the access log (logger server.access, one JSON line each: "
        "method, model, version, code, ms, id, peer); 0: off, 1: every call.",
        _share(),
    )
    metrics_port: int = _setting(
        9090,
        "Port of the Prometheus /metrics endpoint (HTTP, on host); 0: no metrics.",
        _port(" (0: off)"),
    )
    model_control: bool = _setting(
        False,
        "Open Triton's model load call (gRPC RepositoryModelLoad, POST /v2/repository/models/"
        "NAME/load): it rescans the model directories now and answers the model's state. Needs "
        "bearer tokens (auth_token_file or BNSERVE_AUTH_TOKEN); unload stays closed.",
    )
    http_port: int = _setting(
        8000,
        "Port of the Open Inference Protocol over HTTP/REST (/v2/..., JSON and Triton's binary "
        "tensors), on host; 8000 as Triton's; 0: no HTTP.",
        _port(" (0: off)"),
    )
    otlp_endpoint: str = _setting(
        "",
        "OpenTelemetry collector for traces over OTLP/gRPC (http://HOST:4317; https: TLS); each "
        "call a span continuing the caller's W3C traceparent, with validate/queue/run/encode "
        "parts. Empty: no tracing. Needs pip install 'bnserve[tracing]'.",
    )
    tls_cert: str = _setting("", "PEM server certificate (chain); with tls_key turns TLS on.")
    tls_key: str = _setting("", "PEM private key of tls_cert.")
    tls_client_ca: str = _setting(
        "", "PEM CA certificate; when set, clients must present a certificate it signed."
    )
    auth_token_file: str = _setting(
        "",
        "File of accepted bearer tokens, one a line; BNSERVE_AUTH_TOKEN adds one. With any, "
        "calls need 'authorization: Bearer <token>' (health checks stay open).",
    )
    drift: bool = _setting(
        True,
        "Keep drift statistics of the inputs each model version scores, against the training "
        "distribution in its metadata (bnserve_drift_* metrics, the ModelDrift call).",
    )
    drift_layers: bool = _setting(
        True,
        "Also watch each hidden layer's normalized pre-activation (sampled runs use a second "
        "onnxruntime session that returns them).",
    )
    drift_window: int = _setting(
        2000,
        "Recent drift window in examples: an example's weight decays as exp(-age/window), age "
        "counted in examples scored after it.",
        _at_least(1),
    )
    drift_sample: float = _setting(
        0.1,
        "Share of scoring runs whose rows enter the drift statistics (0 < s ≤ 1); a sampled run "
        "costs a second-session run and a copy, so 0.1 keeps the serving cost within a few "
        "percent (drift is slow; 1: every run, e.g. to audit a batch).",
        _share(low_open=True),
    )
    drift_shift_threshold: float = _setting(
        0.5,
        "Flag a feature whose mean moved more than this many training std devs.",
        _above(0),
    )
    drift_psi_threshold: float = _setting(
        0.25,
        "Flag a feature whose population stability index over training deciles is above.",
        _above(0),
    )
    drift_variance_threshold: float = _setting(
        0.0,
        "Flag a feature whose variance grew more than this factor; 0: only reported (features "
        "that are almost always 0 in training swing with a handful of values; PSI sees spread).",
        _at_least(0),
    )
    drift_layer_threshold: float = _setting(
        0.05,
        "Flag a hidden layer whose mean KL(z_norm ‖ N(0, 1)) per unit is above this.",
        _above(0),
    )
    drift_min_examples: int = _setting(
        100,
        "Nothing is flagged before a drift window holds this many examples.",
        _at_least(0),
    )
    drift_top_k: int = _setting(
        16,
        "Features per model version in the per-feature drift metrics: the worst k.",
        _at_least(0),
    )
    drift_log_interval_s: float = _setting(
        60.0,
        "At most one drift warning per model version in this many seconds.",
        _at_least(0),
    )
    capture_dir: str = _setting(
        "",
        "Capture store: sampled calls (inputs by column, outputs, request id, version, time, "
        "latency) written off the request path as gzip CSV, per model version, and the true "
        "answers posted as feedback (docs/contracts.md); empty: no capture, no feedback.",
        metavar="DIR",
    )
    capture_sample: float = _setting(
        1.0,
        "Share of calls captured with --capture-dir (0 < p ≤ 1); a sampled call's every "
        "example is written. Feedback joins only captured calls.",
        _share(low_open=True),
    )
    capture_max_bytes: int = _setting(
        1 << 30,
        "The capture store's size bound (every model, every process's files): the oldest "
        "files are deleted past it.",
        _at_least(1 << 20),
    )
    capture_rotate_s: float = _setting(
        60.0,
        "A capture file is closed and renamed into the store at this age at most (or at "
        "1/16 of --capture-max-bytes, 16 MiB at most); feedback joins a call once its file "
        "is in the store.",
        _above(0),
    )
    feedback_window_s: float = _setting(
        7 * 86400.0,
        "A true answer arriving more than this after its call is counted late and not used.",
        _above(0),
    )
    quality_recent_s: float = _setting(
        3600.0,
        "The recent window of realized quality: labelled calls scored this long ago at most.",
        _above(0),
    )
    unseen_levels: str = _setting(
        "count",
        "A categorical level the model never saw in training: 'count' scores it as the "
        "column's <other> level and counts it (bnserve_unseen_levels_total); 'error' refuses "
        "the call (INVALID_ARGUMENT / HTTP 400 naming the column, the value and the row). A "
        "missing cell is never unseen.",
        _one_of("count", "error"),
        metavar="count|error",
    )
    # Not settable: env var names this object was read from (for the start-up line).
    from_env: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        """Each field's own check, then the checks that relate fields; ValueError naming every
        bad value."""
        problems = []
        for setting in settable_fields():
            check = setting.metadata["check"]
            value = getattr(self, setting.name)
            problem = check(value) if check is not None else None
            if problem is not None:
                problems.append(f"{setting.name}={value!r} {problem}")
        problems += self._relation_problems()
        if problems:
            raise ValueError("invalid server settings: " + "; ".join(problems))

    def _relation_problems(self) -> list[str]:
        """The bounds that keep a thread and a slot free for health and metadata calls."""
        problems = []
        if not 1 <= self.max_inflight < self.workers:
            problems.append(
                f"max_inflight={self.max_inflight} must be in 1..workers-1 ({self.workers - 1}) "
                "so health and metadata calls always find a free thread"
            )
        if self.max_concurrent_rpcs != 0 and self.max_concurrent_rpcs <= self.max_inflight:
            problems.append(
                f"max_concurrent_rpcs={self.max_concurrent_rpcs} must be above max_inflight "
                f"({self.max_inflight}), so health and metadata calls still get in (0: no bound)"
            )
        if self.max_concurrent_rpcs != 0 and self.max_concurrent_rpcs <= self.max_waiting_calls:
            problems.append(
                f"max_concurrent_rpcs={self.max_concurrent_rpcs} must be above "
                f"max_waiting_calls ({self.max_waiting_calls}), so calls waiting for their "
                "message can never fill it (0: no bound)"
            )
        return problems

    @classmethod
    def load(
        cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> ServerSettings:
        """Defaults, then BNSERVE_<FIELD> from environ, then non-None overrides (flags)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        used_env = []
        for setting in settable_fields():
            env_name = ENV_PREFIX + setting.name.upper()
            if env_name in environ:
                values[setting.name] = _parse(environ[env_name], setting, env_name)
                used_env.append(env_name)
        for name, value in (overrides or {}).items():
            if value is not None:
                values[name] = value
        return cls(**values, from_env=tuple(used_env))

    def summary(self) -> str:
        """One line with every setting, for the start-up log."""
        parts = [f"{setting.name}={getattr(self, setting.name)!r}" for setting in settable_fields()]
        source = f" (from env: {', '.join(self.from_env)})" if self.from_env else ""
        return "bnserve settings: " + " ".join(parts) + source

    def process_count(self) -> int:
        """Serving processes to run: `processes`, with 'auto' resolved to the usable cores."""
        if self.processes == "auto":
            return usable_cores()
        return int(self.processes)

    def replace(self, **changes: Any) -> ServerSettings:
        return dataclasses.replace(self, **changes)


_FIELD_TYPES = field_types(ServerSettings)


def settable_fields() -> list[dataclasses.Field[Any]]:
    """The fields a flag or env var may set."""
    return [setting for setting in fields(ServerSettings) if setting.name != "from_env"]


def default(name: str) -> Any:
    """The default of settings field `name`: components that take a few of the settings (the
    model's limits and threads, drift, the parity ceiling) state their defaults by this, so each
    default is written once, here."""
    (setting,) = [setting for setting in fields(ServerSettings) if setting.name == name]
    return setting.default


def _parse(raw: str, setting: dataclasses.Field[Any], env_name: str) -> Any:
    kind = _FIELD_TYPES[setting.name].kind
    text = raw.strip()
    try:
        if kind is bool:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError("expected one of 1/0, true/false, yes/no, on/off")
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is tuple:
            return tuple(item.strip() for item in raw.split(",") if item.strip())
        return raw
    except ValueError as error:
        raise ValueError(f"environment variable {env_name}={raw!r}: {error}") from None
