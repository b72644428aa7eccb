"""Hostile and broken clients against a real server on loopback: each is refused with the EDIP
error body (or answered as EDIP §6 says) and none of them changes the job's state."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import cbor2
import httpx
import numpy as np
import orjson
import pytest
import trio

from protocol import encode_tensor_map
from tests.durability.harness import SCHEMA, generic_headers

from .conftest import model_state, observe

if TYPE_CHECKING:
    from edgefl._server import ServerHandle

DEV = "hostile-dev"


def good_delta(scale: float = 0.125) -> dict[str, np.ndarray]:
    return {name: np.full(shape, scale, dtype=np.float32) for name, shape in SCHEMA.items()}


async def job_id_of(client: httpx.AsyncClient) -> str:
    r = await client.post("/job", json={"job_name": "xor_et"}, headers=generic_headers(DEV))
    assert r.json()["status"] == "OK", r.text
    job_id: str = r.json()["job_id"]
    return job_id


async def get_task(client: httpx.AsyncClient, job_id: str, device: str) -> dict[str, Any]:
    """Poll until ``device`` is handed a task."""
    for _ in range(20):
        r = await client.post(
            "/task", params={"job_id": job_id}, json={}, headers=generic_headers(device)
        )
        reply: dict[str, Any] = r.json()
        if reply["status"] == "OK":
            return reply
        await trio.sleep(0.01)
    raise AssertionError(f"{device} was never handed a task: {reply}")


def report_params(job_id: str, task: dict[str, Any]) -> dict[str, str]:
    return {"job_id": job_id, "task_id": task["task_id"], "task_name": "train"}


async def raw_exchange(server: ServerHandle, request: bytes) -> bytes:
    """Send raw bytes, return everything the server sends back before closing."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(request)
        chunks = []
        with trio.fail_after(10):
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    break
                chunks.append(data)
                if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                    break
    return b"".join(chunks)


def _complete(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def status_and_body(response: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, orjson.loads(body)


# ------------------------------------------------------------------------------------ bodies

MALFORMED_JSON = [
    b'{"job_name": "xor_et"',  # truncated
    b'{"job_name": "xor_et", }',
    b"[]",
    b"null",
    b'"xor_et"',
    b"42",
    b"\xff\xfe{}",  # not UTF-8
    b'{"job_name": NaN}',
    b'{"job_name": 1e999}',
    b"[" * 30_000 + b"]" * 30_000,  # deep nesting
    b"{" + b'"a":1,' * 5000,  # truncated, long
]


@pytest.mark.parametrize("path", ["/job", "/task", "/result", "/selection"])
async def test_malformed_json_is_400_and_changes_nothing(
    server: ServerHandle, client: httpx.AsyncClient, path: str
) -> None:
    job_id = await job_id_of(client)
    await get_task(client, job_id, "bystander")
    before = observe(server)
    params = {"job_id": job_id, "task_id": "t", "task_name": "train"}
    for body in MALFORMED_JSON:
        r = await client.post(path, params=params, content=body, headers=generic_headers(DEV))
        assert r.status_code == 400, (body[:40], r.status_code, r.text)
        reply = r.json()
        assert reply["status"] == "INVALID_REQUEST"
        assert isinstance(reply["message"], str)
        assert reply["message"]
    assert observe(server) == before


MALFORMED_CBOR = [
    cbor2.dumps({"job_name": "xor_et"})[:-3],  # truncated
    cbor2.dumps(["not", "a", "map"]),
    cbor2.dumps(None),
    b"\xff\xff\xff",
    b"\x9f" * 10_000,  # indefinite arrays, never closed
    cbor2.dumps({"cookie": {"model_version": "seven"}}),
    cbor2.dumps({1: 2}),
]


@pytest.mark.parametrize("path", ["/job", "/task", "/result"])
async def test_malformed_cbor_is_400_and_changes_nothing(
    server: ServerHandle, client: httpx.AsyncClient, path: str
) -> None:
    job_id = await job_id_of(client)
    before = observe(server)
    params = {"job_id": job_id, "task_id": "t", "task_name": "train"}
    headers = generic_headers(DEV, **{"Content-Type": "application/cbor"})
    for body in MALFORMED_CBOR:
        r = await client.post(path, params=params, content=body, headers=headers)
        assert r.status_code == 400, (body[:20], r.status_code, r.text)
        assert r.json()["status"] == "INVALID_REQUEST"
    assert observe(server) == before


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/xml",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
    ],
)
async def test_wrong_content_type_is_415(
    server: ServerHandle, client: httpx.AsyncClient, content_type: str
) -> None:
    job_id = await job_id_of(client)
    before = observe(server)
    headers = generic_headers(DEV, **{"Content-Type": content_type})
    body = orjson.dumps({"job_name": "xor_et"})
    for path in ("/job", "/task", "/result"):
        r = await client.post(
            path,
            params={"job_id": job_id, "task_id": "t", "task_name": "train"},
            content=body,
            headers=headers,
        )
        assert r.status_code == 415, (path, r.status_code, r.text)
        assert r.json()["status"] == "INVALID_REQUEST"
    assert observe(server) == before


