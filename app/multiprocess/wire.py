"""Typed messages to msgpack frames and back, with the schema taken from the message classes themselves.

A :class:`Schema` is built once from frozen dataclasses (and what their fields name: nested dataclasses, enums,
lists, tuples, optional values, numpy arrays). A frame is ``[version, tag, fields]``: ``version`` is a digest of the
whole schema (every class, field, annotation and enum member), so a process that runs other code, say a front end
restarted after an upgrade, is refused on receipt instead of misreading fields; ``tag`` names the message class;
``fields`` are its values in declaration order, nested dataclasses likewise. Decoding converts only what msgpack
cannot give back as is (tuples, enums, nested dataclasses, arrays), so a message costs about what a hand-packed list
did. msgpack rather than msgspec: the image locks and the GPU image already carry msgpack.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import numpy as np

Convert = Callable[[Any], Any]


class ProtocolError(ValueError):
    """A frame this process cannot read: another protocol version, or not a message of the schema."""


def _identity(value: Any) -> Any:
    return value


def _array(value: Any) -> np.ndarray[Any, Any]:
    dtype, shape, data = value
    return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)


class Schema:
    """The message classes one channel carries, their frame tags and the schema's version digest."""

    def __init__(self, messages: Sequence[type[Any]]) -> None:
        self.messages = tuple(messages)
        self._fields: dict[type[Any], tuple[str, ...]] = {}
        self._decoders: dict[type[Any], Convert] = {}
        self._described: list[str] = []
        self._tags = {message: index for index, message in enumerate(messages)}
        self._by_tag = [self._converter(message) for message in messages]
        self.version = hashlib.sha256("\n".join(self._described).encode()).hexdigest()[:12]

    # -- building ----------------------------------------------------------------------------------------------

    def _converter(self, annotation: Any) -> Convert:
        """How a decoded msgpack value becomes a value of ``annotation``; ``_identity`` when it already is one."""
        origin = typing.get_origin(annotation)
        arguments = typing.get_args(annotation)
        if annotation is Any or annotation in (str, int, float, bool, bytes, type(None)):
            return _identity
        if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
            return self._dataclass(annotation)
        if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
            self._described.append(f"{annotation.__qualname__}: {[member.value for member in annotation]}")
            return annotation
        if annotation is np.ndarray or origin is np.ndarray:
            return _array
        if origin in (typing.Union, types.UnionType):
            present = [argument for argument in arguments if argument is not type(None)]
            if len(present) != 1:
                raise TypeError(f"only an optional value (X | None) is supported, not {annotation}")
            inner = self._converter(present[0])
            return _identity if inner is _identity else (lambda value: None if value is None else inner(value))
        if origin in (list, Sequence):
            inner = self._converter(arguments[0])
            return _identity if inner is _identity else (lambda value: [inner(item) for item in value])
        if origin is tuple:
            converters = [self._converter(argument) for argument in arguments]
            if all(converter is _identity for converter in converters):
                return tuple
            return lambda value: tuple(convert(item) for convert, item in zip(converters, value, strict=True))
        if origin is dict:
            if any(self._converter(argument) is not _identity for argument in arguments):
                raise TypeError(f"a dict's keys and values cross as msgpack gives them, not as {annotation}")
            return _identity
        raise TypeError(f"no wire form for {annotation!r}")

    def _dataclass(self, cls: type[Any]) -> Convert:
        known = self._decoders.get(cls)
        if known is not None:
            return known
        hints = typing.get_type_hints(cls)
        fields = tuple(field.name for field in dataclasses.fields(cls))
        self._fields[cls] = fields
        self._described.append(f"{cls.__module__}.{cls.__qualname__}: {[(name, hints[name]) for name in fields]}")
        converters = [self._converter(hints[name]) for name in fields]
        converted = [(index, convert) for index, convert in enumerate(converters) if convert is not _identity]

        def decode(value: Any) -> Any:
            if converted:
                value = list(value)
                for index, convert in converted:
                    value[index] = convert(value[index])
            return cls(*value)

        self._decoders[cls] = decode
        return decode

    # -- frames ------------------------------------------------------------------------------------------------

    def _default(self, value: Any) -> Any:
        fields = self._fields.get(type(value))
        if fields is not None:
            return [getattr(value, name) for name in fields]
        if isinstance(value, np.ndarray):
            contiguous = np.ascontiguousarray(value)
            return [contiguous.dtype.str, list(contiguous.shape), contiguous.tobytes()]
        return str(value)  # inside a free-form dict (a variant's description): as text, as JSON would show it

    def encode(self, message: Any) -> bytes:
        tag = self._tags.get(type(message))
        if tag is None:
            raise TypeError(f"{type(message).__name__} is not a message of this channel")
        frame: bytes = msgpack.packb([self.version, tag, message], use_bin_type=True, default=self._default)
        return frame

    def decode(self, frame: bytes) -> Any:
        """The message in ``frame``; ProtocolError if it was written by another schema, or is not a message."""
        try:
            decoded = msgpack.unpackb(frame, raw=False, strict_map_key=False)
        except (ValueError, msgpack.UnpackException) as error:  # FormatError, ExtraData, a truncated frame
            raise ProtocolError(f"not a msgpack frame: {error}") from None
        if not isinstance(decoded, list) or not decoded or decoded[0] != self.version:
            version = decoded[0] if isinstance(decoded, list) and decoded else None
            raise ProtocolError(f"protocol version {version!r} is not this process's {self.version!r}")
        try:
            _, tag, fields = decoded
            return self._by_tag[tag](fields)
        except (TypeError, ValueError, IndexError) as error:
            raise ProtocolError(f"a frame of protocol {self.version} that is no message of it: {error}") from None
