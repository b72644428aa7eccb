"""The example plugin's kernels and class, imported from its source tree (no install needed)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from edgefl.api import Aggregator, AggregatorSettings, Update
from plugins import AGGREGATORS, Registry

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import ModuleType

SOURCE = (
    Path(__file__).resolve().parents[3] / "examples/plugin/src/edgefl_example_median/__init__.py"
)


@pytest.fixture(scope="module")
def median() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("edgefl_example_median", SOURCE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def settings(k: int = 3, lr: float = 1.0) -> AggregatorSettings:
    return AggregatorSettings(k, lr, False, None, 8)


def upd(values: list[float], version: int = 1) -> Update:
    return Update("d", "t", version, {"w": np.array(values, np.float32).reshape(2, 2)})


ROWS = np.array([[1, 10, 0, 5], [2, 20, 0, 5], [100, -5, 0, 5], [3, 30, 1, 5]], np.float32)


def test_kernels(median: ModuleType) -> None:
    np.testing.assert_array_equal(median.coordinate_median(ROWS[:3]), [2, 10, 0, 5])
    np.testing.assert_array_equal(median.coordinate_median(ROWS), [2.5, 15, 0, 5])
    # trim 0.25 of 4 rows: drop one lowest and one highest per column
    np.testing.assert_array_equal(median.trimmed_mean(ROWS, 0.25), [2.5, 15, 0, 5])
    np.testing.assert_allclose(median.trimmed_mean(ROWS, 0.0), [26.5, 13.75, 0.25, 5])
    with pytest.raises(ValueError, match="trim"):
        median.trimmed_mean(ROWS, 0.5)
    with pytest.raises(ValueError, match="no updates"):
        median.coordinate_median(ROWS[:0])


def test_aggregator(median: ModuleType) -> None:
    registry = Registry({AGGREGATORS: {"median": median.CoordinateMedian}})
    agg = registry.aggregator("median", settings(k=4, lr=0.5), {"statistic": "trimmed_mean"})
    assert isinstance(agg, Aggregator)
    for row in ROWS:
        assert not agg.ready(1, selected=0)
        agg.accept(upd(row.tolist()), 1)
    assert agg.ready(1, selected=0)
    with pytest.raises(ValueError, match="buffer full"):
        agg.accept(upd([0, 0, 0, 0]), 1)
    new = agg.aggregate({"w": np.ones((2, 2), np.float32), "x": np.zeros(3, np.float32)}, 1)
    # trim 0.1 of 4 rows cuts nothing: the plain mean, halved
    np.testing.assert_allclose(new["w"], 1 + 0.5 * np.array([[26.5, 13.75], [0.25, 5]]))
    np.testing.assert_array_equal(new["x"], [0, 0, 0])
    assert agg.pending() == 0


def test_rejections(median: ModuleType) -> None:
    agg = median.CoordinateMedian(settings())
    agg.accept(upd([1, 2, 3, 4]), 1)
    with pytest.raises(ValueError, match="NaN"):
        agg.accept(upd([1, 2, 3, float("nan")]), 1)
    with pytest.raises(ValueError, match="shape"):
        agg.accept(Update("d", "t", 1, {"w": np.zeros(4, np.float32)}), 1)
    with pytest.raises(ValueError, match="newer"):
        agg.accept(upd([1, 2, 3, 4], version=2), 1)
    assert agg.pending() == 1
    with pytest.raises(ValueError, match="capacity 2 is below num_updates_for_model 3"):
        median.CoordinateMedian(settings(), capacity=2)
    with pytest.raises(ValueError, match="statistic"):
        median.CoordinateMedian(settings(), statistic="mode")
