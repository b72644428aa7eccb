"""The built-in aggregators: pure numpy kernels plus thin classes satisfying
:class:`edgefl.api.Aggregator`, registered under the ``edgefl.aggregators`` entry point group."""

from __future__ import annotations

from aggregators.fedasync import FedAsync, fedasync_rate
from aggregators.fedavg import FedAvg, fedavg_average
from aggregators.fedbuff import FedBuff, fedbuff_average, staleness_factor

__all__ = [
    "FedAsync",
    "FedAvg",
    "FedBuff",
    "fedasync_rate",
    "fedavg_average",
    "fedbuff_average",
    "staleness_factor",
]
