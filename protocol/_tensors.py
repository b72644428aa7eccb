"""Tensor maps (EDIP §6.2, §6.4): the device forms and CBOR typed arrays ↔ float32 arrays.

A result's ``data`` maps parameter names (``net.``-prefixed) to tensor objects:

=========  =====================================  =============================================
form       keys                                   ``data``
=========  =====================================  =============================================
android    ``shape``, ``sizes`` (equal)           flat number list, row-major
ios        ``sizes``, ``strides`` (element, C)    flat number list, row-major
python     ``sizes``                              nested lists (``tensor.tolist()``)
cbor       ``sizes``                              RFC 8746 float32 typed array (numpy, 1-D)
=========  =====================================  =============================================

Decoding is driven by the schema (the model's trainable parameters), never by what the device
claims: every size is compared with the schema before anything is allocated, and the only arrays
built have the schema's element count, so the work is bounded by the body the server already holds.

Speed (the JSON path is the hot one; ``bench/bench_decode.py`` measures it): a flat list goes
through ``array.array("f", list)``, one C loop that also refuses strings, ``None``, nested lists
and integers too large for a float; numpy then views that buffer without a copy. Booleans are the
one thing that loop lets through (``bool`` is an ``int``), and they can only hide among values equal
to 0 or 1, so only those few elements are type-checked. Finiteness is checked on the float32
values, which also catches finite doubles that overflow float32.
"""

from __future__ import annotations

import array
import math
from collections.abc import Mapping, Sequence
from itertools import chain
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np
import orjson

from ._errors import InvalidResult

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["NET_PREFIX", "TensorForm", "decode_tensor_map", "encode_tensor_map"]

NET_PREFIX = "net."
"""The DeviceModel prefix on parameter names (EDIP §6.2); stripped once on decoding."""

TensorForm: TypeAlias = Literal["android", "ios", "python", "cbor"]

_FORMS: tuple[TensorForm, ...] = ("android", "ios", "python", "cbor")
_MAX_NAMES_IN_MESSAGE = 5
_MAX_NAME_CHARS = 80


def _show(name: str) -> str:
    """A tensor name for an error message, bounded (names come from the device)."""
    if len(name) > _MAX_NAME_CHARS:
        name = name[: _MAX_NAME_CHARS - 3] + "..."
    return repr(name)


def _show_names(names: Sequence[str]) -> str:
    shown = ", ".join(_show(name) for name in names[:_MAX_NAMES_IN_MESSAGE])
    if len(names) > _MAX_NAMES_IN_MESSAGE:
        shown += f" and {len(names) - _MAX_NAMES_IN_MESSAGE} more"
    return shown


def _strip_prefix(name: str) -> str:
    return name[len(NET_PREFIX) :] if name.startswith(NET_PREFIX) else name


def _c_strides(shape: tuple[int, ...]) -> list[int]:
    """Row-major element strides: (4, 2) -> [2, 1]."""
    strides = [1] * len(shape)
    for axis in range(len(shape) - 2, -1, -1):
        strides[axis] = strides[axis + 1] * shape[axis + 1]
    return strides


def _int_list(value: object) -> tuple[int, ...] | None:
    """``value`` as a tuple of ints if it is a list of ints (no bools), else ``None``."""
    if not isinstance(value, list | tuple):
        return None
    items: Sequence[object] = value
    if not all(type(item) is int for item in items):
        return None
    return tuple(items)  # type: ignore[arg-type]


def _check_dims(name: str, tensor: Mapping[str, object], shape: tuple[int, ...]) -> None:
    """``sizes`` and ``shape`` (whichever are sent, at least one) must equal the schema's shape;
    ``strides``, if sent, must be the row-major strides of that shape."""
    declared = False
    for key in ("sizes", "shape"):
        if key not in tensor:
            continue
        dims = _int_list(tensor[key])
        if dims is None:
            raise InvalidResult(
                f"tensor {_show(name)}: {key} must be a list of integers", tensor=name
            )
        if dims != shape:
            shown = list(dims) if len(dims) <= 8 else f"a list of {len(dims)} sizes"
            raise InvalidResult(
                f"tensor {_show(name)}: {key} {shown} does not match the model's shape "
                f"{list(shape)}",
                tensor=name,
            )
        declared = True
    if not declared:
        raise InvalidResult(f"tensor {_show(name)}: missing sizes", tensor=name)
    if "strides" in tensor:
        strides = _int_list(tensor["strides"])
        if strides is None or list(strides) != _c_strides(shape):
            raise InvalidResult(
                f"tensor {_show(name)}: strides must be the row-major strides "
                f"{_c_strides(shape)} of shape {list(shape)}",
                tensor=name,
            )


