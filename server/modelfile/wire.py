"""Find the serialized GraphProto inside an ONNX file without importing onnx.

An ONNX file is a serialized ModelProto; its field 7 (`graph`, length-delimited) holds the nodes
and weights. `bnserve.graph_sha256` is the sha256 of exactly those bytes, so a scan of the
top-level protobuf wire format is enough to verify it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterator

GRAPH_FIELD = 7
GRAPH_NODE_FIELD = 1  # GraphProto.node (repeated NodeProto)
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


class WireFormatError(ValueError):
    """The bytes are not a well-formed top-level protobuf message."""


def _read_varint(data: bytes, offset: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if offset >= len(data):
            raise WireFormatError(f"truncated varint at byte {offset}")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7
        if shift > 63:
            raise WireFormatError(f"varint longer than 10 bytes ending at byte {offset}")


def _walk(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, start, end) of each top-level field: a varint's bytes, a fixed
    field's bytes or a length-delimited field's payload. Raises WireFormatError for malformed
    bytes."""
    offset = 0
    while offset < len(data):
        key, offset = _read_varint(data, offset)
        number, wire_type = key >> 3, key & 0x7
        start = offset
        if wire_type == _VARINT:
            _, offset = _read_varint(data, offset)
        elif wire_type in (_FIXED64, _FIXED32):
            offset += 8 if wire_type == _FIXED64 else 4
            if offset > len(data):
                raise WireFormatError(f"field {number} runs past the end ({len(data)} bytes)")
        elif wire_type == _LENGTH_DELIMITED:
            length, start = _read_varint(data, offset)
            offset = start + length
            if offset > len(data):
                raise WireFormatError(
                    f"field {number} claims {length} bytes at byte {start}, past the end "
                    f"({len(data)} bytes)"
                )
        else:
            raise WireFormatError(f"unsupported wire type {wire_type} for field {number}")
        yield number, wire_type, start, offset


