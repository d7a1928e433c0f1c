"""Shadow: a version marked in NAME/shadow scores the sampled calls beside the served one; its
figures equal numpy's, its failure or slowness never reaches a caller, and promotion (rewriting
the file) under load loses no call."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from bnserve.atomic import write_bytes
from bnserve.server.app import Server
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
from bnserve.server.settings import ServerSettings
from tests.support.model_builder import CLASS_NAMES, NUM_FEATURES, MlpWeights, numpy_forward
from tests.support.server_process import install_version, model_bytes
from tests.support.waiting import poll


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Server, Path, dict[str, MlpWeights]]]:
    """iris versions 1 and 2 (different weights), 2 marked shadow: 1 serves."""
    model_dir = tmp_path / "models" / "iris"
    weights = {}
    for version, seed in (("1", 1), ("2", 4)):
        data, weights[version] = model_bytes(seed=seed)
        install_version(model_dir, int(version), data)
    write_bytes(model_dir / "shadow", b"2\n")
    server = Server.create(
        ServerSettings(
            model=(str(model_dir),), host="127.0.0.1", port=0, http_port=0, workers=8,
            max_inflight=6, reload_interval_s=0.1, reload_settle_s=0,
            capture_dir=str(tmp_path / "capture"), capture_rotate_s=3600,
        )
    )  # fmt: skip
    server.start()
    yield server, model_dir, weights
    server.stop(0)


def _stub(server: Server) -> tuple[grpc.Channel, predictor_pb2_grpc.PredictorStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    return channel, predictor_pb2_grpc.PredictorStub(channel)


def _settle(server: Server) -> None:
    """Wait until the shadow has scored what is queued, then rename every file in."""
    assert server.capture is not None
    assert poll(server.capture.shadow.idle, timeout_s=10)
    server.capture.writer.flush()


def test_the_pair_figures_equal_numpy(served) -> None:
    server, _, weights = served
    rng = np.random.default_rng(8)
    x = rng.normal(0, 2, (40, NUM_FEATURES)).astype(np.float32)
    truth = rng.integers(0, 3, 40)
    channel, stub = _stub(server)
    with channel:
        for i in range(40):
            answer = stub.Predict(pb.PredictRequest(model_name="iris", features=x[i], id=f"q{i}"))
            assert answer.model_version == "1"
        stub.Feedback(
            pb.FeedbackRequest(
                model_name="iris",
                answers=[pb.TrueAnswer(id=f"q{i}", label=CLASS_NAMES[truth[i]]) for i in range(20)],
            )
        )
        _settle(server)
        quality = stub.ModelQuality(pb.ModelQualityRequest(model_name="iris"))
    served_p = numpy_forward(weights["1"], x, "classification")
    shadow_p = numpy_forward(weights["2"], x, "classification")
    (pair,) = quality.shadows
    assert (pair.primary_version, pair.shadow_version, pair.calls) == ("1", "2", 40)
    agreement = np.mean(served_p["label"] == shadow_p["label"])
    assert 0 < agreement < 1, "the two versions must disagree somewhere for the test to bite"
    assert pair.agreement == pytest.approx(agreement)
    delta = np.max(np.abs(served_p["probabilities"] - shadow_p["probabilities"]), axis=1)
    assert pair.delta_mean == pytest.approx(delta.mean(), abs=1e-6)
    assert pair.delta_max == pytest.approx(delta.max(), abs=1e-6)
    assert pair.shadow_ms_mean > 0 and pair.shadow_ms_max >= pair.shadow_ms_mean
    assert pair.primary_quality.labelled == pair.shadow_quality.labelled == 20
    for window, p in [(pair.primary_quality, served_p), (pair.shadow_quality, shadow_p)]:
        assert window.accuracy == pytest.approx(np.mean(p["label"][:20] == truth[:20]))
    # The served version's own quality counts only the calls it answered, once each.
    assert quality.versions[0].model_version == "1"
    assert quality.versions[0].life.labelled == 20


def test_a_failing_or_slow_shadow_never_reaches_a_caller(served) -> None:
    server, _, _ = served
    shadow = server.repository.shadow("iris")
    assert shadow is not None

    def broken(*args, **kwargs):
        raise RuntimeError("the shadow broke")

    shadow.run = broken  # fault injection: the shadow version's every run raises
    x = np.ones(NUM_FEATURES, np.float32)
    channel, stub = _stub(server)
    with channel:
        for i in range(20):
            answer = stub.Predict(pb.PredictRequest(model_name="iris", features=x, id=f"b{i}"))
            assert answer.model_version == "1" and len(answer.probabilities) == 3
        assert poll(lambda: server.capture.shadow.failed == 20, timeout_s=10)

        def slow(*args, **kwargs):
            time.sleep(0.5)
            raise RuntimeError("slow, then broken")

        shadow.run = slow
        started = time.perf_counter()
        for i in range(20):
            stub.Predict(pb.PredictRequest(model_name="iris", features=x, id=f"s{i}"))
        elapsed = time.perf_counter() - started
    assert elapsed < 2.0, f"20 calls took {elapsed:.2f} s beside a shadow taking 0.5 s each"


def test_promotion_under_load_loses_no_call(served) -> None:
    """Rewrite NAME/shadow with the served version's number: 2 serves, 1 becomes the shadow,
    and back; callers see only answers, from 1 and then from 2."""
    server, model_dir, _ = served
    stop = threading.Event()
    versions: list[str] = []
    errors: list[Exception] = []

    def caller() -> None:
        channel, stub = _stub(server)
        x = np.zeros(NUM_FEATURES, np.float32)
        with channel:
            while not stop.is_set():
                try:
                    versions.append(
                        stub.Predict(pb.PredictRequest(model_name="iris", features=x)).model_version
                    )
                except grpc.RpcError as error:
                    errors.append(error)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        assert poll(lambda: len(versions) > 50, timeout_s=10)
        write_bytes(model_dir / "shadow", b"1\n")  # promote 2
        assert poll(lambda: server.repository.serving("iris").model.version == "2", 10)
        shadow = server.repository.shadow("iris")
        assert shadow is not None and shadow.model.version == "1"
        count = len(versions)
        assert poll(lambda: len(versions) > count + 50, timeout_s=10)
        write_bytes(model_dir / "shadow", b"2\n")  # roll back
        assert poll(lambda: server.repository.serving("iris").model.version == "1", 10)
        count = len(versions)
        assert poll(lambda: len(versions) > count + 50, timeout_s=10)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert set(versions) == {"1", "2"}


def test_a_version_dropped_in_with_its_mark_never_serves(served) -> None:
    """NAME/shadow rewritten to 3 and version 3 installed between two scans: the scan that
    loads 3 reads the mark first, so 3 is the shadow from its first moment (before, the scan
    swapped 3 in as the newest and only then read the file)."""
    server, model_dir, _ = served
    repository = server.repository
    swap = repository.swap
    serving_after_swap: list[str] = []

    def recording_swap(*args, **kwargs):
        result = swap(*args, **kwargs)
        serving = repository.serving("iris")
        serving_after_swap.append(serving.model.version if serving else "")
        return result

    repository.swap = recording_swap  # type: ignore[method-assign]
    data, _ = model_bytes(seed=9)
    write_bytes(model_dir / ".shadow", b"3\n")
    install_version(model_dir, 3, data)
    (model_dir / ".shadow").rename(model_dir / "shadow")  # both at once, as far as a scan sees
    assert poll(lambda: (s := repository.shadow("iris")) is not None and s.model.version == "3", 10)
    # 2, no longer marked, is the newest other version: it serves; 3 never did.
    assert serving_after_swap == ["2"]
    assert repository.serving("iris").model.version == "2"


def _context_switches(thread: threading.Thread) -> int:
    """The thread's voluntary + involuntary context switches so far (Linux /proc)."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    return sum(int(line.split()[1]) for line in status.splitlines() if "ctxt_switches:" in line)


def test_an_idle_shadow_thread_sleeps_until_a_call_is_queued(served) -> None:
    """With nothing queued the scorer blocks on its queue: it does not wake every 20 ms (it
    did: 20 wake-ups a second on every server, with or without a shadow)."""
    server, _, _ = served
    assert server.capture is not None
    _settle(server)
    (thread,) = [t for t in threading.enumerate() if t.name == "shadow-scorer"]
    before = _context_switches(thread)
    time.sleep(0.5)  # 25 drain intervals
    assert _context_switches(thread) - before <= 1
    channel, stub = _stub(server)
    with channel:
        stub.Predict(pb.PredictRequest(model_name="iris", features=[0.1] * NUM_FEATURES))
    assert poll(lambda: server.capture.shadow.scored >= 1, timeout_s=10)  # it wakes for work
