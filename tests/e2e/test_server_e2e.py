"""The server over real HTTP: hypercorn on 127.0.0.1:0, httpx clients speaking EDIP."""

from __future__ import annotations

import base64
import json
import os
import signal
import ssl
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import orjson
import pytest
import trio

from edgefl._config import Settings
from edgefl._runtime import VersionEvaluated
from edgefl._server import ServerHandle, serve
from edgefl._store import Store
from tests.helpers import (
    android_headers,
    ios_headers,
    job_variant,
    program_weights,
    result_body,
    train_xor,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

ANDROID_JOB = orjson.dumps(
    {
        "job_name": "xor_et",
        "capabilities": {"supported_jobs": ["CIFAR10", "XOR"], "methods": ["cnn", "xor"]},
    }
)
IOS_JOB = orjson.dumps({"job_name": "xor_et", "capabilities": {"methods": ["xor_et"]}})


def _settings(tmp_path: Path, **changes: Any) -> Settings:
    jobs = tmp_path / "jobs"
    if not jobs.exists():
        jobs.mkdir()
        job_variant(jobs / "xor", evaluator=changes.pop("evaluator", "none"))
    else:
        changes.pop("evaluator", None)
    values: dict[str, Any] = {
        "jobs": jobs,
        "host": "127.0.0.1",
        "port": 0,
        "state_dir": tmp_path / "state",
        "retry_jitter": 0.0,
        "seed": 3,
        "graceful_timeout": 10.0,
    }
    values.update(changes)
    return Settings(**values)


async def _poll(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    job_id: str,
    cookie: dict[str, int] | None = None,
) -> dict[str, Any]:
    body = orjson.dumps({"cookie": cookie} if cookie else {})
    r = await client.post("/task", params={"job_id": job_id}, headers=headers, content=body)
    assert r.status_code == 200
    reply: dict[str, Any] = r.json()
    return reply


async def _report(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    job_id: str,
    task: dict[str, Any],
    body: dict[str, Any],
) -> dict[str, Any]:
    r = await client.post(
        "/result",
        params={"job_id": job_id, "task_id": task["task_id"], "task_name": "train"},
        headers=headers,
        content=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
    )
    assert r.status_code == 200
    reply: dict[str, Any] = r.json()
    return reply


async def _join_and_get_tasks(
    android: httpx.AsyncClient, ios: httpx.AsyncClient
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    r = await android.post("/job", headers=android_headers(), content=ANDROID_JOB)
    job_id = r.json()["job_id"]
    r = await ios.post("/job", headers=ios_headers(endpoint="job"), content=IOS_JOB)
    assert r.json()["job_id"] == job_id
    parked = await _poll(android, android_headers(), job_id)  # alone: not enough to start
    assert (parked["status"], parked["retry_wait"]) == ("RETRY", 5000)
    ios_task = await _poll(ios, ios_headers(), job_id)  # completes the selection
    android_task = await _poll(android, android_headers(), job_id)
    assert ios_task["status"] == android_task["status"] == "OK"
    return job_id, android_task, ios_task


@pytest.mark.slow
async def test_phones_train_the_received_program_and_advance_the_model(tmp_path: Path) -> None:
    settings = _settings(tmp_path, evaluator="classification")
    async with trio.open_nursery() as nursery:
        handle: ServerHandle = await nursery.start(serve, settings)
        runtime = handle.runtimes[0]
        evaluated = {1: trio.Event(), 2: trio.Event()}

        def on_event(event: object) -> None:
            if isinstance(event, VersionEvaluated) and event.version in evaluated:
                evaluated[event.version].set()

        runtime.subscribe(on_event)
        initial = {k: v.copy() for k, v in runtime.core.weights.items()}
        async with (
            httpx.AsyncClient(base_url=handle.url) as android,
            httpx.AsyncClient(base_url=handle.url) as ios,
        ):
            job_id, android_task, ios_task = await _join_and_get_tasks(android, ios)
            deltas = {}
            for who, task, offset in (("android", android_task, 0), ("ios", ios_task, 2)):
                program = base64.b64decode(task["task_data"]["data"], validate=True)
                deltas[who] = await trio.to_thread.run_sync(
                    lambda p=program, o=offset: train_xor(p, steps=4, lr=0.5, offset=o)
                )
                assert any(np.abs(d).max() > 0 for d in deltas[who].values())
            reply = await _report(
                android,
                android_headers(),
                job_id,
                android_task,
                result_body(deltas["android"], form="android", cookie=android_task["cookie"]),
            )
            assert reply == {
                "status": "OK",
                "task_id": android_task["task_id"],
                "task_name": "train",
            }
            reply = await _report(
                ios,
                ios_headers(),
                job_id,
                ios_task,
                result_body(deltas["ios"], form="ios", cookie=ios_task["cookie"]),
            )
            assert reply["status"] == "OK"
            with trio.fail_after(60):
                await evaluated[2].wait()
            # FedBuff, count normalization, no staleness, global_lr 1: W2 = W1 + mean of deltas.
            expected = {
                k: initial[k] + (deltas["android"][k] + deltas["ios"][k]) / 2 for k in initial
            }
            for name, value in expected.items():
                np.testing.assert_allclose(runtime.core.weights[name], value, atol=1e-6)
            # Both devices were re-selected; the next task carries version 2's exact weights.
            task = await _poll(android, android_headers(), job_id, android_task["cookie"])
            assert task["status"] == "OK"
            assert (
                task["cookie"]["model_version"] == task["task_data"]["meta"]["model_version"] == 2
            )
            program = base64.b64decode(task["task_data"]["data"])
            served = await trio.to_thread.run_sync(program_weights, program)
            for name, value in expected.items():
                np.testing.assert_allclose(served[name], value, atol=1e-6)
        lines = [
            json.loads(line)
            for line in runtime.store.metrics_path(runtime.job_id).read_text().splitlines()
        ]
        assert [line["version"] for line in lines] == [1, 2]
        assert all(0.0 <= line["accuracy"] <= 100.0 for line in lines)
        handle.shutdown()


async def test_a_lost_task_reply_is_sent_again(tmp_path: Path) -> None:
    """The /task reply carrying a task never reaches the phone: its next poll (with the cookie
    it had before, here none) gets the same task at once instead of RETRY until task_timeout,
    and its report of that task is accepted."""
    async with trio.open_nursery() as nursery:
        handle: ServerHandle = await nursery.start(serve, _settings(tmp_path))
        async with (
            httpx.AsyncClient(base_url=handle.url) as android,
            httpx.AsyncClient(base_url=handle.url) as ios,
        ):
            job_id, lost, _ = await _join_and_get_tasks(android, ios)
            again = await _poll(android, android_headers(), job_id)
            assert again["status"] == "OK"
            assert (again["task_id"], again["cookie"]) == (lost["task_id"], lost["cookie"])
            assert again["task_data"] == lost["task_data"]
            # Once the phone holds the task's cookie, polling parks it as before.
            parked = await _poll(android, android_headers(), job_id, lost["cookie"])
            assert (parked["status"], parked["cookie"]) == ("RETRY", lost["cookie"])
            delta = {
                k: np.full(v.shape, 0.25, np.float32)
                for k, v in handle.runtimes[0].core.weights.items()
            }
            reply = await _report(
                android,
                android_headers(),
                job_id,
                again,
                result_body(delta, cookie=again["cookie"]),
            )
            assert reply == {"status": "OK", "task_id": lost["task_id"], "task_name": "train"}
            assert handle.runtimes[0].statistics().updates_accepted == 1
        handle.shutdown()


async def test_graceful_shutdown_drains_uploads_and_persists(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        handle: ServerHandle = await nursery.start(serve, settings)
        async with (
            httpx.AsyncClient(base_url=handle.url) as android,
            httpx.AsyncClient(base_url=handle.url) as ios,
        ):
            job_id, android_task, _ = await _join_and_get_tasks(android, ios)
            delta = {
                k: np.full(v.shape, 0.25, np.float32)
                for k, v in handle.runtimes[0].core.weights.items()
            }
            payload = orjson.dumps(
                result_body(delta, cookie=android_task["cookie"]),
                option=orjson.OPT_SERIALIZE_NUMPY,
            )

            async def slow_body() -> AsyncIterator[bytes]:
                yield payload[:100]
                await release.wait()
                yield payload[100:]

            upload: dict[str, httpx.Response] = {}

            async def send_upload() -> None:
                upload["response"] = await android.post(
                    "/result",
                    params={
                        "job_id": job_id,
                        "task_id": android_task["task_id"],
                        "task_name": "train",
                    },
                    headers=android_headers(),
                    content=slow_body(),
                )

            with trio.fail_after(10):
                await handle.core.wait_idle()  # the replies above are all sent
            async with trio.open_nursery() as uploads:
                uploads.start_soon(send_upload)
                # The server has no event for "a request arrived"; watch it (bounded) instead.
                with trio.fail_after(10):
                    while handle.core.in_flight == 0:  # noqa: ASYNC110
                        await trio.sleep(0.005)
                handle.shutdown()
                with trio.fail_after(10):
                    while not handle.core.draining:  # noqa: ASYNC110
                        await trio.sleep(0.005)
                # A new request during the drain is parked with the platform's retry_wait.
                parked = await _poll(ios, ios_headers(), job_id)
                assert parked == {
                    "status": "RETRY",
                    "job_id": job_id,
                    "retry_wait": 5,
                    "message": "Server restarting",
                }
                assert "response" not in upload  # the upload is still open
                release.set()
            assert upload["response"].status_code == 200
            assert upload["response"].json()["status"] == "OK"
    # serve() returned cleanly; the accepted update is on disk.
    store = Store(settings.state_dir)  # type: ignore[arg-type]
    try:
        (row,) = [store.job_row(j) for j in _job_ids(store)]
        assert row.counters["accepted"] == 1
        assert store.count_pending(row.job_id) == 1
        assert store.task(row.job_id, android_task["task_id"]).status == "accepted"
    finally:
        store.close()


async def test_idle_keep_alive_connections_do_not_hold_shutdown(tmp_path: Path) -> None:
    """A phone's idle keep-alive connection (here one whose last request went through the
    quart-trio app) is closed at shutdown; the drain still waits for an in-flight upload."""
    settings = _settings(tmp_path, graceful_timeout=60.0)
    release = trio.Event()
    upload: dict[str, httpx.Response] = {}
    with trio.fail_after(30):  # the bug held the shutdown for graceful_timeout (60 s)
        async with trio.open_nursery() as nursery:
            handle: ServerHandle = await nursery.start(serve, settings)
            port = int(handle.url.rsplit(":", 1)[1])
            idle = await trio.open_tcp_stream("127.0.0.1", port)
            await idle.send_all(b"GET /healthz HTTP/1.1\r\nHost: phone\r\n\r\n")
            head = await idle.receive_some(65536)
            assert head.startswith(b"HTTP/1.1 200")
            async with (
                httpx.AsyncClient(base_url=handle.url) as android,
                httpx.AsyncClient(base_url=handle.url) as ios,
            ):
                job_id, task, _ = await _join_and_get_tasks(android, ios)
                delta = {
                    k: np.full(v.shape, 0.25, np.float32)
                    for k, v in handle.runtimes[0].core.weights.items()
                }
                payload = orjson.dumps(
                    result_body(delta, cookie=task["cookie"]), option=orjson.OPT_SERIALIZE_NUMPY
                )

                async def slow_body() -> AsyncIterator[bytes]:
                    yield payload[:100]
                    await release.wait()
                    yield payload[100:]

                async def send_upload() -> None:
                    upload["response"] = await android.post(
                        "/result",
                        params={"job_id": job_id, "task_id": task["task_id"], "task_name": "train"},
                        headers=android_headers(),
                        content=slow_body(),
                    )

                await handle.core.wait_idle()
                async with trio.open_nursery() as uploads:
                    uploads.start_soon(send_upload)
                    while handle.core.in_flight == 0:  # noqa: ASYNC110
                        await trio.sleep(0.005)
                    handle.shutdown()
                    while not handle.core.draining:  # noqa: ASYNC110
                        await trio.sleep(0.005)
                    release.set()
            # serve() returns once the upload is answered, without waiting for the idle
            # connection (the nursery exits only when serve() has returned).
        assert await _read_to_eof(idle) == b""  # the server closed it
        await idle.aclose()
    assert upload["response"].status_code == 200
    assert upload["response"].json() == {
        "status": "OK",
        "task_id": task["task_id"],
        "task_name": "train",
    }


async def _read_to_eof(stream: trio.SocketStream) -> bytes:
    """What is left of the last reply: everything up to the end of the stream minus its body
    (returns b"" when the stream ends right after a complete reply)."""
    rest = b""
    while chunk := await stream.receive_some(65536):
        rest += chunk
    return rest if rest.startswith(b"HTTP/") else b""


def _job_ids(store: Store) -> list[str]:
    return [r[0] for r in store._db.execute("SELECT job_id FROM jobs")]


async def test_restart_resumes_versions_buffers_and_accepted_tasks(tmp_path: Path) -> None:
    settings = _settings(tmp_path)

    def delta(value: float, handle: ServerHandle) -> dict[str, np.ndarray]:
        return {
            k: np.full(v.shape, value, np.float32)
            for k, v in handle.runtimes[0].core.weights.items()
        }

    async with trio.open_nursery() as nursery:
        handle: ServerHandle = await nursery.start(serve, settings)
        initial = {k: v.copy() for k, v in handle.runtimes[0].core.weights.items()}
        async with (
            httpx.AsyncClient(base_url=handle.url) as android,
            httpx.AsyncClient(base_url=handle.url) as ios,
        ):
            job_id, android_task, ios_task = await _join_and_get_tasks(android, ios)
            android_body = result_body(delta(0.5, handle), cookie=android_task["cookie"])
            assert (await _report(android, android_headers(), job_id, android_task, android_body))[
                "status"
            ] == "OK"
        before = handle.runtimes[0].statistics()
        handle.shutdown()
    assert (before.version, before.updates_pending) == (1, 1)

    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, settings)
        runtime = handle.runtimes[0]
        assert runtime.job_id == job_id
        after = runtime.statistics()
        assert (after.version, after.updates_accepted, after.updates_pending) == (1, 1, 1)
        async with httpx.AsyncClient(base_url=handle.url) as client:
            r = await client.post("/job", headers=android_headers(), content=ANDROID_JOB)
            assert r.json()["job_id"] == job_id  # same id: devices keep their job
            again = await _report(client, android_headers(), job_id, android_task, android_body)
            assert again["message"] == "duplicate report discarded"
            ios_body = result_body(delta(-0.25, handle), form="ios", cookie=ios_task["cookie"])
            reply = await _report(client, ios_headers(), job_id, ios_task, ios_body)
            assert reply == {"status": "OK", "task_id": ios_task["task_id"], "task_name": "train"}
        stats = runtime.statistics()
        assert (stats.version, stats.updates_accepted, stats.updates_pending) == (2, 2, 0)
        for name, value in initial.items():
            np.testing.assert_allclose(runtime.core.weights[name], value + 0.125, atol=1e-6)
        handle.shutdown()


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "quart"])
async def test_body_limit_413_before_reading(tmp_path: Path, fast_path: bool) -> None:
    settings = _settings(tmp_path, max_body_bytes=4096, fast_path=fast_path)
    async with trio.open_nursery() as nursery:
        handle: ServerHandle = await nursery.start(serve, settings)
        job_id = handle.runtimes[0].job_id
        async with httpx.AsyncClient(base_url=handle.url) as client:
            query = {"job_id": job_id, "task_id": "t", "task_name": "train"}
            r = await client.post(
                "/result",
                params=query,
                headers=android_headers(),
                content=b"{" + b" " * 5000 + b"}",
            )
            assert r.status_code == 413
            assert r.json()["status"] == "INVALID_REQUEST"

            async def chunked() -> AsyncIterator[bytes]:
                for _ in range(10):
                    yield b" " * 1000

            r = await client.post(
                "/result", params=query, headers=android_headers(), content=chunked()
            )
            assert r.status_code == 413
            r = await client.post("/job", headers=android_headers(), content=ANDROID_JOB)
            assert r.status_code == 200
        handle.shutdown()


