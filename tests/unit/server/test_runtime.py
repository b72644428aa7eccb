"""JobRuntime: events, the end of a job, evaluation and metrics, several jobs in one server."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import orjson
import trio

from edgefl._app import EdipCore
from edgefl._config import Settings
from edgefl._runtime import JobFinished, JobRuntime, VersionEvaluated, VersionPublished
from edgefl._store import Store
from plugins._registry import Registry
from tests.helpers import android_headers, ios_headers, job_variant, result_body

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

DELTA = {
    "linear2.bias": [0.5, -0.5],
    "linear2.weight": [[0.0] * 4] * 2,
    "linear1.weight": [[0.0] * 2] * 4,
    "linear1.bias": [0.0] * 4,
}


async def test_job_end_events_and_wait_finished(serve_job: Callable[..., Any]) -> None:
    s = await serve_job(model_manager={"num_updates_for_model": 1, "max_model_version": 3})
    events: list[object] = []
    s.runtime.subscribe(events.append)
    for version in (1, 2):
        # Two devices per version: the first to poll gets the task, the other one waits.
        polls = [
            orjson.loads(s.core.handle("POST", "/task", {"job_id": s.job_id}, h, b"{}").body)
            for h in (android_headers(), ios_headers())
        ]
        task = next(p for p in polls if p["status"] == "OK")
        assert task["task_data"]["meta"]["model_version"] == version
        s.core.handle(
            "POST",
            "/result",
            {"job_id": s.job_id, "task_id": task["task_id"], "task_name": "train"},
            android_headers() if task is polls[0] else ios_headers(),
            orjson.dumps(result_body(DELTA)),
        )
        if version == 1:
            with trio.fail_after(30):
                while s.runtime.statistics().published_version < 2:  # noqa: ASYNC110
                    await trio.sleep(0.01)
    with trio.fail_after(30):
        await s.runtime.wait_finished()
    stats = s.runtime.statistics()
    assert (stats.version, stats.finished, stats.updates_accepted) == (3, True, 2)
    published = [e.version for e in events if isinstance(e, VersionPublished)]
    evaluated = [e.version for e in events if isinstance(e, VersionEvaluated)]
    assert published == [2, 3]
    assert evaluated[-2:] == [2, 3]  # in version order
    assert isinstance(events[-1], JobFinished)
    assert events[-1].version == 3
    lines = [json.loads(x) for x in s.store.metrics_path(s.job_id).read_text().splitlines()]
    assert [line["version"] for line in lines] == [1, 2, 3]
    assert all(line["job_id"] == s.job_id for line in lines)
    # The final weights are on disk (the reference never saved them, R37).
    final = s.store.read_version(s.job_id, 3)
    assert final["linear2.bias"].tolist() == (s.runtime.core.weights["linear2.bias"]).tolist()


async def test_listener_failure_does_not_stop_the_job(serve_job: Callable[..., Any]) -> None:
    s = await serve_job(model_manager={"num_updates_for_model": 1, "max_model_version": 2})

    def broken(event: object) -> None:
        raise RuntimeError("listener bug")

    s.runtime.subscribe(broken)
    reply = orjson.loads(
        s.core.handle("POST", "/task", {"job_id": s.job_id}, android_headers(), b"{}").body
    )
    assert reply["status"] == "RETRY"  # the selection needs two devices
    task = orjson.loads(
        s.core.handle("POST", "/task", {"job_id": s.job_id}, ios_headers(), b"{}").body
    )
    s.core.handle(
        "POST",
        "/result",
        {"job_id": s.job_id, "task_id": task["task_id"], "task_name": "train"},
        ios_headers(),
        orjson.dumps(result_body(DELTA, form="ios")),
    )
    with trio.fail_after(30):
        await s.runtime.wait_finished()
    assert s.runtime.failure is None


async def test_several_jobs_in_one_server(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    settings = Settings(jobs=tmp_path, retry_jitter=0.0)
    try:
        runtimes = [
            JobRuntime.load(
                job_variant(tmp_path / name, name=name, evaluator="none"),
                store=store,
                registry=Registry.from_entry_points(),
                settings=settings,
            )
            for name in ("xor_a", "xor_b")
        ]
        core = EdipCore(runtimes, settings)
        async with trio.open_nursery() as nursery:
            for rt in runtimes:
                await nursery.start(rt.run)
            ids = {}
            for name in ("xor_a", "xor_b"):
                reply = orjson.loads(
                    core.handle(
                        "POST", "/job", {}, android_headers(), orjson.dumps({"job_name": name})
                    ).body
                )
                assert reply["job_name"] == name
                ids[name] = reply["job_id"]
            assert ids["xor_a"] != ids["xor_b"]
            health = orjson.loads(core.handle("GET", "/healthz", {}, {}, b"").body)
            assert {j["name"]: j["job_id"] for j in health["jobs"]} == ids
            poll = orjson.loads(
                core.handle("POST", "/task", {"job_id": ids["xor_b"]}, ios_headers(), b"{}").body
            )
            assert poll["job_id"] == ids["xor_b"]
            assert runtimes[1].statistics().devices_known == 1
            assert runtimes[0].statistics().devices_known == 0
            nursery.cancel_scope.cancel()
    finally:
        store.close()


async def test_changed_job_folder_is_a_new_job_and_old_reports_are_discarded(
    tmp_path: Path,
) -> None:
    folder = job_variant(tmp_path / "job", evaluator="none")
    settings = Settings(jobs=folder, retry_jitter=0.0)
    store = Store(tmp_path / "state")
    try:
        first = JobRuntime.load(
            folder, store=store, registry=Registry.from_entry_points(), settings=settings
        )
        again = JobRuntime.load(
            folder, store=store, registry=Registry.from_entry_points(), settings=settings
        )
        assert again.job_id == first.job_id  # same folder, same files: same job
        toml = folder / "job.toml"
        toml.write_text(toml.read_text().replace("max_model_version = 3", "max_model_version = 4"))
        changed = JobRuntime.load(
            folder, store=store, registry=Registry.from_entry_points(), settings=settings
        )
        assert changed.job_id != first.job_id
        core = EdipCore([changed], settings, retired_job_ids=store.retired_job_ids())
        query = {"job_id": first.job_id, "task_id": "t", "task_name": "train"}
        late = orjson.loads(
            core.handle(
                "POST", "/result", query, android_headers(), orjson.dumps(result_body(DELTA))
            ).body
        )
        assert late["status"] == "OK"  # EDIP §11.2: accepted and discarded
        poll = orjson.loads(
            core.handle("POST", "/task", {"job_id": first.job_id}, android_headers(), b"{}").body
        )
        assert poll == {"status": "NO_JOB"}  # iOS re-joins through /job
    finally:
        store.close()
