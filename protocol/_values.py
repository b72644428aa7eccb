"""Checks for the free-form JSON values that messages carry (capabilities, meta, cookie extras).

Both codecs must be able to write back whatever a message holds, and a reply must never contain
``null``, ``NaN`` or an integer that a 64-bit decoder cannot hold (EDIP §1.5). These helpers
enforce that once, at message construction, so the encoders never have to.

The walk is iterative: a decoder may hand over nesting up to its own depth limit (orjson: 1024),
deeper than Python's recursion limit.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["INT64_MAX", "INT64_MIN", "UINT64_MAX", "check_json_object", "check_json_value"]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1


def check_json_value(value: object, *, where: str, allow_null: bool) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``value`` is a JSON value both codecs can write.

    Allowed: ``str``, ``bool``, ``int`` in the signed/unsigned 64-bit range, finite ``float``,
    ``list``/``tuple`` and ``dict`` with ``str`` keys, recursively (other mappings are refused:
    the encoders only write dicts); ``None`` only when ``allow_null``. Containers that contain
    themselves are rejected.

    Args:
        value: the value to check.
        where: the field name used in error messages (e.g. ``"capabilities"``).
        allow_null: whether ``None`` may appear (requests may carry ``null``, replies may not).
    """
    # Depth-first walk over containers with an explicit stack of (container, path). Scalars are
    # checked in place, so a long number list costs one loop and no string work; paths are only
    # spelled out for containers and errors. A ``_Leave`` entry takes a container off the current
    # path: a container shared by two branches is fine, one that contains itself is not.
    if not _is_container(value):
        _check_scalar(value, where, None, allow_null)
        return
    stack: list[tuple[object, str]] = [(value, where)]
    on_path: set[int] = set()
    while stack:
        item, path = stack.pop()
        if type(item) is _Leave:
            on_path.discard(item.ident)
            continue
        ident = id(item)
        if ident in on_path:
            raise ValueError(f"{path}: the value contains itself")
        on_path.add(ident)
        stack.append((_Leave(ident), path))
        children: Iterable[tuple[str | int, object]]
        if isinstance(item, dict):
            for key in item:
                if type(key) is not str:
                    raise TypeError(f"{path}: object keys must be strings, got {key!r:.40}")
            children = item.items()
        else:
            sequence: list[object] | tuple[object, ...] = item  # type: ignore[assignment]
            children = enumerate(sequence)
        isfinite = math.isfinite
        for key, sub in children:
            kind = type(sub)
            # The common scalars inline (a function call per element would triple the cost).
            if (kind is float and isfinite(sub)) or kind is str or kind is bool:  # type: ignore[arg-type]
                continue
            if kind is list or kind is tuple or isinstance(sub, dict):
                stack.append((sub, _path(path, key)))
            else:
                _check_scalar(sub, path, key, allow_null)


def _is_container(value: object) -> bool:
    kind = type(value)
    return kind is list or kind is tuple or isinstance(value, dict)


def _check_scalar(value: object, parent: str, key: str | int | None, allow_null: bool) -> None:
    kind = type(value)
    if kind is float:
        if math.isfinite(value):  # type: ignore[arg-type]
            return
        raise ValueError(f"{_path(parent, key)}: {value} is not a finite number")
    if kind is bool or isinstance(value, str):
        return
    if kind is int:
        if INT64_MIN <= value <= UINT64_MAX:  # type: ignore[operator]
            return
        raise ValueError(f"{_path(parent, key)}: integer {value} is outside the 64-bit range")
    if value is None:
        if allow_null:
            return
        raise ValueError(f"{_path(parent, key)}: null is not allowed")
    raise TypeError(f"{_path(parent, key)}: {kind.__name__} is not a JSON value")


_MAX_PATH = 100


def _path(parent: str, key: str | int | None) -> str:
    """``parent.key`` / ``parent[index]``, shortened from the left when very long."""
    if key is None:
        path = parent
    elif isinstance(key, int):
        path = f"{parent}[{key}]"
    else:
        path = f"{parent}.{key}"
    return path if len(path) <= _MAX_PATH else "..." + path[-(_MAX_PATH - 3) :]


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
