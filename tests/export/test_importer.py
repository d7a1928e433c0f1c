"""`bnserve import` end to end on foreign graphs of every accepted shape: the folded model
answers like the original (under onnxruntime) on the reference rows and on fresh rows, holds no
BatchNormalization node, carries the contract, serves, and passes the parity gate."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest

from bnserve.export.importer import ImportSettings, import_model
from bnserve.export.verify import onnx_session
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
from bnserve.server.modelfile.metadata import parse_model_card
from bnserve.server.models.model import Model, SessionThreads
from tests.support.foreign_graphs import ForeignMlp, build_foreign
from tests.support.server_process import ServerProcess

SHAPES = {
    "gemm_transb": ForeignMlp(layer="gemm_transb"),
    "gemm": ForeignMlp(layer="gemm", gemm_alpha=0.5, gemm_beta=2.0),
    "matmul_add": ForeignMlp(layer="matmul_add"),
    "bn_some": ForeignMlp(hidden=(8, 6, 4), batchnorm=(True, False, True)),
    "bn_none": ForeignMlp(batchnorm=(False, False)),
    "no_normalization": ForeignMlp(normalization="none"),
    "mul_add": ForeignMlp(normalization="mul_add", layer="matmul_add"),
    "tanh": ForeignMlp(activation="Tanh"),
    "sigmoid": ForeignMlp(activation="Sigmoid"),
    "leaky_relu": ForeignMlp(activation="LeakyRelu", leaky_alpha=0.2),
    "log_softmax": ForeignMlp(head="LogSoftmax"),
    "binary_sigmoid": ForeignMlp(head="Sigmoid", outputs=1),
    "regression": ForeignMlp(head="none", outputs=2, layer="matmul_add"),
    "regression_scaled": ForeignMlp(head="none", outputs=2, output_scaling=True),
    "keras_style": ForeignMlp(layer="matmul_add", batchnorm_as="mul_add", normalization="none"),
    "one_layer": ForeignMlp(hidden=()),
    "fixed_batch_1": ForeignMlp(batch_dim=1),
    "opset_11": ForeignMlp(opset=11),
}


def original_outputs(source: Path, spec: ForeignMlp, x: np.ndarray) -> np.ndarray:
    """The source graph under onnxruntime, as probabilities (R, C) or y (R, T)."""
    session = onnx_session(source.read_bytes())
    if isinstance(spec.batch_dim, int):
        rows = [session.run(None, {"input": x[i : i + 1]})[0] for i in range(x.shape[0])]
        output = np.concatenate(rows).astype(np.float64)
    else:
        output = session.run(None, {"input": x})[0].astype(np.float64)
    if spec.head == "LogSoftmax":
        return np.exp(output)
    if spec.head == "Sigmoid":
        return np.concatenate([1 - output, output], axis=1)
    return output


def write_source(directory: Path, name: str, spec: ForeignMlp) -> Path:
    path = directory / f"{name}.onnx"
    onnx.save(build_foreign(spec), str(path))
    return path


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Every shape imported once: name → (source, folded)."""
    directory = tmp_path_factory.mktemp("imported")
    pairs = {}
    for name, spec in SHAPES.items():
        source = write_source(directory, f"{name}-source", spec)
        out = directory / f"{name}.onnx"
        import_model(ImportSettings(source=source, out=out))
        pairs[name] = (source, out)
    return pairs


@pytest.mark.parametrize("name", SHAPES)
def test_imported_model_answers_like_the_original(imported, name: str) -> None:
    source, out = imported[name]
    spec = SHAPES[name]
    model = onnx.load(str(out))
    card = parse_model_card({p.key: p.value for p in model.metadata_props}, str(out))
    assert "BatchNormalization" not in {node.op_type for node in model.graph.node}
    assert [i.name for i in model.graph.input] == ["x"]
    session = onnx_session(out.read_bytes())
    fresh = np.random.default_rng(7).normal(2, 5, (300, spec.features)).astype(np.float32)
    for x in (card.reference_inputs, fresh):
        served = dict(zip(["main", "label"], session.run(None, {"x": x}), strict=False))
        expected = original_outputs(source, spec, x)
        bound = card.tolerance.abs + card.tolerance.rel * np.abs(expected)
        assert np.all(np.abs(served["main"] - expected) <= bound), name
        if card.task == "classification":
            assert served["main"].shape == (x.shape[0], max(spec.outputs, 2))
            np.testing.assert_array_equal(served["label"], served["main"].argmax(axis=1))
    # the embedded reference outputs are the ORIGINAL graph's, not the fold's
    main = "probabilities" if card.task == "classification" else "y"
    np.testing.assert_array_equal(
        card.reference_outputs[main], original_outputs(source, spec, card.reference_inputs)
    )
    # the server's own load path: graph hash, signature, parity gate together and one at a time
    served_model = Model.load(out, name, "1", SessionThreads())
    served_model.check_parity()


