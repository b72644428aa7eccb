"""Numpy kernels shared by the built-in aggregators.

Everything here is a pure function over ``name -> array`` maps (``add_into`` mutates only the sums
it is given). Running sums are float32 like the model, so folding an update is one vectorised add
per tensor; the once-per-version combination is done in float64 and cast back to float32.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, TypeAlias

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from collections.abc import Mapping

    from edgefl.api import FloatArray, Weights

__all__ = [
    "Float64Array",
    "Schema",
    "add_into",
    "check_delta",
    "check_fraction",
    "check_not_newer",
    "check_number",
    "copy_weights",
    "load_velocity",
    "schema_of",
    "server_step",
    "velocity_state",
    "zeros_for",
]

Float64Array: TypeAlias = npt.NDArray[np.float64]
Schema: TypeAlias = dict[str, tuple[int, ...]]
"""Parameter name -> shape."""

_VELOCITY = "momentum."


def schema_of(delta: Mapping[str, np.ndarray]) -> Schema:
    """The key set and shapes of ``delta``."""
    return {name: tuple(int(n) for n in array.shape) for name, array in delta.items()}


def _all_finite(array: np.ndarray) -> bool:
    """Whether every element is finite once stored as float32 (the dtype of the sums)."""
    if array.dtype != np.float32:
        with np.errstate(over="ignore", invalid="ignore"):
            array = array.astype(np.float32)
    return bool(np.isfinite(array).all())


def check_not_newer(version: int, current_version: int) -> None:
    """Refuse an update trained from a version the server has not published yet.

    Raises:
        ValueError: ``version`` is newer than ``current_version``.
    """
    if version > current_version:
        raise ValueError(
            f"update.version {version} is newer than the current version {current_version}"
        )


def check_delta(delta: Mapping[str, np.ndarray], schema: Schema | None) -> Schema:
    """Validate one update's tensors against ``schema`` (``None``: this is the first update).

    Returns:
        The schema to keep (``schema`` itself, or the one ``delta`` establishes).

    Raises:
        ValueError: naming the tensor whose key, shape, dtype or values are unusable.
    """
    if not delta:
        raise ValueError("update.delta is empty")
    for name, array in delta.items():
        if not isinstance(array, np.ndarray):
            raise ValueError(f"update.delta[{name!r}] is not a numpy array")
        if array.dtype.kind != "f":
            raise ValueError(f"update.delta[{name!r}] has dtype {array.dtype}, expected float32")
    if schema is None:
        schema = schema_of(delta)
    else:
        if delta.keys() != schema.keys():
            missing = sorted(schema.keys() - delta.keys())
            unexpected = sorted(delta.keys() - schema.keys())
            raise ValueError(
                "update.delta key set differs from the first update's: "
                f"missing {missing}, unexpected {unexpected}"
            )
        for name, array in delta.items():
            if array.shape != schema[name]:
                raise ValueError(
                    f"update.delta[{name!r}] has shape {array.shape}, expected {schema[name]}"
                )
    for name, array in delta.items():
        if not _all_finite(array):
            raise ValueError(
                f"update.delta[{name!r}] contains NaN or infinite values (or values beyond "
                "the float32 range)"
            )
    return schema


def zeros_for(schema: Schema) -> Weights:
    """Zero float32 sums for ``schema``."""
    return {name: np.zeros(shape, dtype=np.float32) for name, shape in schema.items()}


def add_into(sums: Weights, delta: Mapping[str, np.ndarray], scale: float = 1.0) -> None:
    """``sums[name] += scale * delta[name]`` in place, for every name of ``delta``.

    The caller has validated ``delta`` (``check_delta``); with ``scale == 1`` this allocates
    nothing.
    """
    if scale == 1.0:
        for name, array in delta.items():
            target = sums[name]
            target += array  # in place, same_kind casting
    else:
        for name, array in delta.items():
            np.add(sums[name], np.multiply(array, scale), out=sums[name], casting="same_kind")


def copy_weights(weights: Mapping[str, np.ndarray]) -> Weights:
    """A float32 copy of every tensor."""
    return {name: np.array(array, dtype=np.float32, copy=True) for name, array in weights.items()}


def server_step(
    weights: Mapping[str, np.ndarray],
    delta: Mapping[str, Float64Array],
    global_lr: float,
    *,
    momentum: float = 0.0,
    velocity: Mapping[str, np.ndarray] | None = None,
) -> tuple[Weights, Weights]:
    """One server SGD step: ``W + global_lr * v`` with ``v = momentum * velocity + delta``.

    With ``momentum == 0`` this is ``W + global_lr * delta`` (NVFlare's update). Keys of
    ``weights`` without a delta keep their value (FEDBUFF.md §9.3).

    Returns:
        ``(new_weights, new_velocity)``: float32 copies; every key of ``weights`` is in
        ``new_weights``; ``new_velocity`` is empty when ``momentum == 0``.

    Raises:
        ValueError: ``delta`` names a tensor that ``weights`` lacks, shapes differ, or a result
            overflows float32.
    """
    unknown = sorted(delta.keys() - weights.keys())
    if unknown:
        raise ValueError(f"aggregated update names tensors the model does not have: {unknown}")
    new_weights: Weights = {}
    new_velocity: Weights = {}
    for name, w in weights.items():
        d = delta.get(name)
        if d is None:
            new_weights[name] = np.array(w, dtype=np.float32, copy=True)
            if velocity is not None and momentum > 0.0 and name in velocity:
                new_velocity[name] = np.array(velocity[name], dtype=np.float32, copy=True)
            continue
        if d.shape != w.shape:
            raise ValueError(f"aggregated update for {name!r} has shape {d.shape}, model {w.shape}")
        step: Float64Array = d
        if momentum > 0.0:
            previous = None if velocity is None else velocity.get(name)
            if previous is not None:
                step = np.multiply(previous, momentum, dtype=np.float64)
                step += d
            new_velocity[name] = step.astype(np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            updated = np.multiply(step, global_lr)
            updated += w
            new_weights[name] = updated.astype(np.float32)
        if not _all_finite(new_weights[name]):
            raise ValueError(f"aggregation of {name!r} overflowed the float32 range")
    return new_weights, new_velocity


def velocity_state(velocity: Mapping[str, FloatArray]) -> dict[str, np.ndarray]:
    """``state_dict`` form of a momentum buffer: ``momentum.<name>`` -> array (copies)."""
    return {_VELOCITY + name: np.array(v, copy=True) for name, v in velocity.items()}


def load_velocity(state: Mapping[str, np.ndarray]) -> Weights:
    """Inverse of ``velocity_state``.

    Raises:
        ValueError: a key is not ``momentum.<name>`` or a value is not a finite float array.
    """
    velocity: Weights = {}
    for key, array in state.items():
        if not key.startswith(_VELOCITY) or len(key) == len(_VELOCITY):
            raise ValueError(f"state key {key!r} is not 'momentum.<parameter name>'")
        if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
            raise ValueError(f"state[{key!r}] must be a float array")
        if not _all_finite(array):
            raise ValueError(f"state[{key!r}] contains NaN or infinite values")
        velocity[key[len(_VELOCITY) :]] = np.array(array, dtype=np.float32, copy=True)
    return velocity


def check_number(name: str, value: object, *, low: float, high: float = math.inf) -> float:
    """``value`` as a float in ``[low, high]``, or ``ValueError``/``TypeError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")
    return number


def check_fraction(name: str, value: object) -> float:
    """``value`` as a float in ``[0, 1)`` (momentum), or an error naming ``name``."""
    number = check_number(name, value, low=0.0, high=1.0)
    if number >= 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return number
