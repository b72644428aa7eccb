"""The EDIP core end to end without HTTP: golden vectors (EDIP §12), errors (§8), job end (§11)."""

from __future__ import annotations

import base64
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pytest

from tests.helpers import android_headers, ios_headers, result_body

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.unit.server.conftest import Served

JOB_BODY = orjson.dumps(
    {
        "job_name": "xor_et",
        "capabilities": {"supported_jobs": ["CIFAR10", "XOR"], "methods": ["cnn", "xor"]},
    }
)
JOB_DATA = {
    "config": {
        "components": [
            {
                "type": "Trainer.DLTrainer",
                "name": "trainer",
                "args": {"epoch": 3, "lr": 0.0001, "batch_size": 1},
            }
        ],
        "executors": {"train": "@trainer"},
    }
}
# The golden delta of EDIP §12 V4 (names without "net.").
V4_DELTA = {
    "linear1.weight": np.array(
        [[0.0012, -0.0031], [1.0e-4, 0.0], [-0.0025, 0.0018], [0.0007, -4.2e-4]], np.float32
    ),
    "linear1.bias": np.array([0.0009, -0.0011, 0.0003, -0.0002], np.float32),
    "linear2.weight": np.array(
        [[-0.0041, 0.0022, 0.0015, -0.0008], [0.0041, -0.0022, -0.0015, 0.0008]], np.float32
    ),
    "linear2.bias": np.array([-0.0035, 0.0035], np.float32),
}


def _no_nulls(value: object) -> bool:
    if value is None:
        return False
    if isinstance(value, dict):
        return all(_no_nulls(v) for v in value.values())
    if isinstance(value, list):
        return all(_no_nulls(v) for v in value)
    return True


def _task(s: Served, headers: dict[str, str], cookie: dict[str, int] | None = None) -> Any:
    body = orjson.dumps({"cookie": cookie} if cookie else {})
    status, reply, _ = s.request(
        "POST", "/task", headers=headers, query={"job_id": s.job_id}, body=body
    )
    assert status == 200
    assert _no_nulls(reply)
    return reply


def _result(
    s: Served,
    headers: dict[str, str],
    task_id: str,
    body: dict[str, Any],
    *,
    query: dict[str, str] | None = None,
) -> Any:
    q = {"job_id": s.job_id, "task_id": task_id, "task_name": "train"}
    status, reply, _ = s.request(
        "POST",
        "/result",
        headers=headers,
        query=q if query is None else query,
        body=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
    )
    assert status == 200, reply
    return reply


async def _two_tasks(s: Served) -> tuple[Any, Any]:
    """V2 then V3: iOS registers, Android completes the selection and gets a task, iOS too."""
    first = _task(s, ios_headers())
    assert first["status"] == "RETRY"
    android = _task(s, android_headers())
    ios = _task(s, ios_headers())
    assert android["status"] == ios["status"] == "OK"
    return android, ios


# --------------------------------------------------------------------------------------------
# V1: /job


async def test_v1_android_joins_a_job(serve_job: Callable[..., Any]) -> None:
    s = await serve_job()
    status, reply, headers = s.request("POST", "/job", headers=android_headers(), body=JOB_BODY)
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert reply == {"status": "OK", "job_id": s.job_id, "job_name": "xor_et", "job_data": JOB_DATA}


async def test_v1b_empty_methods_and_no_capabilities_are_accepted(
    serve_job: Callable[..., Any],
) -> None:
    s = await serve_job()
    for body in (b'{"job_name":"xor_et","capabilities":{"methods":[]}}', b'{"job_name":"xor_et"}'):
        status, reply, _ = s.request("POST", "/job", headers=android_headers(), body=body)
        assert (status, reply["status"], reply["job_data"]) == (200, "OK", JOB_DATA)


