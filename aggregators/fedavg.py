"""FedAvg: synchronous federated averaging (entry point ``fedavg``).

A new version is produced once every device of the current selection has reported: when
``device_selection_size`` contributions are buffered, or earlier when contributions are buffered
and no selected device is still training (devices dropped out or the selection could not be
filled). The new model is

    W_new = W + global_lr * v,   v = momentum * v_prev + sum_i(n_i * delta_i) / sum_i(n_i)

with ``n_i`` the update's ``num_samples`` (McMahan et al., 2017; ``momentum > 0`` is FedAvgM).
Pair it with ``min_hole_to_fill = device_selection_size`` so that devices are selected in cohorts.
Updates from an older version (a straggler of the previous cohort) are averaged in like the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from aggregators._common import (
    Float64Array,
    Schema,
    add_into,
    check_delta,
    check_fraction,
    check_not_newer,
    load_velocity,
    server_step,
    velocity_state,
    zeros_for,
)
from edgefl.api import AggregatorSettings, Update, Weights

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["FedAvg", "fedavg_average"]


def fedavg_average(
    weighted_sums: Mapping[str, np.ndarray], total_samples: int
) -> dict[str, Float64Array]:
    """``sum_i(n_i * delta_i) / sum_i(n_i)`` from the sample-weighted running sums.

    Raises:
        ValueError: ``total_samples < 1``.
    """
    if total_samples < 1:
        raise ValueError(f"total_samples must be >= 1, got {total_samples}")
    return {name: s.astype(np.float64) / total_samples for name, s in weighted_sums.items()}


class FedAvg:
    """The ``fedavg`` aggregator.

    Args:
        settings: the job's aggregation settings (``device_selection_size``, ``global_lr``).
        momentum: server momentum in ``[0, 1)`` (default 0: plain FedAvg).
    """

    def __init__(self, settings: AggregatorSettings, *, momentum: float = 0.0) -> None:
        if not isinstance(settings, AggregatorSettings):
            raise TypeError(f"settings must be an AggregatorSettings, got {type(settings)}")
        self.settings = settings
        self.momentum = check_fraction("momentum", momentum)
        self._schema: Schema | None = None
        self._sums: Weights | None = None
        self._samples = 0
        self._count = 0
        self._velocity: Weights = {}

    def accept(self, update: Update, current_version: int) -> None:
        """Add ``num_samples * delta`` to the running sum.

        Raises:
            ValueError: the update's version is newer than ``current_version`` or its tensors
                are unusable; nothing changes.
        """
        check_not_newer(update.version, current_version)
        schema = check_delta(update.delta, self._schema)
        self._schema = schema
        if self._sums is None:
            self._sums = zeros_for(schema)
        add_into(self._sums, update.delta, float(update.num_samples))
        self._samples += update.num_samples
        self._count += 1

    def ready(self, current_version: int, selected: int) -> bool:
        """True when the whole cohort has reported (see the module docstring)."""
        if self._count >= self.settings.device_selection_size:
            return True
        return self._count > 0 and selected == 0

    def aggregate(self, weights: Weights, current_version: int) -> Weights:
        """Produce version ``current_version + 1`` and empty the running sum."""
        if self._sums is None or self._count == 0:
            return {name: np.array(w, dtype=np.float32, copy=True) for name, w in weights.items()}
        average = fedavg_average(self._sums, self._samples)
        new_weights, velocity = server_step(
            weights,
            average,
            self.settings.global_lr,
            momentum=self.momentum,
            velocity=self._velocity,
        )
        self._velocity = velocity
        self._sums = None
        self._samples = 0
        self._count = 0
        return new_weights

    def pending(self) -> int:
        """Updates buffered since the last ``aggregate``."""
        return self._count

    def state_dict(self) -> dict[str, np.ndarray]:
        """The server momentum buffer (empty without momentum)."""
        return velocity_state(self._velocity)

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore the momentum buffer saved by ``state_dict``."""
        self._velocity = load_velocity(state)
