"""Aggregation cost for a 62,006-parameter model (the PyTorch CIFAR-10 tutorial net).

Measures, per call (median of several repeats):

* the fold kernel alone: one update added into a version's running sum (target ~0.01 ms);
* ``FedBuff.accept``: validation (key set, shapes, finiteness) plus the fold;
* ``aggregate`` alone (generating a version): FedBuff from K buffered updates spread over three
  versions, with NVFlare staleness, and with server momentum; FedAvg; FedAsync.

Run: ``python bench/bench_aggregate.py [--repeat N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import timeit
from typing import TYPE_CHECKING

import numpy as np

from aggregators._common import add_into, zeros_for
from aggregators.fedasync import FedAsync
from aggregators.fedavg import FedAvg
from aggregators.fedbuff import FedBuff
from edgefl.api import Aggregator, AggregatorSettings, Update, Weights

if TYPE_CHECKING:
    from collections.abc import Callable

SHAPES: dict[str, tuple[int, ...]] = {
    "conv1.weight": (6, 3, 5, 5),
    "conv1.bias": (6,),
    "conv2.weight": (16, 6, 5, 5),
    "conv2.bias": (16,),
    "fc1.weight": (120, 400),
    "fc1.bias": (120,),
    "fc2.weight": (84, 120),
    "fc2.bias": (84,),
    "fc3.weight": (10, 84),
    "fc3.bias": (10,),
}


def weights(rng: np.random.Generator, scale: float = 1.0) -> Weights:
    return {n: (rng.standard_normal(s) * scale).astype(np.float32) for n, s in SHAPES.items()}


def per_call(func: Callable[[], object], number: int, repeat: int) -> float:
    """Median seconds per call."""
    times = timeit.repeat(func, number=number, repeat=repeat)
    return statistics.median(times) / number


def per_aggregate(
    make: Callable[[], Aggregator], updates: list[Update], model: Weights, repeat: int
) -> float:
    """Median seconds of ``aggregate`` alone, after accepting ``updates`` (untimed)."""
    agg = make()
    times = []
    for _ in range(repeat * 10):
        for u in updates:
            agg.accept(u, 10)
        start = time.perf_counter()
        agg.aggregate(model, 10)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("-k", type=int, default=20, help="updates per version (default 20)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    params = sum(int(np.prod(s)) for s in SHAPES.values())
    assert params == 62_006, params
    model = weights(rng)
    deltas = [weights(rng, 0.01) for _ in range(args.k)]
    # K updates trained from the current version 10 and the two before it
    updates = [Update(str(i), str(i), 10 - i % 3, d) for i, d in enumerate(deltas)]
    settings = AggregatorSettings(args.k, 1.0, True, None, 2 * args.k)
    rows: list[tuple[str, float]] = []

    sums = zeros_for(dict(SHAPES))
    rows.append(
        (
            "fold kernel (add_into), 10 tensors",
            per_call(lambda: add_into(sums, deltas[0]), 2000, args.repeat),
        )
    )
    flat = np.zeros(params, np.float32)
    flat_delta = rng.standard_normal(params).astype(np.float32)

    def flat_add() -> None:
        np.add(flat, flat_delta, out=flat)

    rows.append(
        ("  floor: one add of 62,006 contiguous floats", per_call(flat_add, 2000, args.repeat))
    )

    buff = FedBuff(settings)

    def accept_one() -> None:
        buff.accept(updates[0], 10)

    rows.append(("FedBuff.accept (validate + fold)", per_call(accept_one, 2000, args.repeat)))
    k = args.k
    rows.append(
        (
            f"FedBuff.aggregate: K={k} over 3 versions, nvflare staleness",
            per_aggregate(lambda: FedBuff(settings), updates, model, args.repeat),
        )
    )
    rows.append(
        (
            f"FedBuff.aggregate: K={k} over 3 versions, momentum 0.9",
            per_aggregate(lambda: FedBuff(settings, momentum=0.9), updates, model, args.repeat),
        )
    )
    avg_settings = AggregatorSettings(k, 1.0, False, None, k)
    rows.append(
        (
            f"FedAvg.aggregate: K={k}",
            per_aggregate(lambda: FedAvg(avg_settings), updates, model, args.repeat),
        )
    )
    async_settings = AggregatorSettings(1, 0.5, False, None, 10)
    rows.append(
        (
            "FedAsync.aggregate: 1 update",
            per_aggregate(lambda: FedAsync(async_settings), updates[:1], model, args.repeat),
        )
    )

    print(f"model: {params:,} float32 parameters in {len(SHAPES)} tensors")
    width = max(len(label) for label, _ in rows)
    for label, seconds in rows:
        print(f"{label:<{width}}  {seconds * 1e3:8.4f} ms")


if __name__ == "__main__":
    main()
