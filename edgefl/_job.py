"""JobCore: one FedBuff job's model manager and device manager, synchronous and without I/O.

Theory of operation
===================

The core owns a job's in-memory state: the current model version and weights, the aggregator
plugin (which holds the running sums of buffered updates), every device's session
(:class:`protocol.DeviceSession`, advanced only through :func:`protocol.step`), the selection
(devices holding tickets), and the counters. It reads no clock (``now`` is an argument of every
method), does no I/O and never awaits, so one call is one atomic step of the job.

Every method returns what it decided, and collects what must become durable as
:mod:`edgefl._store` changes; :meth:`JobCore.take_changes` hands them to the runtime, which commits
them in one transaction *before* it sends the reply. A new model version therefore becomes durable
together with the consumption of the updates it folds in and the aggregator state.

FedBuff as NVFlare runs it (FEDBUFF.md §3-§4), with the fixes of §9:

* Version 1 is the initial weights; it is committed when the job first starts.
* A device enters the pool by polling ``/task``. The selection is refilled whenever
  ``device_selection_size - |selection| >= min_hole_to_fill``; the very first fill waits until
  ``min_devices_to_start`` devices are usable (default: a full selection, as the reference). The
  selector plugin picks among the usable devices (all of them, or a uniform random sample of
  :data:`CANDIDATES_PER_SLOT` per free slot, at least :data:`MIN_CANDIDATES`, when the pool is
  larger). ``device_reuse = false`` selects a device at most once per job.
* Tickets come from one per-job counter that only grows, so a device never gets a ticket equal to
  one it had (its cookie's ``device_selection_id``), which is what froze the reference (R32).
* A selected device's next poll gets a task with a fresh task id; the core records
  task id -> (device, ticket, model version handed out). A report counts for that recorded version,
  never for the version its cookie claims (R27).
* A report is aggregated only if it answers the device's open task. Otherwise it is discarded with
  a reason (``duplicate``, ``foreign``, ``expired``, ``stale``), counted and logged, and still
  answered ``OK`` (EDIP §3.3). Unusable tensors (shape, NaN, key set) get ``ERROR`` (EDIP §6.4).
* After each accepted update the aggregator's ``ready()`` decides whether to make a new version;
  reaching ``max_model_version`` finishes the job and releases every ticket.
* A ticket not turned into a task, or a task not reported, within ``task_timeout`` expires and
  frees the slot (R31); a device silent for ``device_ttl`` leaves the pool until it polls again.
"""

from __future__ import annotations

import logging
import math
import random
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Final

import attrs
import numpy as np