def _fields(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(field number, payload start, payload end) of each length-delimited top-level field;
    other wire types are skipped. Raises WireFormatError for malformed bytes."""
    for number, wire_type, start, end in _walk(data):
        if wire_type == _LENGTH_DELIMITED:
            yield number, start, end


def field_bytes(data: bytes, field_number: int) -> list[bytes]:
    """The payloads of every length-delimited top-level occurrence of field_number, in order."""
    return [data[start:end] for number, start, end in _fields(data) if number == field_number]


def count_fields(data: bytes, field_number: int) -> int:
    """How many length-delimited top-level occurrences of field_number data holds."""
    return sum(1 for number, _, _ in _fields(data) if number == field_number)


def graph_sha256(model_bytes: bytes) -> str:
    """Hex sha256 of the ModelProto's one serialized GraphProto (field 7)."""
    graphs = field_bytes(model_bytes, GRAPH_FIELD)
    if len(graphs) != 1:
        raise WireFormatError(f"expected exactly one graph (field 7), found {len(graphs)}")
    return hashlib.sha256(graphs[0]).hexdigest()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(field_number: int, payload: bytes) -> bytes:
    return _varint(field_number << 3 | _LENGTH_DELIMITED) + _varint(len(payload)) + payload


GRAPH_OUTPUT_FIELD = 12  # GraphProto.output (repeated ValueInfoProto)
_FLOAT_ELEMENT_TYPE = 1  # TensorProto.FLOAT


def float_output_info(
    name: str, width: int, batch_dim: str = "N", stack_dim: str = "", shaped: bool = True
) -> bytes:
    """A serialized ValueInfoProto: `name`, float32 tensor [batch_dim, width], or
    [stack_dim, batch_dim, width] when stack_dim is given (a symbolic leading axis); a float32
    tensor of any shape when not `shaped`."""
    stack = _length_delimited(1, _length_delimited(2, stack_dim.encode())) if stack_dim else b""
    dimensions = (
        stack
        + _length_delimited(1, _length_delimited(2, batch_dim.encode()))
        + _length_delimited(1, _varint(1 << 3) + _varint(width))
    )
    shape = _length_delimited(2, dimensions) if shaped else b""
    tensor_type = _varint(1 << 3) + _varint(_FLOAT_ELEMENT_TYPE) + shape
    return _length_delimited(1, name.encode()) + _length_delimited(
        2, _length_delimited(1, tensor_type)
    )


STACK_DIM = "K"  # the leading axis of a stacked output [K, N, width] (an ensemble's members)


def with_graph_outputs(
    model_bytes: bytes,
    outputs: list[tuple[str, int]],
    stacked: Collection[str] = (),
    unshaped: Collection[str] = (),
) -> bytes:
    """The model with extra float32 [N, width] graph outputs naming existing tensors (for a
    second session that also returns intermediate values), [K, N, width] for the names in
    `stacked`, of any shape for those in `unshaped`; everything else byte for byte."""
    graphs = field_bytes(model_bytes, GRAPH_FIELD)
    if len(graphs) != 1:
        raise WireFormatError(f"expected exactly one graph (field 7), found {len(graphs)}")
    extra = b"".join(
        _length_delimited(
            GRAPH_OUTPUT_FIELD,
            float_output_info(
                name,
                width,
                stack_dim=STACK_DIM if name in stacked else "",
                shaped=name not in unshaped,
            ),
        )
        for name, width in outputs
    )
    start = model_bytes.index(graphs[0])  # the payload is unique: the graph is most of the file
    header_start = start - len(_length_delimited(GRAPH_FIELD, graphs[0])) + len(graphs[0])
    return (
        model_bytes[:header_start]
        + _length_delimited(GRAPH_FIELD, graphs[0] + extra)
        + model_bytes[start + len(graphs[0]) :]
    )


Field = tuple[int, int, int | bytes]  # (field number, wire type, varint / fixed value or payload)


def message_fields(data: bytes) -> list[Field]:
    """Every top-level field of a serialized message, in order: (number, wire type, value),
    the value an int for varint and fixed fields, the payload bytes for length-delimited ones.
    Raises WireFormatError for malformed bytes."""
    fields: list[Field] = []
    for number, wire_type, start, end in _walk(data):
        value: int | bytes
        if wire_type == _VARINT:
            value = _read_varint(data, start)[0]
        elif wire_type == _LENGTH_DELIMITED:
            value = data[start:end]
        else:
            value = int.from_bytes(data[start:end], "little")
        fields.append((number, wire_type, value))
    return fields


def signed64(value: int) -> int:
    """A varint read as protobuf's int64 (two's complement over 64 bits)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def packed_varints(payload: bytes) -> list[int]:
    """The values of a packed repeated varint field's payload."""
    values, offset = [], 0
    while offset < len(payload):
        value, offset = _read_varint(payload, offset)
        values.append(value)
    return values


def tensor_info(name: str, element_type: int, width: int, batch_dim: str = "N") -> bytes:
    """A serialized ValueInfoProto: `name`, a tensor of TensorProto element type element_type,
    shape [batch_dim, width]."""
    dimensions = _length_delimited(1, _length_delimited(2, batch_dim.encode())) + _length_delimited(
        1, _varint(1 << 3) + _varint(width)
    )
    tensor_type = _varint(1 << 3) + _varint(element_type) + _length_delimited(2, dimensions)
    return _length_delimited(1, name.encode()) + _length_delimited(
        2, _length_delimited(1, tensor_type)
    )


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """One length-delimited field: its key, its length, then payload."""
    return _length_delimited(field_number, payload)


def with_graph(model_bytes: bytes, graph: bytes) -> bytes:
    """The model with its one GraphProto (field 7) replaced by graph; everything else byte for
    byte."""
    graphs = field_bytes(model_bytes, GRAPH_FIELD)
    if len(graphs) != 1:
        raise WireFormatError(f"expected exactly one graph (field 7), found {len(graphs)}")
    start = model_bytes.index(graphs[0])
    header_start = start - len(_length_delimited(GRAPH_FIELD, graphs[0])) + len(graphs[0])
    return (
        model_bytes[:header_start]
        + _length_delimited(GRAPH_FIELD, graph)
        + model_bytes[start + len(graphs[0]) :]
    )
