"""The built-in device selectors (entry point group ``edgefl.selectors``).

``random`` (default)
    NVFlare's fill: up to ``k`` devices drawn uniformly without replacement.
``capability``
    Only devices whose device info matches every requirement, then uniformly at random among
    them. ``require`` maps a device-info key to the accepted value (or list of values);
    ``minimum`` maps a key to the lowest accepted version (``"1.4.2"``), compared numerically
    component by component (``1.10 > 1.9``, ``1.4 == 1.4.0``; a pre-release such as
    ``1.4.2-beta`` sorts before ``1.4.2``). The key ``platform`` is matched against the
    platform the server resolved (EDIP §2.5), other keys against the device info.
``fastest``
    Prefers devices that completed tasks quickly before (``Candidate.mean_task_seconds``).
    Each slot goes, with probability ``explore``, to a device never timed (uniformly among
    them), otherwise to the fastest remaining timed device; when one kind runs out the other
    fills in. Untimed devices are therefore always tried eventually and the fast ones are
    not starved by them.

Selectors are constructed as ``cls(**args)`` and draw all randomness from the ``rng`` they are
given.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import random

    from edgefl.api import Candidate

__all__ = [
    "CapabilitySelector",
    "FastestSelector",
    "RandomSelector",
    "compare_versions",
    "parse_version",
]


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative int, got {k!r}")


def _distinct(candidates: Sequence[Candidate]) -> list[Candidate]:
    seen: set[str] = set()
    out: list[Candidate] = []
    for candidate in candidates:
        if candidate.device_id not in seen:
            seen.add(candidate.device_id)
            out.append(candidate)
    return out


def _sample(candidates: Sequence[Candidate], k: int, rng: random.Random) -> list[str]:
    pool = _distinct(candidates)
    return [c.device_id for c in rng.sample(pool, min(k, len(pool)))]


class RandomSelector:
    """``random``: uniform without replacement (NVFlare's ``random`` fill). Takes no arguments."""

    def select(self, candidates: Sequence[Candidate], k: int, rng: random.Random) -> list[str]:
        """Up to ``k`` distinct device ids, uniformly at random."""
        _check_k(k)
        return _sample(candidates, k, rng)


_VERSION = re.compile(r"\s*v?(\d+(?:\.\d+)*)(.*)", re.IGNORECASE | re.DOTALL)


def parse_version(text: str) -> tuple[tuple[int, ...], bool, str]:
    """``"1.4.2-beta"`` -> ``((1, 4, 2), False, "-beta")``: release numbers without trailing
    zeros, whether it is a final release (no suffix, or a ``+build`` suffix), and the suffix.

    Raises:
        ValueError: ``text`` does not start with a number.
    """
    match = _VERSION.fullmatch(text)
    if match is None:
        raise ValueError(f"not a version: {text!r}")
    numbers = [int(n) for n in match.group(1).split(".")]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    suffix = match.group(2).strip()
    final = suffix == "" or suffix.startswith("+")
    return tuple(numbers), final, suffix


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as version ``a`` is lower than, equal to or higher than ``b``.

    Pre-releases sort before their release; two pre-releases of one release compare by suffix
    text (``-alpha < -beta < -rc1``).
    """
    ra, fa, sa = parse_version(a)
    rb, fb, sb = parse_version(b)
    key_a = (ra, fa, "" if fa else sa)
    key_b = (rb, fb, "" if fb else sb)
    return (key_a > key_b) - (key_a < key_b)


class CapabilitySelector:
    """``capability``: filter by device info, then uniformly at random.

    Args:
        require: device-info key -> accepted value or list of accepted values, e.g.
            ``{"platform": "android", "model": ["Pixel 8", "Pixel 9"]}``.
        minimum: device-info key -> lowest accepted version, e.g. ``{"app_version": "1.4.2"}``.
            Devices without the key, or with an unparseable value, do not qualify.

    Raises:
        TypeError, ValueError: a requirement is malformed (the message names it).
    """

    def __init__(
        self,
        *,
        require: Mapping[str, str | Sequence[str]] | None = None,
        minimum: Mapping[str, str] | None = None,
    ) -> None:
        self.require: dict[str, frozenset[str]] = {}
        for key, accepted in (require or {}).items():
            values = [accepted] if isinstance(accepted, str) else accepted
            if not isinstance(values, Sequence) or not all(isinstance(v, str) for v in values):
                raise TypeError(f"require[{key!r}] must be a string or a list of strings")
            if not values:
                raise ValueError(f"require[{key!r}] is empty: no device could qualify")
            self.require[str(key)] = frozenset(values)
        self.minimum: dict[str, str] = {}
        for key, version in (minimum or {}).items():
            if not isinstance(version, str):
                raise TypeError(f"minimum[{key!r}] must be a version string, got {version!r}")
            try:
                parse_version(version)
            except ValueError:
                raise ValueError(f"minimum[{key!r}] is not a version: {version!r}") from None
            self.minimum[str(key)] = version

    def _value(self, candidate: Candidate, key: str) -> str | None:
        if key == "platform":
            return candidate.platform
        return candidate.device_info.get(key)

    def qualifies(self, candidate: Candidate) -> bool:
        """Whether ``candidate`` meets every requirement."""
        for key, accepted in self.require.items():
            if self._value(candidate, key) not in accepted:
                return False
        for key, lowest in self.minimum.items():
            value = self._value(candidate, key)
            if value is None:
                return False
            try:
                if compare_versions(value, lowest) < 0:
                    return False
            except ValueError:
                return False
        return True

    def select(self, candidates: Sequence[Candidate], k: int, rng: random.Random) -> list[str]:
        """Up to ``k`` qualifying device ids, uniformly at random."""
        _check_k(k)
        return _sample([c for c in candidates if self.qualifies(c)], k, rng)


class FastestSelector:
    """``fastest``: prefer devices with a short mean task time.

    Args:
        explore: probability in ``[0, 1]`` that a slot goes to a device never timed (default
            0.2).
    """

    def __init__(self, *, explore: float = 0.2) -> None:
        if isinstance(explore, bool) or not isinstance(explore, int | float):
            raise TypeError(f"explore must be a number, got {explore!r}")
        if not (math.isfinite(explore) and 0.0 <= explore <= 1.0):
            raise ValueError(f"explore must be in [0, 1], got {explore!r}")
        self.explore = float(explore)

    def select(self, candidates: Sequence[Candidate], k: int, rng: random.Random) -> list[str]:
        """Up to ``k`` distinct device ids, fastest first (see the module docstring)."""
        _check_k(k)
        pool = _distinct(candidates)
        timed: list[Candidate] = []
        untimed: list[Candidate] = []
        for c in pool:
            known = c.mean_task_seconds is not None and math.isfinite(c.mean_task_seconds)
            (timed if known else untimed).append(c)
        rng.shuffle(timed)  # ties in speed are broken at random
        timed.sort(key=lambda c: c.mean_task_seconds or 0.0)
        rng.shuffle(untimed)
        chosen: list[str] = []
        fast, new = 0, 0
        while len(chosen) < k and (fast < len(timed) or new < len(untimed)):
            explore = rng.random() < self.explore
            if new < len(untimed) and (explore or fast >= len(timed)):
                chosen.append(untimed[new].device_id)
                new += 1
            else:
                chosen.append(timed[fast].device_id)
                fast += 1
        return chosen
