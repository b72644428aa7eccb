"""Simulated devices: a fleet of phones that speak EDIP to a real server over loopback HTTP.

Every simulated device behaves as the NVFlare SDKs do on the wire (EDIP §2-§6, §9): it joins with
``POST /job``, polls ``POST /task`` obeying ``RETRY`` and ``retry_wait`` in its platform's unit
(milliseconds on Android, seconds elsewhere), trains the task it is given, and reports with
``POST /result`` carrying the cookie. Four kinds of device mix in one fleet:

==========  ==============================================  ======================================
kind        headers                                         result body
==========  ==============================================  ======================================
android     ``NVFlare_Android-<hex>``, query-string info    JSON, ``shape``/``sizes``, flat data
            with raw spaces, ``user_id=...``
ios         upper-case UUID; query string on ``/job``,      JSON, ``sizes``/``strides``, flat data
            JSON object on ``/task`` and ``/result``;
            user info ``""`` then ``{}``
python      NVFlare's Python simulator (``<uuid>#<i>``)     JSON, ``sizes``, nested lists
cbor        our own fast client                             CBOR, float32 typed arrays (RFC 8746)
==========  ==============================================  ======================================

So every simulation is also an end-to-end test of the server: the fleet's statistics count every
reply that a phone would have treated as an error.

Training runs in a spawn-based process pool (:class:`TrainerPool`): the ExecuTorch runtime holds
the GIL for a whole step and ``fork`` deadlocks once torch has run threads. Many devices share a
worker; each worker loads the data set once and tasks carry only the indices of a device's samples.
Devices can be slow (extra simulated seconds per task) and can drop out (take a task and vanish),
so the asynchrony FedBuff is built for is real.

:func:`run_job` runs a job folder end to end: it starts the server in-process on ``127.0.0.1:0``,
runs the fleet until the job finishes and stops the server. :func:`run_recipe` is the body of
``ETFedBuffRecipe.run()``; :func:`run` is ``edgefl-server simulate``.
"""

from __future__ import annotations

import atexit
import base64
import concurrent.futures
import contextlib
import functools
import hashlib
import importlib.machinery
import json
import math
import multiprocessing
import os
import random
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import attrs
import numpy as np
import trio

from protocol import (
    CBOR_CONTENT_TYPE,
    Cookie,
    JobReply,
    JobRequest,
    RawResult,
    ResultReply,
    ResultReport,
    Status,
    TaskReply,
    TaskRequest,
    decode_reply,
    encode_request,
    encode_tensor_map,
    request_path,
    request_query,
)

if TYPE_CHECKING:
    import argparse

    import httpx
    import numpy.typing as npt

    from edgefl._job import JobStatistics
    from edgefl._runtime import JobRuntime
    from edgefl._server import ServerHandle
    from edgefl.api import TrainResult, TrainTask, Weights

__all__ = [
    "DEVICE_KINDS",
    "DeviceKind",
    "Fleet",
    "FleetConfig",
    "FleetStatistics",
    "SimulationError",
    "SimulationReport",
    "TrainerPool",
    "add_arguments",
    "add_fleet_arguments",
    "device_headers",
    "fleet_config_from_spec",
    "fleet_overrides",
    "format_summary",
    "parse_delay",
    "parse_platform_mix",
    "result_meta",
    "retry_seconds",
    "run",
    "run_job",
    "run_recipe",
    "simulate_job",
    "training_params",
    "weights_in_program",
]

DeviceKind = Literal["android", "ios", "python", "cbor"]
DEVICE_KINDS: tuple[DeviceKind, ...] = ("android", "ios", "python", "cbor")

T = TypeVar("T")


class SimulationError(RuntimeError):
    """A simulation cannot start or run (bad configuration, a job that cannot be served)."""


# --------------------------------------------------------------------------------------------------
# Configuration


def parse_platform_mix(text: str) -> dict[str, float]:
    """Parse ``"android=2,ios=1"`` (weights, normalised) into a kind -> fraction mapping.

    Raises:
        ValueError: an unknown kind, a negative or non-numeric weight, or all weights zero.
    """
    mix: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        raw_name, sep, weight_text = part.partition("=")
        name = raw_name.strip()
        if name not in DEVICE_KINDS:
            raise ValueError(
                f"platform mix: unknown device kind {name!r}; use {', '.join(DEVICE_KINDS)}"
            )
        try:
            weight = float(weight_text) if sep else 1.0
        except ValueError:
            raise ValueError(f"platform mix: weight of {name} must be a number") from None
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"platform mix: weight of {name} must be >= 0, got {weight_text}")
        mix[name] = mix.get(name, 0.0) + weight
    total = sum(mix.values())
    if total <= 0:
        raise ValueError(f"platform mix {text!r} gives no device kind a positive weight")
    return {k: v / total for k, v in mix.items() if v > 0}


def _check_mix(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, Mapping) or not value:
        raise TypeError(f"{attribute.name} must be a non-empty mapping of device kind -> weight")
    for kind, weight in value.items():
        if kind not in DEVICE_KINDS:
            raise ValueError(f"{attribute.name}: unknown device kind {kind!r}")
        if not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"{attribute.name}[{kind!r}] must be a number >= 0, got {weight!r}")
    if sum(value.values()) <= 0:
        raise ValueError(f"{attribute.name} gives no device kind a positive weight")


