"""The built-in selectors."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefl.api import Candidate, Selector
from plugins.selectors import (
    CapabilitySelector,
    FastestSelector,
    RandomSelector,
    compare_versions,
    parse_version,
)


def cand(
    device_id: str,
    platform: str = "android",
    seconds: float | None = None,
    **info: str,
) -> Candidate:
    return Candidate(device_id, platform, info, 0.0, seconds)


FLEET = [cand(f"d{i}") for i in range(10)]


@pytest.mark.parametrize("selector", [RandomSelector(), CapabilitySelector(), FastestSelector()])
def test_protocol(selector: object) -> None:
    assert isinstance(selector, Selector)


@given(st.integers(0, 15), st.integers(0, 2**32))
def test_random_picks_distinct_candidates(k: int, seed: int) -> None:
    chosen = RandomSelector().select(FLEET + FLEET[:3], k, random.Random(seed))
    assert len(chosen) == min(k, 10)
    assert len(set(chosen)) == len(chosen)
    assert set(chosen) <= {c.device_id for c in FLEET}


def test_random_is_reproducible_and_uniform() -> None:
    selector = RandomSelector()
    assert selector.select(FLEET, 3, random.Random(7)) == selector.select(
        FLEET, 3, random.Random(7)
    )
    rng = random.Random(1)
    counts = Counter(d for _ in range(2000) for d in selector.select(FLEET, 3, rng))
    assert set(counts) == {c.device_id for c in FLEET}
    assert all(500 < n < 700 for n in counts.values())  # expected 600 each


def test_k_must_be_a_count() -> None:
    with pytest.raises(ValueError, match="k must be a non-negative int"):
        RandomSelector().select(FLEET, -1, random.Random(0))


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1.10", "1.9", 1),
        ("1.4", "1.4.0", 0),
        ("1.4.2-beta", "1.4.2", -1),
        ("1.4.2-alpha", "1.4.2-beta", -1),
        ("1.4.2+build7", "1.4.2", 0),
        ("v2.0", "1.99.99", 1),
        ("17.0.1", "17", 1),
        ("1.4.2-rc1", "1.4.1", 1),
    ],
)
def test_version_comparison(a: str, b: str, expected: int) -> None:
    assert compare_versions(a, b) == expected
    assert compare_versions(b, a) == -expected


def test_parse_version() -> None:
    assert parse_version("1.4.2-beta") == ((1, 4, 2), False, "-beta")
    assert parse_version("2.0.0") == ((2,), True, "")
    with pytest.raises(ValueError, match="not a version: 'beta'"):
        parse_version("beta")


def test_capability_filters_then_samples() -> None:
    fleet = [
        cand("old", app_version="1.3.9"),
        cand("new", app_version="1.10.0"),
        cand("exact", app_version="1.4"),
        cand("pre", app_version="1.4.0-beta"),
        cand("ios", platform="ios", app_version="2.0"),
        cand("none"),
        cand("garbage", app_version="latest"),
    ]
    selector = CapabilitySelector(require={"platform": "android"}, minimum={"app_version": "1.4"})
    for seed in range(5):
        chosen = selector.select(fleet, 10, random.Random(seed))
        assert sorted(chosen) == ["exact", "new"]
    assert len(selector.select(fleet, 1, random.Random(0))) == 1


def test_capability_value_lists_and_other_keys() -> None:
    fleet = [cand("a", model="Pixel 8"), cand("b", model="Pixel 9"), cand("c", model="Nokia")]
    selector = CapabilitySelector(require={"model": ["Pixel 8", "Pixel 9"]})
    assert sorted(selector.select(fleet, 5, random.Random(0))) == ["a", "b"]
    assert selector.qualifies(fleet[0])
    assert not selector.qualifies(fleet[2])


def test_capability_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match=r"minimum\['app_version'\] is not a version"):
        CapabilitySelector(minimum={"app_version": "newest"})
    with pytest.raises(TypeError, match=r"minimum\['app_version'\] must be a version string"):
        CapabilitySelector(minimum={"app_version": 14})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"require\['os'\] must be a string or a list"):
        CapabilitySelector(require={"os": [1]})  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"require\['os'\] is empty"):
        CapabilitySelector(require={"os": []})
    with pytest.raises(TypeError, match="platform"):
        CapabilitySelector(platform="ios")  # type: ignore[call-arg]


def test_fastest_without_exploration_takes_the_fastest() -> None:
    fleet = [cand("slow", seconds=9.0), cand("fast", seconds=1.0), cand("mid", seconds=3.0)]
    fleet += [cand("new1"), cand("new2")]
    selector = FastestSelector(explore=0.0)
    assert selector.select(fleet, 2, random.Random(0)) == ["fast", "mid"]
    chosen = selector.select(fleet, 5, random.Random(0))
    assert chosen[:3] == ["fast", "mid", "slow"]
    assert sorted(chosen[3:]) == ["new1", "new2"]


def test_fastest_explores_untimed_devices() -> None:
    fleet = [cand(f"t{i}", seconds=float(i + 1)) for i in range(10)]
    fleet += [cand(f"u{i}") for i in range(10)]
    assert all(
        d.startswith("u") for d in FastestSelector(explore=1.0).select(fleet, 10, random.Random(3))
    )
    selector = FastestSelector(explore=0.3)
    rng = random.Random(5)
    picks = Counter(d for _ in range(500) for d in selector.select(fleet, 4, rng))
    untimed = sum(n for d, n in picks.items() if d.startswith("u"))
    assert 450 < untimed < 750  # expected 0.3 * 2000 = 600
    assert picks["t0"] > picks.get("t9", 0)
    assert len([d for d in picks if d.startswith("u")]) == 10  # every untimed device got a turn


def test_fastest_breaks_ties_at_random() -> None:
    fleet = [cand(f"d{i}", seconds=2.0) for i in range(6)]
    firsts = {FastestSelector(explore=0.0).select(fleet, 1, random.Random(s))[0] for s in range(40)}
    assert len(firsts) > 3


def test_fastest_arguments() -> None:
    with pytest.raises(ValueError, match="explore must be in"):
        FastestSelector(explore=1.5)
    with pytest.raises(TypeError, match="explore must be a number"):
        FastestSelector(explore="often")  # type: ignore[arg-type]