async def test_v1c_unknown_and_empty_job_names(serve_job: Callable[..., Any]) -> None:
    s = await serve_job()
    _, reply, _ = s.request(
        "POST", "/job", headers=ios_headers(endpoint="job"), body=b'{"job_name":"nope"}'
    )
    assert reply == {"status": "NO_JOB"}
    _, reply, _ = s.request("POST", "/job", headers=android_headers(), body=b'{"job_name":""}')
    assert reply == {"status": "INVALID_REQUEST", "message": "missing job_name"}


# --------------------------------------------------------------------------------------------
# V2, V3: /task


async def test_v2_parked_devices_get_retry_in_their_platform_unit(
    serve_job: Callable[..., Any],
) -> None:
    s = await serve_job(device_manager={"device_selection_size": 4})
    assert _task(s, ios_headers()) == {
        "status": "RETRY",
        "job_id": s.job_id,
        "retry_wait": 5,
        "message": "Device not selected",
    }
    assert _task(s, android_headers())["retry_wait"] == 5000
    generic = _task(s, {"X-Flare-Device-ID": "curl-1"})
    assert generic["retry_wait"] == 5
    assert s.runtime.statistics().devices_known == 3  # registered by their first poll


async def test_v3_task_payload_meta_and_cookie(serve_job: Callable[..., Any]) -> None:
    s = await serve_job()
    android, ios = await _two_tasks(s)
    assert set(android) == {
        "status",
        "job_id",
        "retry_wait",
        "task_id",
        "task_name",
        "task_data",
        "cookie",
    }
    assert (android["job_id"], android["retry_wait"], android["task_name"]) == (
        s.job_id,
        0,
        "train",
    )
    uuid.UUID(android["task_id"])
    assert android["task_id"] != ios["task_id"]
    data = android["task_data"]
    assert data["kind"] == "APP_DEFINED"
    program = base64.b64decode(data["data"], validate=True)
    assert program[4:8] == b"ET12"  # an ExecuTorch program
    assert data["meta"] == {
        "model_version": 1,
        "model_buffer_type": "executorch",
        "model_buffer_native_format": "binary",
        "model_buffer_encoding": "base64",
        "total_epochs": 3,
        "batch_size": 1,
        "learning_rate": 0.0001,
        "method": "xor",
        "contribution_round": 1,
        "num_rounds": 3,
    }
    ios_meta = dict(data["meta"])
    del ios_meta["learning_rate"]  # iOS would train at 0.01 instead (EDIP R18)
    assert ios["task_data"]["meta"] == ios_meta
    assert ios["task_data"]["data"] == data["data"]
    assert android["cookie"]["model_version"] == 1
    assert {android["cookie"]["device_selection_id"], ios["cookie"]["device_selection_id"]} == {
        1,
        2,
    }
    again = _task(s, android_headers(), cookie=android["cookie"])
    assert again == {
        "status": "RETRY",
        "job_id": s.job_id,
        "retry_wait": 5000,
        "cookie": android["cookie"],
        "message": "Device not selected",
    }


async def test_get_task_with_query_works(serve_job: Callable[..., Any]) -> None:
    s = await serve_job(
        model_manager={"num_updates_for_model": 1}, device_manager={"device_selection_size": 1}
    )
    status, reply, _ = s.request(
        "GET", "/task", headers={"X-Flare-Device-ID": "feg-client"}, query={"job_id": s.job_id}
    )
    assert (status, reply["status"], reply["task_name"]) == (200, "OK", "train")


# --------------------------------------------------------------------------------------------
# V4: /result


@pytest.mark.parametrize("form", ["android", "ios", "python", "cbor"])
async def test_v4_report_in_every_form_buffers_the_delta(
    serve_job: Callable[..., Any], form: str
) -> None:
    s = await serve_job()
    android, _ = await _two_tasks(s)
    body = result_body(V4_DELTA, form=form, cookie=android["cookie"])  # type: ignore[arg-type]
    reply = _result(s, android_headers(), android["task_id"], body)
    assert reply == {"status": "OK", "task_id": android["task_id"], "task_name": "train"}
    pending = list(s.store.pending_updates(s.job_id))
    assert len(pending) == 1
    assert pending[0].version == 1
    for name, expected in V4_DELTA.items():
        np.testing.assert_array_equal(pending[0].delta[name], expected)


