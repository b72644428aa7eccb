"""The EDIP routes: a framework-free core, the quart-trio app, and a raw ASGI fast path.

:class:`EdipCore` is the whole HTTP surface as one synchronous function,
``handle(method, path, query, headers, body) -> Response``: it decodes with :mod:`protocol`, asks
the job runtimes, and encodes the reply. Tests drive it without HTTP; both front ends call it, so
they answer byte for byte the same:

* :func:`create_app` returns the quart-trio app that serves every path through the core;
* :class:`FastPath` is a raw ASGI app for the hot routes (``/job``, ``/task``, ``/result``) that
  hands every other request (``/healthz``, ``/selection``, unknown paths, lifespan) to the
  quart-trio app. It exists because quart's per-request machinery costs about a quarter of the
  throughput of a bare ASGI handler (``bench/bench_http.py`` measures both).

Both front ends refuse a body larger than ``max_body_bytes`` with 413 before reading it when
``Content-Length`` says so, stop reading a chunked body as soon as it grows past the limit, and
answer 408 when a body takes longer than ``body_timeout`` to arrive.

Admission (``edgefl._auth``): a job listed in ``access_file`` needs a device token (403
otherwise, before the device is registered), and with ``device_rate`` a device polling or
reporting faster than its budget gets ``RETRY`` ("Too many requests") without touching the job.
While the server drains for shutdown, ``/job``, ``/task`` and ``/selection`` answer ``RETRY``;
reports are still accepted (``RETRY`` on ``/result`` would end an Android session and lose the
device's work, EDIP §3.3). ``GET /openapi.json`` serves the OpenAPI document of these routes.

Every non-200 reply carries the EDIP error body (EDIP §8): 400 for malformed requests, 403 for a
refused token or a disabled ``/selection``, 404 for unknown paths, 405 for a wrong method, 408,
413, 415, and 500 (logged with its traceback, never sent) for anything unexpected.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from functools import partial
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import parse_qsl

import attrs
import orjson
import trio

from edgefl._auth import AccessPolicy, DeviceRateLimiter
from edgefl._log import log_event
from edgefl._openapi import OPENAPI_CONTENT_TYPE, openapi_bytes
from edgefl._runtime import JobFailed
from protocol import (
    DeviceIdentity,
    ErrorBody,
    Forbidden,
    JobReply,
    MalformedRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Platform,
    ProtocolError,
    ResultReply,
    SelectionReply,
    Status,
    TaskReply,
    decode_job_request,
    decode_result_report,
    decode_selection_request,
    decode_task_request,
    encode_reply,
    media_type,
    parse_identity,
    resolve_platform,
    retry_wait,
    wants_cbor,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence

    from quart_trio import QuartTrio

    from edgefl._config import Settings
    from edgefl._runtime import JobRuntime
    from plugins._registry import PluginInfo
    from protocol import Reply

__all__ = [
    "MAX_SIMULATED_DEVICES",
    "SELECTION_CHUNK",
    "EdipCore",
    "FastPath",
    "Response",
    "create_app",
]

_log = logging.getLogger("edgefl.http")

MAX_SIMULATED_DEVICES: Final = 100_000
"""Largest ``N`` a ``/selection`` device id ``<prefix>?<N>`` may ever announce (the settings
``selection_max_range`` and ``selection_max_devices`` set the limits actually applied)."""

SELECTION_CHUNK: Final = 256
"""Devices a ``/selection`` range registers per step. Each step is one committed core step (about
11 ms for 256 devices); between steps the event loop serves other requests."""

_PREFIX: Final = "/edge/v1"  # feg.yaml's base path, also accepted (EDIP §1.1)
_METHODS: Final[Mapping[str, frozenset[str]]] = {
    "/job": frozenset({"POST"}),
    "/task": frozenset({"POST", "GET"}),
    "/result": frozenset({"POST"}),
    "/selection": frozenset({"POST"}),
    "/healthz": frozenset({"GET"}),
}
_JSON: Final = "application/json"
_REMEMBER_MAX: Final = 100_000
_T = TypeVar("_T")


@attrs.frozen
class Response:
    """An HTTP reply: status, headers (lower-case names), body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@attrs.frozen(eq=False)
