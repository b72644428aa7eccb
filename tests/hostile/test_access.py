"""Device tokens and per-device rate limits: the policy objects on their own, and the server
refusing devices without the job's token with the EDIP 403 body."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from edgefl._auth import AccessPolicy, AccessPolicyError, DeviceRateLimiter, presented_token
from protocol import Forbidden
from tests.durability.harness import generic_headers

if TYPE_CHECKING:
    from pathlib import Path

# ------------------------------------------------------------------------------------ tokens


def test_presented_token_prefers_bearer_and_ignores_the_simulators_none() -> None:
    assert presented_token({"authorization": "Bearer abc"}, {"access_token": "xyz"}) == "abc"
    assert presented_token({"authorization": "bearer  abc "}, {}) == "abc"
    assert presented_token({}, {"access_token": "xyz"}) == "xyz"
    assert presented_token({}, {"access_token": "None"}) is None
    assert presented_token({"authorization": "Basic Zm9v"}, {}) is None
    assert presented_token({"authorization": "Bearer "}, {}) is None
    assert presented_token({}, {}) is None


def test_policy_admits_the_right_token_only_for_protected_jobs() -> None:
    policy = AccessPolicy.from_tokens({"xor_et": ["s3cret"]})
    policy.check("xor_et", {"authorization": "Bearer s3cret"}, {})
    policy.check("xor_et", {}, {"access_token": "s3cret"})
    policy.check("open_job", {}, {})
    assert policy.protects("xor_et")
    assert not policy.protects("open_job")
    with pytest.raises(Forbidden, match="requires a device token") as missing:
        policy.check("xor_et", {}, {"access_token": "None"})
    assert missing.value.status_hint == 403
    with pytest.raises(Forbidden, match="refused") as wrong:
        policy.check("xor_et", {"authorization": "Bearer s3cret2"}, {})
    assert "s3cret2" not in str(wrong.value)


def test_policy_file_with_plain_tokens_and_digests(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"only-the-hash").hexdigest()
    path = tmp_path / "tokens.toml"
    path.write_text(
        f'[jobs.xor_et]\ntokens = ["plain"]\ntoken_sha256 = ["{digest}"]\n[jobs.closed]\n'
    )
    policy = AccessPolicy.from_file(path)
    policy.check("xor_et", {"authorization": "Bearer plain"}, {})
    policy.check("xor_et", {"authorization": "Bearer only-the-hash"}, {})
    with pytest.raises(Forbidden):
        policy.check("closed", {"authorization": "Bearer plain"}, {})


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[jobs.x]\ntokens = 'one'\n", "tokens must be a list of strings"),
        ("[jobs.x]\ntoken_sha256 = ['abc']\n", "not a SHA-256 hex digest"),
        ("[jobs.x]\ntokens = ['None']\n", "cannot be a token"),
        ("[jobs.x]\npassword = ['a']\n", "may hold only"),
        ("[other]\n", "expected only [jobs.<job name>] tables"),
        ("[jobs.x\n", "not valid TOML"),
    ],
)
def test_policy_file_errors_name_the_file_and_the_problem(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(text)
    with pytest.raises(AccessPolicyError, match=r"tokens\.toml") as e:
        AccessPolicy.from_file(path)
    assert problem in str(e.value)


def test_missing_policy_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(AccessPolicyError, match=r"nope\.toml"):
        AccessPolicy.from_file(tmp_path / "nope.toml")


# ------------------------------------------------------------------------------------ rate limits


def test_rate_limiter_allows_a_burst_then_the_rate() -> None:
    limiter = DeviceRateLimiter(rate=2.0, burst=3)
    assert [limiter.allow("d", 0.0) for _ in range(5)] == [True, True, True, False, False]
    assert limiter.wait_seconds("d") == pytest.approx(0.5)
    assert limiter.allow("d", 0.5)
    assert not limiter.allow("d", 0.5)
    assert limiter.allow("other", 0.5)  # buckets are per device
    assert limiter.allow("d", 100.0)  # refills up to the burst only
    assert [limiter.allow("d", 100.0) for _ in range(3)] == [True, True, False]
    assert limiter.refused == 4


def test_rate_limiter_memory_is_bounded() -> None:
    limiter = DeviceRateLimiter(rate=1.0, burst=1, max_devices=100)
    for i in range(10_000):
        limiter.allow(f"d{i}", float(i))
    assert len(limiter) == 100
    assert not limiter.allow("d9999", 9999.0)  # the most recent devices are kept


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"rate": 0, "burst": 1}, "rate"), ({"rate": 1, "burst": 0}, "burst")],
)
def test_rate_limiter_arguments_are_checked(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        DeviceRateLimiter(**kwargs)


# ------------------------------------------------------------------------------------ the server


async def test_server_refuses_devices_without_the_jobs_token(
    start_server: Any, tmp_path: Path
) -> None:
    """Needs the ``access_file`` setting and the EdipCore hook (docs/operations.md)."""
    tokens = tmp_path / "tokens.toml"
    tokens.write_text('[jobs.xor_et]\ntokens = ["s3cret"]\n')
    server = await start_server(access_file=tokens)
    async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
        r = await client.post("/job", json={"job_name": "xor_et"}, headers=generic_headers("a"))
        assert r.status_code == 403
        assert r.json()["status"] == "INVALID_REQUEST"
        assert "token" in r.json()["message"]
        good = generic_headers("a", Authorization="Bearer s3cret")
        r = await client.post("/job", json={"job_name": "xor_et"}, headers=good)
        job_id = r.json()["job_id"]
        for headers in (
            generic_headers("a"),
            generic_headers("a", Authorization="Bearer wrong"),
            generic_headers("a", **{"X-Flare-User-Info": "user_id=u&access_token=None"}),
        ):
            r = await client.post("/task", params={"job_id": job_id}, json={}, headers=headers)
            assert r.status_code == 403, r.text
            assert r.json()["status"] == "INVALID_REQUEST"
        (runtime,) = server.runtimes
        assert runtime.statistics().devices_known == 0
        user_info = generic_headers("b", **{"X-Flare-User-Info": "user_id=u&access_token=s3cret"})
        r = await client.post("/task", params={"job_id": job_id}, json={}, headers=user_info)
        assert r.status_code == 200
        assert runtime.statistics().devices_known == 1


async def test_selection_needs_the_jobs_token_too(start_server: Any, tmp_path: Path) -> None:
    """/selection reveals the selection and registers devices: a protected job's token policy
    applies to it as to the device routes."""
    tokens = tmp_path / "tokens.toml"
    tokens.write_text('[jobs.xor_et]\ntokens = ["s3cret"]\n')
    server = await start_server(access_file=tokens)
    (runtime,) = server.runtimes
    query = {"job_id": runtime.job_id}
    async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
        for headers in (
            {"X-Flare-Device-ID": "sim?20"},
            {"X-Flare-Device-ID": "sim?20", "Authorization": "Bearer wrong"},
        ):
            r = await client.post("/selection", params=query, json={}, headers=headers)
            assert r.status_code == 403, r.text
            assert r.json()["status"] == "INVALID_REQUEST"
        assert runtime.statistics().devices_known == 0
        good = {"X-Flare-Device-ID": "sim?20", "Authorization": "Bearer s3cret"}
        r = await client.post("/selection", params=query, json={}, headers=good)
        assert (r.status_code, r.json()["status"]) == (200, "OK")
        assert runtime.statistics().devices_known == 20
