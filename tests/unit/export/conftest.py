"""Shared exports for the export tests.

Exports take seconds each, so every architecture is exported once per test session and shared
(``templates``); tests that need another export say so and are marked slow.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import pytest
from _export_testlib import Exported

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


@pytest.fixture(scope="session")
def templates() -> Callable[[str], Exported]:
    """``templates(name)``: the session's one export of architecture ``name``."""
    cache: dict[str, Exported] = {}

    def get(name: str) -> Exported:
        if name not in cache:
            cache[name] = Exported(name)
        return cache[name]

    return get


@pytest.fixture(autouse=True)
def _no_export_noise() -> Iterator[None]:
    """Tests assert on edgefl's own warnings only; torch/executorch internals are noisy."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="copyreg")
        yield
