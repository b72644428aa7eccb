"""Fixtures for the hostile-input tests: a real server (hypercorn, loopback, port 0) in the test's
nursery, serving the XOR job, and a way to prove that a request changed nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import httpx
import pytest

from edgefl._config import Settings
from edgefl._server import ServerHandle, serve
from tests.durability.harness import state_snapshot, xor_job

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    import trio

    from tests.durability.harness import StateSnapshot


@pytest.fixture
async def start_server(
    nursery: trio.Nursery, tmp_path: Path
) -> Callable[..., Awaitable[ServerHandle]]:
    """``await start_server(job={...job.toml overrides}, **settings)`` -> a listening server."""

    async def start(job: dict[str, Any] | None = None, **settings: Any) -> ServerHandle:
        jobs = tmp_path / "jobs"
        jobs.mkdir()
        defaults: dict[str, Any] = {
            "model_manager": {"num_updates_for_model": 2, "max_model_version": 1000},
            "device_manager": {
                "device_selection_size": 64,
                "min_hole_to_fill": 1,
                "min_devices_to_start": 1,
            },
        }
        xor_job(jobs, **(job or defaults))
        values: dict[str, Any] = {
            "jobs": jobs,
            "host": "127.0.0.1",
            "port": 0,
            "state_dir": tmp_path / "state",
            "max_body_bytes": 64 * 1024,
            "retry_wait": 1.0,
            "retry_jitter": 0.0,
            "graceful_timeout": 1.0,
            "seed": 7,
            **settings,
        }
        handle: ServerHandle = await nursery.start(serve, Settings(**values))
        return handle

    return start


@pytest.fixture
async def server(start_server: Callable[..., Awaitable[ServerHandle]]) -> ServerHandle:
    return await start_server()


@pytest.fixture
async def client(server: ServerHandle) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as c:
        yield c


@attrs.frozen
class Observed:
    """Everything a rejected request must leave as it was."""

    stats: Any
    disk: StateSnapshot


def observe(server: ServerHandle) -> Observed:
    (runtime,) = server.runtimes
    return Observed(runtime.statistics(), state_snapshot(server.state_dir, runtime.job_id))


def model_state(observed: Observed) -> tuple[object, ...]:
    """The part of the state no rejected or discarded report may change (discard counters may)."""
    s = observed.stats
    d = observed.disk
    accepted = sorted(t for t, (_, status, _) in d.tasks.items() if status == "accepted")
    return (
        s.version,
        s.updates_accepted,
        s.updates_pending,
        d.current_version,
        d.pending_updates,
        d.versions,
        accepted,
        d.counters.get("accepted", 0),
    )
