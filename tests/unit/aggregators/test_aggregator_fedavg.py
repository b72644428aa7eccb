"""FedAvg against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from aggregators.fedavg import FedAvg, fedavg_average
from edgefl.api import Aggregator, AggregatorSettings, Update


def settings(selection: int = 3, lr: float = 1.0) -> AggregatorSettings:
    return AggregatorSettings(selection, lr, False, None, selection)


def upd(device: str, values: list[float], samples: int, version: int = 2) -> Update:
    return Update(device, f"t-{device}", version, {"p": np.array(values, np.float32)}, samples)


def test_kernel() -> None:
    out = fedavg_average({"p": np.array([10.0, 4.0], np.float32)}, 4)
    np.testing.assert_array_equal(out["p"], [2.5, 1.0])
    assert out["p"].dtype == np.float64
    with pytest.raises(ValueError, match="total_samples"):
        fedavg_average({}, 0)


def test_sample_weighted_average() -> None:
    agg = FedAvg(settings(lr=0.5))
    agg.accept(upd("a", [1.0, 0.0], 1), 2)
    agg.accept(upd("b", [0.0, 1.0], 3), 2)
    assert not agg.ready(2, selected=1)
    agg.accept(upd("c", [2.0, 2.0], 4), 2)
    assert agg.ready(2, selected=0)
    # (1*[1,0] + 3*[0,1] + 4*[2,2]) / 8 = [9/8, 11/8]; W + 0.5 * that
    new = agg.aggregate({"p": np.array([1.0, 1.0], np.float32), "b": np.ones(2, np.float32)}, 2)
    np.testing.assert_allclose(new["p"], [1.5625, 1.6875], atol=1e-7)
    np.testing.assert_array_equal(new["b"], [1.0, 1.0])
    assert agg.pending() == 0
    assert not agg.ready(3, selected=0)


def test_ready_when_nobody_else_is_training() -> None:
    agg = FedAvg(settings(selection=5))
    assert not agg.ready(1, selected=0)  # nothing buffered
    agg.accept(upd("a", [1.0], 2, version=1), 1)
    assert not agg.ready(1, selected=4)
    assert agg.ready(1, selected=0)


def test_momentum_round_trip() -> None:
    agg = FedAvg(settings(selection=1), momentum=0.5)
    agg.accept(upd("a", [2.0], 1, version=1), 1)
    w1 = agg.aggregate({"p": np.zeros(1, np.float32)}, 1)
    np.testing.assert_array_equal(w1["p"], [2.0])
    other = FedAvg(settings(selection=1), momentum=0.5)
    other.load_state_dict(agg.state_dict())
    other.accept(upd("a", [1.0], 1, version=2), 2)
    # v = 0.5 * 2 + 1 = 2; W = 2 + 2
    np.testing.assert_array_equal(other.aggregate(w1, 2)["p"], [4.0])


def test_rejects_bad_updates_unchanged() -> None:
    agg = FedAvg(settings(selection=2))
    agg.accept(upd("a", [1.0, 1.0], 1), 2)
    with pytest.raises(ValueError, match="shape"):
        agg.accept(upd("b", [1.0], 1), 2)
    with pytest.raises(ValueError, match="NaN"):
        agg.accept(upd("b", [float("nan"), 1.0], 1), 2)
    with pytest.raises(ValueError, match="newer"):
        agg.accept(upd("b", [1.0, 1.0], 1, version=3), 2)
    assert agg.pending() == 1
    np.testing.assert_array_equal(agg.aggregate({"p": np.zeros(2, np.float32)}, 2)["p"], [1, 1])


def test_arguments() -> None:
    assert isinstance(FedAvg(settings()), Aggregator)
    with pytest.raises(TypeError, match="normalization"):
        FedAvg(settings(), normalization="count")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="momentum"):
        FedAvg(settings(), momentum=-0.1)