async def test_v4_cbor_report_gets_a_cbor_reply(serve_job: Callable[..., Any]) -> None:
    import cbor2

    s = await serve_job()
    android, _ = await _two_tasks(s)
    headers = {**android_headers(), "Content-Type": "application/cbor"}
    body = cbor2.dumps(
        {
            "result": {
                "kind": "et_tensor_diff",
                "data": {
                    f"net.{k}": {
                        "sizes": list(v.shape),
                        "data": cbor2.CBORTag(85, v.reshape(-1).tobytes()),
                    }
                    for k, v in V4_DELTA.items()
                },
                "meta": {},
            }
        }
    )
    response = s.core.handle(
        "POST",
        "/result",
        {"job_id": s.job_id, "task_id": android["task_id"], "task_name": "train"},
        headers,
        body,
    )
    assert response.status == 200
    assert dict(response.headers)["content-type"] == "application/cbor"
    assert cbor2.loads(response.body)["status"] == "OK"
    assert s.runtime.statistics().updates_pending == 1


async def test_v4d_wrong_sizes_get_error_and_buffer_nothing(serve_job: Callable[..., Any]) -> None:
    s = await serve_job()
    android, _ = await _two_tasks(s)
    body = result_body(V4_DELTA, cookie=android["cookie"])
    body["result"]["data"]["net.linear2.bias"] = {"sizes": [3], "data": [0.1, 0.2, 0.3]}
    reply = _result(s, android_headers(), android["task_id"], body)
    assert reply["status"] == "ERROR"
    assert (reply["task_id"], reply["task_name"]) == (android["task_id"], "train")
    assert "linear2.bias" in reply["message"]
    assert s.runtime.statistics().updates_pending == 0
    assert s.runtime.statistics().updates_discarded["invalid"] == 1


async def test_v4e_the_same_report_twice_is_buffered_once(serve_job: Callable[..., Any]) -> None:
    s = await serve_job()
    android, _ = await _two_tasks(s)
    body = result_body(V4_DELTA, cookie=android["cookie"])
    first = _result(s, android_headers(), android["task_id"], body)
    second = _result(s, android_headers(), android["task_id"], body)
    assert first["status"] == second["status"] == "OK"
    assert second["message"] == "duplicate report discarded"
    assert s.store.count_pending(s.job_id) == 1
    assert s.runtime.statistics().updates_accepted == 1


async def test_v4f_stale_report_is_ok_and_discarded(serve_job: Callable[..., Any]) -> None:
    s = await serve_job(
        model_manager={"num_updates_for_model": 1, "max_model_history": 1, "max_model_version": 5}
    )
    android, ios = await _two_tasks(s)
    _result(s, ios_headers(), ios["task_id"], result_body(V4_DELTA, form="ios"))
    assert s.runtime.statistics().version == 2
    # The cookie still says version 1 and could say anything: the task record decides.
    body = result_body(V4_DELTA, cookie={"model_version": 2, "device_selection_id": 1})
    reply = _result(s, android_headers(), android["task_id"], body)
    assert reply["status"] == "OK"
    assert reply["message"] == "stale report discarded"
    assert s.runtime.statistics().updates_discarded["stale"] == 1


async def test_foreign_task_report_is_ok_and_discarded(serve_job: Callable[..., Any]) -> None:
    s = await serve_job()
    _android, ios = await _two_tasks(s)
    reply = _result(s, android_headers(), ios["task_id"], result_body(V4_DELTA))
    assert (reply["status"], reply["message"]) == ("OK", "foreign report discarded")
    assert s.runtime.statistics().updates_pending == 0
    assert _result(s, ios_headers(), ios["task_id"], result_body(V4_DELTA, form="ios")) == {
        "status": "OK",
        "task_id": ios["task_id"],
        "task_name": "train",
    }


