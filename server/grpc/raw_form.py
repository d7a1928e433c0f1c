"""A mixed model's usual v2 ModelInfer, recognised in its bytes: the raw contents without
building a protobuf object per input tensor.

A mixed model takes one input tensor per column (12 for 8 numeric + 4 text columns), and a
client sends the same tensors (names, datatypes, shapes) call after call; only the
`raw_input_contents` change. Reading them through the parsed message builds a wrapper and its
fields per tensor (most of the v2 servicer's cost for such a model). A `RawForm` remembers the
serialized `inputs` of the last request the model's ColumnDecoder took as usual, with its
`Layout`; `contents` finds those exact bytes in the next request and reads the raw contents
around them by the wire format, for ColumnDecoder.from_layout.

It answers only for a request whose `inputs` are byte for byte the remembered ones (so they
parse to the same tensors: names, datatypes, shapes, no typed contents, the same parameters),
with no other `inputs` entry, as many raw contents as inputs, and only the top-level fields
model_name, model_version, id, parameters and outputs besides (each read from the parsed
message as before). Anything else, including any byte it does not expect, gives None and the
request takes the full path, which gives every refusal its one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bnserve.server.plane.columns import Layout

# One-byte tags (field number << 3 | 2: length-delimited) of ModelInferRequest's fields
_INPUTS, _RAW = 0x2A, 0x3A  # inputs (5), raw_input_contents (7)
# model_name (1), model_version (2), id (3), parameters (4), outputs (6)
_OTHERS = frozenset((0x0A, 0x12, 0x1A, 0x22, 0x32))
V2_GRPC = "v2 gRPC"  # the key of the v2 servicer's forms (a tuple) in ColumnDecoder.remembered


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class RawForm:
    """The serialized `inputs` of a usual request and the Layout the decoder gave them.

    inputs_block: each tensor as its own `inputs` field (tag, length, message), one after
    another, as protobuf serializes a request; tensors: how many."""

    __slots__ = ("inputs_block", "layout", "tensors")

    def __init__(self, serialized_tensors: Sequence[bytes], layout: Layout) -> None:
        self.inputs_block = b"".join(
            [bytes((_INPUTS,)) + _varint(len(tensor)) + tensor for tensor in serialized_tensors]
        )
        self.tensors = len(serialized_tensors)
        self.layout = layout

    @classmethod
    def of(cls, tensors: Sequence[Any], layout: Layout) -> RawForm:
        """The form of a request's `inputs` (its InferInputTensor messages)."""
        return cls([tensor.SerializeToString() for tensor in tensors], layout)

    def contents(self, raw: bytes) -> list[bytes] | None:
        """The request's raw_input_contents in order when `raw` (a serialized
        ModelInferRequest) has exactly this form's inputs (module docstring), else None."""
        start = raw.find(self.inputs_block)
        if start < 0:
            return None
        end = len(raw)
        offset = 0
        while offset < start:  # the fields before the inputs: none of them inputs or contents
            if raw[offset] not in _OTHERS:
                return None
            offset = _value(raw, offset + 1, end)[1]
            if offset < 0:
                return None
        if offset != start:  # the block was found inside a field, not at a field's start
            return None
        offset = start + len(self.inputs_block)
        contents: list[bytes] = []
        while offset < end:
            tag = raw[offset]
            value, offset = _value(raw, offset + 1, end)
            if offset < 0:
                return None
            if tag == _RAW:
                contents.append(raw[value:offset])
            elif tag not in _OTHERS:
                return None
        return contents if len(contents) == self.tensors else None


_NOWHERE = (-1, -1)


def _value(raw: bytes, offset: int, end: int) -> tuple[int, int]:
    """(start, stop) of the length-delimited value whose length varint starts at offset;
    (-1, -1) when it runs past end (or the varint is longer than 5 bytes)."""
    length = shift = 0
    while offset < end and shift < 35:
        byte = raw[offset]
        offset += 1
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            stop = offset + length
            return (offset, stop) if stop <= end else _NOWHERE
        shift += 7
    return _NOWHERE
