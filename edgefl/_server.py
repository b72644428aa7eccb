"""``edgefl-server serve``: one trio nursery tree serving every job folder of a directory.

::

    serve(settings)                        loads jobs + plugins synchronously: fails before binding
    └─ root nursery
       ├─ shutdown watcher                 the caller's trigger, or handle.shutdown()
       └─ work nursery                     one JobRuntime.run per job: publisher, evaluator, ticker
          └─ http nursery                  hypercorn (trio worker) serving the quart-trio app,
                                           behind the raw ASGI fast path

Shutdown (SIGINT/SIGTERM for the command, the trigger when embedded): the EDIP core starts
*draining* (new ``/job``, ``/task`` and ``/selection`` requests get ``RETRY`` with the platform's
``retry_wait``, reports are still accepted and committed), in-flight requests are waited for up to
``graceful_timeout``, then hypercorn closes the listeners and connections, the job runtimes stop,
and the store checkpoints its WAL and closes. Every accepted update was committed before its reply,
so there is nothing else to persist; the exit status is 0.

Embedding: ``await nursery.start(serve, settings)`` returns a :class:`ServerHandle` with the bound
addresses (port 0 works) and the job runtimes; ``handle.shutdown()`` or the ``shutdown_trigger``
stops the server gracefully.
"""

from __future__ import annotations

import logging
import signal
import sys
import tempfile
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from edgefl._app import EdipCore, FastPath, create_app
from edgefl._config import ConfigError, Settings, load_settings
from edgefl._config import add_arguments as _add_settings
from edgefl._log import configure_logging, log_event
from edgefl._runtime import JobRuntime
from edgefl._store import Store, StoreError

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable

    from hypercorn.config import Config

    from plugins._registry import Registry

__all__ = [
    "CONNECTION_CLOSE_GRACE",
    "ServerHandle",
    "ServerStartError",
    "add_arguments",
    "find_job_folders",
    "run",
    "serve",
]

_log = logging.getLogger("edgefl.server")

JOB_FILE: Final = "job.toml"

CONNECTION_CLOSE_GRACE: Final = 0.5
"""Seconds hypercorn gives open connections once the drain is over and the listeners close (the
replies of requests that came in during the drain are written by then; idle keep-alive
connections are closed at the end of it)."""


class ServerStartError(RuntimeError):
    """The server cannot start (no jobs, a broken job folder or plugin, unusable state dir)."""


@attrs.frozen(eq=False)
class ServerHandle:
    """What :func:`serve` reports once it is listening.

    Attributes:
        binds: the bound base URLs, e.g. ``("http://127.0.0.1:54321",)``.
        runtimes: the served jobs.
        core: the EDIP core (``core.handle(...)`` answers a request without HTTP).
        state_dir: where durable state lives.
    """

    binds: tuple[str, ...]
    runtimes: tuple[JobRuntime, ...]
    core: EdipCore
    state_dir: Path
    _stop: trio.Event

    @property
    def url(self) -> str:
        """The first bound base URL."""
        return self.binds[0]

    def runtime(self, name_or_id: str) -> JobRuntime:
        """The job with this name or id.

        Raises:
            KeyError: no such job.
        """
        for rt in self.runtimes:
            if name_or_id in (rt.job_id, rt.name):
                return rt
        raise KeyError(f"no job named {name_or_id!r}")

    def shutdown(self) -> None:
        """Start a graceful shutdown (returns at once; :func:`serve` returns when it is done)."""
        self._stop.set()


def find_job_folders(jobs: Path) -> list[Path]:
    """The job folders to serve: ``jobs`` itself when it holds a ``job.toml``, else each of its
    sub-folders that does (sorted by name).

    Raises:
        ServerStartError: ``jobs`` is not a directory or holds no job folder.
    """
    if not jobs.is_dir():
        raise ServerStartError(f"--jobs {jobs}: not a directory")
    if (jobs / JOB_FILE).is_file():
        return [jobs]
    folders = sorted(p for p in jobs.iterdir() if p.is_dir() and (p / JOB_FILE).is_file())
    if not folders:
        raise ServerStartError(
            f"--jobs {jobs}: no job folders (sub-folders with a {JOB_FILE},"
            " as written by ETFedBuffRecipe.export)"
        )
    return folders


def _hypercorn_config(settings: Settings) -> Config:
    from hypercorn.config import Config

    config = Config()
    host = settings.host
    config.bind = [f"[{host}]:{settings.port}" if ":" in host else f"{host}:{settings.port}"]
    if settings.tls_cert is not None and settings.tls_key is not None:
        config.certfile = str(settings.tls_cert)
        config.keyfile = str(settings.tls_key)
    # Our drain already waited (up to settings.graceful_timeout) for every in-flight request;
    # what hypercorn waits for after that is only connections, and an idle keep-alive connection
    # that went through the quart-trio app is not closed by hypercorn's shutdown signal: it would
    # hold the whole shutdown for the full graceful_timeout (phones keep such connections open).
    config.graceful_timeout = min(settings.graceful_timeout, CONNECTION_CLOSE_GRACE)
    config.keep_alive_timeout = settings.keep_alive_timeout
    config.read_timeout = 60  # a client that stops sending for a minute is dropped
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.include_server_header = False
    return config


