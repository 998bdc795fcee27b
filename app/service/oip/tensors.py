"""The protocol's raw serialization of tensor elements, the same on every wire (HTTP's binary tensor extension,
gRPC's ``raw_input_contents`` and ``raw_output_contents``): BYTES elements are a 4-byte little-endian length followed
by the bytes; FP32 is little-endian IEEE 754, row-major. Every length is checked against the bytes at hand before
anything is sliced or decoded, so a lying length costs no more than the data's own size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from app.service.errors import InvalidInferenceRequest

LENGTH_BYTES = 4


def decode_bytes(data: bytes | memoryview, count: int, name: str) -> list[str]:
    """``count`` BYTES elements as UTF-8 strings; their lengths must account for every byte of ``data``."""
    values: list[str] = []
    offset = 0
    size = len(data)
    for index in range(count):
        if size - offset < LENGTH_BYTES:
            raise InvalidInferenceRequest(
                f"input {name!r}: its binary data ends before element {index} of {count} (the shape's count)"
            )
        length = int.from_bytes(data[offset : offset + LENGTH_BYTES], "little")
        offset += LENGTH_BYTES
        if length > size - offset:
            raise InvalidInferenceRequest(
                f"input {name!r}: element {index} declares {length} bytes but only {size - offset} are left"
            )
        try:
            values.append(str(data[offset : offset + length], "utf-8"))
        except UnicodeDecodeError:
            raise InvalidInferenceRequest(f"input {name!r}: element {index} is not valid UTF-8") from None
        offset += length
    if offset != size:
        raise InvalidInferenceRequest(f"input {name!r}: {size - offset} bytes are left after its {count} elements")
    return values


def encode_bytes(values: Sequence[str]) -> bytes:
    parts: list[bytes] = []
    for value in values:
        encoded = value.encode("utf-8")
        parts += (len(encoded).to_bytes(LENGTH_BYTES, "little"), encoded)
    return b"".join(parts)


def encode_fp32(array: npt.NDArray[np.float32]) -> bytes:
    return np.ascontiguousarray(array, dtype="<f4").tobytes()


_END = object()


def flatten(values: Sequence[Any], limit: int) -> list[Any] | None:
    """Row-major flattening (values may nest as lists that mirror the shape); None past ``limit`` elements, so an
    oversized or lying tensor costs no more than ``limit`` steps."""
    flat: list[Any] = []
    pending = [iter(values)]
    while pending:
        item = next(pending[-1], _END)
        if item is _END:
            pending.pop()
        elif isinstance(item, list):
            if len(pending) >= 2:  # [n] and [n, 1] nest at most one list deep
                return None
            pending.append(iter(item))
        elif len(flat) == limit:
            return None
        else:
            flat.append(item)
    return flat
