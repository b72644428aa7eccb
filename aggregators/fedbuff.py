"""FedBuff: buffered asynchronous aggregation (the default aggregator, entry point ``fedbuff``).

Device deltas are folded, as they arrive, into one running sum per model version they were trained
from; memory is the model size times the number of versions currently buffered, never the number
of updates. Once at least ``num_updates_for_model`` (K) contributions are buffered, the next
version is

    W_new = W + global_lr * v,   v = momentum * v_prev + avg,
    avg   = normalize( sum over buffered versions v_i of  s(V_new, v_i) * sum_i )

which with ``momentum = 0`` is NVFlare's ``BuffModelManager`` (FEDBUFF.md §4.4). Options:

``normalization``
    ``"count"`` (NVFlare main, default): divide by the number of buffered contributions;
    ``"per_version"`` (NVFlare 2.7.x): each version's sum divided by its own count, then added;
    ``"k"`` (FedBuff paper): divide by K.
``staleness``
    ``"none"``; ``"nvflare"``: ``1 / (1 + sqrt(V_new - v))``; ``"polynomial"`` (paper):
    ``1 / (1 + tau) ** staleness_exponent`` with ``tau = V_new - 1 - v``. Default: ``"nvflare"``
    when the job sets ``staleness_weight = true``, else ``"none"``.
``momentum``
    server SGD momentum on the averaged delta (the FedBuff paper's reference configuration uses a
    server optimizer such as SGD with momentum 0.9); 0 disables it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final, Literal, cast, get_args

import numpy as np

from aggregators._common import (
    Float64Array,
    Schema,
    add_into,
    check_delta,
    check_fraction,
    check_not_newer,
    check_number,
    load_velocity,
    server_step,
    velocity_state,
    zeros_for,
)
from edgefl.api import AggregatorSettings, Update, Weights

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "FedBuff",
    "Normalization",
    "Staleness",
    "VersionBuffer",
    "fedbuff_average",
    "staleness_factor",
]

Normalization = Literal["count", "per_version", "k"]
Staleness = Literal["none", "nvflare", "polynomial"]
_NORMALIZATIONS: Final = get_args(Normalization)
_STALENESS: Final = get_args(Staleness)


def staleness_factor(
    staleness: Staleness, new_version: int, version: int, exponent: float = 0.5
) -> float:
    """The weight of a contribution trained from ``version`` when ``new_version`` is produced.

    >>> staleness_factor("nvflare", 4, 3), staleness_factor("polynomial", 4, 2)
    (0.5, 0.7071067811865476)
    """
    if version >= new_version:
        raise ValueError(f"version {version} is not older than the new version {new_version}")
    if staleness == "none":
        return 1.0
    if staleness == "nvflare":
        return 1.0 / (1.0 + math.sqrt(new_version - version))
    if staleness == "polynomial":
        return float((1.0 + (new_version - 1 - version)) ** -exponent)
    raise ValueError(f"staleness must be one of {_STALENESS}, got {staleness!r}")


class VersionBuffer:
    """The running sum and count of contributions trained from one model version."""

    __slots__ = ("count", "sums")

    def __init__(self, sums: Weights, count: int = 0) -> None:
        self.sums = sums
        self.count = count


def fedbuff_average(
    buffers: Mapping[int, VersionBuffer],
    new_version: int,
    *,
    normalization: Normalization = "count",
    staleness: Staleness = "none",
    exponent: float = 0.5,
    k: int | None = None,
) -> dict[str, Float64Array]:
    """The staleness-weighted, normalised average of the buffered sums (FEDBUFF.md §4.4, §9.2).

    Pure: ``buffers`` is only read. Versions with ``count == 0`` are ignored.

    Args:
        buffers: model version -> its running sum and contribution count.
        new_version: the version being produced (``V + 1``).
        normalization: ``"count"``, ``"per_version"`` or ``"k"``.
        staleness: ``"none"``, ``"nvflare"`` or ``"polynomial"``.
        exponent: the polynomial staleness exponent ``a``.
        k: the buffer size K (required for ``normalization="k"``).

    Returns:
        name -> float64 averaged delta, for every name that has a contribution (empty if none).
    """
    if normalization not in _NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {_NORMALIZATIONS}, got {normalization!r}")
    if normalization == "k" and (k is None or k < 1):
        raise ValueError(f"normalization 'k' needs k >= 1, got {k!r}")
    acc: dict[str, Float64Array] = {}
    total = 0
    for version, buffer in buffers.items():
        if buffer.count <= 0:
            continue
        weight = staleness_factor(staleness, new_version, version, exponent)
        if normalization == "per_version":
            weight /= buffer.count
        total += buffer.count
        for name, s in buffer.sums.items():
            scaled = np.multiply(s, weight, dtype=np.float64)
            previous = acc.get(name)
            if previous is None:
                acc[name] = scaled
            else:
                previous += scaled
    if total == 0:
        return {}
    divisor = {"count": float(total), "per_version": 1.0, "k": float(k or 1)}[normalization]
    if divisor != 1.0:
        for name in acc:
            acc[name] /= divisor
    return acc


class FedBuff:
    """The ``fedbuff`` aggregator (see the module docstring for the formula and options).

    Args:
        settings: the job's aggregation settings (K, ``global_lr``, ``staleness_weight``,
            ``max_model_history``).
        normalization: ``"count"`` (default), ``"per_version"`` or ``"k"``.
        staleness: ``"none"``, ``"nvflare"`` or ``"polynomial"``; default from
            ``settings.staleness_weight``.
        staleness_exponent: ``a`` of the polynomial staleness, ``>= 0`` (default 0.5).
        momentum: server momentum in ``[0, 1)`` (default 0).

    Raises:
        ValueError: an option has an unknown value (the message names it).
    """

    def __init__(
        self,
        settings: AggregatorSettings,
        *,
        normalization: str = "count",
        staleness: str | None = None,
        staleness_exponent: float = 0.5,
        momentum: float = 0.0,
    ) -> None:
        if not isinstance(settings, AggregatorSettings):
            raise TypeError(f"settings must be an AggregatorSettings, got {type(settings)}")
        if normalization not in _NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {_NORMALIZATIONS}, got {normalization!r}"
            )
        if staleness is None:
            staleness = "nvflare" if settings.staleness_weight else "none"
        if staleness not in _STALENESS:
            raise ValueError(f"staleness must be one of {_STALENESS}, got {staleness!r}")
        self.settings = settings
        self.normalization = cast("Normalization", normalization)
        self.staleness = cast("Staleness", staleness)
        self.staleness_exponent = check_number(
            "staleness_exponent", staleness_exponent, low=0.0, high=16.0
        )
        self.momentum = check_fraction("momentum", momentum)
        self._schema: Schema | None = None
        self._buffers: dict[int, VersionBuffer] = {}
        self._velocity: Weights = {}

    def accept(self, update: Update, current_version: int) -> None:
        """Fold ``update`` into the running sum of its version.

        Raises:
            ValueError: the update's version is newer than ``current_version`` or older than the
                ``max_model_history`` cut-off, or its tensors are unusable; nothing changes.
        """
        check_not_newer(update.version, current_version)
        history = self.settings.max_model_history
        if history is not None and current_version - update.version >= history:
            raise ValueError(
                f"update.version {update.version} is too stale for current version "
                f"{current_version} (max_model_history={history})"
            )
        schema = check_delta(update.delta, self._schema)
        self._schema = schema
        buffer = self._buffers.get(update.version)
        if buffer is None:
            buffer = self._buffers[update.version] = VersionBuffer(zeros_for(schema))
        add_into(buffer.sums, update.delta)
        buffer.count += 1

    def ready(self, current_version: int, selected: int) -> bool:
        """True once at least ``num_updates_for_model`` contributions are buffered."""
        return self.pending() >= self.settings.num_updates_for_model

    def aggregate(self, weights: Weights, current_version: int) -> Weights:
        """Produce version ``current_version + 1`` from ``weights`` and empty every buffer."""
        average = fedbuff_average(
            self._buffers,
            current_version + 1,
            normalization=self.normalization,
            staleness=self.staleness,
            exponent=self.staleness_exponent,
            k=self.settings.num_updates_for_model,
        )
        if not average:
            return {name: np.array(w, dtype=np.float32, copy=True) for name, w in weights.items()}
        new_weights, velocity = server_step(
            weights,
            average,
            self.settings.global_lr,
            momentum=self.momentum,
            velocity=self._velocity,
        )
        self._velocity = velocity
        self._buffers.clear()
        return new_weights

    def pending(self) -> int:
        """Contributions buffered since the last ``aggregate``."""
        return sum(buffer.count for buffer in self._buffers.values())

    def buffered_versions(self) -> list[int]:
        """The model versions that currently have a running sum (for metrics and tests)."""
        return sorted(self._buffers)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The server momentum buffer (empty without momentum)."""
        return velocity_state(self._velocity)

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore the momentum buffer saved by ``state_dict``."""
        self._velocity = load_velocity(state)
