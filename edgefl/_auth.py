"""Admission control for the EDIP routes: per-job device tokens and per-device rate limits.

Both are synchronous, read no clock of their own (``now`` is an argument) and never raise on
input a device controls, so :class:`~edgefl._app.EdipCore` can call them in its request path.

Device tokens (:class:`AccessPolicy`)
    A job may require a token. A device presents it as ``Authorization: Bearer <token>`` or as
    ``access_token`` in ``X-Flare-User-Info`` (EDIP §2.3; the NVFlare SDKs send user info on every
    request, and the Python simulator sends the literal ``None`` when it has no token, which counts
    as no token). The policy is read from a TOML file::

        # tokens.toml
        [jobs.xor_et]                 # a job name (the name devices send to /job)
        tokens = ["s3cret-1", "s3cret-2"]
        [jobs.cifar10_et]
        token_sha256 = ["9f86d081884c7d65..."]   # or only the SHA-256 hex digests

    Jobs not named in the file are open. Tokens are compared as SHA-256 digests with
    :func:`hmac.compare_digest`, so the comparison time does not depend on how much of a guess was
    right, and the file may hold digests only. A refused request raises
    :class:`protocol.Forbidden`, which the server answers with HTTP 403 and the EDIP error body
    ``{"status": "INVALID_REQUEST", "message": ...}`` (EDIP §8); the message never echoes the token.

Per-device rate limits (:class:`DeviceRateLimiter`)
    A token bucket per device id: ``rate`` requests per second on average, bursts of ``burst``.
    A device over its budget is answered ``RETRY`` with the platform's ``retry_wait`` and costs the
    server one dictionary lookup. The table holds at most ``max_devices`` buckets; when it is full
    the least recently seen device's bucket is dropped (so memory is bounded even when a client
    invents a new device id per request; such a client is limited by the per-connection limits of
    the HTTP server or a proxy in front, not by this table).
"""

from __future__ import annotations

import hashlib
import hmac
import tomllib
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Final

import attrs

from protocol import Forbidden

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "AccessPolicy",
    "AccessPolicyError",
    "DeviceRateLimiter",
    "presented_token",
]

_BEARER: Final = "bearer "
_NO_TOKEN: Final = frozenset({"", "none", "null"})
_HEX_DIGEST_LEN: Final = 64


