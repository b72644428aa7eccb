"""FedBuff against the FEDBUFF.md §5 golden table and hand-computed values."""

from __future__ import annotations

import math
import tracemalloc
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregators.fedbuff import FedBuff, VersionBuffer, fedbuff_average, staleness_factor
from edgefl.api import Aggregator, AggregatorSettings, Update, Weights


def settings(
    k: int = 3,
    lr: float = 1.0,
    staleness_weight: bool = False,
    history: int | None = None,
    selection: int = 10,
) -> AggregatorSettings:
    return AggregatorSettings(k, lr, staleness_weight, history, selection)


def update(version: int, values: list[float], device: str = "d", **extra: list[float]) -> Update:
    delta = {"p": np.array(values, dtype=np.float32)}
    delta.update({name: np.array(v, dtype=np.float32) for name, v in extra.items()})
    return Update(device, f"t-{device}-{version}", version, delta)


def golden(agg: FedBuff) -> Weights:
    """FEDBUFF.md §5: V = 3, W = [1, 2]; v3 <- [0.2, 0], [0, 0.4]; v2 <- [0.3, 0.3]."""
    agg.accept(update(3, [0.2, 0.0], "a"), 3)
    agg.accept(update(3, [0.0, 0.4], "b"), 3)
    assert not agg.ready(3, selected=5)
    agg.accept(update(2, [0.3, 0.3], "c"), 3)
    assert agg.ready(3, selected=5)
    assert agg.pending() == 3
    return agg.aggregate({"p": np.array([1.0, 2.0], dtype=np.float32)}, 3)


@pytest.mark.parametrize(
    ("lr", "args", "staleness_weight", "expected"),
    [
        pytest.param(1.0, {"staleness": "nvflare"}, False, [1.07475469, 2.10808802], id="main-w"),
        pytest.param(1.0, {}, True, [1.07475469, 2.10808802], id="main-w-from-settings"),
        pytest.param(1.0, {}, False, [1.16666667, 2.23333333], id="main-no-w"),
        pytest.param(
            1.0,
            {"normalization": "per_version", "staleness": "nvflare"},
            False,
            [1.17426407, 2.22426407],
            id="2.7.x-w",
        ),
        pytest.param(
            1.0,
            {"normalization": "k", "staleness": "polynomial"},
            False,
            [1.13737734, 2.20404401],
            id="paper",
        ),
        pytest.param(0.5, {}, True, [1.03737734, 2.05404401], id="main-w-lr0.5"),
    ],
)
def test_golden_table(
    lr: float, args: dict[str, Any], staleness_weight: bool, expected: list[float]
) -> None:
    agg = FedBuff(settings(lr=lr, staleness_weight=staleness_weight), **args)
    new = golden(agg)
    assert new["p"].dtype == np.float32
    np.testing.assert_allclose(new["p"], expected, rtol=0, atol=1e-6)
    assert agg.pending() == 0
    assert agg.buffered_versions() == []


def test_staleness_factors() -> None:
    assert staleness_factor("none", 4, 1) == 1.0
    assert staleness_factor("nvflare", 4, 3) == pytest.approx(0.5)
    assert staleness_factor("nvflare", 4, 2) == pytest.approx(0.41421356)
    assert staleness_factor("nvflare", 4, 1) == pytest.approx(1 / (1 + math.sqrt(3)))
    assert staleness_factor("polynomial", 4, 3) == 1.0
    assert staleness_factor("polynomial", 4, 1) == pytest.approx(1 / math.sqrt(3))  # tau = 2
    assert staleness_factor("polynomial", 5, 1, exponent=1.0) == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match="not older"):
        staleness_factor("nvflare", 3, 3)


def test_kernel_per_version_ignores_sizes() -> None:
    buffers = {
        5: VersionBuffer({"p": np.array([4.0], np.float32)}, count=4),
        4: VersionBuffer({"p": np.array([1.0], np.float32)}, count=1),
    }
    # per version: 4/4 + 1/1 = 2; count: 5/5 = 1; k=10: 5/10
    assert fedbuff_average(buffers, 6, normalization="per_version")["p"][0] == 2.0
    assert fedbuff_average(buffers, 6)["p"][0] == 1.0
    assert fedbuff_average(buffers, 6, normalization="k", k=10)["p"][0] == 0.5
    assert fedbuff_average({}, 6) == {}
    with pytest.raises(ValueError, match="normalization 'k' needs k"):
        fedbuff_average(buffers, 6, normalization="k")


