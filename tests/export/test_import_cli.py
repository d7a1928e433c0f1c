"""`bnserve import`: what cannot be folded exactly is refused with one line naming the node and
why, exit 2, nothing written; the good path prints what it read, wrote and verified."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import bnserve.cli
from bnserve.export.import_cli import main
from tests.support.foreign_graphs import ForeignMlp, build_foreign, find_node


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def _set_attribute(node: onnx.NodeProto, name: str, value: object) -> None:
    for attribute in list(node.attribute):
        if attribute.name == name:
            node.attribute.remove(attribute)
    node.attribute.append(helper.make_attribute(name, value))


def _training_mode(model: onnx.ModelProto) -> None:
    _set_attribute(find_node(model, "l0.bn"), "training_mode", 1)


def _training_outputs(model: onnx.ModelProto) -> None:
    find_node(model, "l0.bn").output.extend(["l0.bn.running_mean", "l0.bn.running_var"])


def _statistics_as_input(model: onnx.ModelProto) -> None:
    find_node(model, "l1.bn").input[3] = "fed_mean"
    model.graph.input.append(helper.make_tensor_value_info("fed_mean", TensorProto.FLOAT, [6]))


def _statistics_computed(model: onnx.ModelProto) -> None:
    node = find_node(model, "l0.bn")
    model.graph.node.insert(
        0, helper.make_node("Mul", ["l0.var", "l0.var"], ["var_squared"], name="square")
    )
    node.input[4] = "var_squared"


def _skip_connection(model: onnx.ModelProto) -> None:
    # output of l1.act (6 units) also added to the logits' input: a residual
    gemm = find_node(model, "l2.gemm")
    gemm.output[0] = "l2.z"
    model.graph.node.append(helper.make_node("Add", ["l2.z", "l1.act"], ["l2.sum"], name="skip"))
    find_node(model, "head").input[0] = "l2.sum"


def _unsupported_op(model: onnx.ModelProto) -> None:
    find_node(model, "l0.act").op_type = "Elu"


def _rank_three(model: onnx.ModelProto) -> None:
    model.graph.input[0].CopyFrom(
        helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 5])
    )


def _double_input(model: onnx.ModelProto) -> None:
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.DOUBLE


def _trans_a(model: onnx.ModelProto) -> None:
    _set_attribute(find_node(model, "l1.gemm"), "transA", 1)


def _mixed_activations(model: onnx.ModelProto) -> None:
    find_node(model, "l1.act").op_type = "Tanh"


def _final_relu(model: onnx.ModelProto) -> None:
    find_node(model, "head").op_type = "Relu"


def _softmax_axis(model: onnx.ModelProto) -> None:
    _set_attribute(find_node(model, "head"), "axis", 0)


def _two_outputs(model: onnx.ModelProto) -> None:
    model.graph.output.append(helper.make_tensor_value_info("l0.act", TensorProto.FLOAT, None))


def _node_off_chain(model: onnx.ModelProto) -> None:
    model.graph.node.append(helper.make_node("Relu", ["l0.w"], ["unused"], name="stray"))


def _multiply_by_zero(model: onnx.ModelProto) -> None:
    model.graph.initializer.append(
        numpy_helper.from_array(np.array([1, 1, 0, 1, 1], np.float32), "zero_scale")
    )
    find_node(model, "norm.div").op_type = "Mul"
    find_node(model, "norm.div").input[1] = "zero_scale"


def _negative_variance(model: onnx.ModelProto) -> None:
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.name == "l1.var":
            value = numpy_helper.to_array(tensor).copy()
            value[4] = -1.0
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(value, "l1.var"))


def _nan_weight(model: onnx.ModelProto) -> None:
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.name == "l0.w":
            value = numpy_helper.to_array(tensor).copy()
            value[1, 2] = np.nan
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(value, "l0.w"))


def _no_activation_between(model: onnx.ModelProto) -> None:
    act = find_node(model, "l0.act")
    model.graph.node.remove(act)
    find_node(model, "l1.gemm").input[0] = "l0.bn"


REFUSED: dict[str, tuple[Callable[[onnx.ModelProto], None], tuple[str, ...]]] = {
    "training_mode": (_training_mode, ("BatchNormalization 'l0.bn' is in training mode", "eval")),
    "training_outputs": (_training_outputs, ("BatchNormalization 'l0.bn' is in training mode",)),
    "statistics_as_input": (
        _statistics_as_input,
        (
            "BatchNormalization 'l1.bn': its input_mean (running mean) 'fed_mean' is not a "
            "constant (it is a graph input, set at run time)",
        ),
    ),
    "statistics_computed": (
        _statistics_computed,
        (
            "BatchNormalization 'l0.bn': its input_var (running variance) 'var_squared' is not a "
            "constant (it is computed by Mul 'square')",
        ),
    ),
    "skip_connection": (_skip_connection, ("tensor 'l1.act' feeds 2 nodes", "a branch")),
    "unsupported_op": (_unsupported_op, ("Elu 'l0.act' is not supported",)),
    "rank_three": (_rank_three, ("input 'input' has rank 3 (shape ['batch', 1, 5])",)),
    "double_input": (_double_input, ("input 'input' is DOUBLE", "float32")),
    "trans_a": (_trans_a, ("Gemm 'l1.gemm': transA=1",)),
    "mixed_activations": (
        _mixed_activations,
        ("Tanh 'l1.act' after layer 2 is Tanh, but the layers before use Relu",),
    ),
    "final_relu": (_final_relu, ("Relu 'head' ends the graph",)),
    "softmax_axis": (_softmax_axis, ("Softmax 'head': axis=0",)),
    "two_outputs": (_two_outputs, ("the graph has 2 outputs",)),
    "node_off_chain": (_node_off_chain, ("Relu 'stray' is not on the chain",)),
    "multiply_by_zero": (
        _multiply_by_zero,
        ("Mul 'norm.div' multiplies feature 2 by 0; a scaling by constants must keep",),
    ),
    "negative_variance": (
        _negative_variance,
        ("BatchNormalization 'l1.bn': running variance + ε", "at unit 4"),
    ),
    "nan_weight": (_nan_weight, ("Gemm 'l0.gemm': its weight B 'l0.w' has 1 non-finite",)),
    "no_activation_between": (
        _no_activation_between,
        ("Gemm 'l1.gemm' after layer 1: expected an activation",),
    ),
}


def _write(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("case", REFUSED)
def test_unfoldable_graphs_are_refused_naming_the_node(case, tmp_path, out_dir, capsys) -> None:
    mutate, fragments = REFUSED[case]
    model = build_foreign(ForeignMlp())
    mutate(model)
    source = _write(model, tmp_path / f"{case}.onnx")

    code = main([str(source), "--out", str(out_dir / "folded.onnx")])

    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith(f"bnserve import: error: {source}: "), error
    assert error.count("\n") == 1, error  # one line, no traceback
    for fragment in fragments:
        assert fragment in error, error
    assert list(out_dir.iterdir()) == []  # nothing written, no temp file


def test_sigmoid_over_several_outputs_is_not_binary(tmp_path, out_dir, capsys) -> None:
    source = _write(build_foreign(ForeignMlp(head="Sigmoid", outputs=3)), tmp_path / "ml.onnx")
    assert main([str(source), "--out", str(out_dir / "m.onnx")]) == 2
    assert "Sigmoid 'head' ends the graph over 3 outputs" in capsys.readouterr().err
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize(
    "content, fragment",
    [(b"", "not an ONNX model"), (b"\x08\x07garbage\xff\xff", "not a readable ONNX model")],
)
def test_not_an_onnx_file(content, fragment, tmp_path, out_dir, capsys) -> None:
    source = tmp_path / "bad.onnx"
    source.write_bytes(content)
    assert main([str(source), "--out", str(out_dir / "m.onnx")]) == 2
    assert fragment in capsys.readouterr().err
    assert list(out_dir.iterdir()) == []


def test_bad_names_and_reference_data(tmp_path, out_dir, capsys) -> None:
    source = _write(build_foreign(ForeignMlp()), tmp_path / "m.onnx")
    out = str(out_dir / "m.onnx")
    assert main([str(source), "--out", out, "--class-names", "a,b"]) == 2
    assert "--class-names: 2 names for 3 classes" in capsys.readouterr().err
    assert main([str(source), "--out", out, "--feature-names", "a,b,c,d,a"]) == 2
    assert "--feature-names: a name is listed twice" in capsys.readouterr().err
    narrow = tmp_path / "narrow.csv"
    narrow.write_text("a,b,label\n1,2,0\n3,4,1\n")
    assert main([str(source), "--out", out, "--reference-data", str(narrow)]) == 2
    assert "3 columns, but the model takes 5 inputs" in capsys.readouterr().err
    assert main([str(source), "--out", out, "--reference-data", str(tmp_path / "no.csv")]) == 2
    assert "--reference-data: " in capsys.readouterr().err
    assert main([str(source), "--out", out, "--generated-rows", "0"]) == 2
    assert "--generated-rows must be in 1..1,000,000" in capsys.readouterr().err
    assert main([str(source), "--out", out, "--activation", "relu"]) == 2
    assert "--activation is for a state dict (.pt)" in capsys.readouterr().err
    parquet = tmp_path / "rows.parquet"
    parquet.write_bytes(b"PAR1")
    assert main([str(source), "--out", out, "--reference-data", str(parquet)]) == 2
    assert "--reference-data: " in capsys.readouterr().err
    assert list(out_dir.iterdir()) == []


def test_cli_prints_what_it_read_wrote_and_verified(tmp_path, out_dir, capsys) -> None:
    source = _write(build_foreign(ForeignMlp()), tmp_path / "m.onnx")
    out = out_dir / "folded.onnx"
    assert (
        bnserve.cli.main(["import", str(source), "--out", str(out), "--class-names", "a,b,c"]) == 0
    )
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == (
        "read Sub/Div → 5→8+BN → Relu → 8→6+BN → Relu → 6→3 → Softmax "
        "(2 BatchNormalization node(s) folded)"
    )
    assert printed[1].startswith(f"wrote {out} (folded, 7 nodes, ")
    assert printed[2].startswith("folded vs original under onnxruntime on 256 rows (generated")
    assert "tolerance 1e-05" in printed[2]


def test_python_dash_m_export_import(tmp_path, out_dir) -> None:
    source = _write(build_foreign(ForeignMlp(head="none")), tmp_path / "r.onnx")
    out = out_dir / "r-folded.onnx"
    result = subprocess.run(
        [sys.executable, "-m", "bnserve.export", "import", str(source), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert out.is_file() and "wrote" in result.stdout


def test_task_flag_reads_logits_as_a_classifier_and_refuses_contradictions(
    tmp_path, out_dir, capsys
) -> None:
    logits = _write(build_foreign(ForeignMlp(head="none")), tmp_path / "logits.onnx")
    assert main([str(logits), "--out", str(out_dir / "c.onnx"), "--task", "classification"]) == 0
    assert "→ 6→3 → logits (+ Softmax)" in capsys.readouterr().out
    (out_dir / "c.onnx").unlink()
    softmax = _write(build_foreign(ForeignMlp()), tmp_path / "softmax.onnx")
    assert main([str(softmax), "--out", str(out_dir / "r.onnx"), "--task", "regression"]) == 2
    assert "--task regression, but the graph ends in Softmax: it is a classifier" in (
        capsys.readouterr().err
    )
    single = _write(build_foreign(ForeignMlp(head="none", outputs=1)), tmp_path / "one.onnx")
    assert main([str(single), "--out", str(out_dir / "o.onnx"), "--task", "classification"]) == 2
    assert "ends in one output with no Sigmoid" in capsys.readouterr().err
    assert list(out_dir.iterdir()) == []
