"""Checks for the free-form JSON values that messages carry (capabilities, meta, cookie extras).

Both codecs must be able to write back whatever a message holds, and a reply must never contain
``null``, ``NaN`` or an integer that a 64-bit decoder cannot hold (EDIP §1.5). These helpers
enforce that once, at message construction, so the encoders never have to.

The walk is iterative: a decoder may hand over nesting up to its own depth limit (orjson: 1024),
deeper than Python's recursion limit.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["INT64_MAX", "INT64_MIN", "UINT64_MAX", "check_json_object", "check_json_value"]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1


def check_json_value(value: object, *, where: str, allow_null: bool) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``value`` is a JSON value both codecs can write.

    Allowed: ``str``, ``bool``, ``int`` in the signed/unsigned 64-bit range, finite ``float``,
    ``list``/``tuple`` and ``dict`` with ``str`` keys, recursively (other mappings are refused:
    the encoders only write dicts); ``None`` only when
    ``allow_null``. Containers that contain themselves are rejected.

    Args:
        value: the value to check.
        where: the field name used in error messages (e.g. ``"capabilities"``).
        allow_null: whether ``None`` may appear (requests may carry ``null``, replies may not).
    """
    # Depth-first walk with an explicit stack. ``_LEAVE`` entries pop a container off the current
    # path, so a container shared by two branches is fine while one that contains itself is not.
    stack: list[tuple[object, str]] = [(value, where)]
    on_path: set[int] = set()
    while stack:
        item, path = stack.pop()
        kind = type(item)
        if kind is bool or isinstance(item, str):
            continue
        if kind is int:
            if not INT64_MIN <= item <= UINT64_MAX:  # type: ignore[operator]
                raise ValueError(f"{path}: integer {item} is outside the 64-bit range")
            continue
        if kind is float:
            if not math.isfinite(item):  # type: ignore[arg-type]
                raise ValueError(f"{path}: {item} is not a finite number")
            continue
        if item is None:
            if not allow_null:
                raise ValueError(f"{path}: null is not allowed")
            continue
        if kind is _Leave:
            on_path.discard(item.ident)  # type: ignore[attr-defined]
            continue
        ident = id(item)
        if ident in on_path:
            raise ValueError(f"{path}: the value contains itself")
        if isinstance(item, dict):
            mapping: dict[Any, Any] = item
            on_path.add(ident)
            stack.append((_Leave(ident), path))
            for key, sub in mapping.items():
                if type(key) is not str:
                    raise TypeError(f"{path}: object keys must be strings, got {key!r}")
                stack.append((sub, f"{path}.{key}"))
        elif kind is list or kind is tuple:
            seq: list[object] | tuple[object, ...] = item  # type: ignore[assignment]
            on_path.add(ident)
            stack.append((_Leave(ident), path))
            for index, sub in enumerate(seq):
                stack.append((sub, f"{path}[{index}]"))
        else:
            raise TypeError(f"{path}: {kind.__name__} is not a JSON value")


class _Leave:
    """Stack marker: the walk has finished the container with this ``id``."""

    __slots__ = ("ident",)

    def __init__(self, ident: int) -> None:
        self.ident = ident


def check_json_object(value: object, *, where: str, allow_null: bool) -> None:
    """Like :func:`check_json_value`, and ``value`` itself must be a ``dict``."""
    if not isinstance(value, dict):
        raise TypeError(f"{where} must be an object, got {type(value).__name__}")
    check_json_value(value, where=where, allow_null=allow_null)