def test_the_fold_is_not_a_tautology(imported, tmp_path) -> None:
    """A wrong ε in a source is caught by comparison with the original: the check can fail."""
    source, _ = imported["gemm_transb"]
    model = onnx.load(str(source))
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            for attribute in node.attribute:
                if attribute.name == "epsilon":
                    attribute.f = 0.5
    changed = tmp_path / "eps.onnx"
    onnx.save(model, str(changed))
    out = tmp_path / "folded.onnx"
    import_model(ImportSettings(source=changed, out=out))
    folded = onnx_session(out.read_bytes())
    x = np.random.default_rng(3).normal(3, 2, (50, 5)).astype(np.float32)
    np.testing.assert_allclose(
        folded.run(None, {"x": x})[0],
        original_outputs(changed, SHAPES["gemm_transb"], x),
        atol=1e-5,
    )
    # …and differs from the fold of the unchanged model, so ε really went into the weights
    assert not np.allclose(
        folded.run(None, {"x": x})[0], original_outputs(source, SHAPES["gemm_transb"], x), atol=1e-3
    )


def test_model_card_states_conventions_and_row_origin(imported) -> None:
    _, out = imported["gemm_transb"]
    metadata = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert metadata["bnserve.epsilon"] == "1e-05"
    assert metadata["bnserve.bn_momentum"] == "0.1"  # ONNX momentum 0.9 is a decay
    assert metadata["bnserve.running_var"] == "unbiased"  # producer "pytorch"
    assert metadata["bnserve.folded"] == "true"
    record = json.loads(metadata["bnserve.import"])
    assert record["source"] == "gemm_transb-source.onnx"
    assert record["activation"] == "relu"
    assert [entry["onnx_momentum"] for entry in record["batchnorm"]] == [0.9, 0.9]
    assert [entry["pytorch_momentum"] for entry in record["batchnorm"]] == [0.1, 0.1]
    assert record["reference_rows"].startswith("generated: 256 rows drawn from N(mean, std²)")
    assert "Sub/Div" in record["reference_rows"]
    assert json.loads(metadata["bnserve.feature_names"]) == ["x0", "x1", "x2", "x3", "x4"]
    assert json.loads(metadata["bnserve.class_names"]) == ["0", "1", "2"]
    _, plain = imported["no_normalization"]
    plain_record = json.loads(
        {p.key: p.value for p in onnx.load(str(plain)).metadata_props}["bnserve.import"]
    )
    assert (
        "N(0, 1) per feature (the model has no input normalization"
        in (plain_record["reference_rows"])
    )


def test_generated_rows_follow_the_models_normalization(imported) -> None:
    """Rows drawn from N(mean, std²) of the graph's Sub/Div constants: standardized they are
    ≈ N(0, 1), so the verification exercises the range the model was trained on."""
    source, out = imported["gemm_transb"]
    graph = onnx.load(str(source)).graph
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    card = parse_model_card({p.key: p.value for p in onnx.load(str(out)).metadata_props}, str(out))
    z = (card.reference_inputs - constants["norm.mean"]) / constants["norm.std"]
    assert np.abs(z).max() < 5 and z.std() > 0.3


def test_reference_data_csv_gives_rows_and_names(tmp_path) -> None:
    spec = SHAPES["regression"]
    source = write_source(tmp_path, "reg", spec)
    rng = np.random.default_rng(5)
    x = np.round(rng.normal(3, 2, (40, spec.features)), 6)  # as the file holds them
    header = ["age", "height", "weight", "income", "score", "price"]
    lines = [",".join(header)] + [
        ",".join(f"{v:.6f}" for v in row) + f",{rng.normal():.3f}" for row in x
    ]
    data = tmp_path / "ref.csv"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "reg-folded.onnx"
    report = import_model(
        ImportSettings(
            source=source, out=out, reference_data=data, target_names=("price", "margin")
        )
    )
    assert report.verification.example_count == 40
    metadata = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(metadata["bnserve.feature_names"]) == header[:5]
    assert json.loads(metadata["bnserve.target_names"]) == ["price", "margin"]
    assert json.loads(metadata["bnserve.import"])["reference_rows"] == "from ref.csv: 40 rows"
    card = parse_model_card(metadata, str(out))
    # reference inputs are rows of the file (as float32), spread over it
    file_rows = {tuple(row) for row in x.astype(np.float32).tolist()}
    assert all(tuple(row) in file_rows for row in card.reference_inputs.tolist())
    tolerance = json.loads(metadata["bnserve.reference_tolerance"])
    assert tolerance["rel"] == 1e-4 and 0 < tolerance["abs"] < 1e-2


