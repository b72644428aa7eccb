"""A robust aggregator for edgefl: coordinate-wise median or trimmed mean of buffered updates.

Registered as ``median`` in the ``edgefl.aggregators`` entry point group (see ``pyproject.toml``).
It implements :class:`edgefl.api.Aggregator` and depends on nothing of edgefl but ``edgefl.api``.

Memory is bounded: the buffered updates live in one preallocated ``capacity x parameters`` float32
matrix (``capacity`` defaults to the job's ``num_updates_for_model``), so a median, which needs
every update, still costs at most K model copies however many updates the job receives.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from collections.abc import Mapping

    from edgefl.api import AggregatorSettings, Update, Weights

__all__ = ["CoordinateMedian", "coordinate_median", "trimmed_mean"]

__version__ = "0.1.0"

Matrix = npt.NDArray[np.float32]
Layout = dict[str, tuple[int, int, tuple[int, ...]]]
"""Parameter name -> (offset in a row, element count, shape)."""


def coordinate_median(rows: Matrix) -> npt.NDArray[np.float64]:
    """The median of each column of ``rows`` (one row per update)."""
    if rows.shape[0] == 0:
        raise ValueError("no updates to aggregate")
    return np.median(rows, axis=0).astype(np.float64)


def trimmed_mean(rows: Matrix, trim: float) -> npt.NDArray[np.float64]:
    """The mean of each column after dropping the ``floor(trim * n)`` lowest and highest values.

    >>> trimmed_mean(np.array([[1.0], [2.0], [3.0], [100.0]], np.float32), 0.25)
    array([2.5])
    """
    n = rows.shape[0]
    if n == 0:
        raise ValueError("no updates to aggregate")
    if not 0.0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5), got {trim!r}")
    cut = math.floor(trim * n)
    ordered = np.sort(rows, axis=0)
    mean: npt.NDArray[np.float64] = ordered[cut : n - cut].mean(axis=0, dtype=np.float64)
    return mean


class CoordinateMedian:
    """The ``median`` aggregator.

    Args:
        settings: the job's aggregation settings; a new version is ready after
            ``num_updates_for_model`` updates, and ``global_lr`` scales the step.
        statistic: ``"median"`` (default) or ``"trimmed_mean"``.
        trim: fraction cut from each end for ``"trimmed_mean"``, in ``[0, 0.5)`` (default 0.1).
        capacity: updates held at most (default: ``num_updates_for_model``).
    """

    def __init__(
        self,
        settings: AggregatorSettings,
        *,
        statistic: Literal["median", "trimmed_mean"] = "median",
        trim: float = 0.1,
        capacity: int | None = None,
    ) -> None:
        if statistic not in ("median", "trimmed_mean"):
            raise ValueError(f"statistic must be 'median' or 'trimmed_mean', got {statistic!r}")
        if isinstance(trim, bool) or not isinstance(trim, int | float) or not 0 <= trim < 0.5:
            raise ValueError(f"trim must be a number in [0, 0.5), got {trim!r}")
        capacity = settings.num_updates_for_model if capacity is None else capacity
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        if capacity < settings.num_updates_for_model:
            raise ValueError(
                f"capacity {capacity} is below num_updates_for_model "
                f"{settings.num_updates_for_model}: the buffer would fill before a version"
            )
        self.settings = settings
        self.statistic = statistic
        self.trim = float(trim)
        self.capacity = capacity
        self._layout: Layout | None = None
        self._rows: Matrix | None = None
        self._count = 0

    def _check(
        self, delta: Mapping[str, np.ndarray]
    ) -> dict[str, tuple[int, int, tuple[int, ...]]]:
        if self._layout is None:
            layout: Layout = {}
            offset = 0
            for name, array in delta.items():
                layout[name] = (offset, int(array.size), tuple(array.shape))
                offset += int(array.size)
        else:
            layout = self._layout
            if delta.keys() != layout.keys():
                raise ValueError(
                    f"update.delta keys {sorted(delta)} differ from the first update's "
                    f"{sorted(layout)}"
                )
        for name, array in delta.items():
            if tuple(array.shape) != layout[name][2]:
                raise ValueError(
                    f"update.delta[{name!r}] has shape {array.shape}, expected {layout[name][2]}"
                )
            if not np.isfinite(array).all():
                raise ValueError(f"update.delta[{name!r}] contains NaN or infinite values")
        return layout

    def accept(self, update: Update, current_version: int) -> None:
        """Copy the update into the next free row.

        Raises:
            ValueError: the update is from the future, its tensors are unusable, or the buffer
                is full; nothing changes.
        """
        if update.version > current_version:
            raise ValueError(f"update.version {update.version} is newer than {current_version}")
        layout = self._check(update.delta)
        if self._count >= self.capacity:
            raise ValueError(f"buffer full ({self.capacity} updates): aggregate first")
        if self._rows is None:
            total = sum(size for _, size, _ in layout.values())
            self._rows = np.empty((self.capacity, total), dtype=np.float32)
        self._layout = layout
        row = self._rows[self._count]
        for name, (offset, size, _) in layout.items():
            row[offset : offset + size] = np.ravel(update.delta[name])
        self._count += 1

    def ready(self, current_version: int, selected: int) -> bool:
        """True once ``num_updates_for_model`` updates are held."""
        return self._count >= self.settings.num_updates_for_model

    def aggregate(self, weights: Weights, current_version: int) -> Weights:
        """``W + global_lr * statistic(updates)``; every key of ``weights`` is kept."""
        new = {name: np.array(w, dtype=np.float32, copy=True) for name, w in weights.items()}
        if self._rows is None or self._layout is None or self._count == 0:
            return new
        unknown = sorted(self._layout.keys() - weights.keys())
        if unknown:
            raise ValueError(f"updates name tensors the model does not have: {unknown}")
        rows = self._rows[: self._count]
        if self.statistic == "median":
            robust = coordinate_median(rows)
        else:
            robust = trimmed_mean(rows, self.trim)
        lr = self.settings.global_lr
        for name, (offset, size, shape) in self._layout.items():
            step = robust[offset : offset + size].reshape(shape)
            new[name] = (weights[name].astype(np.float64) + lr * step).astype(np.float32)
        self._count = 0
        return new

    def pending(self) -> int:
        """Updates held."""
        return self._count

    def state_dict(self) -> dict[str, np.ndarray]:
        """No state survives a version."""
        return {}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Accepts only the empty state."""
        if state:
            raise ValueError(f"median has no state, got keys {sorted(state)}")