class _Registration:
    """A ``/selection`` device range still to register (in steps of :data:`SELECTION_CHUNK`),
    then answered by ``reply()``."""

    runtime: JobRuntime
    prefix: str
    count: int
    device_info: dict[str, str]
    reply: Callable[[], Response]

    def chunks(self) -> Iterator[list[DeviceIdentity]]:
        info = self.device_info
        for start in range(0, self.count, SELECTION_CHUNK):
            stop = min(start + SELECTION_CHUNK, self.count)
            yield [
                DeviceIdentity(device_id=f"{self.prefix}#{i}", device_info=info)
                for i in range(start, stop)
            ]


def _reply(msg: Reply, *, cbor: bool = False) -> Response:
    return Response(200, (("content-type", media_type(cbor=cbor)),), encode_reply(msg, cbor=cbor))


def _error(e: ProtocolError) -> Response:
    headers: tuple[tuple[str, str], ...] = (("content-type", _JSON),)
    return Response(e.status_hint, headers, encode_reply(e.to_body()))


_INTERNAL_ERROR: Final = Response(
    500,
    (("content-type", _JSON),),
    encode_reply(ErrorBody(status=Status.ERROR, message="internal server error")),
)


class EdipCore:
    """The EDIP server as one synchronous function (see the module docstring).

    Args:
        runtimes: the served jobs.
        settings: the server settings (body limit, ``/selection`` switch, finished-job replies).
        retired_job_ids: ids of earlier incarnations of the jobs (their folder changed): late
            reports for them are accepted and discarded, polls get ``NO_JOB`` (EDIP §11.2).
        rng: picks among several running jobs of the same name (EDIP §4.2).
    """

    def __init__(
        self,
        runtimes: Sequence[JobRuntime],
        settings: Settings,
        *,
        retired_job_ids: Iterable[str] = (),
        rng: random.Random | None = None,
    ) -> None:
        self.runtimes: tuple[JobRuntime, ...] = tuple(runtimes)
        self.settings = settings
        self.max_body_bytes = settings.max_body_bytes
        self.draining = False
        """While true, ``/job``, ``/task`` and ``/selection`` answer ``RETRY`` (shutdown)."""
        self._by_id = {rt.job_id: rt for rt in self.runtimes}
        self._retired = frozenset(retired_job_ids)
        self._rng = rng or random.Random(settings.seed)
        self._platforms: dict[str, Platform] = {}  # remembered from /job (EDIP §2.5 step 3)
        self._policy = (
            AccessPolicy.from_file(settings.access_file) if settings.access_file else None
        )
        self._limiter = (
            DeviceRateLimiter(settings.device_rate, settings.device_burst)
            if settings.device_rate
            else None
        )
        self._in_flight = 0
        self._idle = trio.Event()
        self._idle.set()
        self._done_cache: dict[tuple[str, bool], Response] = {}
        self._job_cache: dict[tuple[str, bool], Response] = {}
        self._routes: dict[
            str,
            Callable[[str, Mapping[str, str], dict[str, str], bytes], Response | _Registration],
        ]
        self._routes = {
            "/job": self._job,
            "/task": self._task,
            "/result": self._result,
            "/selection": self._selection,
            "/healthz": self._healthz,
        }

    # ------------------------------------------------------------------ in-flight requests

    def begin(self) -> None:
        """A request started (its body may still be arriving)."""
        self._in_flight += 1
        if self._in_flight == 1:
            self._idle = trio.Event()

    def end(self) -> None:
        """A request's reply was sent (or it was abandoned)."""
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def wait_idle(self) -> None:
        """Return when no request is in flight (wrap in ``move_on_after`` to bound it)."""
        await self._idle.wait()

    def too_large(self) -> Response:
        return _error(PayloadTooLarge(f"request body exceeds {self.max_body_bytes} bytes"))

    def too_slow(self) -> Response:
        """408: the body did not arrive within ``body_timeout``."""
        message = f"request body not received within {self.settings.body_timeout:g} s"
        body = encode_reply(ErrorBody(status=Status.INVALID_REQUEST, message=message))
        return Response(408, (("content-type", _JSON), ("connection", "close")), body)

    def _admit(
        self, runtime: JobRuntime, identity: DeviceIdentity, headers: dict[str, str]
    ) -> None:
        """Refuse (403) a request for a token-protected job without the right device token."""
        if self._policy is not None:
            self._policy.check(runtime.name, headers, identity.user_info)

    def _over_budget(self, device_id: str) -> bool:
        """Whether the device exceeded its request rate (``device_rate``)."""
        return self._limiter is not None and not self._limiter.allow(device_id, time.monotonic())

    def _budget_wait(self, platform: Platform, device_id: str) -> int:
        """``retry_wait`` for a device over its budget: until it has a token again (at most an
        hour), and never less than the usual wait."""
        assert self._limiter is not None
        seconds = max(self.settings.retry_wait, self._limiter.wait_seconds(device_id))
        return retry_wait(platform, min(seconds, 3600.0))

    # ------------------------------------------------------------------ dispatch

    def handle(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> Response:
        """Answer one request. Never raises: every failure becomes an EDIP error reply.

        Args:
            method: the HTTP method.
            path: the URL path (``/task``; ``/edge/v1/task`` works too).
            query: decoded query parameters (first value of each name).
            headers: request headers (any case).
            body: the complete request body.
        """
        return self.handle_lower(
            method, path, query, {k.lower(): v for k, v in headers.items()}, body
        )

    def handle_lower(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        lower: dict[str, str],
        body: bytes,
    ) -> Response:
        """:meth:`handle` for headers whose names are already lower-case (ASGI guarantees it).

        A ``/selection`` device range is registered here in one go (at most
        ``selection_max_range`` devices); the front ends use :meth:`handle_async`, which lets
        the event loop run between steps.
        """
        outcome = self._dispatch(method, path, query, lower, body)
        if isinstance(outcome, Response):
            return outcome
        return self._guard(method, path, partial(self._register_all, outcome))

    async def handle_async(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        lower: dict[str, str],
        body: bytes,
    ) -> Response:
        """:meth:`handle_lower`, but a ``/selection`` device range is registered in steps of
        :data:`SELECTION_CHUNK` devices with a checkpoint after each, so one large range cannot
        stall the other requests. Each step is committed on its own."""
        outcome = self._dispatch(method, path, query, lower, body)
        if isinstance(outcome, Response):
            return outcome
        for chunk in outcome.chunks():
            if outcome.runtime.finished or outcome.runtime.failure is not None:
                break
            failed = self._guard(method, path, partial(self._register_chunk, outcome, chunk))
            if failed is not None:
                return failed
            await trio.lowlevel.checkpoint()
        return self._guard(method, path, outcome.reply)

    def _register_all(self, registration: _Registration) -> Response:
        for chunk in registration.chunks():
            if registration.runtime.finished:
                break
            self._register_chunk(registration, chunk)
        return registration.reply()

    def _register_chunk(self, registration: _Registration, chunk: list[DeviceIdentity]) -> None:
        """Register one step of a range; past ``selection_max_devices`` (another range raced
        this one) only the devices already known are refreshed."""
        runtime = registration.runtime
        room = self.settings.selection_max_devices - runtime.core.range_devices
        if room < len(chunk):
            fresh = [i for i in chunk if not runtime.core.known(i.device_id)]
            if len(fresh) > room:
                allowed = {i.device_id for i in fresh[: max(room, 0)]}
                chunk = [
                    i for i in chunk if runtime.core.known(i.device_id) or i.device_id in allowed
                ]
        runtime.register(chunk)

    def _guard(self, method: str, path: str, fn: Callable[[], _T]) -> _T | Response:
        """``fn()``, with every failure turned into its EDIP error reply: the protocol error's
        status, or 500 (logged with its traceback, never sent) for anything unexpected."""
        try:
            return fn()
        except ProtocolError as e:
            return _error(e)
        except JobFailed:
            return _INTERNAL_ERROR
        except Exception:
            _log.exception("unexpected error answering %s %s", method, path)
            return _INTERNAL_ERROR

    def _dispatch(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        lower: dict[str, str],
        body: bytes,
    ) -> Response | _Registration:
        if path.startswith(_PREFIX + "/"):
            path = path[len(_PREFIX) :]
        return self._guard(method, path, partial(self._route, method, path, query, lower, body))

    def _route(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        lower: dict[str, str],
        body: bytes,
    ) -> Response | _Registration:
        if path == "/openapi.json" and method in ("GET", "HEAD"):
            document = openapi_bytes()
            return Response(
                200,
                (("content-type", OPENAPI_CONTENT_TYPE),),
                document if method == "GET" else b"",
            )
        allowed = _METHODS.get(path)
        if allowed is None:
            raise NotFound(f"no such endpoint: {path}")
        if method not in allowed:
            error = _error(MethodNotAllowed(f"{method} is not allowed on {path}"))
            return attrs.evolve(
                error, headers=(*error.headers, ("allow", ", ".join(sorted(allowed))))
            )
        if len(body) > self.max_body_bytes:
            raise PayloadTooLarge(f"request body exceeds {self.max_body_bytes} bytes")
        return self._routes[path](method, query, lower, body)

    def _platform(self, identity: DeviceIdentity, runtime: JobRuntime | None) -> Platform:
        remembered = runtime.core.platform_of(identity.device_id) if runtime else None
        return resolve_platform(identity, remembered or self._platforms.get(identity.device_id))

    def _retry_wait(self, platform: Platform, runtime: JobRuntime | None) -> int:
        if runtime is not None:
            return runtime.retry_wait(platform)
        return retry_wait(platform, self.settings.retry_wait)

    # ------------------------------------------------------------------ /job

    def _job(
        self, method: str, query: Mapping[str, str], headers: dict[str, str], body: bytes
    ) -> Response:
        identity = parse_identity(headers)
        content_type = headers.get("content-type")
        request = decode_job_request(body, content_type)
        cbor = wants_cbor(content_type, headers.get("accept"))
        if identity.header_platform is not None:
            if len(self._platforms) >= _REMEMBER_MAX:
                self._platforms.clear()
            self._platforms[identity.device_id] = identity.header_platform
        if self.draining:
            platform = self._platform(identity, None)
            return _reply(
                JobReply(status=Status.RETRY, retry_wait=self._retry_wait(platform, None)),
                cbor=cbor,
            )
        if not request.job_name:
            return _reply(
                JobReply(status=Status.INVALID_REQUEST, message="missing job_name"), cbor=cbor
            )
        matches = [
            rt
            for rt in self.runtimes
            if rt.name == request.job_name and not rt.finished and rt.failure is None
        ]
        if not matches:
            return _reply(JobReply(status=Status.NO_JOB), cbor=cbor)
        runtime = matches[0] if len(matches) == 1 else self._rng.choice(matches)
        self._admit(runtime, identity, headers)
        key = (runtime.job_id, cbor)
        cached = self._job_cache.get(key)
        if cached is None:
            cached = self._job_cache[key] = _reply(
                JobReply(
                    status=Status.OK,
                    job_id=runtime.job_id,
                    job_name=runtime.name,
                    job_data=runtime.job_data,
                ),
                cbor=cbor,
            )
        log_event(
            _log,
            "device_joined",
            job=runtime.job_id,
            device=identity.device_id,
            platform=identity.header_platform.value if identity.header_platform else None,
        )
        return cached

    # ------------------------------------------------------------------ /task

    def _done(self, job_id: str, cbor: bool) -> Response:
        """The finished job's tombstone reply, built once (Android keeps polling, EDIP R11)."""
        key = (job_id, cbor)
        cached = self._done_cache.get(key)
        if cached is None:
            cached = self._done_cache[key] = _reply(
                TaskReply(status=Status.DONE, job_id=job_id), cbor=cbor
            )
        return cached

    def _task(
        self, method: str, query: Mapping[str, str], headers: dict[str, str], body: bytes
    ) -> Response:
        identity = parse_identity(headers)
        content_type = headers.get("content-type")
        request = decode_task_request(query, body, content_type if body else None)
        cbor = wants_cbor(content_type, headers.get("accept"))
        runtime = self._by_id.get(request.job_id)
        if runtime is None:
            return _reply(TaskReply(status=Status.NO_JOB), cbor=cbor)
        self._admit(runtime, identity, headers)
        if runtime.finished:
            return self._done(runtime.job_id, cbor)
        if self._over_budget(identity.device_id):
            platform = self._platform(identity, runtime)
            return _reply(
                TaskReply(
                    status=Status.RETRY,
                    job_id=runtime.job_id,
                    retry_wait=self._budget_wait(platform, identity.device_id),
                    message="Too many requests",
                    cookie=request.cookie,
                ),
                cbor=cbor,
            )
        if self.draining:
            platform = self._platform(identity, runtime)
            return _reply(
                TaskReply(
                    status=Status.RETRY,
                    job_id=runtime.job_id,
                    retry_wait=runtime.retry_wait(platform),
                    message="Server restarting",
                    cookie=request.cookie,
                ),
                cbor=cbor,
            )
        reply = runtime.poll(
            identity, request.cookie, remembered=self._platforms.get(identity.device_id)
        )
        return _reply(reply, cbor=cbor)

    # ------------------------------------------------------------------ /result

    def _result(
        self, method: str, query: Mapping[str, str], headers: dict[str, str], body: bytes
    ) -> Response:
        identity = parse_identity(headers)
        content_type = headers.get("content-type")
        report = decode_result_report(query, body, content_type)
        cbor = wants_cbor(content_type, headers.get("accept"))
        runtime = self._by_id.get(report.job_id)
        if runtime is None:
            if report.job_id in self._retired:
                # The job's folder changed and it restarted under a new id (EDIP §11.2).
                return _reply(
                    ResultReply(
                        status=Status.OK,
                        task_id=report.task_id,
                        task_name=report.task_name,
                        message="job replaced; report discarded",
                    ),
                    cbor=cbor,
                )
            return _reply(ResultReply(status=Status.NO_JOB), cbor=cbor)
        self._admit(runtime, identity, headers)
        if self._over_budget(identity.device_id):
            return _reply(
                ResultReply(
                    status=Status.RETRY,
                    task_id=report.task_id,
                    task_name=report.task_name,
                    message="Too many requests",
                ),
                cbor=cbor,
            )
        if runtime.finished:
            status = Status.OK if self.settings.finished_result == "ok" else Status.DONE
            return _reply(
                ResultReply(
                    status=status,
                    task_id=report.task_id,
                    task_name=report.task_name,
                    message="job finished",
                ),
                cbor=cbor,
            )
        # Reports are accepted while draining: RETRY on /result ends an Android session and
        # loses the device's work (EDIP §3.3); accepting and committing loses nothing.
        reply = runtime.report(identity.device_id, report)
        return _reply(reply, cbor=cbor)

    # ------------------------------------------------------------------ /selection

    def _selection(
        self, method: str, query: Mapping[str, str], headers: dict[str, str], body: bytes
    ) -> Response | _Registration:
        if not self.settings.selection_endpoint:
            raise Forbidden("/selection is disabled on this server")
        identity = parse_identity(headers)
        content_type = headers.get("content-type")
        request = decode_selection_request(query, body, content_type if body else None)
        cbor = wants_cbor(content_type, headers.get("accept"))
        runtime = self._by_id.get(request.job_id)
        if runtime is None or runtime.finished:
            return _reply(SelectionReply(status=Status.NO_JOB), cbor=cbor)
        self._admit(runtime, identity, headers)
        if self.draining:
            return _reply(SelectionReply(status=Status.RETRY, job_id=runtime.job_id), cbor=cbor)
        reply = partial(self._selection_reply, runtime, cbor)
        prefix, mark, text = identity.device_id.rpartition("?")
        if not mark:
            return reply()
        largest = min(self.settings.selection_max_range, MAX_SIMULATED_DEVICES)
        count = int(text) if text.isdigit() and len(text) <= 9 else 0
        if not prefix or not 1 <= count <= largest:
            raise MalformedRequest(
                f"X-Flare-Device-ID: a device range must be <prefix>?<N> with N in 1..{largest}"
                " (selection_max_range)"
            )
        limit = self.settings.selection_max_devices
        registered = runtime.core.range_devices
        if registered + count > limit:
            known = runtime.core.known
            new = sum(1 for i in range(count) if not known(f"{prefix}#{i}"))
            if registered + new > limit:
                raise Forbidden(
                    f"this job already has {registered} devices registered through /selection"
                    f" ranges; {new} more would pass selection_max_devices ({limit})"
                )
        return _Registration(runtime, prefix, count, identity.device_info, reply)

    def _selection_reply(self, runtime: JobRuntime, cbor: bool) -> Response:
        selection = runtime.selection()
        if runtime.core.published_version == 0 or not selection:
            return _reply(SelectionReply(status=Status.OK, job_id=runtime.job_id), cbor=cbor)
        return _reply(
            SelectionReply(status=Status.OK, job_id=runtime.job_id, selection=selection),
            cbor=cbor,
        )

    # ------------------------------------------------------------------ /healthz

    def _healthz(
        self, method: str, query: Mapping[str, str], headers: dict[str, str], body: bytes
    ) -> Response:
        jobs = []
        plugins: dict[tuple[str, str], PluginInfo] = {}
        for rt in self.runtimes:
            stats = rt.statistics()
            state = "failed" if rt.failure else "finished" if stats.finished else "running"
            jobs.append(
                {
                    "job_id": stats.job_id,
                    "name": stats.name,
                    "state": state,
                    "version": stats.version,
                    "published_version": stats.published_version,
                    "max_version": stats.max_version,
                    "updates_accepted": stats.updates_accepted,
                    "updates_discarded": dict(stats.updates_discarded),
                    "updates_pending": stats.updates_pending,
                    "devices_known": stats.devices_known,
                    "devices_selected": stats.devices_selected,
                    "devices_training": stats.devices_training,
                    "plugins": [f"{p.group}:{p.name}" for p in rt.plugins],
                }
            )
            for info in rt.plugins:
                plugins[(info.group, info.name)] = info
        status = "draining" if self.draining else "ok"
        if any(rt.failure for rt in self.runtimes):
            status = "degraded"
        document = {
            "status": status,
            "jobs": jobs,
            "plugins": [
                {
                    "group": p.group,
                    "name": p.name,
                    "value": p.value,
                    "dist": p.dist or "",
                    "version": p.version or "",
                }
                for p in plugins.values()
            ],
        }
        return Response(200, (("content-type", _JSON),), orjson.dumps(document))


# --------------------------------------------------------------------------------------------------
# Front ends


def _query(raw: bytes | str) -> dict[str, str]:
    """Query parameters, first value of each name (``application/x-www-form-urlencoded``)."""
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    query: dict[str, str] = {}
    if "%" in text or "+" in text:
        pairs = parse_qsl(text, keep_blank_values=True)
    else:  # the SDKs' plain ids need no decoding: skip parse_qsl's per-part unquoting
        pairs = [
            (key, value)
            for key, _, value in (part.partition("=") for part in text.split("&") if part)
        ]
    for key, value in pairs:
        query.setdefault(key, value)
    return query


def _content_length(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isdigit() else None


def _receive_nowait(
    receive: Callable[[], Awaitable[dict[str, Any]]],
) -> Callable[[], dict[str, Any]] | None:
    """The non-blocking twin of an ASGI ``receive`` when it is a trio memory channel's
    ``receive`` (hypercorn's trio worker), else ``None``."""
    channel = getattr(receive, "__self__", None)
    nowait = getattr(channel, "receive_nowait", None)
    return nowait if isinstance(channel, trio.MemoryReceiveChannel) and callable(nowait) else None


class FastPath:
    """Raw ASGI handler for ``/job``, ``/task``, ``/result`` in front of ``fallback``.

    Args:
        core: the EDIP core both front ends share.
        fallback: the quart-trio app, which gets every other request and the lifespan.
    """

    PATHS: Final = frozenset({"/job", "/task", "/result"})

    def __init__(self, core: EdipCore, fallback: Callable[..., Awaitable[None]]) -> None:
        self.core = core
        self.fallback = fallback

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http" or scope["path"] not in self.PATHS:
            await self.fallback(scope, receive, send)
            return
        core = self.core
        core.begin()
        try:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            response = await self._respond(scope, receive, headers)
            if response is None:
                return  # the client went away before its body was complete
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": [
                        *((k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers),
                        (b"content-length", str(len(response.body)).encode("ascii")),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": response.body})
        finally:
            core.end()

    async def _respond(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        headers: dict[str, str],
    ) -> Response | None:
        core = self.core
        limit = core.max_body_bytes
        length = _content_length(headers.get("content-length"))
        if length is not None and length > limit:
            return core.too_large()
        deadline = trio.current_time() + core.settings.body_timeout
        nowait = _receive_nowait(receive)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = None
            if nowait is not None:
                # Hypercorn queues a small body's messages together: take what is there without
                # a timer (a cancel scope costs as much as the rest of a poll's handling).
                with contextlib.suppress(trio.WouldBlock):
                    message = nowait()
            if message is None:
                with trio.move_on_at(deadline):
                    message = await receive()
                if message is None:
                    return core.too_slow()
            if message["type"] != "http.request":  # http.disconnect
                return None
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    return core.too_large()
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return core.handle_lower(
            scope["method"], scope["path"], _query(scope.get("query_string", b"")), headers, body
        )


def create_app(
    runtimes: Sequence[JobRuntime],
    settings: Settings,
    *,
    core: EdipCore | None = None,
) -> QuartTrio:
    """The quart-trio app serving every EDIP path and ``/healthz`` through one :class:`EdipCore`.

    Args:
        runtimes: the served jobs (ignored when ``core`` is given).
        settings: the server settings.
        core: an existing core to serve (the fast path and the app must share one).

    The core is available as ``app.extensions["edgefl"]``.
    """
    from quart import Response as QuartResponse
    from quart import request
    from quart_trio import QuartTrio

    edip = core if core is not None else EdipCore(runtimes, settings)
    app = QuartTrio("edgefl")
    app.config["MAX_CONTENT_LENGTH"] = None  # the core enforces its own limit, before reading
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.extensions["edgefl"] = edip
    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

    async def serve(path: str = "") -> QuartResponse:
        edip.begin()
        try:
            response = await _quart_respond(edip, request)
        finally:
            edip.end()
        return QuartResponse(response.body, status=response.status, headers=dict(response.headers))

    app.add_url_rule("/", "edip_root", serve, methods=methods, defaults={"path": ""})
    app.add_url_rule("/<path:path>", "edip", serve, methods=methods)
    return app


async def _quart_respond(core: EdipCore, request: Any) -> Response:
    limit = core.max_body_bytes
    length = request.content_length
    if length is not None and length > limit:
        return core.too_large()
    chunks: list[bytes] = []
    size = 0
    with trio.move_on_after(core.settings.body_timeout) as deadline:
        async for chunk in request.body:
            size += len(chunk)
            if size > limit:
                return core.too_large()
            chunks.append(chunk)
    if deadline.cancelled_caught:
        return core.too_slow()
    headers = {k.lower(): v for k, v in request.headers.items()}
    return await core.handle_async(
        request.method, request.path, _query(request.query_string), headers, b"".join(chunks)
    )