def test_reference_data_npz(tmp_path) -> None:
    spec = SHAPES["gemm"]
    source = write_source(tmp_path, "g", spec)
    data = tmp_path / "ref.npz"
    rng = np.random.default_rng(6)
    np.savez(data, x=rng.normal(3, 2, (30, 5)), y=rng.integers(0, 3, 30))
    out = tmp_path / "g-folded.onnx"
    report = import_model(ImportSettings(source=source, out=out, reference_data=data))
    assert report.verification.example_count == 30
    assert report.rows_from == "from ref.npz: 30 rows"


def test_imported_models_serve_in_a_real_server(imported) -> None:
    """One `python -m bnserve.server` process loads every imported shape (parity gate included) and
    answers like the original graph, one example at a time and in a batch."""
    names = list(SHAPES)
    args = [arg for name in names for arg in ("--model", str(imported[name][1]))]
    server = ServerProcess(args)
    try:
        server.wait_ready()
        with grpc.insecure_channel(server.target) as channel:
            stub = predictor_pb2_grpc.PredictorStub(channel)
            for name in names:
                source, _ = imported[name]
                spec = SHAPES[name]
                x = np.random.default_rng(11).normal(3, 2, (5, spec.features)).astype(np.float32)
                expected = original_outputs(source, spec, x)
                batch = stub.PredictBatch(
                    pb.PredictBatchRequest(model_name=name, features=x.ravel())
                )
                single = [
                    stub.Predict(pb.PredictRequest(model_name=name, features=row)) for row in x
                ]
                if spec.head == "none":
                    got = np.reshape(batch.values, expected.shape)
                    alone = np.array([list(answer.values) for answer in single])
                else:
                    got = np.reshape(batch.probabilities, expected.shape)
                    alone = np.array([list(answer.probabilities) for answer in single])
                    assert list(batch.labels) == expected.argmax(axis=1).tolist()
                np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=name)
                np.testing.assert_allclose(alone, expected, rtol=1e-4, atol=1e-5, err_msg=name)
        # no training split behind it: the warning says so, not "re-export it from its run"
        warnings = [line for line in server.log().splitlines() if "no drift statistics" in line]
        assert len(warnings) == len(names), server.log()
        assert all("made by `bnserve import`" in line for line in warnings), warnings
        assert not any("re-export" in line for line in warnings), warnings
    finally:
        assert server.stop() == 0, server.log()


def test_import_refuses_an_existing_output_and_writes_nothing_on_failure(tmp_path) -> None:
    source = write_source(tmp_path, "s", SHAPES["gemm"])
    out = tmp_path / "out.onnx"
    out.write_bytes(b"keep")
    with pytest.raises(Exception, match="already exists; pass --force"):
        import_model(ImportSettings(source=source, out=out))
    assert out.read_bytes() == b"keep"
    import_model(replace(ImportSettings(source=source, out=out), force=True))
    assert onnx.load(str(out)).graph.name == "bnserve_mlp_folded"


def test_bnserve_unfolded_regression_export_imports_back_to_the_folded_one(
    synthetic_run, tmp_path
) -> None:
    """`bnserve export --unfolded` (Sub/Div, Gemm, BatchNormalization, …, Mul/Add of the target
    scale) imported gives the same answers as `bnserve export`'s own folded model."""
    from bnserve.export.cli import main as export_main

    run_dir = synthetic_run(task="regression", outputs=2)
    unfolded, folded, imported = (tmp_path / f"{n}.onnx" for n in ("u", "f", "i"))
    assert export_main([str(run_dir), "--out", str(unfolded), "--unfolded"]) == 0
    assert export_main([str(run_dir), "--out", str(folded)]) == 0
    report = import_model(ImportSettings(source=unfolded, out=imported))
    assert report.chain.scalings[-1] == ("Mul", "Add")
    assert report.chain.summary().startswith("Sub/Div → 6→16+BN → Relu → 16→12+BN")
    x = np.random.default_rng(4).normal(0, 5, (100, 6)).astype(np.float32)
    ours = onnx_session(folded.read_bytes()).run(None, {"x": x})[0]
    theirs = onnx_session(imported.read_bytes()).run(None, {"x": x})[0]
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4 * np.abs(ours).max())