def test_keys_without_contributions_keep_their_values() -> None:
    agg = FedBuff(settings(k=1))
    agg.accept(update(1, [1.0, 1.0]), 1)
    weights = {
        "p": np.array([0.0, 0.0], np.float32),
        "bn.running_mean": np.array([7.0, 8.0, 9.0], np.float32),
    }
    new = agg.aggregate(weights, 1)
    assert set(new) == {"p", "bn.running_mean"}
    np.testing.assert_array_equal(new["bn.running_mean"], [7.0, 8.0, 9.0])
    np.testing.assert_array_equal(new["p"], [1.0, 1.0])
    assert new["bn.running_mean"] is not weights["bn.running_mean"]
    np.testing.assert_array_equal(weights["p"], [0.0, 0.0])  # input untouched


def test_delta_for_unknown_tensor_is_refused_and_buffers_kept() -> None:
    agg = FedBuff(settings(k=1))
    agg.accept(update(1, [1.0], extra=[2.0]), 1)
    with pytest.raises(ValueError, match=r"does not have: \['extra'\]"):
        agg.aggregate({"p": np.zeros(1, np.float32)}, 1)
    assert agg.pending() == 1
    new = agg.aggregate({"p": np.zeros(1, np.float32), "extra": np.zeros(1, np.float32)}, 1)
    np.testing.assert_array_equal(new["extra"], [2.0])


def test_momentum_and_state_round_trip() -> None:
    w0 = {"p": np.array([0.0, 0.0], np.float32)}
    agg = FedBuff(settings(k=1, lr=0.5), momentum=0.9)
    agg.accept(update(1, [1.0, 2.0]), 1)
    w1 = agg.aggregate(w0, 1)  # v = [1, 2]; W = 0 + 0.5 v
    np.testing.assert_allclose(w1["p"], [0.5, 1.0], atol=1e-7)
    state = agg.state_dict()
    assert set(state) == {"momentum.p"}
    np.testing.assert_allclose(state["momentum.p"], [1.0, 2.0])

    restored = FedBuff(settings(k=1, lr=0.5), momentum=0.9)
    restored.load_state_dict(state)
    for a in (agg, restored):
        a.accept(update(2, [-1.0, 0.0]), 2)
    # v = 0.9 [1, 2] + [-1, 0] = [-0.1, 1.8]; W = [0.5, 1] + 0.5 v = [0.45, 1.9]
    expected = [0.45, 1.9]
    np.testing.assert_allclose(agg.aggregate(w1, 2)["p"], expected, atol=1e-6)
    np.testing.assert_allclose(restored.aggregate(w1, 2)["p"], expected, atol=1e-6)
    state["momentum.p"][:] = 99.0  # state_dict hands out copies
    np.testing.assert_allclose(agg.state_dict()["momentum.p"], [-0.1, 1.8], atol=1e-6)


def test_no_momentum_means_empty_state() -> None:
    agg = FedBuff(settings(k=1))
    agg.accept(update(1, [1.0]), 1)
    agg.aggregate({"p": np.zeros(1, np.float32)}, 1)
    assert agg.state_dict() == {}


@pytest.mark.parametrize(
    "state",
    [
        {"velocity.p": np.zeros(1, np.float32)},
        {"momentum.": np.zeros(1, np.float32)},
        {"momentum.p": np.array([np.nan], np.float32)},
        {"momentum.p": np.array([1], np.int64)},
    ],
)
def test_load_state_dict_rejects_garbage(state: dict[str, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="state"):
        FedBuff(settings(), momentum=0.9).load_state_dict(state)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (update(1, [1.0, 2.0, 3.0]), r"has shape \(3,\), expected \(2,\)"),
        (update(1, [1.0, 2.0], extra=[1.0]), r"unexpected \['extra'\]"),
        (Update("x", "t", 1, {"q": np.zeros(2, np.float32)}), r"missing \['p'\]"),
        (update(1, [1.0, math.nan]), "NaN or infinite"),
        (update(1, [math.inf, 0.0]), "NaN or infinite"),
        (Update("x", "t", 1, {"p": np.array([1, 2])}), "dtype int64"),
        (Update("x", "t", 1, {}), "empty"),
        (update(4, [1.0, 1.0]), "newer than the current version 3"),
    ],
)
def test_bad_updates_are_rejected_without_touching_sums(bad: Update, message: str) -> None:
    agg = FedBuff(settings(k=2))
    agg.accept(update(1, [1.0, 1.0]), 3)
    with pytest.raises(ValueError, match=message):
        agg.accept(bad, 3)
    assert agg.pending() == 1
    agg.accept(update(1, [3.0, 3.0]), 3)
    new = agg.aggregate({"p": np.zeros(2, np.float32)}, 3)
    np.testing.assert_array_equal(new["p"], [2.0, 2.0])


