"""server/grpc/gen is exactly what proto/generate.py makes from proto/, and wire-compatible with
tritonclient's own `inference` definitions."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
from pathlib import Path

from google.protobuf.descriptor import Descriptor

from bnserve.server.grpc.gen.inference import grpc_service_pb2, model_config_pb2

REPO = Path(__file__).resolve().parents[3]
GENERATED = REPO / "server" / "grpc" / "gen"


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    completed = subprocess.run(
        [sys.executable, str(REPO / "proto" / "generate.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    fresh, committed = _files(out), _files(GENERATED)
    assert sorted(fresh) == sorted(committed), (
        "run `make proto`: the set of generated files differs"
    )
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"run `make proto`: stale generated files {stale}"
    assert not filecmp.dircmp(out, GENERATED).diff_files


DUMP_TRITON = """
import json
from tritonclient.grpc import model_config_pb2, service_pb2
def fields(d):
    out = {f.name: [f.number, f.type, f.is_repeated] for f in d.fields}
    for nested in d.nested_types:
        out.update({nested.name + "." + k: v for k, v in fields(nested).items()})
    return out
service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
print(json.dumps({
    "messages": {n: fields(d) for n, d in service_pb2.DESCRIPTOR.message_types_by_name.items()},
    "config": {n: fields(d) for n, d in model_config_pb2.DESCRIPTOR.message_types_by_name.items()},
    "enums": {n: {v.name: v.number for v in e.values}
              for n, e in model_config_pb2.DESCRIPTOR.enum_types_by_name.items()},
    "methods": {m.name: [m.input_type.full_name, m.output_type.full_name] for m in service.methods},
}))
"""


def _fields(descriptor: Descriptor) -> dict[str, list]:
    out = {f.name: [f.number, f.type, f.is_repeated] for f in descriptor.fields}
    for nested in descriptor.nested_types:
        out.update({f"{nested.name}.{k}": v for k, v in _fields(nested).items()})
    return out


def test_v2_proto_is_wire_compatible_with_tritonclient() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", DUMP_TRITON], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    triton = json.loads(completed.stdout)
    ours = grpc_service_pb2.DESCRIPTOR
    # Every field we declare has Triton's number, type and repetition (fields we leave out are
    # unknown fields to the other side, which protobuf skips); the core messages are whole.
    whole = {"ModelInferRequest", "ModelInferResponse", "ModelMetadataResponse", "InferParameter"}
    for tables, pool in (
        (triton["messages"], ours.message_types_by_name),
        (triton["config"], model_config_pb2.DESCRIPTOR.message_types_by_name),
    ):
        for name, descriptor in pool.items():
            declared = _fields(descriptor)
            theirs = tables[name]
            assert {k: theirs.get(k) for k in declared} == declared, f"message {name} differs"
            if name in whole:
                assert declared == theirs, f"message {name} is not whole"
    for name, enum in model_config_pb2.DESCRIPTOR.enum_types_by_name.items():
        assert {v.name: v.number for v in enum.values} == triton["enums"][name]
    service = ours.services_by_name["GRPCInferenceService"]
    for method in service.methods:
        expected = [method.input_type.full_name, method.output_type.full_name]
        assert triton["methods"][method.name] == expected
    assert {m.name for m in service.methods} == {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelStreamInfer",
        "ModelConfig",
        "ModelStatistics",
        "RepositoryIndex",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
    }
