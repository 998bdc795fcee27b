"""Typed messages to msgpack frames and back, with the schema taken from the message classes themselves.

A :class:`Schema` is built once from dataclasses (and what their fields name: nested dataclasses, IntEnum and
StrEnum, lists, tuples, optional values, numpy arrays, free-form dicts). A frame is ``[version, tag, fields]``:
``version`` is a digest of the whole schema (every class, field, annotation and enum member), so a process that runs
other code, say a front end restarted after an upgrade, is refused on receipt instead of misreading fields; ``tag``
names the message class; ``fields`` are its values in declaration order, nested dataclasses likewise. Each class gets
a generated function each way that converts only what msgpack cannot write or give back as is (nested dataclasses,
arrays, tuples, enums), so a message costs little more than the hand-packed lists it replaces. msgpack rather than
msgspec: the image locks and the GPU image already carry msgpack.
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


@dataclasses.dataclass(frozen=True, slots=True)
class _Form:
    """How values of one annotation go to msgpack (``to_wire``) and come back (``from_wire``); ``_identity`` where
    msgpack writes or gives back the value as it is."""

    to_wire: Convert
    from_wire: Convert

    @property
    def plain(self) -> bool:
        return self.to_wire is _identity and self.from_wire is _identity


_PLAIN = _Form(_identity, _identity)
_DTYPES: dict[str, np.dtype[Any]] = {}


def _array_to_wire(value: np.ndarray[Any, Any]) -> tuple[str, tuple[int, ...], bytes]:
    contiguous = np.ascontiguousarray(value)
    return contiguous.dtype.str, contiguous.shape, contiguous.tobytes()


def _array_from_wire(value: Any) -> np.ndarray[Any, Any]:
    dtype, shape, data = value
    known = _DTYPES.get(dtype)
    if known is None:
        known = _DTYPES[dtype] = np.dtype(dtype)
    return np.frombuffer(data, dtype=known).reshape(shape)


def _each(convert: Convert) -> Convert:
    return lambda value: list(map(convert, value))


def _optional(convert: Convert) -> Convert:
    return lambda value: None if value is None else convert(value)


def _generated(name: str, source: str, converters: Sequence[Convert], **names: Any) -> Convert:
    """A function compiled from ``source`` (as ``dataclasses`` compiles ``__init__``): a loop over a message's
    fields cost twice as much, on every message."""
    namespace: dict[str, Any] = dict(names)
    namespace.update({f"convert_{index}": convert for index, convert in enumerate(converters)})
    exec(source, namespace)
    function: Convert = namespace[name]
    return function


def _dataclass_form(cls: type[Any], fields: Sequence[str], forms: Sequence[_Form]) -> _Form:
    """A dataclass as the tuple of its field values in declaration order, and back through its constructor (a list
    of the wrong length raises ValueError)."""
    values = ", ".join(
        f"value.{name}" if form.to_wire is _identity else f"convert_{index}(value.{name})"
        for index, (name, form) in enumerate(zip(fields, forms, strict=True))
    )
    to_wire = _generated("to_wire", f"def to_wire(value):\n    return ({values},)\n", [form.to_wire for form in forms])
    names = [f"field_{index}" for index in range(len(fields))]
    arguments = ", ".join(
        name if form.from_wire is _identity else f"convert_{index}({name})"
        for index, (name, form) in enumerate(zip(names, forms, strict=True))
    )
    from_wire = _generated(
        "from_wire",
        f"def from_wire(value):\n    {', '.join(names)}, = value\n    return cls({arguments})\n",
        [form.from_wire for form in forms],
        cls=cls,
    )
    return _Form(to_wire, from_wire)


def _free_form(value: Any) -> Any:
    """A value msgpack cannot write, inside a free-form dict (a variant's description): as text, as JSON shows it."""
    return str(value)


class Schema:
    """The message classes one channel carries, their frame tags and the schema's version digest."""

    def __init__(self, messages: Sequence[type[Any]]) -> None:
        self.messages = tuple(messages)
        self._dataclasses: dict[type[Any], _Form] = {}
        self._described: list[str] = []
        self._tags = {message: (index, self._form(message).to_wire) for index, message in enumerate(messages)}
        self._by_tag = [self._form(message).from_wire for message in messages]
        self.version = hashlib.sha256("\n".join(self._described).encode()).hexdigest()[:12]

    def _form(self, annotation: Any) -> _Form:
        origin = typing.get_origin(annotation)
        arguments = typing.get_args(annotation)
        if annotation is Any or annotation in (str, int, float, bool, bytes, type(None)):
            return _PLAIN
        if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
            return self._dataclass(annotation)
        if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
            if not issubclass(annotation, int | str):
                raise TypeError(f"{annotation.__name__}: only IntEnum and StrEnum members cross as they are")
            members = {member.value: member for member in annotation}
            self._described.append(f"{annotation.__qualname__}: {list(members)}")
            # msgpack writes the member as its int or str; its value comes back, and a dict lookup costs a third of
            # calling the enum (KeyError for a value this schema does not know).
            return _Form(_identity, members.__getitem__)
        if annotation is np.ndarray or origin is np.ndarray:
            return _Form(_array_to_wire, _array_from_wire)
        if origin in (typing.Union, types.UnionType):
            present = [argument for argument in arguments if argument is not type(None)]
            if len(present) != 1:
                raise TypeError(f"only an optional value (X | None) is supported, not {annotation}")
            inner = self._form(present[0])
            return inner if inner.plain else _Form(_optional(inner.to_wire), _optional(inner.from_wire))
        if origin in (list, Sequence):
            inner = self._form(arguments[0])
            to_wire = _identity if inner.to_wire is _identity else _each(inner.to_wire)
            from_wire = _identity if inner.from_wire is _identity else _each(inner.from_wire)
            return _Form(to_wire, from_wire)
        if origin is tuple:
            if not all(self._form(argument).plain for argument in arguments):
                raise TypeError(f"a tuple crosses as msgpack gives its items back, not as {annotation}")
            return _Form(_identity, tuple)  # msgpack writes a tuple as an array and gives back a list
        if origin is dict:
            if not all(self._form(argument).plain for argument in arguments):
                raise TypeError(f"a dict's keys and values cross as msgpack gives them, not as {annotation}")
            return _PLAIN
        raise TypeError(f"no wire form for {annotation!r}")

    def _dataclass(self, cls: type[Any]) -> _Form:
        known = self._dataclasses.get(cls)
        if known is not None:
            return known
        hints = typing.get_type_hints(cls)
        fields = [field.name for field in dataclasses.fields(cls)]
        self._described.append(f"{cls.__module__}.{cls.__qualname__}: {[(name, hints[name]) for name in fields]}")
        form = self._dataclasses[cls] = _dataclass_form(cls, fields, [self._form(hints[name]) for name in fields])
        return form

    # -- frames ------------------------------------------------------------------------------------------------

    def encode(self, message: Any) -> bytes:
        tagged = self._tags.get(type(message))
        if tagged is None:
            raise TypeError(f"{type(message).__name__} is not a message of this channel")
        tag, to_wire = tagged
        frame: bytes = msgpack.packb([self.version, tag, to_wire(message)], use_bin_type=True, default=_free_form)
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
        except (TypeError, ValueError, IndexError, KeyError) as error:
            raise ProtocolError(f"a frame of protocol {self.version} that is no message of it: {error}") from None