def test_values_beyond_float32_are_rejected() -> None:
    agg = FedBuff(settings(k=1))
    agg.accept(Update("a", "t", 1, {"p": np.array([1e30, -2.5], dtype=np.float64)}), 1)
    with pytest.raises(ValueError, match="beyond the float32 range"):
        agg.accept(Update("b", "t", 1, {"p": np.array([1e308, 0.0], dtype=np.float64)}), 1)
    new = agg.aggregate({"p": np.zeros(2, np.float32)}, 1)
    np.testing.assert_allclose(new["p"], [1e30, -2.5], rtol=1e-6)


def test_max_model_history_cut_off() -> None:
    agg = FedBuff(settings(history=2))
    agg.accept(update(4, [1.0]), 5)  # 5 - 4 < 2
    with pytest.raises(ValueError, match="max_model_history=2"):
        agg.accept(update(3, [1.0]), 5)
    assert agg.pending() == 1


def test_one_running_sum_per_version() -> None:
    agg = FedBuff(settings(k=1000))
    for i in range(30):
        agg.accept(update(7 + i % 3, [1.0, 1.0], device=str(i)), 9)
    assert agg.buffered_versions() == [7, 8, 9]
    assert agg.pending() == 30


def test_memory_does_not_grow_with_updates() -> None:
    agg = FedBuff(settings(k=10_000))
    delta = {"w": np.ones(50_000, np.float32)}  # 200 kB
    agg.accept(Update("a", "t", 1, delta), 1)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(200):
            agg.accept(Update(str(i), str(i), 1, delta), 1)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 50_000  # 200 updates x 200 kB would be 40 MB
    assert agg.pending() == 201


def test_arguments_are_checked_by_name() -> None:
    with pytest.raises(TypeError, match="bogus"):
        FedBuff(settings(), bogus=1)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="normalization"):
        FedBuff(settings(), normalization="mean")
    with pytest.raises(ValueError, match="staleness"):
        FedBuff(settings(), staleness="hinge")
    with pytest.raises(ValueError, match="momentum"):
        FedBuff(settings(), momentum=1.0)
    with pytest.raises(TypeError, match="staleness_exponent"):
        FedBuff(settings(), staleness_exponent="0.5")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="settings"):
        FedBuff({"num_updates_for_model": 3})  # type: ignore[arg-type]


def test_satisfies_the_protocol() -> None:
    assert isinstance(FedBuff(settings()), Aggregator)


def test_aggregate_without_contributions_returns_a_copy() -> None:
    agg = FedBuff(settings())
    weights = {"p": np.array([1.0], np.float32)}
    new = agg.aggregate(weights, 3)
    np.testing.assert_array_equal(new["p"], [1.0])
    assert new["p"] is not weights["p"]


@given(
    st.lists(
        st.lists(st.floats(-100, 100, width=32), min_size=3, max_size=3), min_size=1, max_size=12
    ),
    st.floats(0.01, 2.0),
)
def test_count_normalization_is_the_mean_of_all_deltas(
    deltas: list[list[float]], lr: float
) -> None:
    agg = FedBuff(settings(k=len(deltas), lr=lr))
    for i, d in enumerate(deltas):
        agg.accept(update(1 + i % 4, d, device=str(i)), 4)
    assert agg.ready(4, selected=0)
    base = np.array([0.5, -1.0, 2.0], np.float32)
    new = agg.aggregate({"p": base}, 4)
    expected = base + lr * np.mean(np.array(deltas, np.float64), axis=0)
    np.testing.assert_allclose(new["p"], expected, rtol=1e-5, atol=1e-3)
