"""The registry: loading by name, provenance, and the errors a job load can hit."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import EntryPoint
from typing import Any

import numpy as np
import pytest

from aggregators.fedbuff import FedBuff
from edgefl.__main__ import main
from edgefl.api import AggregatorSettings, Selector, Update
from plugins import (
    AGGREGATORS,
    SELECTORS,
    TRAINERS,
    PluginError,
    PluginInfo,
    RandomSelector,
    Registry,
    protocol_problems,
)

SETTINGS = AggregatorSettings(2, 1.0, False, None, 4)


class NoReady:
    """An aggregator that forgot ready() and takes the wrong arguments in accept()."""

    def __init__(self, settings: AggregatorSettings) -> None:
        pass

    def accept(self, update: object) -> None: ...
    def aggregate(self, weights: object, current_version: int) -> dict[str, Any]:
        return {}

    def pending(self) -> int:
        return 0

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: object) -> None: ...


class Exploding(RandomSelector):
    def __init__(self) -> None:
        raise RuntimeError("no database")


class FlexibleSelector:
    """Keyword defaults, *args and static/class methods all satisfy the Protocol."""

    @staticmethod
    def select(*args: object, extra: int = 0) -> list[str]:
        return []


def test_registered_in_code_creates_and_records_provenance() -> None:
    registry = Registry({AGGREGATORS: {"buff": FedBuff}, SELECTORS: {"rnd": RandomSelector}})
    agg = registry.aggregator("buff", SETTINGS, {"staleness": "nvflare"})
    assert isinstance(agg, FedBuff)
    assert agg.staleness == "nvflare"
    assert registry.selector("rnd").select([], 3, __import__("random").Random(0)) == []
    assert registry.provenance() == [
        PluginInfo(AGGREGATORS, "buff", "aggregators.fedbuff:FedBuff"),
        PluginInfo(SELECTORS, "rnd", "plugins.selectors:RandomSelector"),
    ]
    assert registry.provenance()[0].origin() == "registered in code"
    assert registry.names(AGGREGATORS) == ["buff"]
    assert registry.names(TRAINERS) == []


def test_missing_name_lists_the_installed_ones() -> None:
    registry = Registry({AGGREGATORS: {"fedbuff": FedBuff, "fedavg": FedBuff}})
    with pytest.raises(PluginError) as info:
        registry.aggregator("fedbuf", SETTINGS)
    assert str(info.value) == (
        "edgefl.aggregators plugin 'fedbuf': not installed; installed edgefl.aggregators: "
        "fedavg, fedbuff (did you mean 'fedbuff'?)"
    )
    assert (info.value.group, info.value.name, info.value.dist) == (AGGREGATORS, "fedbuf", None)
    with pytest.raises(PluginError, match=r"installed edgefl.selectors: \(none\)$"):
        registry.selector("random")


def test_class_not_satisfying_the_protocol() -> None:
    registry = Registry({AGGREGATORS: {"bad": NoReady}})
    with pytest.raises(PluginError) as info:
        registry.load(AGGREGATORS, "bad")
    message = str(info.value)
    assert "does not satisfy edgefl.api.Aggregator" in message
    assert "missing ready()" in message
    assert "accept() does not take 2 positional arguments" in message
    assert registry.provenance() == []


def test_factory_returning_a_bad_instance() -> None:
    registry = Registry({SELECTORS: {"lazy": lambda: object()}})
    with pytest.raises(
        PluginError, match=r"the builtins:object it made does not satisfy .*missing select\(\)"
    ):
        registry.selector("lazy")


def test_bad_arguments_name_the_argument() -> None:
    registry = Registry({AGGREGATORS: {"fedbuff": FedBuff}})
    with pytest.raises(PluginError, match=r"invalid arguments \(bogus=1\):.*'bogus'") as info:
        registry.aggregator("fedbuff", SETTINGS, {"bogus": 1})
    assert isinstance(info.value.__cause__, TypeError)
    with pytest.raises(PluginError, match="normalization must be one of"):
        registry.aggregator("fedbuff", SETTINGS, {"normalization": "median"})


def test_construction_failure_and_non_callables() -> None:
    registry = Registry({SELECTORS: {"boom": Exploding, "three": 3}})  # type: ignore[dict-item]
    with pytest.raises(PluginError, match="construction failed: RuntimeError: no database"):
        registry.selector("boom")
    with pytest.raises(PluginError, match="is a int, not a class or factory"):
        registry.selector("three")


def test_flexible_signatures_are_accepted() -> None:
    assert protocol_problems(FlexibleSelector, Selector) == []
    assert protocol_problems(FlexibleSelector(), Selector) == []
    assert protocol_problems(RandomSelector, Selector) == []


def test_unknown_group() -> None:
    with pytest.raises(ValueError, match=r"unknown plugin group 'edgefl\.aggregator'"):
        Registry({"edgefl.aggregator": {}})
    with pytest.raises(ValueError, match="unknown plugin group"):
        Registry().names("aggregators")


def test_entry_point_that_fails_to_import() -> None:
    ep = EntryPoint("ghost", "edgefl_no_such_module:Ghost", AGGREGATORS)
    registry = Registry.from_entry_points([ep])
    assert registry.info(AGGREGATORS, "ghost").value == "edgefl_no_such_module:Ghost"
    with pytest.raises(PluginError, match="cannot import edgefl_no_such_module:Ghost: Module"):
        registry.aggregator("ghost", SETTINGS)


def test_same_name_registered_twice() -> None:
    eps = [
        EntryPoint("twin", "aggregators.fedbuff:FedBuff", AGGREGATORS),
        EntryPoint("twin", "aggregators.fedavg:FedAvg", AGGREGATORS),
        EntryPoint("other", "x:y", "some.other.group"),
    ]
    registry = Registry.from_entry_points(eps)
    with pytest.raises(PluginError, match=r"registered more than once: aggregators\.fedbuff:Fed"):
        registry.aggregator("twin", SETTINGS)
    assert [i.name for i in registry.installed()] == ["twin", "twin"]


def test_installed_entry_points_carry_their_distribution() -> None:
    registry = Registry.from_entry_points()
    assert {"fedbuff", "fedavg", "fedasync"} <= set(registry.names(AGGREGATORS))
    assert {"random", "capability", "fastest"} <= set(registry.names(SELECTORS))
    agg = registry.aggregator("fedbuff", SETTINGS, {"momentum": 0.9})
    assert isinstance(agg, FedBuff)
    assert agg.momentum == 0.9
    (info,) = registry.provenance()
    assert (info.group, info.name, info.value, info.dist) == (
        AGGREGATORS,
        "fedbuff",
        "aggregators.fedbuff:FedBuff",
        "edgefl",
    )
    assert info.version
    with pytest.raises(PluginError, match=r"^edgefl.aggregators plugin 'fedavg' \(from edgefl "):
        registry.aggregator("fedavg", SETTINGS, {"staleness": "nvflare"})


def test_only_the_named_plugins_are_imported() -> None:
    script = """