# ------------------------------------------------------------------------------------ identity


async def test_missing_or_conflicting_identity_is_400(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    job_id = await job_id_of(client)
    before = observe(server)
    cases: list[tuple[dict[str, str], str]] = [
        ({"Content-Type": "application/json"}, "Device ID missing"),
        ({"Content-Type": "application/json", "X-Flare-Device-ID": ""}, "Device ID missing"),
        (
            generic_headers("dev-1", **{"X-Flare-Device-Info": "device_id=dev-2&platform=ios"}),
            "Device ID mismatch: X-Flare-Device-ID does not match X-Flare-Device-Info",
        ),
        (
            generic_headers("dev-1", **{"X-Flare-Device-Info": '{"device_id": "dev-2"}'}),
            "Device ID mismatch: X-Flare-Device-ID does not match X-Flare-Device-Info",
        ),
        (generic_headers("x" * 129), ""),
    ]
    for headers, message in cases:
        for path in ("/job", "/task", "/result", "/selection"):
            r = await client.post(
                path,
                params={"job_id": job_id, "task_id": "t", "task_name": "train"},
                json={"job_name": "xor_et", "result": {"kind": "x", "data": {}}},
                headers=headers,
            )
            assert r.status_code == 400, (path, headers, r.text)
            assert r.json()["status"] == "INVALID_REQUEST"
            if message:
                assert r.json()["message"] == message
    assert observe(server) == before


async def test_body_cannot_override_identity(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    job_id = await job_id_of(client)
    await client.post(
        "/task",
        params={"job_id": job_id},
        json={"device_id": "someone-else", "device_info": {"device_id": "someone-else"}},
        headers=generic_headers("honest"),
    )
    (runtime,) = server.runtimes
    assert runtime.core.session("someone-else") is None
    assert runtime.core.session("honest") is not None


async def test_control_characters_in_device_id_are_400(server: ServerHandle) -> None:
    before = observe(server)
    request = (
        b"POST /task?job_id=x HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"X-Flare-Device-ID: dev\x7fice\r\nContent-Length: 2\r\n\r\n{}"
    )
    status, body = status_and_body(await raw_exchange(server, request))
    assert status == 400
    assert body["status"] == "INVALID_REQUEST"
    assert observe(server) == before


# ------------------------------------------------------------------------------------ sizes


async def test_huge_content_length_gets_413_before_the_body_is_sent(server: ServerHandle) -> None:
    """Only the headers go out; the 413 arrives although not one body byte was sent."""
    before = observe(server)
    for path in (b"/result", b"/task", b"/job", b"/selection"):
        request = (
            b"POST " + path + b"?job_id=x&task_id=t&task_name=train HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/json\r\nX-Flare-Device-ID: big\r\n"
            b"Content-Length: 1000000000000\r\n\r\n"
        )
        status, body = status_and_body(await raw_exchange(server, request))
        assert status == 413, path
        assert body["status"] == "INVALID_REQUEST"
        assert "64" in body["message"] or "65536" in body["message"]
    assert observe(server) == before


async def test_chunked_body_over_the_limit_gets_413(server: ServerHandle) -> None:
    before = observe(server)
    chunk = b"x" * 16384
    request = (
        b"POST /result?job_id=x&task_id=t&task_name=train HTTP/1.1\r\nHost: t\r\n"
        b"Content-Type: application/json\r\nX-Flare-Device-ID: big\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        + (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 5
        + b"0\r\n\r\n"
    )
    status, body = status_and_body(await raw_exchange(server, request))
    assert status == 413
    assert body["status"] == "INVALID_REQUEST"
    assert observe(server) == before


async def test_stalled_uploads_do_not_stop_the_server_serving_others(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    """50 clients send half a body and stall; meanwhile everyone else is served normally."""
    job_id = await job_id_of(client)
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    stalled = []
    for i in range(50):
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(
            b"POST /result?job_id=" + job_id.encode() + b"&task_id=t&task_name=train HTTP/1.1\r\n"
            b"Host: t\r\nContent-Type: application/json\r\n"
            b"X-Flare-Device-ID: stall-%d\r\nContent-Length: 1000\r\n\r\n" % i + b"{" * 500
        )
        stalled.append(stream)
    try:
        task = await get_task(client, job_id, "patient")
        r = await client.post(
            "/result",
            params=report_params(job_id, task),
            json={"result": {"kind": "number", "data": encode_tensor_map(good_delta(), "python")}},
            headers=generic_headers("patient"),
        )
        assert r.json() == {"status": "OK", "task_id": task["task_id"], "task_name": "train"}
        health = (await client.get("/healthz")).json()
        assert health["jobs"][0]["updates_accepted"] == 1
    finally:
        for stream in stalled:
            await stream.aclose()


async def test_a_stalled_upload_is_cut_off_after_a_bounded_time(
    start_server: Any,
) -> None:
    """A client that sends half a body and then trickles one byte a second is cut off within the
    configured body timeout (needs the ``body_timeout`` setting, see docs/operations.md)."""
    server = await start_server(body_timeout=1.0)
    before = observe(server)
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(
            b"POST /result?job_id=x&task_id=t&task_name=train HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/json\r\nX-Flare-Device-ID: slow\r\n"
            b"Content-Length: 1000\r\n\r\n" + b"{" * 500
        )
        closed = False
        with trio.move_on_after(10):
            while True:
                try:
                    await stream.send_all(b" ")
                    data = b""
                    with trio.move_on_after(1):
                        data = await stream.receive_some(65536)
                    if data:
                        assert b" 408 " in data.split(b"\r\n")[0] or b" 400 " in data[:20]
                        closed = True
                        break
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    closed = True
                    break
    assert closed, "the server kept a trickling upload open for 10 s"
    assert observe(server) == before


# ------------------------------------------------------------------------------------ payloads


def _with(delta: dict[str, np.ndarray], name: str, value: Any) -> dict[str, Any]:
    data = encode_tensor_map(delta, "python")
    data["net." + name] = value
    return data


BAD_TENSORS: list[tuple[str, Any]] = [
    ("wrong sizes", lambda d: _with(d, "linear2.bias", {"sizes": [3], "data": [0.1, 0.2, 0.3]})),
    ("wrong count", lambda d: _with(d, "linear2.bias", {"sizes": [2], "data": [0.1]})),
    (
        "missing tensor",
        lambda d: {
            k: v for k, v in encode_tensor_map(d, "python").items() if k != "net.linear1.bias"
        },
    ),
    ("extra tensor", lambda d: _with(d, "linear3.weight", {"sizes": [1], "data": [0.0]})),
    ("strings", lambda d: _with(d, "linear2.bias", {"sizes": [2], "data": ["a", "b"]})),
    ("negative sizes", lambda d: _with(d, "linear2.bias", {"sizes": [-2], "data": [1.0, 2.0]})),
    ("huge sizes", lambda d: _with(d, "linear2.bias", {"sizes": [2**40], "data": [1.0, 2.0]})),
    ("float32 overflow", lambda d: _with(d, "linear2.bias", {"sizes": [2], "data": [1e39, 0.0]})),
    ("empty data", lambda d: {}),
]


async def test_unusable_tensors_get_error_and_are_never_aggregated(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    job_id = await job_id_of(client)
    before = observe(server)
    for i, (label, make) in enumerate(BAD_TENSORS):
        device = f"bad-{i}"
        task = await get_task(client, job_id, device)
        r = await client.post(
            "/result",
            params=report_params(job_id, task),
            json={"result": {"kind": "et_tensor_diff", "data": make(good_delta())}},
            headers=generic_headers(device),
        )
        assert r.status_code == 200, (label, r.text)
        assert r.json()["status"] == "ERROR", (label, r.json())
    after = observe(server)
    assert model_state(after) == model_state(before)
    assert after.stats.updates_discarded["invalid"] == len(BAD_TENSORS)


async def test_nan_and_inf_in_cbor_are_refused(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    job_id = await job_id_of(client)
    before = observe(server)
    for i, value in enumerate([math.nan, math.inf, -math.inf]):
        device = f"nan-{i}"
        task = await get_task(client, job_id, device)
        delta = good_delta()
        delta["linear1.weight"][1, 1] = value
        data = {  # RFC 8746 tag 85: little-endian float32 typed array
            "net." + name: {
                "sizes": list(a.shape),
                "data": cbor2.CBORTag(85, a.astype("<f4").tobytes()),
            }
            for name, a in delta.items()
        }
        body = cbor2.dumps({"result": {"kind": "et_tensor_diff", "data": data}})
        r = await client.post(
            "/result",
            params=report_params(job_id, task),
            content=body,
            headers=generic_headers(device, **{"Content-Type": "application/cbor"}),
        )
        assert r.status_code == 200
        reply = cbor2.loads(r.content) if r.content[:1] != b"{" else r.json()
        assert reply["status"] == "ERROR"
        assert "finite" in reply["message"].lower() or "nan" in reply["message"].lower()
    assert model_state(observe(server)) == model_state(before)


# ------------------------------------------------------------------------------------ ids, cookies


async def test_unknown_job_and_task_ids(server: ServerHandle, client: httpx.AsyncClient) -> None:
    job_id = await job_id_of(client)
    before = observe(server)
    body = {"result": {"kind": "number", "data": encode_tensor_map(good_delta(), "python")}}
    r = await client.post(
        "/task", params={"job_id": "no-such-job"}, json={}, headers=generic_headers(DEV)
    )
    assert r.json() == {"status": "NO_JOB"}
    r = await client.post(
        "/result",
        params={"job_id": "no-such-job", "task_id": "t", "task_name": "train"},
        json=body,
        headers=generic_headers(DEV),
    )
    assert r.json()["status"] == "NO_JOB"
    r = await client.post(
        "/result",
        params={"job_id": job_id, "task_id": "no-such-task", "task_name": "train"},
        json=body,
        headers=generic_headers(DEV),
    )
    assert r.json() == {
        "status": "OK",
        "task_id": "no-such-task",
        "task_name": "train",
        "message": "foreign report discarded",
    }
    assert model_state(observe(server)) == model_state(before)


async def test_another_devices_task_id_is_discarded_and_the_owner_still_reports(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    job_id = await job_id_of(client)
    task = await get_task(client, job_id, "owner")
    before = observe(server)
    body = {
        "result": {"kind": "number", "data": encode_tensor_map(good_delta(), "python")},
        "cookie": task["cookie"],
    }
    r = await client.post(
        "/result", params=report_params(job_id, task), json=body, headers=generic_headers("thief")
    )
    assert r.json()["message"] == "foreign report discarded"
    assert model_state(observe(server)) == model_state(before)
    assert observe(server).disk.tasks[task["task_id"]][1] == "open"
    r = await client.post(
        "/result", params=report_params(job_id, task), json=body, headers=generic_headers("owner")
    )
    assert r.json() == {"status": "OK", "task_id": task["task_id"], "task_name": "train"}
    assert observe(server).stats.updates_accepted == before.stats.updates_accepted + 1


async def test_forged_cookies_change_neither_version_nor_ticket(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    job_id = await job_id_of(client)
    task = await get_task(client, job_id, "forger")
    handed = task["cookie"]["model_version"]
    forged = {"model_version": handed + 500, "device_selection_id": 10**9, "sig": "x"}
    # A forged cookie on /task neither hands out a second task nor moves the device's record:
    # it is taken for a lost reply and the same task comes back.
    r = await client.post(
        "/task",
        params={"job_id": job_id},
        json={"cookie": forged},
        headers=generic_headers("forger"),
    )
    assert (r.json()["status"], r.json()["task_id"]) == ("OK", task["task_id"])
    assert r.json()["cookie"] == task["cookie"]
    # A report with a forged cookie counts for the version the server handed out.
    r = await client.post(
        "/result",
        params=report_params(job_id, task),
        json={
            "result": {"kind": "number", "data": encode_tensor_map(good_delta(), "python")},
            "cookie": forged,
        },
        headers=generic_headers("forger"),
    )
    assert r.json() == {"status": "OK", "task_id": task["task_id"], "task_name": "train"}
    disk = observe(server).disk
    assert disk.tasks[task["task_id"]] == ("forger", "accepted", handed)


async def test_a_retry_storm_from_one_device_changes_nothing(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    job_id = await job_id_of(client)
    task = await get_task(client, job_id, "stormy")
    before = observe(server)

    async def storm() -> None:
        for _ in range(50):
            r = await client.post(
                "/task",
                params={"job_id": job_id},
                json={"cookie": task["cookie"]},
                headers=generic_headers("stormy"),
            )
            assert r.json()["status"] == "RETRY"

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(storm)
    after = observe(server)
    assert model_state(after) == model_state(before)
    assert after.stats.devices_known == before.stats.devices_known
    assert after.disk.tasks == before.disk.tasks
    assert after.disk.next_ticket == before.disk.next_ticket


async def test_per_device_rate_limit_answers_retry(start_server: Any) -> None:
    """With ``device_rate``/``device_burst`` set, a device polling faster gets ``RETRY`` without
    touching the job; other devices are unaffected (needs the rate-limit hook)."""
    server = await start_server(device_rate=0.01, device_burst=3)
    async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
        job_id = await job_id_of(client)
        replies = []
        for _ in range(20):
            r = await client.post(
                "/task", params={"job_id": job_id}, json={}, headers=generic_headers("flood")
            )
            replies.append(r.json())
        limited = [r for r in replies if r.get("message") == "Too many requests"]
        assert len(limited) == 17  # the burst of 3 passes, then one token per 100 s
        assert all(r["status"] == "RETRY" and r["retry_wait"] >= 1 for r in limited)
        r = await client.post(
            "/task", params={"job_id": job_id}, json={}, headers=generic_headers("calm")
        )
        assert r.json().get("message") != "Too many requests"