def _non_negative(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _probability(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (0.0 <= value <= 1.0):
        raise ValueError(f"{attribute.name} must be in [0, 1], got {value!r}")


def _pair(value: Sequence[float]) -> tuple[float, float]:
    if not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"delay must be (low, high) seconds, got {value!r}")
    return (value[0], value[1])


def _positive_int(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name} must be a positive integer, got {value!r}")


@attrs.frozen(kw_only=True)
class FleetConfig:
    """How a simulated fleet is made up.

    Args:
        num_devices: simulated devices.
        num_workers: training processes shared by all devices (at most one per CPU core and
            device is started).
        trainer: entry point name in ``edgefl.trainers`` (``executorch``: the received ``.pte`` in
            the ExecuTorch runtime; ``eager``: ``model.pt2`` in eager PyTorch).
        trainer_args: extra constructor arguments of the trainer.
        dataset: ``"digits"`` or ``"cifar10:<dir>"`` (:mod:`edgefl._data`).
        partition: ``"iid"`` or ``"dirichlet"`` (non-IID, concentration ``alpha``).
        alpha: Dirichlet concentration (small: each device sees few classes).
        test_fraction: digits only: the held-out fraction (never trained on).
        max_train: use at most this many training samples (``None``: all).
        seed: seeds partitions, device identities, speeds, drop-outs and shuffling.
        platform_mix: device kind -> weight (``android``, ``ios``, ``python``, ``cbor``).
        delay: ``(low, high)`` extra seconds each task takes on a device, drawn once per device
            (its speed) and varied by +-20 % per task.
        dropout: probability that a device, on receiving a task, vanishes for good without
            reporting (the server's task timeout must then free its slot).
        momentum: local SGD momentum (the SDKs' on-device trainers: 0 on iOS; use 0 to match).
    """

    num_devices: int = attrs.field(default=20, validator=_positive_int)
    num_workers: int = attrs.field(default=2, validator=_positive_int)
    trainer: str = attrs.field(default="executorch", validator=attrs.validators.instance_of(str))
    trainer_args: Mapping[str, object] = attrs.field(factory=dict)
    dataset: str = attrs.field(default="digits", validator=attrs.validators.instance_of(str))
    partition: Literal["iid", "dirichlet"] = attrs.field(
        default="iid", validator=attrs.validators.in_(("iid", "dirichlet"))
    )
    alpha: float = attrs.field(default=0.5, converter=float, validator=_non_negative)
    test_fraction: float = attrs.field(default=0.2, converter=float)
    max_train: int | None = None
    seed: int = attrs.field(default=0, validator=attrs.validators.instance_of(int))
    platform_mix: Mapping[str, float] = attrs.field(
        factory=lambda: {"android": 0.5, "ios": 0.5}, validator=_check_mix
    )
    delay: tuple[float, float] = attrs.field(default=(0.0, 0.0), converter=_pair)
    dropout: float = attrs.field(default=0.0, converter=float, validator=_probability)
    momentum: float = attrs.field(default=0.0, converter=float, validator=_non_negative)

    @delay.validator
    def _check_delay(self, attribute: attrs.Attribute[Any], value: tuple[float, ...]) -> None:
        if len(value) != 2 or not all(
            isinstance(v, int | float) and math.isfinite(v) and v >= 0 for v in value
        ):
            raise ValueError(f"delay must be (low, high) seconds >= 0, got {value!r}")
        if value[0] > value[1]:
            raise ValueError(f"delay low must not exceed high, got {value!r}")


# --------------------------------------------------------------------------------------------------
# The training process pool


_MAIN_SPEC = importlib.machinery.ModuleSpec("__main__", None)


@contextlib.contextmanager
def _spawn_without_main() -> Iterator[None]:
    """Spawn workers that do not re-run the parent's ``__main__`` script.

    ``spawn`` normally re-executes the main script in every child (as ``__mp_main__``), so a user
    script calling ``recipe.run()`` at top level, without the ``if __name__ == "__main__"`` guard,
    would start the simulation again in each worker. Workers need nothing from ``__main__``
    (trainers are entry points; tasks carry programs, arrays and paths), so while processes are
    spawned ``__main__`` is presented as a ``-m``-style main, which children skip.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    missing = object()
    saved = main.__dict__.get("__spec__", missing)
    main.__spec__ = _MAIN_SPEC
    try:
        yield
    finally:
        if saved is missing:
            main.__dict__.pop("__spec__", None)
        else:
            main.__spec__ = saved


def _worker_init(log_path: str | None) -> None:
    """Runs once in each spawned worker: Ctrl-C is the parent's to handle; one thread each;
    output (the runtime's start-up chatter, tracebacks) to ``log_path`` when given."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Interpreter teardown with torch and ExecuTorch loaded takes seconds; a worker has nothing
    # to clean up once the pool has collected its results, so it leaves without it.
    atexit.register(_exit_now)
    if log_path is not None:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    import torch

    torch.set_num_threads(1)


def _exit_now() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


_WORKER_TRAINERS: dict[str, Any] = {}


def _worker_trainer(factory: Callable[..., Any], args: Mapping[str, object]) -> Any:
    key = f"{getattr(factory, '__module__', '')}.{getattr(factory, '__qualname__', factory)}"
    key += json.dumps(args, sort_keys=True, default=repr)
    trainer = _WORKER_TRAINERS.get(key)
    if trainer is None:
        trainer = factory(**args)
        _WORKER_TRAINERS[key] = trainer
    return trainer


def _worker_warm_up(
    factory: Callable[..., Any], args: Mapping[str, object], dataset: str | None
) -> int:
    """Build the trainer, import what it needs and load the data set; returns the worker pid."""
    trainer = _worker_trainer(factory, args)
    warm_up = getattr(trainer, "warm_up", None)
    if callable(warm_up):
        warm_up()
    if dataset is not None:
        from edgefl._data import load_dataset

        load_dataset(dataset)
    time.sleep(0.05)  # hold this worker briefly so the next warm-up call spawns another one
    return os.getpid()


def _worker_train(
    factory: Callable[..., Any], args: Mapping[str, object], task: TrainTask
) -> TrainResult:
    result: TrainResult = _worker_trainer(factory, args).train(task)
    return result


async def _wait_future(future: concurrent.futures.Future[T]) -> T:
    """Await a ``concurrent.futures`` future from trio without parking a thread on it.

    Cancellation: cancels the future if it has not started; a running task finishes in its worker
    and its result is dropped.
    """
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def wake(_: concurrent.futures.Future[T]) -> None:
        try:
            token.run_sync_soon(done.set)
        except trio.RunFinishedError:
            pass

    future.add_done_callback(wake)
    try:
        await done.wait()
    except BaseException:
        future.cancel()
        raise
    return future.result()


class TrainerPool:
    """A spawn-based pool of processes running one trainer plugin.

    Args:
        trainer: entry point name in ``edgefl.trainers``.
        args: the trainer's constructor arguments.
        num_workers: worker processes.
        dataset: data set spec every worker loads once at start (:func:`edgefl._data.load_dataset`).
        log_path: a file that receives the workers' standard output and error (default: the
            parent's).

    Raises:
        SimulationError: the trainer is not installed or refuses ``args`` (checked here, in the
            parent, before any process starts).
    """

    def __init__(
        self,
        trainer: str,
        args: Mapping[str, object] | None = None,
        *,
        num_workers: int = 2,
        dataset: str | None = None,
        log_path: str | Path | None = None,
    ) -> None:
        from plugins._registry import TRAINERS, PluginError, Registry

        registry = Registry.from_entry_points()
        self._args = dict(args or {})
        try:
            self._factory = registry.load(TRAINERS, trainer)
            registry.trainer(trainer, self._args)  # validates the arguments
        except PluginError as exc:
            raise SimulationError(str(exc)) from exc
        if num_workers < 1:
            raise SimulationError(f"num_workers must be >= 1, got {num_workers}")
        self.name = trainer
        self.num_workers = num_workers
        self._dataset = dataset
        self._executor = concurrent.futures.ProcessPoolExecutor(
            max_workers=num_workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(None if log_path is None else str(log_path),),
        )
        self._closed = False

    async def start(self) -> None:
        """Spawn every worker and let each build its trainer and load the data set.

        Takes a few seconds (a worker imports torch, and executorch for the ExecuTorch trainer).
        """
        with _spawn_without_main():
            futures = [
                self._executor.submit(_worker_warm_up, self._factory, self._args, self._dataset)
                for _ in range(self.num_workers)
            ]
        async with trio.open_nursery() as nursery:
            for future in futures:
                nursery.start_soon(_wait_future, future)

    async def train(self, task: TrainTask) -> TrainResult:
        """Train ``task`` in a worker process.

        Cancellation: a task not yet started is withdrawn; a running one completes in its worker
        and its result is discarded.
        """
        if self._closed:
            raise SimulationError("the trainer pool is closed")
        with _spawn_without_main():
            future = self._executor.submit(_worker_train, self._factory, self._args, task)
        return await _wait_future(future)

    def close(self, *, grace: float = 5.0) -> None:
        """Stop the workers: pending tasks are cancelled, running ones get ``grace`` seconds to
        finish, then their processes are terminated (so an interrupted start-up, with workers
        still importing torch, does not hold the caller)."""
        if self._closed:
            return
        self._closed = True
        # The executor's process table is private; without it, fall back to a plain shutdown.
        processes = list(dict(getattr(self._executor, "_processes", None) or {}).values())
        self._executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + grace
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join(1.0)
        self._executor.shutdown(wait=True)

    async def aclose(self, *, grace: float = 5.0) -> None:
        """:meth:`close` in a worker thread, so the event loop keeps running meanwhile."""
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(functools.partial(self.close, grace=grace))


# --------------------------------------------------------------------------------------------------
# Devices


@attrs.define
class FleetStatistics:
    """What the fleet saw, counted over all devices (a snapshot is returned by ``statistics``)."""

    devices: int = 0
    by_kind: dict[str, int] = attrs.field(factory=dict)
    joined: int = 0
    polls: int = 0
    retries: int = 0
    tasks: int = 0
    reports_ok: int = 0
    reports_error: int = 0
    dropped_out: int = 0
    done: int = 0
    http_errors: int = 0
    train_errors: int = 0
    train_seconds: float = 0.0
    errors: list[str] = attrs.field(factory=list)

    def note_error(self, text: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(text)

    def snapshot(self) -> FleetStatistics:
        return attrs.evolve(self, by_kind=dict(self.by_kind), errors=list(self.errors))


@attrs.frozen
class _Profile:
    index: int
    kind: DeviceKind
    device_id: str
    delay: float
    indices: npt.NDArray[np.int64]


_ANDROID_APP = "ExecuTorch Demo"


def device_headers(kind: DeviceKind, device_id: str, endpoint: str) -> dict[str, str]:
    """The headers a device of ``kind`` sends to ``/job``, ``/task`` or ``/result`` (EDIP §2).

    Android: query-string info with a raw space in the app name, ``user_id=<hex>``. iOS: a query
    string on ``/job`` but a JSON object on ``/task`` and ``/result``; user info ``""`` on
    ``/job`` and ``"{}"`` after. ``python``: NVFlare's simulator (percent-encoded, literal
    ``None`` values). ``cbor``: our client, asking for CBOR replies.
    """
    if kind == "android":
        hex_id = device_id.removeprefix("NVFlare_Android-")
        return {
            "Content-Type": "application/json; charset=utf-8",
            "X-Flare-Device-ID": device_id,
            "X-Flare-Device-Info": f"device_id={device_id}&app_name={_ANDROID_APP}"
            "&app_version=1.0&platform=android",
            "X-Flare-User-Info": f"user_id={hex_id}",
        }
    if kind == "ios":
        if endpoint == "job":
            info = f"device_id={device_id}&platform=ios&app_version=1.0"
            user = ""
        else:
            info = json.dumps(
                {"device_id": device_id, "platform": "ios", "app_version": "1.0"},
                separators=(",", ":"),
            )
            user = "{}"
        return {
            "Content-Type": "application/json",
            "X-Flare-Device-ID": device_id,
            "X-Flare-Device-Info": info,
            "X-Flare-User-Info": user,
        }
    if kind == "python":
        return {
            "Content-Type": "application/json",
            "X-Flare-Device-ID": device_id,
            "X-Flare-Device-Info": "app_name=flare_mobile&app_version=1.0&platform=None"
            "&platform_version=None",
            "X-Flare-User-Info": "user_id=demo_id&user_name=demo_user&access_token=None"
            "&auth_token=None&auth_session=None",
        }
    return {
        "Content-Type": CBOR_CONTENT_TYPE,
        "Accept": CBOR_CONTENT_TYPE,
        "X-Flare-Device-ID": device_id,
        "X-Flare-Device-Info": f"device_id={device_id}&app_name=edgefl-sim&platform=generic",
        "X-Flare-User-Info": "user_id=sim",
    }


def retry_seconds(kind: DeviceKind, retry_wait: int | None) -> float:
    """How long a device of ``kind`` waits on ``RETRY`` (EDIP §3.4): Android reads milliseconds
    (5000 when absent), every other client seconds (5 when absent)."""
    if kind == "android":
        return (5000 if retry_wait is None else retry_wait) / 1000.0
    return float(5 if retry_wait is None else retry_wait)


def training_params(
    meta: Mapping[str, object], config: Mapping[str, object]
) -> tuple[int, float, int]:
    """Epochs, learning rate and batch size for a task: the task meta's ``total_epochs``,
    ``learning_rate`` and ``batch_size`` first (EDIP §10.3), then the job config's ``epoch``,
    ``lr`` and ``batch_size`` (§4.4), then 1, 0.01 and 1.

    (The SDKs lose some of these on the way, R14/R17/R18; simulated devices train with what the
    server meant.)
    """

    def pick(meta_key: str, config_key: str, default: float) -> float:
        for source, key in ((meta, meta_key), (config, config_key)):
            value = source.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
        return default

    epochs = max(1, int(pick("total_epochs", "epoch", 1)))
    lr = pick("learning_rate", "lr", 0.01)
    batch_size = max(1, int(pick("batch_size", "batch_size", 1)))
    return epochs, lr, batch_size


def result_meta(
    kind: DeviceKind,
    task_meta: Mapping[str, object],
    config: Mapping[str, object],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
) -> dict[str, object]:
    """The result ``meta`` each kind of device reports (EDIP §6.2)."""
    if kind == "android":
        method = task_meta.get("method")
        return {
            "learning_rate": lr,
            "batch_size": batch_size,
            "method": method if isinstance(method, str) else "cnn",
            "epochs": epochs,
        }
    if kind == "ios":
        return {
            "training_completed": True,
            "timestamp": time.time(),
            "epochs": epochs,
            "learning_rate": lr,
            "batch_size": batch_size,
            "dataset": "app_cpp_dataset",
            "architecture": "executorch_native",
            "config_args": sorted(config) or "none",
        }
    if kind == "python":
        return dict(task_meta)
    return {}


class _Device:
    """One simulated phone. Its behaviour per reply follows EDIP §3.3 for its platform."""

    def __init__(self, fleet: Fleet, profile: _Profile) -> None:
        self.fleet = fleet
        self.p = profile
        self.rng = random.Random(f"{fleet.config.seed}/{profile.index}")
        self.cookie: Cookie | None = None
        self.job_id: str | None = None
        self.job_config: Mapping[str, object] = {}
        self.tasks_done = 0

    @property
    def cbor(self) -> bool:
        return self.p.kind == "cbor"

    async def post(
        self, msg: JobRequest | TaskRequest | ResultReport, endpoint: str
    ) -> httpx.Response:
        body = encode_request(msg, cbor=self.cbor)
        return await self.fleet.client.post(
            request_path(msg),
            params=request_query(msg),
            content=body,
            headers=device_headers(self.p.kind, self.p.device_id, endpoint),
        )

    # ---- the session ---------------------------------------------------------------------------

    async def run(self) -> None:
        stats = self.fleet.stats
        while True:
            await self.join()
            outcome = await self.task_loop()
            if outcome != "rejoin":
                if outcome == "done":
                    stats.done += 1
                return

    async def join(self) -> None:
        fleet = self.fleet
        capabilities: dict[str, object]
        if self.p.kind == "android":
            capabilities = {"supported_jobs": ["CIFAR10", "XOR"], "methods": ["cnn", "xor"]}
        elif self.p.kind == "ios":
            capabilities = {"methods": [fleet.job_name]}
        else:
            capabilities = {"methods": ["edge"]}
        request = JobRequest(job_name=fleet.job_name, capabilities=capabilities)
        while True:
            response = await self.post(request, "job")
            if response.status_code != 200:
                await self.http_error("job", response)
                continue
            reply = decode_reply(JobReply, response.content, response.headers.get("content-type"))
            if reply.status is Status.OK:
                assert reply.job_id is not None
                assert reply.job_data is not None
                self.job_id = reply.job_id
                config = reply.job_data.get("config")
                self.job_config = _trainer_args(config)
                fleet.stats.joined += 1
                fleet.first_join.set()
                return
            await trio.sleep(retry_seconds(self.p.kind, reply.retry_wait))

    async def http_error(self, endpoint: str, response: httpx.Response) -> None:
        stats = self.fleet.stats
        stats.http_errors += 1
        stats.note_error(
            f"{self.p.device_id} /{endpoint}: HTTP {response.status_code} {response.text[:200]}"
        )
        await trio.sleep(1.0)  # the SDKs wait 5 s after an error; a simulation need not

    async def task_loop(self) -> str:
        stats = self.fleet.stats
        assert self.job_id is not None
        while True:
            request = TaskRequest(job_id=self.job_id, cookie=self.cookie)
            response = await self.post(request, "task")
            stats.polls += 1
            if response.status_code != 200:
                await self.http_error("task", response)
                continue
            reply = decode_reply(TaskReply, response.content, response.headers.get("content-type"))
            if self.p.kind == "ios" or reply.cookie is not None:
                # iOS keeps whatever the last reply carried (even none); the others keep the last
                # cookie they were given
                self.cookie = reply.cookie
            if reply.status is Status.OK:
                assert reply.task_data is not None
                assert reply.task_id is not None
                stats.tasks += 1
                if self.fleet.config.dropout and self.rng.random() < self.fleet.config.dropout:
                    stats.dropped_out += 1
                    return "gone"  # took the task and vanished
                if not await self.train_and_report(reply):
                    return "stopped"
                continue
            if reply.status is Status.RETRY or reply.status is Status.NO_TASK:
                stats.retries += 1
                await trio.sleep(retry_seconds(self.p.kind, reply.retry_wait))
                continue
            if reply.status is Status.NO_JOB:
                return "rejoin"
            if reply.status is Status.DONE:
                return "done"
            stats.note_error(f"{self.p.device_id} /task: {reply.status} {reply.message or ''}")
            return "stopped"

    async def train_and_report(self, reply: TaskReply) -> bool:
        """Train the task and report it; False when the session ends (as on a phone)."""
        assert reply.task_data is not None
        assert reply.task_id is not None
        fleet = self.fleet
        stats = fleet.stats
        task_data = reply.task_data
        meta = dict(task_data.meta)
        raw_version = meta.get("model_version")
        version = raw_version if isinstance(raw_version, int) else 0
        program = base64.b64decode(task_data.data, validate=True)
        epochs, lr, batch_size = training_params(meta, self.job_config)
        started = trio.current_time()
        try:
            result = await fleet.train(
                program=program,
                version=version,
                indices=self.p.indices,
                epochs=epochs,
                lr=lr,
                batch_size=batch_size,
                seed=self.rng.randrange(2**31),
            )
        except Exception as exc:  # a trainer failure ends this device's session, as on a phone
            stats.train_errors += 1
            stats.note_error(f"{self.p.device_id} training failed: {type(exc).__name__}: {exc}")
            return False
        stats.train_seconds += result.seconds
        if self.p.delay > 0:
            extra = self.p.delay * self.rng.uniform(0.8, 1.2)
            await trio.sleep_until(started + extra)
        data = encode_tensor_map(result.delta, self.p.kind)  # device kinds are named by form
        report = ResultReport(
            job_id=self.job_id or "",
            task_id=reply.task_id,
            task_name=reply.task_name or "train",
            result=RawResult(
                kind="number" if self.p.kind == "android" else "et_tensor_diff",
                data=data,
                meta=result_meta(
                    self.p.kind, meta, self.job_config, epochs=epochs, lr=lr, batch_size=batch_size
                ),
            ),
            cookie=self.cookie,
        )
        response = await self.post(report, "result")
        if response.status_code != 200:
            stats.reports_error += 1
            await self.http_error("result", response)
            return False
        answer = decode_reply(ResultReply, response.content, response.headers.get("content-type"))
        if answer.status is Status.OK:
            stats.reports_ok += 1
            self.tasks_done += 1
            return True
        if answer.status is Status.DONE:
            return False
        stats.reports_error += 1
        stats.note_error(f"{self.p.device_id} /result: {answer.status} {answer.message or ''}")
        return False


def _trainer_args(config: object) -> dict[str, object]:
    """The ``args`` of the ``trainer`` component of ``job_data.config`` (EDIP §4.4)."""
    if isinstance(config, Mapping):
        for component in config.get("components") or ():
            if isinstance(component, Mapping) and component.get("name") == "trainer":
                args = component.get("args")
                if isinstance(args, Mapping):
                    return dict(args)
    return {}


def _assign_kinds(mix: Mapping[str, float], n: int, rng: random.Random) -> list[DeviceKind]:
    """``n`` device kinds in the proportions of ``mix`` (largest remainder), shuffled."""
    total = sum(mix.values())
    quotas = {k: n * w / total for k, w in mix.items() if w > 0}
    counts = {k: int(q) for k, q in quotas.items()}
    for k in sorted(quotas, key=lambda k: quotas[k] - counts[k], reverse=True)[
        : n - sum(counts.values())
    ]:
        counts[k] += 1
    kinds: list[DeviceKind] = [k for k in DEVICE_KINDS if k in counts for _ in range(counts[k])]
    rng.shuffle(kinds)
    return kinds


def _device_id(kind: DeviceKind, index: int, rng: random.Random, prefix: str) -> str:
    if kind == "android":
        return f"NVFlare_Android-{rng.getrandbits(64):016x}"
    if kind == "ios":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4)).upper()
    if kind == "python":
        return f"{prefix}#{index}"
    return f"edgefl-sim-{index:05d}"


class Fleet:
    """The simulated devices of one job and the pool that trains for them.

    Args:
        base_url: the server, e.g. ``http://127.0.0.1:4321``.
        job_name: the job the devices ask for in ``/job``.
        partitions: one array of sample indices (into the data set's pool) per device.
        config: the fleet's make-up.
        pool: the trainer pool (started by the caller).
        job: the loaded job folder (needed by the eager trainer: ``model.pt2`` and the weight
            layout of the program, to read the task's weights out of the ``.pte``).
    """

    def __init__(
        self,
        *,
        base_url: str,
        job_name: str,
        partitions: Sequence[npt.NDArray[np.int64]],
        config: FleetConfig,
        pool: TrainerPool,
        job: Any = None,
    ) -> None:
        self.base_url = base_url
        self.job_name = job_name
        self.config = config
        self.pool = pool
        self.job = job
        self.stats = FleetStatistics(devices=len(partitions))
        rng = random.Random(config.seed)
        kinds = _assign_kinds(config.platform_mix, len(partitions), rng)
        prefix = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        low, high = config.delay
        self.profiles = [
            _Profile(
                index=i,
                kind=kinds[i],
                device_id=_device_id(kinds[i], i, rng, prefix),
                delay=rng.uniform(low, high) if high > 0 else 0.0,
                indices=np.asarray(partitions[i], dtype=np.int64),
            )
            for i in range(len(partitions))
        ]
        for kind in kinds:
            self.stats.by_kind[kind] = self.stats.by_kind.get(kind, 0) + 1
        self._weights_cache: dict[bytes, Weights] = {}
        self.first_join = trio.Event()
        """Set when the first device has joined the job."""
        self.client: httpx.AsyncClient  # set by run()

    def statistics(self) -> FleetStatistics:
        """A snapshot of the fleet's counters."""
        return self.stats.snapshot()

    async def train(
        self,
        *,
        program: bytes,
        version: int,
        indices: npt.NDArray[np.int64],
        epochs: int,
        lr: float,
        batch_size: int,
        seed: int,
    ) -> TrainResult:
        """Build the trainer's task from what the device received and run it in the pool."""
        from edgefl.api import TrainTask

        common: dict[str, Any] = {
            "indices": indices,
            "dataset": self.config.dataset,
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch_size,
            "momentum": self.config.momentum,
            "seed": seed,
            "model_version": version,
        }
        if self.pool.name == "eager":
            task = TrainTask(
                weights=self._weights_of(program),
                model_path=str(Path(self.job.path) / "model.pt2"),
                **common,
            )
        else:
            task = TrainTask(program=program, **common)
        return await self.pool.train(task)

    def _weights_of(self, program: bytes) -> Weights:
        """The weights inside a task's ``.pte``, read at the offsets of the job's template."""
        key = hashlib.sha256(program).digest()
        weights = self._weights_cache.get(key)
        if weights is None:
            if self.job is None:
                raise SimulationError("the eager trainer needs the job folder (job=...)")
            weights = weights_in_program(self.job, program)
            if len(self._weights_cache) > 8:
                self._weights_cache.clear()
            self._weights_cache[key] = weights
        return weights

    async def run(self) -> None:
        """Run every device until the job is done (or the caller cancels).

        Cancellation: every device stops at its next checkpoint; in-flight training tasks finish
        in their workers and are dropped.
        """
        import httpx

        limits = httpx.Limits(
            max_connections=max(10, len(self.profiles)),
            max_keepalive_connections=max(10, len(self.profiles)),
        )
        async with httpx.AsyncClient(
            base_url=self.base_url, limits=limits, timeout=httpx.Timeout(60.0)
        ) as client:
            self.client = client
            async with trio.open_nursery() as nursery:
                for profile in self.profiles:
                    nursery.start_soon(_Device(self, profile).run)


def weights_in_program(job: Any, program: bytes) -> Weights:
    """Read each parameter's float32 values out of a ``.pte`` patched from the job's template.

    Every version's program has the template's layout (weights are patched in place), so the
    template's byte offsets (``job.template.slots``) locate the weights in any of them.

    Raises:
        SimulationError: the program is shorter than the template says.
    """
    weights: Weights = {}
    for slot in job.template.slots:
        if slot.offset + slot.nbytes > len(program):
            raise SimulationError(
                f"the task program ({len(program)} bytes) does not hold parameter {slot.name}"
            )
        array = np.frombuffer(program, dtype="<f4", count=slot.nbytes // 4, offset=slot.offset)
        weights[slot.name] = array.reshape(slot.shape).astype(np.float32)
    return weights


# --------------------------------------------------------------------------------------------------
# Running a job


@attrs.frozen
class SimulationReport:
    """The outcome of a simulated run.

    Args:
        job_name: the job.
        job_folder: the job folder that was served.
        version: the final global model version.
        max_version: the version at which the job ends.
        finished: whether the job reached its last version (False when interrupted).
        metrics: one dict per evaluated version (``version``, ``accuracy``, ``loss``, ...), in
            version order (read back from the job's ``metrics.jsonl``).
        fleet: the fleet's counters.
        server: the job's statistics as the server reports them at the end (``None`` when the
            run stopped before the server started).
        seconds: wall time of the run (server and fleet, without exporting a recipe).
        state_dir: where the server kept its state (``None`` when it was a temporary folder).
        metrics_path: the job's ``metrics.jsonl`` (``None`` when the state was temporary).
        error: why the run stopped early, if it did.
    """

    job_name: str
    job_folder: Path
    version: int
    max_version: int
    finished: bool
    metrics: tuple[Mapping[str, Any], ...]
    fleet: FleetStatistics
    server: JobStatistics | None
    seconds: float
    state_dir: Path | None
    metrics_path: Path | None
    error: str | None = None

    def accuracy_by_version(self) -> list[tuple[int, float]]:
        """``(version, accuracy)`` for each evaluated version, in version order."""
        return sorted(
            (int(m["version"]), float(m["accuracy"]))
            for m in self.metrics
            if isinstance(m.get("accuracy"), int | float) and isinstance(m.get("version"), int)
        )

    @property
    def final_accuracy(self) -> float | None:
        """Accuracy of the last evaluated version (``None`` without evaluation)."""
        rows = self.accuracy_by_version()
        return rows[-1][1] if rows else None

    @property
    def protocol_errors(self) -> int:
        """Replies a phone would have treated as errors (HTTP errors, ``ERROR`` results)."""
        return self.fleet.http_errors + self.fleet.reports_error


Listener = Callable[[Any], None]


def _trainer_accepts(factory: Callable[..., Any], name: str) -> bool:
    import inspect

    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def fleet_config_from_spec(simulation: Any, **overrides: Any) -> FleetConfig:
    """A :class:`FleetConfig` from a job's ``SimulationConfig`` (or its ``settings()`` mapping,
    or ``None``), with ``overrides`` (``None`` values ignored)."""
    fields: dict[str, Any] = {}
    if simulation is not None and not isinstance(simulation, Mapping):
        simulation = simulation.settings()
    sim = dict(simulation or {})
    for src, dst in (
        ("num_devices", "num_devices"),
        ("num_workers", "num_workers"),
        ("trainer", "trainer"),
        ("trainer_args", "trainer_args"),
        ("dataset", "dataset"),
        ("partition", "partition"),
        ("dirichlet_alpha", "alpha"),
        ("seed", "seed"),
    ):
        if sim.get(src) is not None:
            fields[dst] = sim[src]
    fields.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return FleetConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise SimulationError(f"simulation settings: {exc}") from exc


async def simulate_job(
    job_folder: str | Path,
    config: FleetConfig,
    *,
    state_dir: str | Path | None = None,
    retry_wait: float = 0.25,
    job_timeout: float = 60.0,
    listeners: Sequence[Listener] = (),
    progress: Any = None,
    stop: trio.Event | None = None,
    handle_sigint: bool = False,
    worker_log: str | Path | None = None,
) -> SimulationReport:
    """Serve ``job_folder`` on ``127.0.0.1:0`` and run a simulated fleet until the job finishes.

    Args:
        job_folder: a job folder written by ``ETFedBuffRecipe.export``.
        config: the fleet.
        state_dir: the server's state directory (a temporary one, deleted afterwards, when
            ``None``); a state directory of an earlier run resumes that run.
        retry_wait: the server's ``retry_wait`` in seconds (Android is told milliseconds, iOS
            and generic clients whole seconds, at least 1).
        job_timeout: give up when no device could join within this many seconds.
        listeners: called with every job event (``VersionPublished``, ``VersionEvaluated``,
            ``JobFinished`` of :mod:`edgefl._runtime`).
        progress: a :class:`edgefl._progress.Progress` to keep up to date, or ``None``.
        stop: set it to end the run early (the report then says ``finished=False``).
        handle_sigint: treat Ctrl-C as ``stop`` (main thread only): the run ends cleanly with
            what it has; a second Ctrl-C interrupts at once.
        worker_log: a file for the training processes' output (default: this process's).

    Cancellation: cancelling stops the fleet, the server and the worker processes.
    """
    import tempfile

    from edgefl._config import Settings
    from edgefl._data import DataError, partition, prepare
    from edgefl._jobfolder import load_job_folder
    from edgefl._server import serve

    started = time.monotonic()
    folder = Path(job_folder)
    job = load_job_folder(folder)
    spec = job.spec
    params = spec.device_training_params or {}
    batch = params.get("batch_size")
    min_size = int(batch) if isinstance(batch, int) and batch > 0 else int(spec.input_shape[0])
    try:
        prepared = prepare(
            config.dataset,
            test_fraction=config.test_fraction,
            seed=config.seed,
            max_train=config.max_train,
        )
        parts = partition(
            prepared,
            config.num_devices,
            scheme=config.partition,
            alpha=config.alpha,
            seed=config.seed,
            min_size=min_size,
        )
    except DataError as exc:
        raise SimulationError(str(exc)) from exc
    sample = prepared.pool.sample_shape
    if math.prod(sample) != math.prod(spec.input_shape[1:]):
        raise SimulationError(
            f"data set {config.dataset!r} has samples of shape {sample}, which do not fit the"
            f" job's input_shape {tuple(spec.input_shape)}"
        )
    trainer_args = dict(config.trainer_args)
    stop = stop if stop is not None else trio.Event()
    with contextlib.ExitStack() as stack:
        if state_dir is None:
            state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgefl-sim-")))
        else:
            state = Path(state_dir)
            state.mkdir(parents=True, exist_ok=True)
        settings = Settings(
            jobs=folder,
            host="127.0.0.1",
            port=0,
            state_dir=state,
            retry_wait=retry_wait,
            seed=config.seed,
            log_level="warning",
        )
        from plugins._registry import TRAINERS, PluginError, Registry

        try:
            factory = Registry.from_entry_points().load(TRAINERS, config.trainer)
        except PluginError as exc:
            raise SimulationError(str(exc)) from exc
        if "input_shape" not in trainer_args and _trainer_accepts(factory, "input_shape"):
            trainer_args["input_shape"] = list(spec.input_shape)
        # Training is CPU-bound: more processes than cores (or devices) only cost memory and
        # start-up time (NVFlare's default of 10 workers was meant for threads).
        workers = max(1, min(config.num_workers, os.cpu_count() or 1, config.num_devices))
        pool = TrainerPool(
            config.trainer,
            trainer_args,
            num_workers=workers,
            dataset=config.dataset,
            log_path=worker_log,
        )
        outcome: dict[str, Any] = {"finished": False, "error": None}
        fleet: Fleet | None = None
        runtime: Any = None
        try:
            async with trio.open_nursery() as nursery:
                if handle_sigint:
                    nursery.start_soon(_stop_on_sigint, stop)
                shutdown = trio.Event()
                server_done = trio.Event()

                async def serve_until_shutdown(task_status: trio.TaskStatus[Any]) -> None:
                    try:
                        await serve(
                            settings, shutdown_trigger=shutdown.wait, task_status=task_status
                        )
                    finally:
                        server_done.set()

                fleet_scope = trio.CancelScope()
                with trio.CancelScope() as run_scope:
                    nursery.start_soon(_cancel_when_set, stop, run_scope)
                    async with trio.open_nursery() as startup:
                        startup.start_soon(pool.start)
                        handle = await nursery.start(serve_until_shutdown)
                    runtime = _job_runtime(handle)
                    last_accuracy: list[tuple[int, float]] = []

                    def on_event(event: Any) -> None:
                        metrics = getattr(event, "metrics", None)
                        if isinstance(metrics, Mapping) and isinstance(
                            metrics.get("accuracy"), int | float
                        ):
                            last_accuracy[:] = [(int(event.version), float(metrics["accuracy"]))]
                        for listener in listeners:
                            listener(event)

                    runtime.subscribe(on_event)
                    for row in _read_metrics(runtime.store.metrics_path(runtime.job_id)):
                        if isinstance(row.get("accuracy"), int | float):  # evaluated before now
                            last_accuracy[:] = [(int(row["version"]), float(row["accuracy"]))]
                    fleet = Fleet(
                        base_url=_base_url(handle),
                        job_name=spec.name,
                        partitions=parts,
                        config=config,
                        pool=pool,
                        job=job,
                    )

                    async def run_fleet(fleet: Fleet) -> None:
                        with fleet_scope:
                            await fleet.run()
                            if runtime.finished:
                                return  # devices were told DONE; the last evaluation follows
                            # every device ended its session before the job finished
                            outcome["error"] = "every simulated device stopped: " + (
                                "; ".join(fleet.stats.errors[:3]) or "no reason recorded"
                            )
                            run_scope.cancel()

                    nursery.start_soon(run_fleet, fleet)
                    if progress is not None:
                        nursery.start_soon(
                            _refresh_progress, progress, runtime, started, last_accuracy
                        )
                    with trio.move_on_after(job_timeout) as join_deadline:
                        await fleet.first_join.wait()
                    if join_deadline.cancelled_caught:
                        outcome["error"] = (
                            f"no simulated device could join job {spec.name!r} in {job_timeout} s"
                        )
                    else:
                        await runtime.wait_finished()
                        outcome["finished"] = True
                # finished, stopped, or failed: stop the devices, then drain the server
                fleet_scope.cancel()
                if progress is not None and runtime is not None:
                    _draw(progress, runtime, started, last_accuracy, force=True)
                shutdown.set()
                with trio.move_on_after(30):
                    await server_done.wait()
                nursery.cancel_scope.cancel()
        finally:
            await pool.aclose(grace=0.0 if stop.is_set() else 5.0)
            if progress is not None:
                progress.close()
        finished = bool(outcome["finished"])
        error = outcome["error"]
        stats = runtime.statistics() if runtime is not None else None
        metrics_path = runtime.store.metrics_path(runtime.job_id) if runtime is not None else None
        metrics = tuple(_read_metrics(metrics_path)) if metrics_path is not None else ()
        kept = state_dir is not None
        return SimulationReport(
            job_name=spec.name,
            job_folder=folder,
            version=int(stats.version) if stats is not None else 0,
            max_version=int(spec.model_manager.max_model_version),
            finished=finished,
            metrics=metrics,
            fleet=fleet.statistics() if fleet is not None else FleetStatistics(),
            server=stats,
            seconds=time.monotonic() - started,
            state_dir=state if kept else None,
            metrics_path=metrics_path if kept else None,
            error=error,
        )


async def _cancel_when_set(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _stop_on_sigint(stop: trio.Event) -> None:
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async for _ in signals:
            print(
                "\nstopping: finishing in-flight work (Ctrl-C again to abort)",
                file=sys.stderr,
                flush=True,
            )
            stop.set()
            break
    # a second Ctrl-C raises KeyboardInterrupt as usual


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    rows: dict[int, dict[str, Any]] = {}
    try:
        with path.open("rb") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("version"), int):
                    rows[record["version"]] = record
    except FileNotFoundError:
        return []
    return [rows[v] for v in sorted(rows)]


def _job_runtime(handle: ServerHandle) -> JobRuntime:
    if len(handle.runtimes) != 1:
        raise SimulationError(f"expected the server to run one job, it runs {len(handle.runtimes)}")
    return handle.runtimes[0]


def _base_url(handle: ServerHandle) -> str:
    if not handle.binds:
        raise SimulationError("the server reported no bound address")
    return handle.url


def _draw(
    progress: Any,
    runtime: Any,
    started: float,
    accuracy: list[tuple[int, float]],
    *,
    force: bool = False,
) -> None:
    from edgefl._progress import ProgressState

    stats = runtime.statistics()
    progress.update(
        ProgressState(
            version=int(stats.version),
            max_version=int(stats.max_version),
            accepted=int(stats.updates_accepted),
            discarded=int(sum(stats.updates_discarded.values())),
            accuracy=accuracy[0] if accuracy else None,
            training=int(stats.devices_training),
            elapsed=time.monotonic() - started,
        ),
        force=force,
    )


async def _refresh_progress(
    progress: Any, runtime: Any, started: float, accuracy: list[tuple[int, float]]
) -> None:
    while True:
        _draw(progress, runtime, started, accuracy)
        await trio.sleep(0.25)


def run_job(
    job_folder: str | Path,
    config: FleetConfig | None = None,
    **kwargs: Any,
) -> SimulationReport:
    """Synchronous :func:`simulate_job` (runs its own trio event loop).

    ``config`` defaults to the job folder's stored simulation settings (or :class:`FleetConfig`
    defaults).
    """
    if config is None:
        from edgefl._jobfolder import load_job_folder

        config = fleet_config_from_spec(load_job_folder(Path(job_folder)).spec.simulation)
    return trio.run(functools.partial(simulate_job, job_folder, config, **kwargs))


def run_recipe(recipe: Any, folder: str | Path | None = None, **kwargs: Any) -> SimulationReport:
    """The body of ``ETFedBuffRecipe.run()``: export the job and run it with simulated devices.

    Args:
        recipe: an ``ETFedBuffRecipe``; its ``simulation_config`` describes the fleet.
        folder: where to write the job folder (a temporary folder when ``None``).
        kwargs: :class:`FleetConfig` fields overriding the recipe's (``platform_mix``,
            ``delay``, ``dropout``, ...) and :func:`simulate_job` options (``state_dir``,
            ``retry_wait``, ``progress``, ...).

    Raises:
        SimulationError: the recipe has no ``simulation_config`` and no fleet was given.
    """
    import tempfile

    sim = recipe.simulation_config
    fleet_fields = {f.name for f in attrs.fields(FleetConfig)}
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in fleet_fields}
    if sim is None and not overrides:
        raise SimulationError(
            "recipe.run() needs a simulation_config=SimulationConfig(...) on the recipe"
        )
    config = fleet_config_from_spec(sim, **overrides)
    if sim is not None and "job_timeout" not in kwargs:
        kwargs["job_timeout"] = float(sim.job_timeout)
    with contextlib.ExitStack() as stack:
        if folder is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgefl-job-")))
            folder = folder / recipe.job_name
        path = recipe.export(folder)
        return run_job(path, config, **kwargs)


# --------------------------------------------------------------------------------------------------
# edgefl-server simulate


def parse_delay(text: str) -> tuple[float, float]:
    """``"0.5"`` -> ``(0.5, 0.5)``; ``"0:2"`` -> ``(0.0, 2.0)`` (seconds)."""
    low, sep, high = text.partition(":")
    try:
        lo = float(low)
        hi = float(high) if sep else lo
    except ValueError:
        raise ValueError(f"--delay must be SECONDS or LOW:HIGH, got {text!r}") from None
    return lo, hi


def add_fleet_arguments(parser: argparse.ArgumentParser, *, defaults: bool = False) -> None:
    """The fleet flags shared by ``simulate`` and ``demo``. Without ``defaults`` every flag
    defaults to ``None`` (meaning: the job folder's setting, else the built-in default)."""
    group = parser.add_argument_group("simulated devices")
    group.add_argument("--devices", type=int, metavar="N", help="number of simulated devices")
    group.add_argument(
        "--workers", type=int, metavar="N", help="training processes shared by the devices"
    )
    group.add_argument(
        "--trainer",
        metavar="NAME",
        help="edgefl.trainers plugin: 'executorch' trains the .pte each device receives in the"
        " ExecuTorch runtime (faithful), 'eager' trains model.pt2 in PyTorch (fast)",
    )
    group.add_argument(
        "--dataset",
        metavar="SPEC",
        help="'digits' (built in) or 'cifar10:DIR' (the python batches of CIFAR-10)",
    )
    group.add_argument(
        "--partition", choices=("iid", "dirichlet"), help="how samples are split across devices"
    )
    group.add_argument(
        "--alpha", type=float, metavar="A", help="Dirichlet concentration (smaller: more skewed)"
    )
    group.add_argument("--seed", type=int, metavar="N", help="seed of the whole run")
    group.add_argument(
        "--platforms",
        metavar="MIX",
        help="device kinds and weights, e.g. 'android=2,ios=1,python=1,cbor=1'"
        " (android/ios: the SDKs' JSON forms; python: NVFlare's simulator; cbor: our fast path)",
    )
    group.add_argument(
        "--delay",
        metavar="LOW[:HIGH]",
        help="extra seconds each device takes per task (a per-device speed drawn from the range)",
    )
    group.add_argument(
        "--dropout",
        type=float,
        metavar="P",
        help="probability that a device takes a task and disappears without reporting",
    )
    group.add_argument(
        "--max-train", type=int, metavar="N", help="train on at most N samples of the data set"
    )
    server = parser.add_argument_group("embedded server")
    server.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="keep the server's state (database, model versions, metrics.jsonl) here",
    )
    server.add_argument(
        "--retry-wait",
        type=float,
        default=0.25,
        metavar="SECONDS",
        help="how long parked devices wait between polls (default: %(default)s)",
    )