from edgefl._log import log_event
from edgefl._store import (
    CloseTask,
    PutDevice,
    PutJobState,
    PutTask,
    PutUpdate,
    PutVersion,
    TaskRecord,
)
from edgefl.api import Candidate, Update
from protocol import (
    TASK_KIND,
    TASK_NAME,
    Cookie,
    DeviceExpired,
    DeviceSession,
    InvalidResult,
    InvalidTransition,
    Platform,
    Polled,
    Released,
    Reported,
    ResultReply,
    Selected,
    SessionState,
    Status,
    TaskData,
    TaskDelivered,
    TaskReply,
    TicketExpired,
    decode_tensor_map,
    expiry_event,
    resolve_platform,
    retry_wait,
    step,
    task_meta,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from edgefl._store import Change, StoredUpdate
    from edgefl.api import Aggregator, Selector, Weights
    from protocol import DeviceIdentity, ResultReport, SessionEvent

__all__ = [
    "CANDIDATES_PER_SLOT",
    "DISCARD_REASONS",
    "MIN_CANDIDATES",
    "RANGE_DEVICES",
    "AggregatorFailure",
    "JobConfig",
    "JobCore",
    "JobStatistics",
]

_log = logging.getLogger("edgefl.job")

MIN_CANDIDATES: Final = 64
CANDIDATES_PER_SLOT: Final = 8
"""The selector is handed a uniform random sample of the usable devices: all of them when there
are few, else ``max(MIN_CANDIDATES, CANDIDATES_PER_SLOT * free slots)``. A refill (one per report
in asynchronous mode) then costs the same with 100 or 100,000 registered devices."""

DISCARD_REASONS: Final = ("duplicate", "foreign", "expired", "stale", "invalid", "failed")
"""Why a report was not aggregated. ``invalid`` (unusable tensors) and ``failed`` (the device
reported a non-OK status) are answered ``ERROR``; the others ``OK``."""

RANGE_DEVICES: Final = "range_devices"
"""The counter of devices registered through ``/selection`` ranges (stored with the others)."""

MSG_NOT_SELECTED: Final = "Device not selected"
MSG_NOT_READY: Final = "Model not ready"


class AggregatorFailure(RuntimeError):
    """The aggregator plugin returned unusable weights from ``aggregate``; the job cannot go on."""


@attrs.frozen(kw_only=True)
class JobConfig:
    """What the core needs to know about its job (built by the runtime from the job folder and the
    server settings).

    Args:
        job_id, name: the job's identity (``/job`` matches ``name``).
        schema: trainable parameter name (without ``net.``) -> shape, the report schema.
        method: the SDK input-layout word sent in task meta (EDIP §10.3).
        max_model_version: the job ends when the version reaches it (>= 2).
        max_model_history: staleness cut-off (``None``: none), FEDBUFF.md §2.1.
        device_selection_size, min_hole_to_fill, device_reuse: FEDBUFF.md §2.2.
        min_devices_to_start: usable devices needed for the first fill (FEDBUFF.md §9.8).
        task_timeout: seconds a ticket/task may stay unanswered.
        device_ttl: seconds of silence after which an idle device leaves the pool.
        retry_wait, retry_jitter: the parked devices' poll interval D and its relative spread.
        total_epochs, batch_size, learning_rate: training parameters for the task meta.
    """

    job_id: str
    name: str
    schema: Mapping[str, tuple[int, ...]]
    method: str | None = None
    max_model_version: int = attrs.field(default=20, validator=attrs.validators.ge(2))
    max_model_history: int | None = None
    device_selection_size: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    min_hole_to_fill: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    device_reuse: bool = True
    min_devices_to_start: int | None = None
    task_timeout: float = 300.0
    device_ttl: float = 900.0
    retry_wait: float = 5.0
    retry_jitter: float = 0.0
    total_epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None

    @property
    def start_threshold(self) -> int:
        if self.min_devices_to_start is None:
            return self.device_selection_size
        return self.min_devices_to_start


@attrs.frozen(kw_only=True)
class JobStatistics:
    """A snapshot of one job (``JobRuntime.statistics()``)."""

    job_id: str
    name: str
    version: int
    """The latest committed model version (0: none yet)."""
    published_version: int
    """The latest version whose task payload is ready (devices receive this one)."""
    max_version: int
    finished: bool
    updates_accepted: int
    updates_discarded: Mapping[str, int]
    """Reason -> count; every reason in :data:`DISCARD_REASONS` is present."""
    updates_pending: int
    """Accepted updates not yet folded into a version."""
    devices_known: int
    devices_selected: int
    """Devices holding a ticket (selected or training)."""
    devices_training: int


def _session_data(session: DeviceSession, extra: _DeviceExtra) -> dict[str, object]:
    return {
        "device_id": session.device_id,
        "platform": session.platform.value,
        "state": session.state.value,
        "ticket": session.ticket,
        "task_id": session.task_id,
        "task_version": session.task_version,
        "last_ticket": session.last_ticket,
        "reports": session.reports,
        "info": extra.info,
        "task_seconds": extra.task_seconds,
        "tasks_done": extra.tasks_done,
    }


class _IndexedSet:
    """A set of device ids that can also be sampled uniformly in O(sample size)."""

    __slots__ = ("_index", "_items")

    def __init__(self) -> None:
        self._items: list[str] = []
        self._index: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item: str) -> bool:
        return item in self._index

    def add(self, item: str) -> None:
        if item not in self._index:
            self._index[item] = len(self._items)
            self._items.append(item)

    def discard(self, item: str) -> None:
        position = self._index.pop(item, None)
        if position is None:
            return
        last = self._items.pop()
        if position < len(self._items):
            self._items[position] = last
            self._index[last] = position

    def clear(self) -> None:
        self._items.clear()
        self._index.clear()

    def sample(self, rng: random.Random, n: int) -> list[str]:
        """All items (in insertion-dependent order) when there are at most ``n``, else ``n``
        distinct items drawn uniformly with ``rng``."""
        if len(self._items) <= n:
            return list(self._items)
        return rng.sample(self._items, n)