def _flatten_nested(name: str, data: list[Any], shape: tuple[int, ...]) -> list[Any]:
    """Flatten nested lists level by level, checking every length against ``shape``."""
    level: list[Any] = data
    for depth, size in enumerate(shape[:-1]):
        if depth == 0:
            if len(level) != size:
                raise InvalidResult(
                    f"tensor {_show(name)}: {len(level)} rows at depth 0, expected {size}",
                    tensor=name,
                )
        inner = shape[depth + 1]
        for row in level:
            if type(row) is not list or len(row) != inner:
                raise InvalidResult(
                    f"tensor {_show(name)}: ragged or malformed nesting at depth {depth + 1}, "
                    f"expected lists of {inner} for shape {list(shape)}",
                    tensor=name,
                )
        level = list(chain.from_iterable(level))
    return level


def _from_list(name: str, data: list[Any], shape: tuple[int, ...], count: int) -> np.ndarray:
    if len(shape) >= 2 and data and type(data[0]) is list:
        data = _flatten_nested(name, data, shape)
    if len(data) != count:
        raise InvalidResult(
            f"tensor {_show(name)}: {len(data)} values, expected {count} for shape {list(shape)}",
            tensor=name,
        )
    try:
        buffer = array.array("f", data)
    except (TypeError, OverflowError):
        raise InvalidResult(
            f"tensor {_show(name)}: data must contain only numbers", tensor=name
        ) from None
    values = np.frombuffer(buffer, dtype=np.float32)
    # bool passed array.array (bool is an int); it can only hide where a value is 0 or 1.
    suspects = np.flatnonzero((values == 0) | (values == 1))
    if suspects.size and bool in set(map(type, map(data.__getitem__, suspects.tolist()))):
        raise InvalidResult(
            f"tensor {_show(name)}: data must contain only numbers, not booleans", tensor=name
        )
    return values


def _from_ndarray(name: str, data: np.ndarray, count: int, shape: tuple[int, ...]) -> np.ndarray:
    if data.dtype.kind != "f" or data.ndim != 1:
        raise InvalidResult(
            f"tensor {_show(name)}: data must be a 1-D float typed array", tensor=name
        )
    if data.size != count:
        raise InvalidResult(
            f"tensor {_show(name)}: {data.size} values, expected {count} for shape {list(shape)}",
            tensor=name,
        )
    if data.dtype == np.float32 and data.dtype.isnative:
        return data
    with np.errstate(over="ignore", invalid="ignore"):
        return data.astype(np.float32)