def fleet_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`FleetConfig` fields given on the command line."""
    out: dict[str, Any] = {
        "num_devices": args.devices,
        "num_workers": args.workers,
        "trainer": args.trainer,
        "dataset": args.dataset,
        "partition": args.partition,
        "alpha": args.alpha,
        "seed": args.seed,
        "dropout": args.dropout,
        "max_train": args.max_train,
    }
    if args.platforms is not None:
        out["platform_mix"] = parse_platform_mix(args.platforms)
    if args.delay is not None:
        out["delay"] = parse_delay(args.delay)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``edgefl-server simulate``."""
    parser.add_argument(
        "job_folder", type=Path, metavar="JOB_FOLDER", help="a job folder (ETFedBuffRecipe.export)"
    )
    add_fleet_arguments(parser)


def format_summary(report: SimulationReport) -> str:
    """A human-readable summary: outcome, server and fleet counters, accuracy per version."""
    from edgefl._progress import format_table

    stats = report.server
    fleet = report.fleet
    lines = [
        f"job {report.job_name}: version {report.version}/{report.max_version}"
        f" {'finished' if report.finished else 'NOT finished'} in {report.seconds:.1f} s",
    ]
    if report.error:
        lines.append(f"stopped: {report.error}")
    if stats is not None:
        discarded = {k: v for k, v in stats.updates_discarded.items() if v}
        lines.append(
            f"server: {stats.updates_accepted} updates accepted, "
            f"{sum(discarded.values())} discarded"
            + (
                f" ({', '.join(f'{k} {v}' for k, v in sorted(discarded.items()))})"
                if discarded
                else ""
            )
            + f", {stats.devices_known} devices known"
        )
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(fleet.by_kind.items()))
    lines.append(
        f"fleet: {fleet.devices} devices ({kinds}); {fleet.tasks} tasks, "
        f"{fleet.reports_ok} reports OK, {fleet.retries} RETRY replies, "
        f"{fleet.dropped_out} dropped out, {report.protocol_errors} protocol errors"
    )
    for text in fleet.errors[:5]:
        lines.append(f"  error: {text}")
    rows = [
        [str(m["version"]), f"{m['accuracy']:.2f}", f"{m.get('loss', float('nan')):.4f}"]
        for m in report.metrics
        if isinstance(m.get("accuracy"), int | float)
    ]
    if rows:
        lines.append("")
        lines.append(format_table(["version", "accuracy %", "loss"], rows))
    if report.metrics_path is not None:
        lines.append("")
        lines.append(f"metrics: {report.metrics_path}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """``edgefl-server simulate JOB_FOLDER``: 0 when the job finished cleanly, 1 when it did not
    or a device saw a protocol error, 130 when interrupted."""
    from edgefl._jobfolder import JobFolderError, load_job_folder
    from edgefl._progress import Progress

    try:
        job = load_job_folder(args.job_folder)
        config = fleet_config_from_spec(job.spec.simulation, **fleet_overrides(args))
        print(
            f"simulating job {job.spec.name!r}: {config.num_devices} devices, "
            f"{config.num_workers} workers, trainer {config.trainer}, data {config.dataset}",
            flush=True,
        )
        stop = trio.Event()
        report = trio.run(
            functools.partial(
                simulate_job,
                args.job_folder,
                config,
                state_dir=args.state_dir,
                retry_wait=args.retry_wait,
                progress=Progress(),
                stop=stop,
                handle_sigint=True,
            )
        )
    except (JobFolderError, SimulationError, ValueError) as exc:
        print(f"edgefl-server simulate: {exc}", file=sys.stderr)
        return 2
    print(format_summary(report))
    if not report.finished and stop.is_set():
        return 130
    return 0 if report.finished and report.protocol_errors == 0 else 1