async def test_device_error_status_gets_error(serve_job: Callable[..., Any]) -> None:
    s = await serve_job()
    android, _ = await _two_tasks(s)
    q = {"job_id": s.job_id, "task_id": android["task_id"], "task_name": "train", "status": "ERROR"}
    reply = _result(s, android_headers(), android["task_id"], result_body(V4_DELTA), query=q)
    assert reply == {
        "status": "ERROR",
        "task_id": android["task_id"],
        "task_name": "train",
        "message": "missing result or bad status",
    }


# --------------------------------------------------------------------------------------------
# V5 and HTTP errors (EDIP §8)


async def test_v5_header_and_field_errors(serve_job: Callable[..., Any]) -> None:
    s = await serve_job()
    status, reply, _ = s.request(
        "POST",
        "/task",
        query={"job_id": s.job_id},
        body=b"{}",
        headers={"Content-Type": "application/json"},
    )
    assert (status, reply) == (400, {"status": "INVALID_REQUEST", "message": "Device ID missing"})
    status, reply, _ = s.request(
        "POST",
        "/task",
        query={"job_id": s.job_id},
        body=b"{}",
        headers={
            "X-Flare-Device-ID": "dev-1",
            "X-Flare-Device-Info": "device_id=dev-2&platform=ios",
        },
    )
    assert (status, reply) == (
        400,
        {
            "status": "INVALID_REQUEST",
            "message": "Device ID mismatch: X-Flare-Device-ID does not match X-Flare-Device-Info",
        },
    )
    status, reply, _ = s.request(
        "POST",
        "/result",
        headers=android_headers(),
        query={"job_id": s.job_id, "task_id": "t"},
        body=orjson.dumps(result_body(V4_DELTA)),
    )
    assert (status, reply) == (400, {"status": "INVALID_REQUEST", "message": "missing task_name"})


async def test_http_errors_have_edip_bodies(serve_job: Callable[..., Any]) -> None:
    s = await serve_job(settings={"max_body_bytes": 4096})
    status, reply, _ = s.request("GET", "/nope")
    assert (status, reply["status"]) == (404, "INVALID_REQUEST")
    status, reply, headers = s.request("GET", "/result")
    assert (status, reply["status"], headers["allow"]) == (405, "INVALID_REQUEST", "POST")
    status, reply, _ = s.request("POST", "/job", headers=android_headers(), body=b"x" * 4097)
    assert (status, reply["status"]) == (413, "INVALID_REQUEST")
    status, reply, _ = s.request(
        "POST", "/job", headers={**android_headers(), "Content-Type": "text/plain"}, body=b"hi"
    )
    assert (status, reply["status"]) == (415, "INVALID_REQUEST")
    status, reply, _ = s.request("POST", "/job", headers=android_headers(), body=b"{not json")
    assert (status, reply["status"]) == (400, "INVALID_REQUEST")
    before = s.runtime.statistics()
    status, _, _ = s.request(
        "POST", "/task", headers=android_headers(), query={"job_id": s.job_id}, body=b"[1, 2]"
    )
    assert status == 400
    assert s.runtime.statistics() == before  # a malformed request changes nothing


async def test_unexpected_failure_is_a_500_without_details(
    serve_job: Callable[..., Any],
) -> None:
    s = await serve_job()
    s.store.close()  # the database is gone: committing the new device fails
    status, reply, _ = s.request(
        "POST", "/task", headers=android_headers(), query={"job_id": s.job_id}, body=b"{}"
    )
    assert (status, reply) == (500, {"status": "ERROR", "message": "internal server error"})
    assert s.runtime.failure is not None
    _, health, _ = s.request("GET", "/healthz")
    assert health["status"] == "degraded"
    assert health["jobs"][0]["state"] == "failed"


# --------------------------------------------------------------------------------------------
# V6, §11: after the job


