"""The plugin registry: entry points in, checked plugin instances out.

A job names its plugins (``[aggregator] name = "fedbuff"``); the server asks the registry for
exactly those names, so an installed-but-broken plugin that no job uses never gets imported (a
server is not a test runner). Everything that can go wrong with a plugin surfaces as one
:class:`PluginError` at job load, naming the entry point group, the plugin name and the
distribution (and its version) that registered it:

* the name is not installed (the message lists the installed names of the group),
* two distributions register the same name,
* importing the object fails,
* the object is not a class/factory whose instances satisfy the group's Protocol
  (``edgefl.api``), checked member by member, signatures included,
* constructing it with the job's arguments fails (unknown argument, bad value).

``Registry.from_entry_points()`` reads ``importlib.metadata`` (no imports happen until a name is
asked for); ``Registry({group: {name: factory}})`` registers objects directly for tests. Each
plugin that was created is recorded as a :class:`PluginInfo` (group, name, distribution, version)
for ``/healthz`` and logs.

This module also implements ``edgefl-server plugins`` (``add_arguments`` / ``run``).
"""

from __future__ import annotations

import difflib
import importlib.metadata
import inspect
import json
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs

from edgefl.api import Aggregator, AggregatorSettings, Evaluator, Selector, Trainer

if TYPE_CHECKING:
    import argparse

__all__ = [
    "AGGREGATORS",
    "EVALUATORS",
    "GROUPS",
    "SELECTORS",
    "TRAINERS",
    "PluginError",
    "PluginInfo",
    "Registry",
    "add_arguments",
    "protocol_problems",
    "run",
]

AGGREGATORS: Final = "edgefl.aggregators"
SELECTORS: Final = "edgefl.selectors"
EVALUATORS: Final = "edgefl.evaluators"
TRAINERS: Final = "edgefl.trainers"

GROUPS: Final[Mapping[str, type]] = {
    AGGREGATORS: Aggregator,
    SELECTORS: Selector,
    EVALUATORS: Evaluator,
    TRAINERS: Trainer,
}
"""Entry point group -> the Protocol its plugins' instances satisfy."""

Factory = Callable[..., object]


@attrs.frozen
class PluginInfo:
    """Where a plugin comes from.

    Args:
        group: the entry point group, e.g. ``"edgefl.aggregators"``.
        name: the plugin's name in that group, e.g. ``"fedbuff"``.
        value: the object reference, ``"module:attr"``.
        dist: the distribution that registered it (``None`` for objects registered in code).
        version: that distribution's version.
    """

    group: str
    name: str
    value: str
    dist: str | None = None
    version: str | None = None

    def origin(self) -> str:
        """``"edgefl 0.1.0"``, or ``"registered in code"`` when there is no distribution."""
        if self.dist is None:
            return "registered in code"
        return self.dist if self.version is None else f"{self.dist} {self.version}"


class PluginError(Exception):
    """A plugin cannot be used; raised when a job loads, before anything runs.

    Attributes:
        group, name: which plugin was asked for.
        dist, version: the distribution that registered it (``None`` if unknown or missing).
        reason: what is wrong.
    """

    def __init__(
        self,
        group: str,
        name: str,
        reason: str,
        *,
        dist: str | None = None,
        version: str | None = None,
    ) -> None:
        self.group = group
        self.name = name
        self.reason = reason
        self.dist = dist
        self.version = version
        origin = ""
        if dist is not None:
            origin = f" (from {dist}{'' if version is None else ' ' + version})"
        super().__init__(f"{group} plugin {name!r}{origin}: {reason}")


@attrs.frozen
class _Source:
    info: PluginInfo
    entry_point: importlib.metadata.EntryPoint | None = None
    factory: Factory | None = None


def _value_of(obj: object) -> str:
    module = getattr(obj, "__module__", None) or type(obj).__module__
    qualname = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}:{qualname}"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _protocol_members(protocol: type) -> dict[str, int]:
    """Public methods of ``protocol`` -> number of positional arguments after ``self``."""
    members: dict[str, int] = {}
    for name, value in vars(protocol).items():
        if name.startswith("_") or not inspect.isfunction(value):
            continue
        params = list(inspect.signature(value).parameters.values())[1:]
        members[name] = sum(
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
            for p in params
        )
    return members


def _accepts(func: object, n_args: int) -> bool | None:
    """Whether ``func`` can be called with ``n_args`` positional arguments (``None``: unknown)."""
    try:
        signature = inspect.signature(func)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(*([None] * n_args))
    except TypeError:
        return False
    return True