class AccessPolicyError(ValueError):
    """The token file cannot be used (the message names the file and the problem)."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def presented_token(headers: Mapping[str, str], user_info: Mapping[str, str]) -> str | None:
    """The token a request presents: ``Authorization: Bearer`` first, else user info's
    ``access_token``; ``None`` when there is none (absent, empty, or the literal ``None``).

    Args:
        headers: request headers with lower-case names.
        user_info: the parsed ``X-Flare-User-Info``.
    """
    auth = headers.get("authorization", "")
    if auth[: len(_BEARER)].lower() == _BEARER:
        token = auth[len(_BEARER) :].strip()
        if token:
            return token
    token = user_info.get("access_token", "").strip()
    if token.lower() in _NO_TOKEN:
        return None
    return token


@attrs.frozen
class AccessPolicy:
    """Which jobs require a device token, and which tokens they accept (module docstring).

    Args:
        digests: job name -> SHA-256 digests of the accepted tokens. A job absent here is open;
            a job present with no digests refuses every device.
    """

    digests: Mapping[str, frozenset[bytes]] = attrs.field(factory=dict)

    @classmethod
    def from_tokens(cls, tokens: Mapping[str, Iterable[str]]) -> AccessPolicy:
        """A policy from plain tokens: job name -> accepted tokens."""
        return cls({job: frozenset(_digest(t) for t in ts) for job, ts in tokens.items()})

    @classmethod
    def from_file(cls, path: str | Path) -> AccessPolicy:
        """Read a token file (see the module docstring).

        Raises:
            AccessPolicyError: the file is unreadable, not TOML, or has a malformed entry.
        """
        path = Path(path)
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise AccessPolicyError(f"token file {path}: {e.strerror or e}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise AccessPolicyError(f"token file {path}: not valid TOML: {e}") from None
        jobs = doc.get("jobs", {})
        unknown = sorted(set(doc) - {"jobs"})
        if unknown or not isinstance(jobs, dict):
            raise AccessPolicyError(
                f"token file {path}: expected only [jobs.<job name>] tables, found {unknown or doc}"
            )
        digests: dict[str, frozenset[bytes]] = {}
        for job, table in jobs.items():
            where = f"token file {path}: [jobs.{job}]"
            if not isinstance(table, dict) or set(table) - {"tokens", "token_sha256"}:
                raise AccessPolicyError(f"{where} may hold only 'tokens' and 'token_sha256'")
            found: set[bytes] = set()
            for token in _strings(table.get("tokens", []), f"{where} tokens"):
                if not token.strip() or token.strip().lower() in _NO_TOKEN:
                    raise AccessPolicyError(f"{where} tokens: {token!r} cannot be a token")
                found.add(_digest(token.strip()))
            for text in _strings(table.get("token_sha256", []), f"{where} token_sha256"):
                try:
                    raw = bytes.fromhex(text)
                except ValueError:
                    raw = b""
                if len(raw) * 2 != _HEX_DIGEST_LEN:
                    raise AccessPolicyError(
                        f"{where} token_sha256: {text!r} is not a SHA-256 hex digest"
                    ) from None
                found.add(raw)
            digests[job] = frozenset(found)
        return cls(digests)

    def protects(self, job_name: str) -> bool:
        """Whether ``job_name`` requires a token."""
        return job_name in self.digests

    def check(
        self, job_name: str, headers: Mapping[str, str], user_info: Mapping[str, str]
    ) -> None:
        """Admit or refuse a request for ``job_name``.

        Args:
            job_name: the job the request is for.
            headers: request headers with lower-case names.
            user_info: the parsed ``X-Flare-User-Info``.

        Raises:
            protocol.Forbidden: the job requires a token and the request has none or a wrong one.
        """
        accepted = self.digests.get(job_name)
        if accepted is None:
            return
        token = presented_token(headers, user_info)
        if token is None:
            raise Forbidden(
                f"job {job_name} requires a device token (Authorization: Bearer, or access_token"
                " in X-Flare-User-Info)"
            )
        digest = _digest(token)
        ok = False
        for candidate in accepted:  # no early exit: the time does not reveal which one matched
            ok |= hmac.compare_digest(digest, candidate)
        if not ok:
            raise Forbidden(f"device token refused for job {job_name}")


def _strings(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AccessPolicyError(f"{where} must be a list of strings")
    return value


@attrs.define
class _Bucket:
    tokens: float
    last: float


class DeviceRateLimiter:
    """A token bucket per device id (see the module docstring).

    Args:
        rate: requests per second a device may make on average (> 0).
        burst: requests a device may make at once after being idle (>= 1).
        max_devices: most buckets kept; the least recently seen is dropped beyond it.

    Raises:
        ValueError: an argument is out of range (the message names it).
    """

    def __init__(self, rate: float, burst: int, *, max_devices: int = 100_000) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0 requests per second, got {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        if max_devices < 1:
            raise ValueError(f"max_devices must be >= 1, got {max_devices!r}")
        self.rate = float(rate)
        self.burst = int(burst)
        self.max_devices = max_devices
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self.refused = 0
        """Requests refused so far (for statistics)."""

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, device_id: str, now: float) -> bool:
        """Spend one token of ``device_id``'s bucket at time ``now`` (seconds, any monotonic
        clock); ``False`` when the bucket is empty (the request should get ``RETRY``)."""
        bucket = self._buckets.get(device_id)
        if bucket is None:
            if len(self._buckets) >= self.max_devices:
                self._buckets.popitem(last=False)
            bucket = self._buckets[device_id] = _Bucket(float(self.burst), now)
        else:
            self._buckets.move_to_end(device_id)
            elapsed = max(0.0, now - bucket.last)
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate)
            bucket.last = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        self.refused += 1
        return False

    def wait_seconds(self, device_id: str) -> float:
        """Seconds until ``device_id`` has a token again (0 when it has one now)."""
        bucket = self._buckets.get(device_id)
        if bucket is None or bucket.tokens >= 1.0:
            return 0.0
        return (1.0 - bucket.tokens) / self.rate
