"""JobRuntime: the trio shell around one :class:`~edgefl._job.JobCore`.

The runtime owns a job's core, its plugins and its share of the store. Request handlers call its
synchronous methods (:meth:`JobRuntime.poll`, :meth:`JobRuntime.report`, ...): each runs one core
step and commits the step's changes in one SQLite transaction before returning, with no
``await`` in between, so concurrent requests never see half a step and nothing answered ``OK`` is
lost when the process dies.

:meth:`JobRuntime.run` hosts the job's background work, all in one nursery:

* the **publisher** turns each committed model version into the task payload devices download:
  the job's template program patched with the version's weights, base64-encoded once and shared by
  every platform. Patching runs in a worker thread under the runtime's ``CapacityLimiter``;
  versions are published in order and an intermediate version is skipped when a newer one is
  already committed (no device could be handed the older one any more);
* the **evaluator** scores every version with the job's evaluator plugin, serially and in version
  order, in a worker thread, and appends one JSON line per version to ``metrics.jsonl`` in the
  job's state folder;
* the **ticker** expires tickets and tasks past ``task_timeout`` and idle devices past
  ``device_ttl``.

Listeners registered with :meth:`JobRuntime.subscribe` hear about every published and evaluated
version and the job's end (the demo shows progress with them).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from edgefl._job import AggregatorFailure, JobConfig, JobCore, JobStatistics
from edgefl._log import log_event
from edgefl._store import PutJobState, StoreError
from edgefl.api import AggregatorSettings
from plugins._registry import AGGREGATORS, EVALUATORS, SELECTORS
from protocol import job_config

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from edgefl._config import Settings
    from edgefl._jobfolder import JobFolder
    from edgefl._store import Store
    from edgefl.api import Evaluator, Weights
    from plugins._registry import PluginInfo, Registry
    from protocol import Cookie, DeviceIdentity, Platform, ResultReply, ResultReport, TaskReply

__all__ = [
    "JobEvent",
    "JobFailed",
    "JobFinished",
    "JobRuntime",
    "VersionEvaluated",
    "VersionPublished",
    "fingerprint",
]

_log = logging.getLogger("edgefl.runtime")

FINGERPRINT_FILES: Final = ("job.toml", "weights.npz", "template.pte", "template.json")
"""The files that define a job: a folder whose files changed is a new job (new id)."""


class JobFailed(RuntimeError):
    """The job cannot serve requests (its state could not be committed, or its aggregator
    failed). The server answers its requests with HTTP 500 until it is restarted."""


@attrs.frozen
class VersionPublished:
    """A model version's task payload is ready (devices receive it from now on)."""

    job_id: str
    version: int
    statistics: JobStatistics


@attrs.frozen
class VersionEvaluated:
    """The evaluator scored a model version (``metrics`` empty for the ``none`` evaluator, or
    ``{"error": ...}`` when it failed)."""

    job_id: str
    version: int
    metrics: Mapping[str, object]


@attrs.frozen
class JobFinished:
    """The job reached ``max_model_version`` and every version was evaluated."""

    job_id: str
    version: int
    statistics: JobStatistics


JobEvent = VersionPublished | VersionEvaluated | JobFinished


def fingerprint(folder: Path) -> str:
    """SHA-256 over the files that define a job folder (see :data:`FINGERPRINT_FILES`)."""
    digest = hashlib.sha256()
    for name in FINGERPRINT_FILES:
        path = folder / name
        digest.update(name.encode() + b"\0")
        if path.is_file():
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def _metrics_versions(path: Path) -> int:
    """The highest version recorded in a ``metrics.jsonl`` (0 when there is none)."""
    best = 0
    try:
        with path.open("rb") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash
                version = record.get("version") if isinstance(record, dict) else None
                if isinstance(version, int):
                    best = max(best, version)
    except FileNotFoundError:
        pass
    return best