import sys
import numpy as np
from edgefl.api import AggregatorSettings, Update
from plugins import Registry
registry = Registry.from_entry_points()
agg = registry.aggregator("fedbuff", AggregatorSettings(1, 1.0, False, None, 1))
agg.accept(Update("d", "t", 1, {"p": np.ones(2, np.float32)}), 1)
print(agg.aggregate({"p": np.zeros(2, np.float32)}, 1)["p"].tolist())
heavy = ("plugins.evaluators", "edgefl._trainers", "torch", "trio")
print(sorted(m for m in heavy if m in sys.modules))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True
    ).stdout
    assert out.splitlines() == ["[1.0, 1.0]", "[]"]


def test_cli_lists_every_group(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["GROUP", "NAME", "DISTRIBUTION", "VERSION", "OBJECT"]
    rows = {tuple(line.split()[:3]) for line in lines[1:]}
    for group, name in [
        ("edgefl.aggregators", "fedbuff"),
        ("edgefl.selectors", "fastest"),
        ("edgefl.evaluators", "classification"),
        ("edgefl.trainers", "eager"),
    ]:
        assert (group, name, "edgefl") in rows


def test_cli_json_and_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "--json", "--check", "--group", "aggregators"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["name"] for r in rows} >= {"fedbuff", "fedavg", "fedasync"}
    assert {r["group"] for r in rows} == {AGGREGATORS}
    assert all(r["status"] == "ok" and r["distribution"] == "edgefl" for r in rows)


def test_created_aggregator_works_end_to_end() -> None:
    registry = Registry.from_entry_points()
    agg = registry.aggregator("fedavg", SETTINGS)
    agg.accept(Update("a", "t1", 1, {"p": np.array([2.0], np.float32)}, 3), 1)
    agg.accept(Update("b", "t2", 1, {"p": np.array([6.0], np.float32)}, 1), 1)
    assert not agg.ready(1, selected=2)
    assert agg.ready(1, selected=0)
    np.testing.assert_array_equal(agg.aggregate({"p": np.zeros(1, np.float32)}, 1)["p"], [3.0])
