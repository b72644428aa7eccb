"""FedAsync against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from aggregators.fedasync import FedAsync, fedasync_rate
from edgefl.api import Aggregator, AggregatorSettings, Update


def settings(lr: float = 0.5) -> AggregatorSettings:
    return AggregatorSettings(1, lr, False, None, 4)


def upd(version: int, values: list[float]) -> Update:
    return Update("d", "t", version, {"p": np.array(values, np.float32)})


@pytest.mark.parametrize(
    ("function", "staleness", "expected"),
    [
        ("constant", 7, 0.6),
        ("polynomial", 0, 0.6),
        ("polynomial", 3, 0.3),  # 0.6 * 4 ** -0.5
        ("hinge", 4, 0.6),
        ("hinge", 6, 0.6 / 21),  # 1 / (10 * (6 - 4) + 1)
    ],
)
def test_rates(function: str, staleness: int, expected: float) -> None:
    assert fedasync_rate(0.6, staleness, function=function) == pytest.approx(expected)  # type: ignore[arg-type]


def test_rate_errors() -> None:
    with pytest.raises(ValueError, match="staleness must be >= 0"):
        fedasync_rate(0.5, -1)
    with pytest.raises(ValueError, match="function"):
        fedasync_rate(0.5, 1, function="linear")  # type: ignore[arg-type]


def test_every_update_is_mixed_in_at_once() -> None:
    agg = FedAsync(settings(), alpha=0.8)
    assert not agg.ready(5, selected=3)
    agg.accept(upd(2, [1.0, -2.0]), 5)  # staleness 3 -> 0.8 / 2 = 0.4
    assert agg.ready(5, selected=3)
    new = agg.aggregate({"p": np.array([1.0, 1.0], np.float32), "q": np.ones(1, np.float32)}, 5)
    np.testing.assert_allclose(new["p"], [1.4, 0.2], atol=1e-7)
    np.testing.assert_array_equal(new["q"], [1.0])
    assert agg.pending() == 0
    assert not agg.ready(6, selected=3)


def test_alpha_defaults_to_global_lr() -> None:
    agg = FedAsync(settings(lr=0.25), staleness="constant")
    agg.accept(upd(1, [4.0]), 1)
    np.testing.assert_array_equal(agg.aggregate({"p": np.zeros(1, np.float32)}, 1)["p"], [1.0])
    with pytest.raises(ValueError, match=r"alpha \(default: global_lr\)"):
        FedAsync(settings(lr=2.0))
    with pytest.raises(ValueError, match="alpha"):
        FedAsync(settings(), alpha=0.0)


def test_state_and_protocol() -> None:
    agg = FedAsync(settings())
    assert isinstance(agg, Aggregator)
    assert agg.state_dict() == {}
    agg.load_state_dict({})
    with pytest.raises(ValueError, match="no state"):
        agg.load_state_dict({"momentum.p": np.zeros(1, np.float32)})
    with pytest.raises(ValueError, match="staleness"):
        FedAsync(settings(), staleness="nvflare")
    with pytest.raises(ValueError, match="newer"):
        agg.accept(upd(3, [1.0]), 2)