def _decode_one(name: str, tensor: object, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(tensor, Mapping):
        raise InvalidResult(
            f"tensor {_show(name)}: must be an object with sizes and data", tensor=name
        )
    _check_dims(name, tensor, shape)
    if "data" not in tensor:
        raise InvalidResult(f"tensor {_show(name)}: missing data", tensor=name)
    data = tensor["data"]
    count = math.prod(shape)
    if isinstance(data, np.ndarray):
        values = _from_ndarray(name, data, count, shape)
    elif isinstance(data, list):
        values = _from_list(name, data, shape, count)
    elif not shape and type(data) in (int, float):
        # A 0-d tensor: Python's tolist() gives a bare number.
        values = _from_list(name, [data], shape, count)
    else:
        raise InvalidResult(f"tensor {_show(name)}: data must be a list of numbers", tensor=name)
    if not np.isfinite(values).all():
        raise InvalidResult(
            f"tensor {_show(name)}: contains NaN or infinity (as float32)", tensor=name
        )
    values = values.reshape(shape)
    if type(values) is not np.ndarray:  # a CBOR typed-array view: hand out the plain type
        values = values.view(np.ndarray)
    values.flags.writeable = False
    return values


def decode_tensor_map(
    data: Mapping[str, object], schema: Mapping[str, tuple[int, ...]]
) -> dict[str, npt.NDArray[np.float32]]:
    """Validate a result's tensor map against ``schema`` and convert it (EDIP §6.4 step 3).

    Accepts the Android, iOS and Python forms and CBOR typed arrays (see the module docstring).
    One leading ``net.`` is stripped from every name; the stripped key set must equal the schema's;
    ``sizes`` (or ``shape``) must equal the schema shape, ``strides`` (if sent) must be row-major;
    the element count must match; every value must be a finite float32 number (no booleans).

    Args:
        data: ``RawResult.data`` as decoded.
        schema: parameter name (without ``net.``) → shape.

    Returns:
        Name (without ``net.``) → read-only, C-contiguous float32 array of the schema's shape.
        CBOR float32 arrays are views of the request body (no copy); copy before writing.

    Raises:
        InvalidResult: any inconsistency, with a message naming the tensor (as sent).
    """
    if not isinstance(data, Mapping):
        raise InvalidResult("result data must be an object of tensors")
    if not data:
        raise InvalidResult("result has no tensors")
    sent: dict[str, str] = {}
    for name in data:
        if not isinstance(name, str):
            raise InvalidResult("tensor names must be strings")
        key = _strip_prefix(name)
        if key in sent:
            raise InvalidResult(
                f"tensors {_show(sent[key])} and {_show(name)} name the same parameter",
                tensor=name,
            )
        sent[key] = name
    missing = [key for key in schema if key not in sent]
    unexpected = [sent[key] for key in sent if key not in schema]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors {_show_names([NET_PREFIX + k for k in missing])}")
        if unexpected:
            parts.append(f"unexpected tensors {_show_names(unexpected)}")
        raise InvalidResult(
            "tensor names do not match the model: " + "; ".join(parts),
            tensor=(unexpected or [NET_PREFIX + k for k in missing])[0],
        )
    return {key: _decode_one(sent[key], data[sent[key]], tuple(schema[key])) for key in schema}


def _shortest_float32_lists(array_: np.ndarray) -> Any:
    """Nested Python lists of the float32 values, each the double nearest its shortest decimal.

    ``tolist()`` would give the exact double of each float32 (``0.0012000000569969416``), which
    JSON writes with 17 digits; the SDKs write the short float32 spelling (``0.0012``). orjson
    writes float32 arrays that way, and parsing that text back gives doubles that orjson writes
    the same short way again and that round back to exactly the same float32 values.
    """
    if array_.ndim == 0:  # orjson writes arrays of one dimension or more; a 0-d one is a number
        return orjson.loads(orjson.dumps(array_.reshape(1), option=orjson.OPT_SERIALIZE_NUMPY))[0]
    return orjson.loads(orjson.dumps(array_, option=orjson.OPT_SERIALIZE_NUMPY))


def encode_tensor_map(
    tensors: Mapping[str, npt.NDArray[np.floating[Any]]], form: TensorForm
) -> dict[str, object]:
    """Write ``tensors`` as a result's ``data`` map the way a device of ``form`` does.

    Names get the ``net.`` prefix (unless they already have it). ``"android"``: ``shape`` +
    ``sizes`` + flat list; ``"ios"``: ``sizes`` + ``strides`` + flat list; ``"python"``: ``sizes``
    + nested lists; ``"cbor"``: ``sizes`` + a 1-D float32 array, which the CBOR encoder writes as
    an RFC 8746 typed array (and the JSON encoder as a list).

    Raises:
        ValueError: unknown ``form``, or a value that is not a finite float array.
    """
    if form not in _FORMS:
        raise ValueError(f"form must be one of {', '.join(_FORMS)}, got {form!r}")
    out: dict[str, object] = {}
    for name, value in tensors.items():
        arr = np.asarray(value)
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"tensor {name!r}: expected a float array, got dtype {arr.dtype}")
        arr = np.array(arr, dtype=np.float32, order="C", copy=None)
        if not np.isfinite(arr).all():
            raise ValueError(f"tensor {name!r}: contains NaN or infinity")
        shape = list(arr.shape)
        wire_name = name if name.startswith(NET_PREFIX) else NET_PREFIX + name
        if form == "cbor":
            out[wire_name] = {"sizes": shape, "data": arr.reshape(-1)}
        elif form == "python":
            out[wire_name] = {"sizes": shape, "data": _shortest_float32_lists(arr)}
        elif form == "ios":
            out[wire_name] = {
                "sizes": shape,
                "strides": _c_strides(arr.shape),
                "data": _shortest_float32_lists(arr.reshape(-1)),
            }
        else:
            out[wire_name] = {
                "shape": shape,
                "sizes": list(shape),
                "data": _shortest_float32_lists(arr.reshape(-1)),
            }
    return out