async def serve(
    settings: Settings,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    registry: Registry | None = None,
    task_status: trio.TaskStatus[ServerHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve every job folder of ``settings.jobs`` until shut down (see the module docstring).

    Args:
        settings: the server settings; ``settings.jobs`` is required.
        shutdown_trigger: an async callable; when it returns, the server shuts down gracefully.
        registry: where plugins come from (default: the installed entry points).
        task_status: receives the :class:`ServerHandle` once the server listens.

    Raises:
        ServerStartError: there is nothing to serve or the state directory is unusable.
        JobFolderError, PluginError: a job folder or one of its plugins is broken (before any
            socket is bound).

    Cancellation: cancelling ``serve`` stops it at once (no draining); use the trigger or
    :meth:`ServerHandle.shutdown` for a graceful stop.
    """
    if settings.jobs is None:
        raise ServerStartError("no jobs to serve: give --jobs DIR (or EDGEFL_JOBS)")
    folders = find_job_folders(settings.jobs)
    if registry is None:
        from plugins._registry import Registry

        registry = Registry.from_entry_points()
    with ExitStack() as stack:
        if settings.state_dir is not None:
            state_dir = settings.state_dir
        else:
            state_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgefl-")))
        try:
            store = Store(state_dir)
        except StoreError as e:
            raise ServerStartError(str(e)) from None
        stack.callback(store.close)
        runtimes = [
            JobRuntime.load(folder, store=store, registry=registry, settings=settings)
            for folder in folders
        ]
        core = EdipCore(runtimes, settings, retired_job_ids=store.retired_job_ids())
        app = create_app(runtimes, settings, core=core)
        asgi = FastPath(core, app) if settings.fast_path else app
        await _serve(settings, core, asgi, runtimes, state_dir, shutdown_trigger, task_status)


async def _serve(
    settings: Settings,
    core: EdipCore,
    asgi: Any,
    runtimes: list[JobRuntime],
    state_dir: Path,
    shutdown_trigger: Callable[[], Awaitable[object]] | None,
    task_status: trio.TaskStatus[ServerHandle],
) -> None:
    import hypercorn.trio

    stop = trio.Event()
    async with trio.open_nursery() as root:
        if shutdown_trigger is not None:
            root.start_soon(_watch, shutdown_trigger, stop)
        async with trio.open_nursery() as work:
            for runtime in runtimes:
                await work.start(runtime.run)
            http_stop = trio.Event()
            async with trio.open_nursery() as http:
                binds = await http.start(
                    partial(
                        hypercorn.trio.serve,
                        asgi,
                        _hypercorn_config(settings),
                        shutdown_trigger=http_stop.wait,
                    )
                )
                handle = ServerHandle(
                    binds=tuple(binds),
                    runtimes=tuple(runtimes),
                    core=core,
                    state_dir=state_dir,
                    stop=stop,
                )
                log_event(
                    _log,
                    "server_started",
                    binds=",".join(binds),
                    jobs=",".join(f"{rt.name}:{rt.job_id}" for rt in runtimes),
                    state_dir=str(state_dir),
                )
                task_status.started(handle)
                await stop.wait()
                core.draining = True
                log_event(_log, "server_draining", in_flight=core.in_flight)
                with trio.move_on_after(settings.graceful_timeout):
                    await core.wait_idle()
                http_stop.set()
            work.cancel_scope.cancel()
        root.cancel_scope.cancel()
    log_event(
        _log,
        "server_stopped",
        jobs=",".join(f"{rt.job_id}:v{rt.core.version}" for rt in runtimes),
    )


async def _watch(trigger: Callable[[], Awaitable[object]], stop: trio.Event) -> None:
    await trigger()
    stop.set()


async def _wait_for_signal() -> None:
    """Return on the first SIGINT or SIGTERM (a second one interrupts the drain)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log_event(_log, "shutdown_requested", signal=signal.Signals(signum).name)
            return


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``serve`` flags (one per setting; ``--help`` explains each)."""
    parser.description = (
        "Serve every job folder in --jobs DIR to EDIP devices (NVFlare iOS/Android SDK apps)."
        " Settings come from these flags, then the --config TOML file, then EDGEFL_* environment"
        " variables, then the defaults shown."
    )
    _add_settings(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``edgefl-server serve``; returns the exit status (0 after a graceful shutdown)."""
    from edgefl._auth import AccessPolicyError
    from edgefl._jobfolder import JobFolderError
    from plugins._registry import PluginError

    try:
        settings = load_settings(vars(args))
    except ConfigError as e:
        print(f"edgefl-server serve: {e}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        trio.run(partial(serve, settings, shutdown_trigger=_wait_for_signal))
    except (ServerStartError, JobFolderError, PluginError, AccessPolicyError) as e:
        print(f"edgefl-server serve: {e}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:
        bind_errors, rest = group.split(OSError)
        if rest is not None or bind_errors is None:
            raise
        print(f"edgefl-server serve: cannot listen: {bind_errors.exceptions[0]}", file=sys.stderr)
        return 1
    return 0
