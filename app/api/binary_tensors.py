"""The Open Inference Protocol's binary tensor extension over HTTP, as Triton and MLServer speak it (and tritonclient by
default): the framing only.

A request body is a JSON header of ``Inference-Header-Content-Length`` bytes followed by raw tensor data: each input
with a ``binary_data_size`` parameter owns the next that many bytes, in input order. A response carries its binary
outputs the same way. Every size is checked against the bytes actually received before anything is sliced, so a lying
header or size costs no more than the body's own size. The elements inside each slice are the protocol's raw
serialization, the same on every wire (``app.service.oip.tensors``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import orjson

from app.service.errors import InvalidInferenceRequest

HEADER_LENGTH = "Inference-Header-Content-Length"
MEDIA_TYPE = "application/octet-stream"
_MAX_HEADER_DIGITS = 19  # anything longer is past any body size


class BinaryTensorError(InvalidInferenceRequest):
    """The binary framing of a request is malformed; the message says how (a malformed request, as any other)."""


def split_body(raw: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary tail of a request body (all JSON when there is no header length)."""
    if header_length is None:
        return raw, memoryview(b"")
    value = header_length.strip()
    if not value or len(value) > _MAX_HEADER_DIGITS or not (value.isascii() and value.isdigit()):
        raise BinaryTensorError(f"{HEADER_LENGTH} must be a byte count, got {header_length[:40]!r}")
    length = int(value)
    if length == 0 or length > len(raw):
        raise BinaryTensorError(f"{HEADER_LENGTH} is {length} but the body has {len(raw)} bytes")
    return raw[:length], memoryview(raw)[length:]


def binary_data_size(parameters: Mapping[str, object] | None, name: str) -> int | None:
    """An input's ``binary_data_size`` parameter: None when it has none, else a checked byte count."""
    value = (parameters or {}).get("binary_data_size")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BinaryTensorError(f"input {name!r}: binary_data_size must be a non-negative integer, got {value!r}")
    return value


def slice_inputs(sizes: Sequence[tuple[str, int | None]], tail: memoryview) -> list[memoryview | None]:
    """Cut the binary tail among the inputs that declare a size, in order; every byte must belong to one of them."""
    segments: list[memoryview | None] = []
    offset = 0
    for name, size in sizes:
        if size is None:
            segments.append(None)
            continue
        left = len(tail) - offset
        if size > left:
            raise BinaryTensorError(
                f"input {name!r} declares binary_data_size {size} but only {left} bytes of binary data are left: "
                "the body is truncated or the size is wrong"
            )
        segments.append(tail[offset : offset + size])
        offset += size
    if offset != len(tail):
        raise BinaryTensorError(
            f"{len(tail) - offset} bytes of binary data follow the {offset} that the inputs' binary_data_size claim"
        )
    return segments


def encode_response(header: Mapping[str, object], buffers: Sequence[bytes]) -> tuple[bytes, dict[str, str]]:
    """The JSON header followed by the outputs' bytes, and the header that says where the JSON ends."""
    head = orjson.dumps(header)
    return head + b"".join(buffers), {HEADER_LENGTH: str(len(head))}