def protocol_problems(obj: object, protocol: type) -> list[str]:
    """What keeps ``obj`` from satisfying ``protocol`` (empty list: nothing).

    ``obj`` is an instance, or a class, in which case its methods are checked as they would be
    bound on an instance. Each member must exist, be callable and accept the positional
    arguments the server passes.
    """
    problems: list[str] = []
    is_class = inspect.isclass(obj)
    for name, n_args in _protocol_members(protocol).items():
        func: object
        if is_class:
            try:
                member = inspect.getattr_static(obj, name)
            except AttributeError:
                problems.append(f"missing {name}()")
                continue
            if isinstance(member, staticmethod):
                func, n = member.__func__, n_args
            elif isinstance(member, classmethod):
                func, n = getattr(obj, name), n_args
            elif inspect.isfunction(member):
                func, n = member, n_args + 1  # unbound: self comes first
            elif callable(member):
                continue
            else:
                problems.append(f"{name} is not a method")
                continue
        else:
            func = getattr(obj, name, None)
            n = n_args
            if func is None:
                problems.append(f"missing {name}()")
                continue
            if not callable(func):
                problems.append(f"{name} is not a method")
                continue
        if _accepts(func, n) is False:
            plural = "" if n_args == 1 else "s"
            problems.append(f"{name}() does not take {n_args} positional argument{plural}")
    return problems


class Registry:
    """Plugins by entry point group and name.

    Args:
        plugins: ``{group: {name: factory}}`` registered in code (tests, embedding); a factory
            is a class or any callable returning an instance.
    """

    def __init__(self, plugins: Mapping[str, Mapping[str, Factory]] | None = None, /) -> None:
        self._sources: dict[str, dict[str, list[_Source]]] = {group: {} for group in GROUPS}
        self._loaded: dict[tuple[str, str], tuple[Factory, PluginInfo]] = {}
        self._created: dict[tuple[str, str], PluginInfo] = {}
        for group, entries in (plugins or {}).items():
            self._check_group(group)
            for name, factory in entries.items():
                info = PluginInfo(group, name, _value_of(factory))
                self._sources[group].setdefault(name, []).append(_Source(info, factory=factory))

    @classmethod
    def from_entry_points(
        cls, entry_points: Iterable[importlib.metadata.EntryPoint] | None = None
    ) -> Registry:
        """The plugins installed in this environment (nothing is imported yet).

        Args:
            entry_points: defaults to ``importlib.metadata.entry_points()`` of every group in
                :data:`GROUPS`.
        """
        registry = cls()
        if entry_points is None:
            entry_points = [
                ep for group in GROUPS for ep in importlib.metadata.entry_points(group=group)
            ]
        for ep in entry_points:
            if ep.group not in GROUPS:
                continue
            dist = ep.dist
            info = PluginInfo(
                ep.group,
                ep.name,
                ep.value,
                None if dist is None else dist.name,
                None if dist is None else dist.version,
            )
            sources = registry._sources[ep.group].setdefault(ep.name, [])
            if all(s.info != info for s in sources):
                sources.append(_Source(info, entry_point=ep))
        return registry

    @staticmethod
    def _check_group(group: str) -> None:
        if group not in GROUPS:
            raise ValueError(f"unknown plugin group {group!r}; expected one of {sorted(GROUPS)}")

    def names(self, group: str) -> list[str]:
        """The names available in ``group``, sorted."""
        self._check_group(group)
        return sorted(self._sources[group])

    def installed(self) -> list[PluginInfo]:
        """Every plugin of every group (with duplicates), without importing any."""
        return [
            source.info
            for group in GROUPS
            for name in sorted(self._sources[group])
            for source in self._sources[group][name]
        ]

    def provenance(self) -> list[PluginInfo]:
        """The plugins created so far, in the order they were first created."""
        return list(self._created.values())

    def _source(self, group: str, name: str) -> _Source:
        self._check_group(group)
        sources = self._sources[group].get(name)
        if not sources:
            installed = self.names(group)
            reason = f"not installed; installed {group}: {', '.join(installed) or '(none)'}"
            close = difflib.get_close_matches(name, installed, n=1)
            if close:
                reason += f" (did you mean {close[0]!r}?)"
            raise PluginError(group, name, reason)
        if len(sources) > 1:
            origins = "; ".join(f"{s.info.value} from {s.info.origin()}" for s in sources)
            raise PluginError(group, name, f"registered more than once: {origins}")
        return sources[0]

    def info(self, group: str, name: str) -> PluginInfo:
        """Where ``name`` comes from, without importing it.

        Raises:
            PluginError: not installed, or registered more than once.
        """
        return self._source(group, name).info

    def _error(self, info: PluginInfo, reason: str) -> PluginError:
        return PluginError(info.group, info.name, reason, dist=info.dist, version=info.version)

    def load(self, group: str, name: str) -> Factory:
        """Import the plugin and check the class against the group's Protocol (not instantiated).

        Raises:
            PluginError: missing, ambiguous, failing to import, or not a suitable class.
        """
        key = (group, name)
        if key in self._loaded:
            return self._loaded[key][0]
        source = self._source(group, name)
        info = source.info
        if source.factory is not None:
            factory = source.factory
        else:
            assert source.entry_point is not None
            try:
                factory = source.entry_point.load()
            except Exception as exc:
                raise self._error(info, f"cannot import {info.value}: {_describe(exc)}") from exc
        if not callable(factory):
            raise self._error(
                info, f"{info.value} is a {type(factory).__name__}, not a class or factory"
            )
        if inspect.isclass(factory):
            problems = protocol_problems(factory, GROUPS[group])
            if problems:
                raise self._error(info, self._mismatch(factory, group, problems))
        self._loaded[key] = (factory, info)
        return factory

    @staticmethod
    def _mismatch(obj: object, group: str, problems: list[str]) -> str:
        protocol = GROUPS[group]
        what = _value_of(obj) if inspect.isclass(obj) else f"the {_value_of(type(obj))} it made"
        return f"{what} does not satisfy edgefl.api.{protocol.__name__}: " + "; ".join(problems)

    def create(self, group: str, name: str, /, *args: object, **kwargs: object) -> Any:
        """Load ``name`` and instantiate it as ``factory(*args, **kwargs)``.

        The instance is checked against the group's Protocol and recorded in
        :meth:`provenance`.

        Raises:
            PluginError: any failure, wrapping the original exception (``__cause__``).
        """
        factory = self.load(group, name)
        info = self._loaded[(group, name)][1]
        try:
            instance = factory(*args, **kwargs)
        except (TypeError, ValueError) as exc:
            shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "no arguments"
            raise self._error(info, f"invalid arguments ({shown}): {exc}") from exc
        except Exception as exc:
            raise self._error(info, f"construction failed: {_describe(exc)}") from exc
        problems = protocol_problems(instance, GROUPS[group])
        if problems:
            raise self._error(info, self._mismatch(instance, group, problems))
        self._created.setdefault((group, name), info)
        return instance

    def aggregator(
        self, name: str, settings: AggregatorSettings, args: Mapping[str, object] | None = None
    ) -> Aggregator:
        """``create(AGGREGATORS, name, settings, **args)``."""
        instance: Aggregator = self.create(AGGREGATORS, name, settings, **(args or {}))
        return instance

    def selector(self, name: str, args: Mapping[str, object] | None = None) -> Selector:
        """``create(SELECTORS, name, **args)``."""
        instance: Selector = self.create(SELECTORS, name, **(args or {}))
        return instance

    def evaluator(
        self, name: str, job: object, args: Mapping[str, object] | None = None
    ) -> Evaluator:
        """``create(EVALUATORS, name, job, **args)``."""
        instance: Evaluator = self.create(EVALUATORS, name, job, **(args or {}))
        return instance

    def trainer(self, name: str, args: Mapping[str, object] | None = None) -> Trainer:
        """``create(TRAINERS, name, **args)``."""
        instance: Trainer = self.create(TRAINERS, name, **(args or {}))
        return instance


