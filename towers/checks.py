"""Type checks for configuration dataclasses: each field's value against its annotation, so a
wrong type is refused by name at construction rather than deep inside TensorFlow or numpy."""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing


class FieldTypeError(TypeError, ValueError):
    """A configuration field has a value of the wrong type (a ValueError too, so that callers
    that refuse bad settings with ``except ValueError`` catch it)."""


def _matches(value: object, kind: object) -> bool:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, k) for k in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    if origin is tuple:
        args = typing.get_args(kind)
        if not isinstance(value, tuple | list):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        if len(args) != len(value):
            return False
        return all(_matches(v, a) for v, a in zip(value, args, strict=True))
    return True  # other annotations are not checked here


def check_field_types(instance: object) -> None:
    """Refuse a dataclass field whose value does not match its annotation (``int`` excludes
    ``bool``; ``float`` takes an int; ranges are each class's own checks).

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
        if not _matches(value, hints[field.name]):
            kind = getattr(hints[field.name], "__name__", str(hints[field.name]))
            raise FieldTypeError(
                f"{type(instance).__name__}.{field.name} must be {kind}, got {value!r}"
            )
