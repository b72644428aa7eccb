"""edgefl: a single-binary edge server for federated learning on phones.

The user's API (``DeviceModel``, ``ETFedBuffRecipe`` and the config objects) needs torch, so it is
loaded on first use: ``import edgefl`` stays light for the server and the protocol tools.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "DeviceModel": "edgefl._model",
    "ETFedBuffRecipe": "edgefl._recipe",
    "ModelManagerConfig": "edgefl._recipe",
    "DeviceManagerConfig": "edgefl._recipe",
    "EvaluatorConfig": "edgefl._recipe",
    "SimulationConfig": "edgefl._recipe",
    "load_job_folder": "edgefl._jobfolder",
    "JobFolderError": "edgefl._jobfolder",
    "ExportError": "edgefl._export",
    "DefaultGlobalLRWarning": "edgefl._recipe",
}

__all__ = [
    "DefaultGlobalLRWarning",
    "DeviceManagerConfig",
    "DeviceModel",
    "ETFedBuffRecipe",
    "EvaluatorConfig",
    "ExportError",
    "JobFolderError",
    "ModelManagerConfig",
    "SimulationConfig",
    "load_job_folder",
]

if TYPE_CHECKING:
    from edgefl._export import ExportError
    from edgefl._jobfolder import JobFolderError, load_job_folder
    from edgefl._model import DeviceModel
    from edgefl._recipe import (
        DefaultGlobalLRWarning,
        DeviceManagerConfig,
        ETFedBuffRecipe,
        EvaluatorConfig,
        ModelManagerConfig,
        SimulationConfig,
    )


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'edgefl' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