async def test_v6_finished_job_and_unknown_job(serve_job: Callable[..., Any]) -> None:
    s = await serve_job(model_manager={"num_updates_for_model": 1, "max_model_version": 2})
    android, ios = await _two_tasks(s)
    _result(s, android_headers(), android["task_id"], result_body(V4_DELTA))
    assert s.runtime.finished
    cookie = {"model_version": 10, "device_selection_id": 9}
    assert _task(s, android_headers(), cookie=cookie) == {"status": "DONE", "job_id": s.job_id}
    assert _result(s, ios_headers(), ios["task_id"], result_body(V4_DELTA, form="ios")) == {
        "status": "DONE",
        "task_id": ios["task_id"],
        "task_name": "train",
        "message": "job finished",
    }
    _, reply, _ = s.request(
        "POST", "/task", headers=android_headers(), query={"job_id": str(uuid.uuid4())}, body=b"{}"
    )
    assert reply == {"status": "NO_JOB"}
    _, reply, _ = s.request("POST", "/job", headers=android_headers(), body=JOB_BODY)
    assert reply == {"status": "NO_JOB"}


async def test_finished_result_can_be_accepted_and_discarded(
    serve_job: Callable[..., Any],
) -> None:
    s = await serve_job(
        settings={"finished_result": "ok"},
        model_manager={"num_updates_for_model": 1, "max_model_version": 2},
    )
    android, ios = await _two_tasks(s)
    _result(s, android_headers(), android["task_id"], result_body(V4_DELTA))
    reply = _result(s, ios_headers(), ios["task_id"], result_body(V4_DELTA, form="ios"))
    assert reply["status"] == "OK"


# --------------------------------------------------------------------------------------------
# V7 /selection, draining, /healthz


async def test_v7_selection_registers_a_device_range(serve_job: Callable[..., Any]) -> None:
    s = await serve_job(device_manager={"device_selection_size": 2})
    prefix = "7d6c0f7e-1111-4a2b-9c3d-123456789abc"
    headers = {
        "X-Flare-Device-ID": f"{prefix}?3",
        "X-Flare-Device-Info": "app_name=flare_mobile&app_version=1.0&platform=None",
    }
    status, reply, _ = s.request(
        "POST", "/selection", headers=headers, query={"job_id": s.job_id}, body=b"{}"
    )
    assert status == 200
    assert reply["status"] == "OK"
    assert reply["job_id"] == s.job_id
    assert len(reply["selection"]) == 2
    assert set(reply["selection"]) <= {f"{prefix}#{i}" for i in range(3)}
    assert sorted(reply["selection"].values()) == [1, 2]
    assert s.runtime.statistics().devices_known == 3
    _, reply, _ = s.request(
        "POST",
        "/selection",
        headers={"X-Flare-Device-ID": "dummy"},
        query={"job_id": s.job_id},
        body=b"{}",
    )
    assert len(reply["selection"]) == 2
    assert s.runtime.statistics().devices_known == 3  # "dummy" is never registered


async def test_selection_can_be_disabled(serve_job: Callable[..., Any]) -> None:
    s = await serve_job(settings={"selection_endpoint": False})
    status, reply, _ = s.request(
        "POST",
        "/selection",
        headers={"X-Flare-Device-ID": "dummy"},
        query={"job_id": s.job_id},
        body=b"{}",
    )
    assert (status, reply["status"]) == (403, "INVALID_REQUEST")


async def test_draining_parks_new_polls_but_accepts_reports(
    serve_job: Callable[..., Any],
) -> None:
    s = await serve_job()
    android, _ = await _two_tasks(s)
    s.core.draining = True
    assert _task(s, ios_headers()) == {
        "status": "RETRY",
        "job_id": s.job_id,
        "retry_wait": 5,
        "message": "Server restarting",
    }
    _, reply, _ = s.request("POST", "/job", headers=android_headers(), body=JOB_BODY)
    assert reply == {"status": "RETRY", "retry_wait": 5000}
    reply = _result(s, android_headers(), android["task_id"], result_body(V4_DELTA))
    assert reply["status"] == "OK"
    assert s.store.count_pending(s.job_id) == 1


