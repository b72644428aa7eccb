"""Fixtures for the server tests: an EDIP core over real job runtimes (no HTTP)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import trio

from edgefl._app import EdipCore
from edgefl._config import Settings
from edgefl._runtime import JobRuntime
from edgefl._store import Store
from plugins._registry import Registry
from tests.helpers import job_variant, xor_job

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path


class Served:
    """An :class:`EdipCore` over one running job runtime, driven with ``request(...)``."""

    def __init__(self, core: EdipCore, runtime: JobRuntime, store: Store) -> None:
        self.core = core
        self.runtime = runtime
        self.store = store
        self.job_id = runtime.job_id

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        """(status, JSON body or None, headers)."""
        import orjson

        response = self.core.handle(method, path, query or {}, headers or {}, body)
        parsed = orjson.loads(response.body) if response.body else None
        return response.status, parsed, dict(response.headers)


@pytest.fixture(scope="session")
def exported_xor_job() -> Path:
    """The XOR job folder, exported once per test session (ETFedBuffRecipe.export)."""
    return xor_job()


@pytest.fixture
async def serve_job(tmp_path: Path, exported_xor_job: Path) -> AsyncIterator[Callable[..., Any]]:
    """``await serve_job(settings=..., **job_variant_kwargs)`` -> a running :class:`Served`."""
    stores: list[Store] = []

    async def start(settings: dict[str, Any] | None = None, **variant: Any) -> Served:
        folder = job_variant(tmp_path / f"job{len(stores)}", **{"evaluator": "none", **variant})
        config = Settings(jobs=folder, retry_jitter=0.0, seed=1, **(settings or {}))
        store = Store(tmp_path / f"state{len(stores)}")
        stores.append(store)
        runtime = JobRuntime.load(
            folder, store=store, registry=Registry.from_entry_points(), settings=config
        )
        await nursery.start(runtime.run)
        return Served(EdipCore([runtime], config), runtime, store)

    async with trio.open_nursery() as nursery:
        yield start
        nursery.cancel_scope.cancel()
    for store in stores:
        store.close()
