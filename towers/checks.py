"""Type checks for configuration dataclasses: each field's value against its annotation, so a
wrong type is refused by name at construction rather than deep inside TensorFlow or numpy.

A value of another type that means the same (``numpy.int64(8)`` for an ``int``, a list for a
tuple, a ``Path`` for a ``str``) is converted to the annotated type, so that the configuration
saves as JSON.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import types
import typing

import numpy as np

_FAIL = object()


class FieldTypeError(TypeError, ValueError):
    """A configuration field has a value of the wrong type (a ValueError too, so that callers
    that refuse bad settings with ``except ValueError`` catch it)."""


def _convert(value: object, kind: object) -> object:
    """``value`` as the annotated ``kind``, or ``_FAIL``."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(kind):
            out = _convert(value, option)
            if out is not _FAIL:
                return out
        return _FAIL
    if kind is type(None):
        return None if value is None else _FAIL
    if kind is bool:
        return bool(value) if isinstance(value, bool | np.bool_) else _FAIL
    if isinstance(value, bool | np.bool_):  # True is not a number of epochs
        return _FAIL
    if kind is int:
        return int(value) if isinstance(value, numbers.Integral) else _FAIL
    if kind is float:
        return float(value) if isinstance(value, numbers.Real) else _FAIL
    if kind is str:
        return os.fspath(value) if isinstance(value, str | os.PathLike) else _FAIL
    if origin is tuple:
        args = typing.get_args(kind)
        if not isinstance(value, tuple | list | np.ndarray):
            return _FAIL
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        if len(args) != len(value):
            return _FAIL
        out = tuple(_convert(v, a) for v, a in zip(value, args, strict=True))
        return _FAIL if any(v is _FAIL for v in out) else out
    return value  # other annotations are not checked here


def check_field_types(instance: object) -> None:
    """Check (and convert, see the module docstring) every init field of the dataclass
    ``instance`` against its annotation (``int`` excludes ``bool``; ``float`` takes an int;
    ranges are each class's own checks).

    Raises
    ------
    FieldTypeError
        Naming the field, the expected type and the value.
    """
    hints = typing.get_type_hints(type(instance))
    for field in dataclasses.fields(instance):  # type: ignore[arg-type]
        if not field.init or field.name not in hints:
            continue
        value = getattr(instance, field.name)
        converted = _convert(value, hints[field.name])
        if converted is _FAIL:
            kind = getattr(hints[field.name], "__name__", str(hints[field.name]))
            raise FieldTypeError(
                f"{type(instance).__name__}.{field.name} must be {kind}, got {value!r}"
            )
        if converted is not value:
            object.__setattr__(instance, field.name, converted)


def positive_int(name: str, value: object) -> int:
    """``value`` as an int if it is a positive integer (not a bool).

    Raises
    ------
    ValueError
        Naming ``name`` and the value.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def count_int(name: str, value: object, optional: bool = False) -> int | None:
    """``value`` as an int if it is an integer >= 0 (not a bool); with ``optional``, None
    passes as None.

    Raises
    ------
    ValueError
        Naming ``name`` and the value.
    """
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        allowed = " or None" if optional else ""
        raise ValueError(f"{name} must be an integer >= 0{allowed}, got {value!r}")
    return int(value)
