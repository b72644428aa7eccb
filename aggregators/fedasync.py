"""FedAsync: every update mixed in at once (Xie, Koyejo and Gupta, "Asynchronous Federated
Optimization", 2019; entry point ``fedasync``).

The paper mixes the device's model into the global one, ``x <- (1 - a_t) x + a_t x_new`` with
``a_t = alpha * s(t - tau)``. With deltas (``x_new = x_tau + delta``) and the usual simplification
``x_tau ~ x`` this is ``x <- x + a_t * delta``, which is what we apply; a new version follows every
update. Staleness ``t - tau`` is the number of versions published since the device's version:

``constant``    ``s = 1``
``polynomial``  ``s = (1 + staleness) ** -staleness_exponent`` (default; exponent 0.5)
``hinge``       ``s = 1`` if ``staleness <= hinge_offset`` else
                ``1 / (hinge_slope * (staleness - hinge_offset) + 1)`` (paper: slope 10, offset 4)

``alpha`` defaults to the job's ``global_lr`` (NVFlare's fully-async preset, K = 1, uses
``global_lr`` as the mixing rate) and must be in ``(0, 1]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Literal, cast, get_args

import numpy as np

from aggregators._common import (
    Schema,
    add_into,
    check_delta,
    check_not_newer,
    check_number,
    server_step,
    zeros_for,
)
from edgefl.api import AggregatorSettings, Update, Weights

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["AsyncStaleness", "FedAsync", "fedasync_rate"]

AsyncStaleness = Literal["constant", "polynomial", "hinge"]
_STALENESS: Final = get_args(AsyncStaleness)


def fedasync_rate(
    alpha: float,
    staleness: int,
    *,
    function: AsyncStaleness = "polynomial",
    exponent: float = 0.5,
    hinge_slope: float = 10.0,
    hinge_offset: float = 4.0,
) -> float:
    """The mixing rate ``alpha * s(staleness)`` of one update.

    >>> fedasync_rate(0.6, 3)
    0.3
    """
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    if function == "constant":
        factor = 1.0
    elif function == "polynomial":
        factor = float((1.0 + staleness) ** -exponent)
    elif function == "hinge":
        factor = (
            1.0
            if staleness <= hinge_offset
            else 1.0 / (hinge_slope * (staleness - hinge_offset) + 1.0)
        )
    else:
        raise ValueError(f"staleness function must be one of {_STALENESS}, got {function!r}")
    return alpha * factor


class FedAsync:
    """The ``fedasync`` aggregator.

    Args:
        settings: the job's aggregation settings (``global_lr`` is the default ``alpha``).
        alpha: the base mixing rate in ``(0, 1]``.
        staleness: ``"constant"``, ``"polynomial"`` (default) or ``"hinge"``.
        staleness_exponent: exponent of the polynomial function, ``>= 0`` (default 0.5).
        hinge_slope, hinge_offset: parameters ``a`` and ``b`` of the hinge function (10, 4).
    """

    def __init__(
        self,
        settings: AggregatorSettings,
        *,
        alpha: float | None = None,
        staleness: str = "polynomial",
        staleness_exponent: float = 0.5,
        hinge_slope: float = 10.0,
        hinge_offset: float = 4.0,
    ) -> None:
        if not isinstance(settings, AggregatorSettings):
            raise TypeError(f"settings must be an AggregatorSettings, got {type(settings)}")
        if staleness not in _STALENESS:
            raise ValueError(f"staleness must be one of {_STALENESS}, got {staleness!r}")
        name = "alpha" if alpha is not None else "alpha (default: global_lr)"
        self.alpha = check_number(
            name, settings.global_lr if alpha is None else alpha, low=0.0, high=1.0
        )
        if self.alpha == 0.0:
            raise ValueError(f"{name} must be in (0, 1], got 0")
        self.staleness = cast("AsyncStaleness", staleness)
        self.staleness_exponent = check_number(
            "staleness_exponent", staleness_exponent, low=0.0, high=16.0
        )
        self.hinge_slope = check_number("hinge_slope", hinge_slope, low=0.0, high=1e6)
        self.hinge_offset = check_number("hinge_offset", hinge_offset, low=0.0, high=1e6)
        self.settings = settings
        self._schema: Schema | None = None
        self._mixed: Weights | None = None
        self._count = 0

    def rate(self, update_version: int, current_version: int) -> float:
        """The mixing rate an update trained from ``update_version`` gets now."""
        return fedasync_rate(
            self.alpha,
            current_version - update_version,
            function=self.staleness,
            exponent=self.staleness_exponent,
            hinge_slope=self.hinge_slope,
            hinge_offset=self.hinge_offset,
        )

    def accept(self, update: Update, current_version: int) -> None:
        """Scale ``update`` by its mixing rate and hold it for the next ``aggregate``.

        Raises:
            ValueError: the update's version is newer than ``current_version`` or its tensors
                are unusable; nothing changes.
        """
        check_not_newer(update.version, current_version)
        schema = check_delta(update.delta, self._schema)
        self._schema = schema
        if self._mixed is None:
            self._mixed = zeros_for(schema)
        add_into(self._mixed, update.delta, self.rate(update.version, current_version))
        self._count += 1

    def ready(self, current_version: int, selected: int) -> bool:
        """True as soon as an update is held."""
        return self._count > 0

    def aggregate(self, weights: Weights, current_version: int) -> Weights:
        """``W + sum of a_t * delta`` over the held updates (normally one)."""
        if self._mixed is None or self._count == 0:
            return {name: np.array(w, dtype=np.float32, copy=True) for name, w in weights.items()}
        mixed = {name: m.astype(np.float64) for name, m in self._mixed.items()}
        new_weights, _ = server_step(weights, mixed, 1.0)
        self._mixed = None
        self._count = 0
        return new_weights

    def pending(self) -> int:
        """Updates held since the last ``aggregate``."""
        return self._count

    def state_dict(self) -> dict[str, np.ndarray]:
        """FedAsync keeps no state across versions."""
        return {}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Accepts only the empty state.

        Raises:
            ValueError: ``state`` is not empty.
        """
        if state:
            raise ValueError(f"fedasync has no state, got keys {sorted(state)}")
