"""Find the serialized GraphProto inside an ONNX file without importing onnx.

An ONNX file is a serialized ModelProto; its field 7 (`graph`, length-delimited) holds the nodes
and weights. `bnserve.graph_sha256` is the sha256 of exactly those bytes, so a scan of the
top-level protobuf wire format is enough to verify it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

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


def _fields(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(field number, payload start, payload end) of each length-delimited top-level field;
    other wire types are skipped. Raises WireFormatError for malformed bytes."""
    offset = 0
    while offset < len(data):
        key, offset = _read_varint(data, offset)
        number, wire_type = key >> 3, key & 0x7
        if wire_type == _VARINT:
            _, offset = _read_varint(data, offset)
        elif wire_type == _FIXED64:
            offset += 8
        elif wire_type == _FIXED32:
            offset += 4
        elif wire_type == _LENGTH_DELIMITED:
            length, offset = _read_varint(data, offset)
            if offset + length > len(data):
                raise WireFormatError(
                    f"field {number} claims {length} bytes at byte {offset}, past the end "
                    f"({len(data)} bytes)"
                )
            yield number, offset, offset + length
            offset += length
        else:
            raise WireFormatError(f"unsupported wire type {wire_type} for field {number}")
        if offset > len(data):
            raise WireFormatError(f"field {number} runs past the end ({len(data)} bytes)")


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