@pytest.mark.slow
def test_serve_command_exits_0_on_sigterm(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    env = {**os.environ, "EDGEFL_RETRY_WAIT": "2"}
    command = [
        sys.executable,
        "-m",
        "edgefl",
        "serve",
        "--jobs",
        str(settings.jobs),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--state-dir",
        str(settings.state_dir),
    ]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env) as proc:
        try:
            assert proc.stderr is not None
            url = None
            for line in proc.stderr:
                if "event=server_started" in line:
                    url = line.split("binds=")[1].split()[0]
                    break
            assert url is not None, "the server never reported its address"
            r = httpx.post(
                f"{url}/task", params={"job_id": "x"}, headers=ios_headers(), content=b"{}"
            )
            assert r.json() == {"status": "NO_JOB"}
            r = httpx.post(f"{url}/job", headers=android_headers(), content=ANDROID_JOB)
            job_id = r.json()["job_id"]
            r = httpx.post(
                f"{url}/task", params={"job_id": job_id}, headers=ios_headers(), content=b"{}"
            )
            assert r.json()["retry_wait"] == 2  # EDGEFL_RETRY_WAIT reached the server
            assert httpx.get(f"{url}/healthz").json()["status"] == "ok"
            proc.send_signal(signal.SIGTERM)
            rest = proc.stderr.read()
            assert proc.wait(timeout=60) == 0
            assert "event=shutdown_requested signal=SIGTERM" in rest
            assert "event=server_stopped" in rest
        finally:
            if proc.poll() is None:
                proc.kill()


async def test_https_with_a_certificate(tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(key_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    settings = _settings(tmp_path, tls_cert=cert_path, tls_key=key_path)
    async with trio.open_nursery() as nursery:
        handle: ServerHandle = await nursery.start(serve, settings)
        assert handle.url.startswith("https://127.0.0.1:")
        client_context = ssl.create_default_context()
        ca.configure_trust(client_context)
        async with httpx.AsyncClient(base_url=handle.url, verify=client_context) as client:
            r = await client.post("/job", headers=android_headers(), content=ANDROID_JOB)
            assert r.json()["status"] == "OK"
        handle.shutdown()