async def test_healthz_reports_jobs_and_plugin_provenance(serve_job: Callable[..., Any]) -> None:
    s = await serve_job()
    status, reply, _ = s.request("GET", "/healthz")
    assert status == 200
    assert reply["status"] == "ok"
    (job,) = reply["jobs"]
    assert (job["job_id"], job["name"], job["state"], job["version"], job["max_version"]) == (
        s.job_id,
        "xor_et",
        "running",
        1,
        3,
    )
    plugins = {(p["group"], p["name"]): p for p in reply["plugins"]}
    assert plugins[("edgefl.aggregators", "fedbuff")]["dist"] == "edgefl"
    assert plugins[("edgefl.aggregators", "fedbuff")]["value"] == "aggregators.fedbuff:FedBuff"
    assert ("edgefl.selectors", "random") in plugins


async def test_edge_v1_prefix_is_served_too(serve_job: Callable[..., Any]) -> None:
    s = await serve_job()
    status, reply, _ = s.request("POST", "/edge/v1/job", headers=android_headers(), body=JOB_BODY)
    assert (status, reply["status"]) == (200, "OK")


def _selection(s: Served, device_id: str) -> tuple[int, Any]:
    status, reply, _ = s.request(
        "POST",
        "/selection",
        headers={"X-Flare-Device-ID": device_id},
        query={"job_id": s.job_id},
        body=b"{}",
    )
    return status, reply


async def test_selection_range_is_bounded_per_request(serve_job: Callable[..., Any]) -> None:
    s = await serve_job(settings={"selection_max_range": 50})
    for device_id in ("sim?51", "sim?0", "sim?1000000000000", "?5", "sim?x"):
        status, reply = _selection(s, device_id)
        assert (status, reply["status"]) == (400, "INVALID_REQUEST"), device_id
        assert "1..50" in reply["message"]
    assert s.runtime.statistics().devices_known == 0
    assert _selection(s, "sim?50")[0] == 200
    assert s.runtime.statistics().devices_known == 50


async def test_selection_ranges_are_bounded_per_job(serve_job: Callable[..., Any]) -> None:
    s = await serve_job(settings={"selection_max_range": 600, "selection_max_devices": 1000})
    assert _selection(s, "a?600")[0] == 200
    assert _selection(s, "a?600")[0] == 200  # the same devices again: nothing new
    assert s.runtime.core.range_devices == 600
    status, reply = _selection(s, "b?401")
    assert (status, reply["status"]) == (403, "INVALID_REQUEST")
    assert "selection_max_devices (1000)" in reply["message"]
    assert s.runtime.statistics().devices_known == 600
    assert _selection(s, "b?400")[0] == 200
    assert s.runtime.statistics().devices_known == s.runtime.core.range_devices == 1000
    # Polling devices are not simulated ones: they are never refused.
    assert _task(s, android_headers())["status"] in ("OK", "RETRY")
    assert s.runtime.statistics().devices_known == 1001
    # The count is durable: it comes back with the job's other counters.
    assert s.store.job_row(s.job_id).counters["range_devices"] == 1000


async def test_selection_range_registers_in_steps_without_blocking(
    serve_job: Callable[..., Any],
) -> None:
    """Through ``handle_async`` (what both front ends call) a range is registered in steps of
    SELECTION_CHUNK devices with a checkpoint between them: another task runs in between."""
    import trio

    from edgefl._app import SELECTION_CHUNK

    s = await serve_job(settings={"selection_max_range": 5 * SELECTION_CHUNK})
    seen: list[int] = []
    done = trio.Event()

    async def watch() -> None:
        while not done.is_set():
            seen.append(s.runtime.statistics().devices_known)
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await trio.lowlevel.checkpoint()
        response = await s.core.handle_async(
            "POST",
            "/selection",
            {"job_id": s.job_id},
            {"x-flare-device-id": f"sim?{5 * SELECTION_CHUNK}"},
            b"{}",
        )
        done.set()
    assert response.status == 200
    assert s.runtime.statistics().devices_known == 5 * SELECTION_CHUNK
    between = {n for n in seen if 0 < n < 5 * SELECTION_CHUNK}
    assert len(between) >= 2  # the watcher ran while the range was half registered
    assert all(n % SELECTION_CHUNK == 0 for n in between)