# --------------------------------------------------------------------------------------------------
# edgefl-server plugins

_SHORT = {group.removeprefix("edgefl."): group for group in GROUPS}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``edgefl-server plugins``."""
    parser.add_argument(
        "--group",
        choices=sorted(_SHORT),
        action="append",
        help="only this group (repeatable); default: all",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="also import every plugin and check it against its interface (exit 1 on failure)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")


def run(args: argparse.Namespace) -> int:
    """List the installed plugins of every group with their distribution and version."""
    registry = Registry.from_entry_points()
    groups = {_SHORT[g] for g in args.group} if args.group else set(GROUPS)
    rows: list[dict[str, str]] = []
    failed = False
    for info in registry.installed():
        if info.group not in groups:
            continue
        row = {
            "group": info.group,
            "name": info.name,
            "distribution": info.dist or "",
            "version": info.version or "",
            "object": info.value,
        }
        if args.check:
            try:
                registry.load(info.group, info.name)
            except PluginError as exc:
                row["status"] = exc.reason
                failed = True
            else:
                row["status"] = "ok"
        rows.append(row)
    out = sys.stdout
    if args.json:
        for row in rows:
            out.write(json.dumps(row) + "\n")
    elif rows:
        headers = list(rows[0])
        widths = {h: max(len(h), *(len(r[h]) for r in rows)) for h in headers}
        out.write("  ".join(h.upper().ljust(widths[h]) for h in headers).rstrip() + "\n")
        for row in rows:
            out.write("  ".join(row[h].ljust(widths[h]) for h in headers).rstrip() + "\n")
    else:
        out.write("no plugins installed\n")
    return 1 if failed else 0
