"""The published OpenAPI document: it names exactly the server's routes, the server serves it, and
schemathesis finds no request (valid or not) that the server answers with a 5xx, with a reply
that breaks the document, or that a rejected request changes any state."""

from __future__ import annotations

import sqlite3
import threading
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import requests
import schemathesis
import trio
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import negative_data_rejection

from edgefl._app import _METHODS
from edgefl._openapi import openapi_bytes, openapi_document
from tests.durability.harness import ServerProcess, state_snapshot, xor_job

if TYPE_CHECKING:
    from pathlib import Path

    from edgefl._server import ServerHandle

EXAMPLES_PER_OPERATION = 110


def test_document_names_exactly_the_routes_the_server_has() -> None:
    doc = openapi_document()
    assert doc["openapi"].startswith("3.")
    documented = {(path, method.upper()) for path, item in doc["paths"].items() for method in item}
    served = {(path, m) for path, methods in _METHODS.items() for m in methods if m != "HEAD"}
    assert documented - {("/openapi.json", "GET")} == served
    schemathesis.openapi.from_dict(doc)  # loads and resolves every reference


async def test_openapi_json_is_served(server: ServerHandle) -> None:
    """Needs the ``/openapi.json`` route hook (docs/operations.md)."""
    async with httpx.AsyncClient(base_url=server.url) as client:
        r = await client.get("/openapi.json")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert r.content == openapi_bytes()


def _fuzz_document(job_id: str) -> dict[str, Any]:
    """The published document, with the job id devices learn from /job offered to the
    generator (otherwise almost every request would be for an unknown job) and the CBOR request
    bodies left out (schemathesis cannot encode them; CBOR has its own tests)."""
    doc = openapi_document()
    del doc["paths"]["/openapi.json"]  # served once the route hook lands; tested above
    # A /selection range of up to 100,000 devices is registered in one synchronous step (seconds
    # of blocked event loop, ~1.5 KiB of memory per device); keep the generated ranges small.
    selection_id = doc["components"]["parameters"]["SelectionDeviceId"]["schema"]
    selection_id["pattern"] = selection_id["pattern"].replace(
        "(?:[1-9][0-9]{0,4}|100000)", "[1-9][0-9]{0,2}"
    )
    for item in doc["paths"].values():
        for operation in item.values():
            body = operation.get("requestBody")
            if body is not None:
                body["content"].pop("application/cbor", None)
            for parameter in operation.get("parameters", []):
                if parameter.get("name") == "job_id":
                    parameter["schema"] = {"type": "string", "enum": [job_id, "no-such-job"]}
    return doc


def _run_schemathesis(url: str, job_id: str, state_dir: Path) -> dict[str, int]:
    """Runs in a worker thread (schemathesis is synchronous): every operation, positive and
    negative generation. Returns request counts by status class."""
    schema = schemathesis.openapi.from_dict(_fuzz_document(job_id))
    counts: dict[str, int] = {}
    lock = threading.Lock()
    session = requests.Session()  # keep-alive, as devices do
    db = sqlite3.connect(f"file:{state_dir / 'edgefl.sqlite3'}?mode=ro", uri=True)

    def devices() -> int:
        (n,) = db.execute("SELECT COUNT(*) FROM devices").fetchone()
        return int(n)

    def model_state() -> tuple[object, ...]:
        snap = state_snapshot(state_dir)
        return (snap.current_version, snap.counters.get("accepted", 0), snap.pending_updates)

    before_all = model_state()
    for result in schema.get_all_operations():
        operation = result.ok()
        modes = [GenerationMode.POSITIVE]
        if operation.path != "/healthz":  # nothing in a bodiless, parameterless GET to negate
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            strategy = operation.as_strategy(generation_mode=mode)
            # EDIP answers an unknown job id or extra body keys with a 200 protocol outcome
            # (NO_JOB, ignored keys), not a 4xx, so a schema-violating request may succeed.
            excluded = [negative_data_rejection] if mode is GenerationMode.NEGATIVE else []

            @given(case=strategy)
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            def check(case: Any) -> None:
                devices_before = devices()
                response = case.call(base_url=url, session=session, timeout=10)
                with lock:
                    key = f"{response.status_code // 100}xx"
                    counts[key] = counts.get(key, 0) + 1
                assert response.status_code < 500, (case.as_curl_command(), response.text)
                case.validate_response(response, excluded_checks=excluded)  # noqa: B023
                if response.status_code >= 400:
                    assert devices() == devices_before, case.as_curl_command()

            check()
    db.close()
    session.close()
    assert model_state() == before_all, "no generated request can produce an accepted update"
    return counts


@pytest.mark.slow
async def test_schemathesis_finds_no_5xx_and_no_nonconforming_reply(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    xor_job(jobs)
    state_dir = tmp_path / "state"
    server = ServerProcess(jobs, state_dir, tmp_path / "server.log", args=["--seed", "1"])
    url = await server.start()
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            r = await client.post(
                "/job", json={"job_name": "xor_et"}, headers={"X-Flare-Device-ID": "fuzz"}
            )
        job_id = r.json()["job_id"]
        counts = await trio.to_thread.run_sync(_run_schemathesis, url, job_id, state_dir)
    finally:
        await server.kill()
    total = sum(counts.values())
    assert total >= 1000, counts
    assert counts.get("2xx", 0) > 100, counts
    assert counts.get("4xx", 0) > 100, counts
    assert "5xx" not in counts
    assert "level=error" not in (tmp_path / "server.log").read_text()  # no unexpected exception
