"""The quart-trio app and the raw ASGI fast path answer byte for byte the same (one EDIP core)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
import orjson

from edgefl._app import FastPath, create_app
from tests.helpers import android_headers, ios_headers, result_body

if TYPE_CHECKING:
    from collections.abc import Callable


async def _exchange(
    app: Any, requests: list[tuple[str, str, dict[str, str], bytes]]
) -> list[tuple[int, str, bytes]]:
    out = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
        for method, url, headers, body in requests:
            r = await client.request(method, url, headers=headers, content=body)
            out.append((r.status_code, r.headers.get("content-type", ""), r.content))
    return out


async def test_fast_path_and_quart_give_identical_replies(serve_job: Callable[..., Any]) -> None:
    """Two identical jobs, one behind each front end, get the same request sequence."""
    replies = []
    for front in ("quart", "fast"):
        s = await serve_job(device_manager={"device_selection_size": 3})
        job = s.job_id
        requests = [
            ("POST", "/job", android_headers(), b'{"job_name":"xor_et"}'),
            ("POST", f"/task?job_id={job}", ios_headers(), b"{}"),
            ("GET", f"/task?job_id={job}", {"X-Flare-Device-ID": "feg"}, b""),
            ("POST", f"/task?job_id={job}", {}, b"{}"),
            (
                "POST",
                "/result?job_id=x&task_id=t&task_name=train",
                android_headers(),
                orjson.dumps(result_body({"linear2.bias": [0.0, 0.0]})),
            ),
            ("GET", "/result", {}, b""),
            ("POST", "/nowhere", {}, b""),
            (
                "POST",
                f"/task?job_id={job}",
                {**android_headers(), "Content-Type": "text/xml"},
                b"<x/>",
            ),
            ("GET", "/healthz", {}, b""),
        ]
        app = create_app([s.runtime], s.core.settings, core=s.core)
        answers = await _exchange(app if front == "quart" else FastPath(s.core, app), requests)
        replies.append([(st, ct, body.replace(job.encode(), b"<job>")) for st, ct, body in answers])
    quart, fast = replies
    assert [status for status, _, _ in quart] == [200, 200, 200, 400, 200, 405, 404, 415, 200]
    assert quart == fast