@attrs.define
class _DeviceExtra:
    """What the core keeps about a device beyond its session (for selectors and statistics)."""

    info: dict[str, str]
    task_seconds: float = 0.0
    tasks_done: int = 0

    @property
    def mean_task_seconds(self) -> float | None:
        return self.task_seconds / self.tasks_done if self.tasks_done else None


class JobCore:
    """One job's state machine (see the module docstring).

    Args:
        config: the job's settings.
        aggregator, selector: the job's plugin instances.
        initial_weights: version 1's weights (names without ``net.``).
        rng: all randomness (selection, retry jitter); seed it for reproducible runs.
        new_task_id: task id factory (default: ``uuid4`` strings).
    """

    def __init__(
        self,
        config: JobConfig,
        *,
        aggregator: Aggregator,
        selector: Selector,
        initial_weights: Weights,
        rng: random.Random | None = None,
        new_task_id: Callable[[], str] | None = None,
    ) -> None:
        if initial_weights.keys() != config.schema.keys():
            raise ValueError(
                f"initial weights {sorted(initial_weights)} do not match the schema"
                f" {sorted(config.schema)}"
            )
        self.config = config
        self._aggregator = aggregator
        self._selector = selector
        self._rng = rng or random.Random()
        self._jitter_rng = random.Random(self._rng.random())
        self._new_task_id = new_task_id or (lambda: str(uuid.uuid4()))
        self._initial_weights = initial_weights

        self.version = 0
        self.weights: Weights = initial_weights
        self.finished = False
        self.published_version = 0
        self._task_data: dict[Platform, TaskData] = {}

        self._sessions: dict[str, DeviceSession] = {}
        self._extra: dict[str, _DeviceExtra] = {}
        self._selected: set[str] = set()  # devices holding a ticket
        self._usable = _IndexedSet()  # may be selected now
        self._next_ticket = 1
        self._counters: Counter[str] = Counter()
        self._changes: list[Change] = []
        self._new_versions: list[int] = []

    # ------------------------------------------------------------------ lifecycle

    def restore(
        self,
        *,
        version: int,
        weights: Weights | None,
        next_ticket: int,
        finished: bool,
        counters: Mapping[str, int],
        aggregator_state: Mapping[str, np.ndarray] | None,
        devices: Iterable[Mapping[str, object]],
        pending: Iterable[StoredUpdate],
        now: float,
    ) -> None:
        """Load a job's committed state (after a restart). Call before :meth:`start`.

        Persisted times are not trusted across a restart (another clock, and downtime should not
        count against devices): every restored ticket and task gets a fresh deadline from ``now``.
        Buffered updates are re-fed to the aggregator after its state is loaded, rebuilding its
        running sums exactly as they were.
        """
        self.version = version
        if weights is not None:
            self.weights = weights
        self._next_ticket = next_ticket
        self.finished = finished
        self._counters = Counter(counters)
        if aggregator_state:
            self._aggregator.load_state_dict(aggregator_state)
        for data in devices:
            session, extra = self._session_from_data(data, now)
            self._sessions[session.device_id] = session
            self._extra[session.device_id] = extra
            if session.ticket is not None:
                self._selected.add(session.device_id)
            elif session.state is SessionState.AVAILABLE and self._reusable(session):
                self._usable.add(session.device_id)
        for stored in pending:
            self._aggregator.accept(
                Update(
                    device_id=stored.device_id,
                    task_id=stored.task_id,
                    version=stored.version,
                    delta=stored.delta,
                    num_samples=stored.num_samples,
                ),
                self.version,
            )

    @staticmethod
    def _session_from_data(
        data: Mapping[str, object], now: float
    ) -> tuple[DeviceSession, _DeviceExtra]:
        """A stored session (see ``_session_data``), with fresh deadlines from ``now``."""
        state = SessionState(_text(data, "state"))
        holds = state in (SessionState.SELECTED, SessionState.TRAINING)
        training = state is SessionState.TRAINING
        session = DeviceSession(
            device_id=_text(data, "device_id"),
            platform=Platform(_text(data, "platform")),
            state=state,
            ticket=_integer(data, "ticket") if holds else None,
            task_id=_text(data, "task_id") if training else None,
            task_version=_integer(data, "task_version") if training else None,
            assigned_at=now if holds else None,
            last_seen=now,
            last_ticket=_integer(data, "last_ticket"),
            reports=_integer(data, "reports"),
        )
        info = data.get("info")
        seconds = data.get("task_seconds")
        extra = _DeviceExtra(
            info={str(k): str(v) for k, v in info.items()} if isinstance(info, dict) else {},
            task_seconds=float(seconds) if isinstance(seconds, int | float) else 0.0,
            tasks_done=_integer(data, "tasks_done"),
        )
        return session, extra

    def start(self, now: float) -> None:
        """Commit version 1 (the initial weights) if the job has no version yet, and end a job whose
        version already reached ``max_model_version``."""
        if self.version == 0:
            self._commit_version(1, self._initial_weights, 0, now)
        elif self.version >= self.config.max_model_version and not self.finished:
            self._finish(now)
        self._fill(now)

    def take_changes(self) -> list[Change]:
        """The durable changes decided since the last call (the caller commits them)."""
        changes, self._changes = self._changes, []
        return changes

    def take_new_versions(self) -> list[int]:
        """Model versions committed since the last call, oldest first."""
        versions, self._new_versions = self._new_versions, []
        return versions

    def set_payload(self, version: int, pte_base64: str) -> bool:
        """Make ``version``'s program (base64 ``.pte``) the one handed out, unless a newer one is
        already in place. The base64 text is shared by all platforms; only the meta differs."""
        if version <= self.published_version or version > self.version:
            return False
        cfg = self.config
        self._task_data = {
            platform: TaskData(
                kind=TASK_KIND,
                data=pte_base64,
                meta=task_meta(
                    platform,
                    model_version=version,
                    total_epochs=cfg.total_epochs,
                    batch_size=cfg.batch_size,
                    learning_rate=cfg.learning_rate,
                    method=cfg.method,
                    num_rounds=cfg.max_model_version,
                ),
            )
            for platform in Platform
        }
        self.published_version = version
        return True

    # ------------------------------------------------------------------ queries

    def platform_of(self, device_id: str) -> Platform | None:
        session = self._sessions.get(device_id)
        return None if session is None else session.platform

    def session(self, device_id: str) -> DeviceSession | None:
        return self._sessions.get(device_id)

    def owns_open_task(self, device_id: str, task_id: str) -> bool:
        """Whether ``task_id`` is the task ``device_id`` is training on right now."""
        session = self._sessions.get(device_id)
        return session is not None and session.task_id == task_id

    def selection(self) -> dict[str, int]:
        """Device id -> ticket for every device holding one (EDIP §7)."""
        out: dict[str, int] = {}
        for device_id in self._selected:
            ticket = self._sessions[device_id].ticket
            assert ticket is not None
            out[device_id] = ticket
        return out

    def statistics(self) -> JobStatistics:
        training = sum(
            1 for d in self._selected if self._sessions[d].state is SessionState.TRAINING
        )
        return JobStatistics(
            job_id=self.config.job_id,
            name=self.config.name,
            version=self.version,
            published_version=self.published_version,
            max_version=self.config.max_model_version,
            finished=self.finished,
            updates_accepted=self._counters["accepted"],
            updates_discarded={r: self._counters[r] for r in DISCARD_REASONS},
            updates_pending=self._aggregator.pending(),
            devices_known=len(self._sessions),
            devices_selected=len(self._selected),
            devices_training=training,
        )

    def retry_wait(self, platform: Platform) -> int:
        """``retry_wait`` for ``platform``: the configured wait with its jitter, in the platform's
        unit (EDIP §3.4)."""
        seconds = self.config.retry_wait
        jitter = self.config.retry_jitter
        if jitter:
            seconds *= 1.0 + self._jitter_rng.uniform(-jitter, jitter)
        return retry_wait(platform, seconds)

    # ------------------------------------------------------------------ /task

    def poll(
        self,
        identity: DeviceIdentity,
        cookie: Cookie | None,
        now: float,
        *,
        remembered: Platform | None = None,
    ) -> TaskReply:
        """A ``/task`` poll: register the device, then hand out a task if it holds an unused
        ticket and a model is published, else park it with ``RETRY`` (EDIP §5.2).

        Args:
            identity: the request's identity headers.
            cookie: the cookie of the request body, if any.
            now: the current time.
            remembered: the platform the server remembers for the device from elsewhere
                (its ``/job``), used when neither the headers nor the session reveal one.
        """
        job_id = self.config.job_id
        if self.finished:
            return TaskReply(status=Status.DONE, job_id=job_id)
        session = self._touch(identity, now, remembered)
        platform = session.platform
        unseen = cookie is None or cookie.device_selection_id != session.ticket
        if session.state is SessionState.SELECTED and self.published_version > 0 and unseen:
            return self._deliver(session, now)
        if session.state is SessionState.TRAINING and unseen:
            return self._redeliver(session, now)
        if self.published_version == 0:
            message = MSG_NOT_READY
        else:
            message = MSG_NOT_SELECTED
        return TaskReply(
            status=Status.RETRY,
            job_id=job_id,
            retry_wait=self.retry_wait(platform),
            message=message,
            cookie=self._cookie_for(session, cookie),
        )

    @staticmethod
    def _cookie_for(session: DeviceSession, cookie: Cookie | None) -> Cookie | None:
        """The device's current cookie, sent on RETRY too (EDIP §5.3): the open task's while it
        trains, else the one it sent (iOS would otherwise drop it, R23)."""
        if session.task_version is not None and session.ticket is not None:
            return Cookie(model_version=session.task_version, device_selection_id=session.ticket)
        return cookie

    def _touch(
        self,
        identity: DeviceIdentity,
        now: float,
        remembered: Platform | None,
        *,
        fill: bool = True,
    ) -> DeviceSession:
        """Register or refresh the device (EDIP §5.2 step 2) and return its session."""
        device_id = identity.device_id
        session = self._sessions.get(device_id)
        if session is None:
            session = DeviceSession.new(device_id, resolve_platform(identity, remembered), now)
            self._sessions[device_id] = session
            self._extra[device_id] = _DeviceExtra(info=dict(identity.device_info))
            joined = True
        else:
            joined = session.state is SessionState.GONE
            session = self._apply(session, Polled(now=now, platform=identity.header_platform))
            if identity.device_info and identity.device_info != self._extra[device_id].info:
                self._extra[device_id].info = dict(identity.device_info)
        if joined:
            self._persist(session)  # a new or revived device becomes durable
            log_event(
                _log,
                "device_registered",
                job=self.config.job_id,
                device=device_id,
                platform=session.platform.value,
            )
        if (
            session.state is SessionState.AVAILABLE
            and device_id not in self._usable
            and self._reusable(session)
            and not self.finished
        ):
            # New, revived, or back after its ticket expired: it may fill a hole right away.
            self._usable.add(device_id)
            if fill:
                self._fill(now)
                session = self._sessions[device_id]
        return session

    @property
    def range_devices(self) -> int:
        """Devices registered so far through ``/selection`` ranges (durable, survives restarts)."""
        return self._counters[RANGE_DEVICES]

    def known(self, device_id: str) -> bool:
        """Whether the device has a session (it polled, or a range registered it)."""
        return device_id in self._sessions

    def register(self, identities: Iterable[DeviceIdentity], now: float) -> int:
        """Register several devices at once (``/selection`` with ``<prefix>?<N>``, EDIP §7).

        Returns:
            How many of them were new; they are added to :attr:`range_devices`.
        """
        new = 0
        for identity in identities:
            if identity.device_id not in self._sessions:
                new += 1
            self._touch(identity, now, None, fill=False)
        if new:
            self._counters[RANGE_DEVICES] += new
            self._changes.append(PutJobState(counters=dict(self._counters)))
        self._fill(now)
        return new

    def _redeliver(self, session: DeviceSession, now: float) -> TaskReply:
        """A device training on a task polls with a cookie that is not that task's: the ``/task``
        reply carrying the task never reached it (it would otherwise sit parked until
        ``task_timeout``). Send the same task again while its version is the published one;
        otherwise close it unreported (a late report for it is discarded as ``expired``) and
        hand the device a fresh task of the published version under a new ticket."""
        ticket, task_id, version = session.ticket, session.task_id, session.task_version
        assert ticket is not None
        assert task_id is not None
        assert version is not None
        if version == self.published_version:
            log_event(
                _log,
                "task_resent",
                job=self.config.job_id,
                device=session.device_id,
                task=task_id,
                version=version,
                ticket=ticket,
            )
            return TaskReply(
                status=Status.OK,
                job_id=self.config.job_id,
                retry_wait=0,
                task_id=task_id,
                task_name=TASK_NAME,
                task_data=self._task_data[session.platform],
                cookie=Cookie(model_version=version, device_selection_id=ticket),
            )
        session = self._apply(session, TicketExpired(now=now))
        self._changes.append(CloseTask(task_id, "expired", now))
        log_event(
            _log,
            "task_replaced",
            job=self.config.job_id,
            device=session.device_id,
            task=task_id,
            version=version,
            published=self.published_version,
        )
        new_ticket = self._next_ticket
        self._next_ticket += 1
        session = self._apply(session, Selected(ticket=new_ticket, now=now))
        self._changes.append(PutJobState(next_ticket=self._next_ticket))
        return self._deliver(session, now)

    def _deliver(self, session: DeviceSession, now: float) -> TaskReply:
        ticket = session.ticket
        assert ticket is not None
        version = self.published_version
        task_id = self._new_task_id()
        session = self._apply(
            session, TaskDelivered(ticket=ticket, task_id=task_id, model_version=version, now=now)
        )
        self._changes.append(
            PutTask(
                TaskRecord(
                    task_id=task_id,
                    device_id=session.device_id,
                    ticket=ticket,
                    version=version,
                    issued_at=now,
                )
            )
        )
        self._persist(session)
        log_event(
            _log,
            "task_delivered",
            job=self.config.job_id,
            device=session.device_id,
            task=task_id,
            version=version,
            ticket=ticket,
            platform=session.platform.value,
        )
        return TaskReply(
            status=Status.OK,
            job_id=self.config.job_id,
            retry_wait=0,
            task_id=task_id,
            task_name=TASK_NAME,
            task_data=self._task_data[session.platform],
            cookie=Cookie(model_version=version, device_selection_id=ticket),
        )

    # ------------------------------------------------------------------ /result

    def report(
        self, device_id: str, report: ResultReport, record: TaskRecord | None, now: float
    ) -> ResultReply:
        """A ``/result`` for this job (EDIP §6.4).

        Args:
            device_id: the reporting device (from its headers).
            report: the decoded report.
            record: the stored record of ``report.task_id`` when it is *not* the device's open
                task (the runtime looks it up only then, to name the discard reason); ignored
                otherwise.
            now: the current time.

        Returns:
            ``OK`` for every well-formed report (accepted or discarded), ``ERROR`` when the device
            reported a failure or its tensors are unusable.
        """
        task_id = report.task_id
        ok = ResultReply(status=Status.OK, task_id=task_id, task_name=report.task_name)
        session = self._sessions.get(device_id)
        if session is None or session.task_id != task_id:
            reason = self._classify(device_id, record)
            self._discard(reason, device_id, task_id, record.version if record else None)
            return attrs.evolve(ok, message=f"{reason} report discarded")
        version = session.task_version
        assert version is not None
        # A report status other than OK, or a result of kind "error" (iOS sends one when it cannot
        # load the model or data set), is a failure the device reports: never aggregated.
        failure = None
        if report.status != Status.OK.value:
            failure = "missing result or bad status"
        elif report.result.kind == "error":
            failure = "device reported an error (result kind 'error')"
        if failure is not None:
            self._close(session, task_id, "failed", now)
            self._discard("failed", device_id, task_id, version)
            return ResultReply(
                status=Status.ERROR, task_id=task_id, task_name=report.task_name, message=failure
            )
        history = self.config.max_model_history
        if history is not None and self.version - version >= history:
            self._close(session, task_id, "stale", now)
            self._discard("stale", device_id, task_id, version)
            return attrs.evolve(ok, message="stale report discarded")
        try:
            delta = decode_tensor_map(report.result.data, self.config.schema)
            update = Update(device_id=device_id, task_id=task_id, version=version, delta=delta)
            self._aggregator.accept(update, self.version)
        except (InvalidResult, ValueError) as e:
            message = e.message if isinstance(e, InvalidResult) else str(e)
            self._close(session, task_id, "invalid", now)
            self._discard("invalid", device_id, task_id, version, detail=message)
            return ResultReply(
                status=Status.ERROR, task_id=task_id, task_name=report.task_name, message=message
            )
        assigned_at = session.assigned_at
        session = self._apply(session, Reported(task_id=task_id, now=now))
        self._release_slot(session)
        extra = self._extra[device_id]
        if assigned_at is not None:
            extra.task_seconds += max(0.0, now - assigned_at)
            extra.tasks_done += 1
        self._counters["accepted"] += 1
        self._changes.append(
            PutUpdate(
                task_id=task_id,
                device_id=device_id,
                version=version,
                num_samples=update.num_samples,
                delta=delta,
                at=now,
            )
        )
        self._persist(session)
        self._changes.append(PutJobState(counters=dict(self._counters)))
        log_event(
            _log,
            "report_accepted",
            job=self.config.job_id,
            device=device_id,
            task=task_id,
            version=version,
            current=self.version,
            pending=self._aggregator.pending(),
        )
        self._maybe_aggregate(now)
        self._fill(now)
        return ok

    @staticmethod
    def _classify(device_id: str, record: TaskRecord | None) -> str:
        if record is None or record.device_id != device_id:
            return "foreign"
        if record.status in ("expired", "released"):
            return "expired"  # its ticket ran out (or the job ended) before it reported
        return "duplicate"  # answered before: accepted, or closed as stale/invalid/failed

    def _discard(
        self, reason: str, device_id: str, task_id: str, version: int | None, *, detail: str = ""
    ) -> None:
        self._counters[reason] += 1
        self._changes.append(PutJobState(counters=dict(self._counters)))
        log_event(
            _log,
            "report_discarded",
            level=logging.WARNING,
            job=self.config.job_id,
            device=device_id,
            task=task_id,
            version=version,
            reason=reason,
            detail=detail or None,
        )

    def _close(self, session: DeviceSession, task_id: str, status: str, now: float) -> None:
        """Close the device's open task without aggregating it and free its slot."""
        session = self._apply(session, Reported(task_id=task_id, now=now))
        self._release_slot(session)
        self._changes.append(CloseTask(task_id, status, now))
        self._persist(session)
        self._fill(now)

    # ------------------------------------------------------------------ time

    def tick(self, now: float, *, sweep_devices: bool = False) -> None:
        """Expire tickets and tasks older than ``task_timeout``; with ``sweep_devices`` also idle
        devices silent for ``device_ttl``. Then refill the selection."""
        timeout = self.config.task_timeout
        for device_id in list(self._selected):
            session = self._sessions[device_id]
            event = expiry_event(
                session, now=now, ticket_ttl=timeout, task_ttl=timeout, device_ttl=math.inf
            )
            if event is None:
                continue
            task_id, version = session.task_id, session.task_version
            session = self._apply(session, event)
            self._release_slot(session, rejoin=False)
            if task_id is not None:
                self._changes.append(CloseTask(task_id, "expired", now))
            self._persist(session)
            log_event(
                _log,
                "ticket_expired",
                level=logging.WARNING,
                job=self.config.job_id,
                device=device_id,
                task=task_id,
                version=version,
            )
        if sweep_devices:
            ttl = self.config.device_ttl
            idle = [
                d
                for d, s in self._sessions.items()
                if s.state is SessionState.AVAILABLE and now - s.last_seen >= ttl
            ]
            for device_id in idle:
                session = self._apply(self._sessions[device_id], DeviceExpired(now=now))
                self._usable.discard(device_id)
                self._persist(session)
        self._maybe_aggregate(now)
        self._fill(now)

    # ------------------------------------------------------------------ internals

    def _apply(self, session: DeviceSession, event: SessionEvent) -> DeviceSession:
        new = step(session, event)
        self._sessions[session.device_id] = new
        return new

    def _persist(self, session: DeviceSession) -> None:
        self._changes.append(
            PutDevice(session.device_id, _session_data(session, self._extra[session.device_id]))
        )

    def _reusable(self, session: DeviceSession) -> bool:
        return self.config.device_reuse or session.last_ticket == 0

    def _release_slot(self, session: DeviceSession, *, rejoin: bool = True) -> None:
        """After a session gave up its ticket: leave the selection, and rejoin the pool if allowed
        (``rejoin=False``: only once it polls again, e.g. after it went silent)."""
        self._selected.discard(session.device_id)
        if rejoin and self._reusable(session) and not self.finished:
            self._usable.add(session.device_id)

    def _fill(self, now: float) -> None:
        """Refill the selection (FEDBUFF.md §4.3 with §9.7-§9.8)."""
        cfg = self.config
        if self.finished or self.version == 0:
            return
        holes = cfg.device_selection_size - len(self._selected)
        if holes < cfg.min_hole_to_fill or not self._usable:
            return
        started = self._next_ticket > 1
        if not started and len(self._usable) < min(cfg.start_threshold, cfg.device_selection_size):
            return
        wanted = max(MIN_CANDIDATES, CANDIDATES_PER_SLOT * holes)
        pool = self._usable.sample(self._rng, wanted)
        candidates = [
            Candidate(
                device_id=d,
                platform=self._sessions[d].platform.value,
                device_info=self._extra[d].info,
                last_seen=self._sessions[d].last_seen,
                mean_task_seconds=self._extra[d].mean_task_seconds,
            )
            for d in pool
        ]
        k = min(holes, len(candidates))
        try:
            chosen = self._selector.select(candidates, k, self._rng)
        except Exception:
            _log.exception("selector failed; the selection is not refilled this time")
            return
        picked: list[str] = []
        for device_id in chosen:
            if len(picked) == k:
                break
            if device_id not in self._usable or device_id in picked:
                log_event(
                    _log,
                    "selector_bad_choice",
                    level=logging.WARNING,
                    job=cfg.job_id,
                    device=device_id,
                )
                continue
            picked.append(device_id)
        if not picked:
            return
        for device_id in picked:
            ticket = self._next_ticket
            self._next_ticket += 1
            try:
                session = self._apply(self._sessions[device_id], Selected(ticket=ticket, now=now))
            except InvalidTransition:  # pragma: no cover - usable devices are AVAILABLE
                _log.exception("cannot select %s", device_id)
                continue
            self._usable.discard(device_id)
            self._selected.add(device_id)
            self._persist(session)
        self._changes.append(PutJobState(next_ticket=self._next_ticket))
        log_event(
            _log,
            "selection_filled",
            job=cfg.job_id,
            version=self.version,
            selected=len(picked),
            holding=len(self._selected),
            usable=len(self._usable),
        )

    def _maybe_aggregate(self, now: float) -> None:
        if self.finished or self.version == 0 or self._aggregator.pending() == 0:
            return
        if not self._aggregator.ready(self.version, len(self._selected)):
            return
        n = self._aggregator.pending()
        new_weights = self._aggregator.aggregate(self.weights, self.version)
        problems = _weight_problems(new_weights, self.config.schema)
        if problems:
            raise AggregatorFailure(f"aggregate() returned unusable weights: {problems}")
        if self._aggregator.pending():
            _log.warning(
                "aggregator kept %d contributions after aggregate(); they will not survive a"
                " restart",
                self._aggregator.pending(),
            )
        self._commit_version(self.version + 1, new_weights, n, now)

    def _commit_version(self, version: int, weights: Weights, n: int, now: float) -> None:
        self.version = version
        self.weights = weights
        self._changes.append(
            PutVersion(
                version=version,
                weights=weights,
                num_updates=n,
                aggregator_state=self._aggregator.state_dict(),
                at=now,
            )
        )
        self._new_versions.append(version)
        log_event(_log, "version_committed", job=self.config.job_id, version=version, updates=n)
        if version >= self.config.max_model_version:
            self._finish(now)

    def _finish(self, now: float) -> None:
        self.finished = True
        for device_id in list(self._selected):
            task_id = self._sessions[device_id].task_id
            session = self._apply(self._sessions[device_id], Released(now=now))
            if task_id is not None:
                self._changes.append(CloseTask(task_id, "released", now))
            self._persist(session)
        self._selected.clear()
        self._usable.clear()
        self._changes.append(PutJobState(finished=True))
        log_event(_log, "job_finished", job=self.config.job_id, version=self.version)


def _text(data: Mapping[str, object], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise ValueError(f"stored device session: {key} must be a string, got {value!r}")
    return value


def _integer(data: Mapping[str, object], key: str) -> int:
    value = data.get(key) or 0
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"stored device session: {key} must be an integer, got {value!r}")
    return value


def _weight_problems(
    weights: Mapping[str, np.ndarray], schema: Mapping[str, tuple[int, ...]]
) -> str:
    if weights.keys() != schema.keys():
        return f"names {sorted(weights)} differ from {sorted(schema)}"
    for name, shape in schema.items():
        array = weights[name]
        if not isinstance(array, np.ndarray) or array.shape != tuple(shape):
            return f"{name} has shape {getattr(array, 'shape', None)}, expected {shape}"
        if array.dtype != np.float32:
            return f"{name} has dtype {array.dtype}, expected float32"
        if not np.isfinite(array).all():
            return f"{name} holds non-finite values"
    return ""