class JobRuntime:
    """One served job (see the module docstring). Build with :meth:`load`.

    Attributes:
        job_id, name: the job's identity.
        folder: the loaded job folder.
        job_data: the ``job_data`` of an ``OK`` ``/job`` reply (EDIP §4.4).
        plugins: provenance of the job's plugins (for ``/healthz``).
    """

    def __init__(
        self,
        *,
        core: JobCore,
        store: Store,
        folder: JobFolder,
        evaluator: Evaluator | None,
        plugins: Iterable[PluginInfo] = (),
        clock: Callable[[], float] = trio.current_time,
        tick_interval: float = 1.0,
        device_sweep_interval: float | None = None,
    ) -> None:
        self.core = core
        self.store = store
        self.folder = folder
        self.job_id = core.config.job_id
        self.name = core.config.name
        self.job_data: dict[str, object] = {
            "config": job_config(folder.spec.device_training_params)
        }
        self.plugins = tuple(plugins)
        self.evaluator = evaluator
        self.limiter = trio.CapacityLimiter(1)
        """Worker threads for patching programs (one: patches are milliseconds)."""
        self.eval_limiter = trio.CapacityLimiter(1)
        """The evaluator's thread (one: versions are evaluated serially, in order)."""
        self._clock = clock
        self._tick_interval = tick_interval
        self._sweep_interval = (
            min(30.0, core.config.device_ttl / 4)
            if device_sweep_interval is None
            else device_sweep_interval
        )
        self._failure: str | None = None
        self._listeners: list[Callable[[JobEvent], None]] = []
        self._changed = trio.Event()  # set and replaced whenever a version is committed
        self._finished = trio.Event()
        self._announced = 0  # the latest version announced to listeners
        self._evaluated = max(
            store.job_row(self.job_id).evaluated_version,
            _metrics_versions(store.metrics_path(self.job_id)),
        )
        self._commit()

    # ------------------------------------------------------------------ construction

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        store: Store,
        registry: Registry,
        settings: Settings,
        clock: Callable[[], float] = trio.current_time,
        rng: random.Random | None = None,
    ) -> JobRuntime:
        """Load the job folder at ``path``, its plugins and its durable state (resuming where the
        same folder stood when the server last stopped). Synchronous: a broken job fails here,
        before the server binds a socket.

        Raises:
            JobFolderError: the folder is not a usable job.
            PluginError: a plugin the job names is missing or broken.
            StoreError: the state cannot be read or written.
        """
        from edgefl._jobfolder import load_job_folder

        folder = load_job_folder(path)
        spec = folder.spec
        now = clock()
        row, resumed = store.open_job(
            folder=str(Path(path).resolve()),
            fingerprint=fingerprint(Path(path)),
            name=spec.name,
            schema=folder.param_shapes,
            now=now,
        )
        config = _job_config(folder, row.job_id, settings)
        aggregator = registry.aggregator(
            spec.aggregator.name,
            AggregatorSettings(
                num_updates_for_model=spec.model_manager.num_updates_for_model,
                global_lr=spec.model_manager.global_lr,
                staleness_weight=spec.model_manager.staleness_weight,
                max_model_history=spec.model_manager.max_model_history,
                device_selection_size=spec.device_manager.device_selection_size,
            ),
            spec.aggregator.args,
        )
        selector = registry.selector(spec.selector.name, spec.selector.args)
        evaluator = registry.evaluator(spec.evaluator.name, folder, spec.evaluator.args)
        plugins = [
            registry.info(group, name)
            for group, name in (
                (AGGREGATORS, spec.aggregator.name),
                (SELECTORS, spec.selector.name),
                (EVALUATORS, spec.evaluator.name),
            )
        ]
        core = JobCore(
            config,
            aggregator=aggregator,
            selector=selector,
            initial_weights=folder.initial_weights,
            rng=rng or random.Random(settings.seed),
        )
        if resumed:
            weights = (
                store.read_version(row.job_id, row.current_version) if row.current_version else None
            )
            core.restore(
                version=row.current_version,
                weights=weights,
                next_ticket=row.next_ticket,
                finished=row.finished,
                counters=row.counters,
                aggregator_state=row.aggregator_state,
                devices=store.devices(row.job_id),
                pending=store.pending_updates(row.job_id),
                now=now,
            )
        core.start(now)
        runtime = cls(
            core=core,
            store=store,
            folder=folder,
            evaluator=evaluator,
            plugins=plugins,
            clock=clock,
            tick_interval=min(1.0, config.task_timeout / 4),
        )
        log_event(
            _log,
            "job_loaded",
            job=runtime.job_id,
            name=runtime.name,
            folder=str(path),
            resumed=resumed,
            version=core.version,
            finished=core.finished,
            pending=core.statistics().updates_pending,
        )
        return runtime

    # ------------------------------------------------------------------ request side (sync)

    @property
    def finished(self) -> bool:
        return self.core.finished

    @property
    def failure(self) -> str | None:
        """Why the job stopped serving (``None`` while it is healthy)."""
        return self._failure

    def poll(
        self, identity: DeviceIdentity, cookie: Cookie | None, *, remembered: Platform | None
    ) -> TaskReply:
        """A ``/task`` poll (see :meth:`JobCore.poll`), committed before it returns.

        Raises:
            JobFailed: the job's state could not be committed.
        """
        self._check()
        reply = self.core.poll(identity, cookie, self._clock(), remembered=remembered)
        self._commit()
        return reply

    def report(self, device_id: str, report: ResultReport) -> ResultReply:
        """A ``/result`` (see :meth:`JobCore.report`); an accepted update is committed before this
        returns.

        Raises:
            JobFailed: the job's state could not be committed, or its aggregator failed.
        """
        self._check()
        record = None
        if not self.core.owns_open_task(device_id, report.task_id):
            record = self.store.task(self.job_id, report.task_id)
        try:
            reply = self.core.report(device_id, report, record, self._clock())
        except AggregatorFailure as e:
            self._fail(str(e))
            raise JobFailed(self._failure) from e
        self._commit()
        return reply

    def register(self, identities: Iterable[DeviceIdentity]) -> int:
        """Register devices announced through ``/selection`` (EDIP §7), committed before it
        returns; returns how many were new (see :meth:`JobCore.register`)."""
        self._check()
        new = self.core.register(identities, self._clock())
        self._commit()
        return new

    def selection(self) -> dict[str, int]:
        return self.core.selection()

    def retry_wait(self, platform: Platform) -> int:
        return self.core.retry_wait(platform)

    def statistics(self) -> JobStatistics:
        """A frozen snapshot of the job's counters and state."""
        return self.core.statistics()

    def subscribe(self, listener: Callable[[JobEvent], None]) -> Callable[[], None]:
        """Call ``listener`` (in the event loop, synchronously) for every :data:`JobEvent`.

        Returns:
            A function that removes the listener.
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def wait_finished(self) -> None:
        """Return once the job has reached its last version and that version was evaluated.

        Cancellation: safe to cancel; it only waits (wrap it in ``trio.move_on_after`` to bound
        the wait).
        """
        await self._finished.wait()

    def _check(self) -> None:
        if self._failure is not None:
            raise JobFailed(self._failure)

    def _fail(self, reason: str) -> None:
        self._failure = reason
        log_event(_log, "job_failed", level=logging.ERROR, job=self.job_id, reason=reason)

    def _commit(self) -> None:
        """Make the core's last step durable, then wake the publisher if it made a version."""
        changes = self.core.take_changes()
        try:
            self.store.commit(self.job_id, changes)
        except StoreError as e:
            self._fail(str(e))
            raise JobFailed(str(e)) from e
        if self.core.take_new_versions():
            self._changed.set()
            self._changed = trio.Event()

    # ------------------------------------------------------------------ background work

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Publish, evaluate and expire for this job until cancelled.

        Reports ``started`` once the current version's task payload is ready, so devices polling
        right after that get work.

        Cancellation: the normal way to stop it. A patch or an evaluation running in a worker
        thread is waited for (they write files), so cancel with a deadline when that matters.
        """
        await self._publish_pending()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._publisher)
            nursery.start_soon(self._evaluator)
            nursery.start_soon(self._ticker)
            task_status.started()

    async def _publisher(self) -> None:
        while True:
            changed = self._changed
            if self.core.version > self._announced:
                await self._publish_pending()
                continue
            await changed.wait()

    async def _publish_pending(self) -> None:
        """Publish the latest committed version (if newer than what is out) and announce every
        version up to it."""
        target = self.core.version
        if target > self.core.published_version and not self.core.finished:
            weights = self.core.weights
            payload = await trio.to_thread.run_sync(
                self._payload_sync, weights, limiter=self.limiter, thread_name="edgefl-publish"
            )
            if self.core.set_payload(target, payload):
                log_event(
                    _log,
                    "version_published",
                    job=self.job_id,
                    version=target,
                    bytes=len(payload) * 3 // 4,
                )
        stats = self.core.statistics()
        while self._announced < target:
            self._announced += 1
            self._emit(VersionPublished(self.job_id, self._announced, stats))

    def _payload_sync(self, weights: Weights) -> str:
        program = self.folder.template.patch(weights)
        return base64.b64encode(program).decode("ascii")

    async def _evaluator(self) -> None:
        while True:
            changed = self._changed
            if self._evaluated < self.core.version:
                await self._evaluate(self._evaluated + 1)
                continue
            if self.core.finished and not self._finished.is_set():
                self._finished.set()
                log_event(_log, "job_done", job=self.job_id, version=self.core.version)
                self._emit(JobFinished(self.job_id, self.core.version, self.core.statistics()))
            await changed.wait()

    async def _evaluate(self, version: int) -> None:
        frequency = max(1, self.folder.spec.eval_frequency)
        final = self.core.finished and version == self.core.version
        if version % frequency and not final:
            self._evaluated = version  # not scored (EDIP §15 eval_frequency)
            return
        current = self.core.version
        weights = self.core.weights if version == current else None
        metrics = await trio.to_thread.run_sync(
            self._evaluate_sync,
            version,
            weights,
            limiter=self.eval_limiter,
            thread_name="edgefl-evaluate",
        )
        self._evaluated = version
        try:
            self.store.commit(self.job_id, [PutJobState(evaluated_version=version)])
        except StoreError as e:
            self._fail(str(e))
        log_event(_log, "version_evaluated", job=self.job_id, version=version, **_flat(metrics))
        self._emit(VersionEvaluated(self.job_id, version, metrics))

    def _evaluate_sync(self, version: int, weights: Weights | None) -> dict[str, object]:
        """Runs in a worker thread: score ``version`` and append its line to ``metrics.jsonl``.

        A failing evaluator is reported in the metrics (``error``) rather than raised: it must not
        take the job down, and the next version is evaluated as usual.
        """
        metrics: dict[str, object]
        started = time.perf_counter()
        try:
            if weights is None:
                weights = self.store.read_version(self.job_id, version)
            raw = self.evaluator.evaluate(weights) if self.evaluator is not None else {}
            values = {str(k): float(v) for k, v in raw.items()}
            metrics = {k: v for k, v in values.items() if math.isfinite(v)}  # JSON has no NaN
        except Exception as e:  # a plugin bug: record it, keep the job going
            _log.exception("evaluator failed on job %s version %d", self.job_id, version)
            metrics = {"error": f"{type(e).__name__}: {e}"}
        line = {
            "job_id": self.job_id,
            "job": self.name,
            "version": version,
            "time": round(time.time(), 3),
            "eval_seconds": round(time.perf_counter() - started, 4),
            **metrics,
        }
        path = self.store.metrics_path(self.job_id)
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(line, separators=(",", ":")) + "\n")
        return metrics

    async def _ticker(self) -> None:
        last_sweep = self._clock()
        while True:
            await trio.sleep(self._tick_interval)
            now = self._clock()
            sweep = now - last_sweep >= self._sweep_interval
            if sweep:
                last_sweep = now
            if self._failure is not None:
                continue
            self.core.tick(now, sweep_devices=sweep)
            try:
                self._commit()
            except JobFailed:
                continue

    def _emit(self, event: JobEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a listener's bug must not stop the job
                _log.exception("job event listener failed")


def _flat(metrics: Mapping[str, object]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float | str)}


def _job_config(folder: JobFolder, job_id: str, settings: Settings) -> JobConfig:
    """The core's view of a job: the folder's settings plus the server's timing settings."""
    spec = folder.spec
    mm = spec.model_manager
    dm = spec.device_manager
    params: Mapping[str, object] = spec.device_training_params or {}
    epochs = params.get("epoch")
    lr = params.get("lr")
    return JobConfig(
        job_id=job_id,
        name=spec.name,
        schema=folder.param_shapes,
        method=spec.method or None,
        max_model_version=mm.max_model_version,
        max_model_history=mm.max_model_history,
        device_selection_size=dm.device_selection_size,
        min_hole_to_fill=dm.min_hole_to_fill,
        device_reuse=dm.device_reuse,
        min_devices_to_start=dm.min_devices_to_start,
        task_timeout=dm.task_timeout,
        device_ttl=dm.device_ttl,
        retry_wait=settings.retry_wait,
        retry_jitter=settings.retry_jitter,
        total_epochs=epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None,
        batch_size=spec.batch_size,
        learning_rate=float(lr)
        if isinstance(lr, int | float) and not isinstance(lr, bool)
        else None,
    )
