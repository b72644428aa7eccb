"""Plugin loading and the built-in selectors.

The registry (:class:`Registry`, :class:`PluginError`) resolves the plugin names a job asks for
through the ``edgefl.*`` entry point groups; the built-in selectors are registered there under
``random``, ``capability`` and ``fastest``. Evaluators live in ``plugins.evaluators`` and are
imported only when a job names one.
"""

from __future__ import annotations

from plugins._registry import (
    AGGREGATORS,
    EVALUATORS,
    GROUPS,
    SELECTORS,
    TRAINERS,
    PluginError,
    PluginInfo,
    Registry,
    protocol_problems,
)
from plugins.selectors import CapabilitySelector, FastestSelector, RandomSelector

__all__ = [
    "AGGREGATORS",
    "EVALUATORS",
    "GROUPS",
    "SELECTORS",
    "TRAINERS",
    "CapabilitySelector",
    "FastestSelector",
    "PluginError",
    "PluginInfo",
    "RandomSelector",
    "Registry",
    "protocol_problems",
]
