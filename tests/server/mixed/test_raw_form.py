"""The v2 servicer's fast path for a mixed model's usual raw-contents request
(server/grpc/raw_form.py, ColumnDecoder.layout / from_layout): a request whose serialized
`inputs` are those of the last usual request is decoded from its bytes, without a tensor read
from the parsed message. It must answer exactly what the full path answers, and anything
it does not recognise must take the full path and get the full path's one-line refusal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from bnserve.server.app import Server
from bnserve.server.grpc.decoding import RequestDecodingInterceptor
from bnserve.server.grpc.gen.inference import grpc_service_pb2 as pb
from bnserve.server.grpc.gen.inference import grpc_service_pb2_grpc
from bnserve.server.grpc.raw_form import V2_GRPC, RawForm
from bnserve.server.grpc.servicers.v2 import FORMS, _inputs
from bnserve.server.models.model import Model, SessionThreads
from bnserve.server.observability.metrics import ServerMetrics
from bnserve.server.plane.columns import ColumnDecoder, decode_tensors
from bnserve.server.plane.errors import InvalidInput
from bnserve.server.settings import ServerSettings
from tests.support.in_process import start_server
from tests.support.mixed_model import PENGUINISH, Numeric, expected, write_mixed_model

NUMERIC = [c.name for c in PENGUINISH.columns if isinstance(c, Numeric)]
ROW = {"bill_length_mm": 41.5, "island": "Dream", "body_mass_g": 3900.0, "sex": "female"}


def _element(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return len(data).to_bytes(4, "little") + data


def _raw_request(
    row: dict[str, Any] = ROW, order: list[str] | None = None, shape: list[int] | None = None
) -> pb.ModelInferRequest:
    """One example as raw contents, one [1, 1] tensor per column (tritonclient's way)."""
    request = pb.ModelInferRequest(model_name="penguins", id="call-1")
    for name in order or list(row):
        value = row[name]
        if name in NUMERIC:
            request.inputs.add(name=name, datatype="FP32", shape=shape or [1, 1])
            request.raw_input_contents.append(np.array([value], "<f4").tobytes())
        else:
            request.inputs.add(name=name, datatype="BYTES", shape=shape or [1, 1])
            request.raw_input_contents.append(_element(value))
    return request


def _answer(response: pb.ModelInferResponse) -> tuple[list[float], list[int]]:
    return (
        np.frombuffer(response.raw_output_contents[0], "<f4").tolist(),
        np.frombuffer(response.raw_output_contents[1], "<i8").tolist(),
    )


# --- RawForm alone, on bytes ---------------------------------------------------------------


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mixed_model(tmp_path_factory.mktemp("raw-form") / "penguins.onnx")


@pytest.fixture(scope="module")
def loaded(model_path: Path) -> Model:
    model = Model.load(model_path, "penguins", "1", SessionThreads(1, 1))
    assert model.decoder is not None
    return model


@pytest.fixture(scope="module")
def form(loaded: Model) -> RawForm:
    request = _raw_request()
    assert loaded.decoder is not None
    layout = loaded.decoder.layout(_inputs(request, True))
    assert layout is not None
    return RawForm.of(request.inputs, layout)


def test_the_same_inputs_give_the_raw_contents(form: RawForm) -> None:
    request = _raw_request({**ROW, "bill_length_mm": 50.25, "sex": "male"})
    request.id = "another id"
    request.outputs.add(name="label")
    assert form.contents(request.SerializeToString()) == list(request.raw_input_contents)


SHAPES_DIFFER = {
    "another shape": lambda r: r.inputs[0].shape.__setitem__(1, 2),
    "another datatype": lambda r: setattr(r.inputs[0], "datatype", "FP64"),
    "another name": lambda r: setattr(r.inputs[1], "name", "islands"),
    "typed contents too": lambda r: r.inputs[0].contents.fp32_contents.append(1.0),
    "a parameter": lambda r: (
        r.inputs[2].parameters["binary_data_size"].MergeFrom(pb.InferParameter(int64_param=4))
    ),
    "an input more": lambda r: r.inputs.add(name="extra", datatype="FP32", shape=[1, 1]),
    "an input fewer": lambda r: r.inputs.pop(),
    "a raw content fewer": lambda r: r.raw_input_contents.pop(),
    "a raw content more": lambda r: r.raw_input_contents.append(b"\0\0\0\0"),
}


@pytest.mark.parametrize("case", SHAPES_DIFFER, ids=list(SHAPES_DIFFER))
def test_anything_else_is_not_taken(form: RawForm, case: str) -> None:
    request = _raw_request()
    SHAPES_DIFFER[case](request)
    assert form.contents(request.SerializeToString()) is None


def test_bytes_it_does_not_expect_are_not_taken(form: RawForm) -> None:
    data = _raw_request().SerializeToString()
    assert form.contents(data) is not None
    assert form.contents(data + b"\x40\x01") is None  # an unknown field (8, varint) after
    assert form.contents(b"\xf8\x06\x01" + data) is None  # an unknown field (111) before
    assert form.contents(data[:-1]) is None  # the last raw content cut short
    start = data.find(form.inputs_block)
    inputs, rest = (
        data[start : start + len(form.inputs_block)],
        data[start + len(form.inputs_block) :],
    )
    assert form.contents(data[:start] + rest + inputs) is None  # inputs after the contents
    # the inputs' bytes inside the id: found first, not at a field's start
    tricked = pb.ModelInferRequest.FromString(data)
    tricked.id = form.inputs_block.decode("latin-1")
    parsed = tricked.SerializeToString()
    assert form.contents(parsed) in (None, list(tricked.raw_input_contents))


def test_any_bytes_protobuf_parses_give_its_contents_or_none(form: RawForm) -> None:
    """Mutated requests: whenever the form answers, the message protobuf parses from the same
    bytes has the form's inputs and exactly those raw contents."""
    rng = np.random.default_rng(7)
    data = bytearray(_raw_request().SerializeToString())
    template = list(pb.ModelInferRequest.FromString(bytes(data)).inputs)
    answered = 0
    for _ in range(3000):
        mutated = bytearray(data)
        for _ in range(int(rng.integers(1, 3))):
            mutated[int(rng.integers(len(mutated)))] = int(rng.integers(256))
        try:
            parsed = pb.ModelInferRequest.FromString(bytes(mutated))
        except Exception:  # the decoding interceptor refuses these before any servicer
            continue
        contents = form.contents(bytes(mutated))
        if contents is not None:
            answered += 1
            assert list(parsed.inputs) == template
            assert contents == list(parsed.raw_input_contents)
    assert answered > 100  # mutations inside the raw contents keep the form


# --- served: the fast path answers as the full path, and refuses in the same line -----------


@pytest.fixture(scope="module")
def server(model_path: Path, metrics: ServerMetrics) -> Iterator[Server]:
    started = start_server(
        ServerSettings(workers=4, max_inflight=3),
        {"penguins": model_path},
        metrics=metrics,
        interceptors=[RequestDecodingInterceptor()],  # as the CLI's server: bytes to parse
    )
    yield started
    started.stop(0)


@pytest.fixture(scope="module")
def inference(channel: grpc.Channel) -> grpc_service_pb2_grpc.GRPCInferenceServiceStub:
    return grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _served_decoder(server: Server) -> ColumnDecoder:
    decoder = server.plane.find("penguins").model.decoder
    assert decoder is not None
    return decoder


def _want(row: dict[str, Any]) -> tuple[list[float], list[int]]:
    want = expected(PENGUINISH, {name: [value] for name, value in row.items()})
    return want["probabilities"].ravel().tolist(), want["label"].tolist()


def test_repeated_requests_take_the_fast_path_and_answer_alike(server: Server, inference) -> None:
    first = inference.ModelInfer(_raw_request())
    form = _forms(server)[0]  # the first usual request left its form
    rows = [ROW, {**ROW, "island": "Biscoe", "bill_length_mm": float("nan")}, {**ROW, "sex": ""}]
    rows.append({**ROW, "island": "Atlantis"})  # an unseen level is scored
    for row in rows:
        request = _raw_request(row)
        assert form.contents(request.SerializeToString()) is not None  # the fast path's
        probabilities, labels = _answer(inference.ModelInfer(request))
        want_probabilities, want_labels = _want(row)
        np.testing.assert_allclose(probabilities, want_probabilities, atol=1e-5)
        assert labels == want_labels
    assert _answer(inference.ModelInfer(_raw_request())) == _answer(first)


def _forms(server: Server) -> tuple[RawForm, ...]:
    forms = _served_decoder(server).remembered[V2_GRPC]
    assert isinstance(forms, tuple) and all(isinstance(form, RawForm) for form in forms)
    return forms


def _taken(server: Server, request: pb.ModelInferRequest) -> bool:
    """Whether one of the remembered forms reads the request's raw contents (and right)."""
    data = request.SerializeToString()
    found = [form.contents(data) for form in _forms(server)]
    return list(request.raw_input_contents) in found


def test_another_order_and_shape_answer_the_same(server: Server, inference) -> None:
    want_probabilities, want_labels = _answer(inference.ModelInfer(_raw_request()))
    others = (_raw_request(order=list(reversed(ROW))), _raw_request(shape=[1]))
    for request in others:
        for _ in range(2):  # the second time from the form the first left
            probabilities, labels = _answer(inference.ModelInfer(request))
            np.testing.assert_allclose(probabilities, want_probabilities, rtol=1e-6)
            assert labels == want_labels
        assert _taken(server, request)
    # clients of different forms do not displace each other's (up to FORMS of them)
    assert all(_taken(server, request) for request in (_raw_request(), *others))


def test_the_forms_remembered_are_the_newest_few(server: Server, inference) -> None:
    orders = [[*ROW][index:] + [*ROW][:index] for index in range(len(ROW))]  # 4 rotations
    requests = [_raw_request(order=order) for order in orders]
    requests.append(_raw_request(order=orders[1], shape=[1]))
    for request in requests:
        inference.ModelInfer(request)
    assert len(_forms(server)) == FORMS
    assert [_taken(server, request) for request in requests] == [False] + [True] * FORMS


def _full_path_refusal(model: Model, request: pb.ModelInferRequest) -> str:
    """What the full path says about a request: the servicer's own check, then the decoder's
    per-column one."""
    assert model.schema is not None
    try:
        decode_tensors(model.schema, "penguins", _inputs(request, True))
    except InvalidInput as error:
        return str(error)
    raise AssertionError("the full path took the request")


BAD = {
    "infinity": lambda r: r.raw_input_contents.__setitem__(0, np.array([np.inf], "<f4").tobytes()),
    "short raw number": lambda r: r.raw_input_contents.__setitem__(0, b"\0\0"),
    "BYTES length past the end": lambda r: r.raw_input_contents.__setitem__(
        1, (9).to_bytes(4, "little") + b"Dream"
    ),
    "not UTF-8": lambda r: r.raw_input_contents.__setitem__(1, _element(b"\xff\xfe")),
    "two BYTES elements for one row": lambda r: r.raw_input_contents.__setitem__(
        1, _element("Dream") + _element("Biscoe")
    ),
    "a raw content fewer": lambda r: r.raw_input_contents.pop(),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_raw_contents_after_a_good_request_get_the_full_paths_line(
    server: Server, inference, loaded: Model, case: str
) -> None:
    inference.ModelInfer(_raw_request())  # the form is remembered
    request = _raw_request()
    BAD[case](request)
    if case == "a raw content fewer":
        wanted = "send the input either as raw_input_contents"
    else:
        wanted = _full_path_refusal(loaded, request)
    with pytest.raises(grpc.RpcError) as error:
        inference.ModelInfer(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert wanted in error.value.details()
    assert "\n" not in error.value.details()
