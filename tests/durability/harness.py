"""Test harness shared by the durability and hostile-input tests.

* :func:`xor_job` writes a small real job folder (the EDIP §12 XOR net, exported through
  :class:`~edgefl.ETFedBuffRecipe` once per test process, then copied) with ``job.toml`` settings
  overridden per test.
* :class:`ServerProcess` runs a real ``edgefl-server serve`` subprocess on 127.0.0.1 with its log
  in a file; it learns the bound port from the ``server_started`` log line, and can be killed
  with SIGKILL and started again on the same state directory.
* :func:`state_snapshot` reads a state directory's SQLite database directly (read-only), so tests
  check what is on disk independently of the server's own statistics.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import tomli_w
import trio

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "SCHEMA",
    "ServerProcess",
    "StateSnapshot",
    "generic_headers",
    "state_snapshot",
    "xor_job",
]

SCHEMA: dict[str, tuple[int, ...]] = {
    "linear1.weight": (4, 2),
    "linear1.bias": (4,),
    "linear2.weight": (2, 4),
    "linear2.bias": (2,),
}
"""The XOR net's trainable parameters (names without ``net.``)."""

_EXPORTED: Path | None = None


def _export_xor() -> Path:
    """Export the XOR job once per process (about 10 s) and return the cached folder."""
    global _EXPORTED
    if _EXPORTED is not None and (_EXPORTED / "job.toml").is_file():
        return _EXPORTED
    import torch
    from torch import nn

    from edgefl import DeviceManagerConfig, DeviceModel, ETFedBuffRecipe, ModelManagerConfig

    class XOR(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear1 = nn.Linear(2, 4)
            self.linear2 = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear2(torch.sigmoid(self.linear1(x)))

    torch.manual_seed(0)
    recipe = ETFedBuffRecipe(
        "xor_et",
        DeviceModel(XOR()),
        (1, 2),
        (1,),
        ModelManagerConfig(global_lr=1.0, num_updates_for_model=2, max_model_version=20),
        DeviceManagerConfig(device_selection_size=4, min_hole_to_fill=1),
        device_training_params={"epoch": 1, "lr": 0.1, "batch_size": 1},
    )
    root = Path(tempfile.mkdtemp(prefix="edgefl-xor-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    _EXPORTED = recipe.export(root / "xor_et")
    return _EXPORTED


def _merge(doc: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            _merge(doc[key], value)
        elif value is None:
            doc.pop(key, None)
        else:
            doc[key] = value


def xor_job(dest: Path, name: str = "xor_et", **overrides: Any) -> Path:
    """Write the XOR job folder at ``dest/name`` with ``job.toml`` tables merged from
    ``overrides`` (e.g. ``model_manager={"max_model_version": 5}``; ``None`` removes a key).

    Returns:
        The job folder.
    """
    source = _export_xor()
    folder = dest / name
    shutil.copytree(source, folder)
    path = folder / "job.toml"
    doc = tomllib.loads(path.read_text(encoding="utf-8"))
    doc["name"] = name
    _merge(doc, overrides)
    path.write_text(tomli_w.dumps(doc), encoding="utf-8")
    return folder


def initial_weights(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / "weights.npz", allow_pickle=False) as npz:
        return {k: npz[k].astype(np.float32) for k in npz.files}


def generic_headers(device_id: str, **extra: str) -> dict[str, str]:
    """Headers of a generic (non-SDK) client: ``retry_wait`` comes back in seconds."""
    return {"Content-Type": "application/json", "X-Flare-Device-ID": device_id, **extra}


def _server_command() -> list[str]:
    script = Path(sysconfig.get_path("scripts")) / "edgefl-server"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "edgefl"]


_BINDS = re.compile(r"event=server_started binds=(\S+)")


@attrs.define
class ServerProcess:
    """A real ``edgefl-server serve`` subprocess on 127.0.0.1 (see the module docstring).

    Args:
        jobs: the ``--jobs`` directory.
        state_dir: the ``--state-dir``; reused across restarts.
        log: file the server's stderr is appended to (one per instance, every run).
        args: extra command-line flags.
    """

    jobs: Path
    state_dir: Path
    log: Path
    args: Sequence[str] = ()
    process: trio.Process | None = None
    url: str = ""
    starts: int = 0

    async def start(self) -> str:
        """Start the server and wait until it listens.

        Returns:
            Its base URL.

        Raises:
            RuntimeError: the server exited before listening (the log tail is in the message).
        """
        assert self.process is None, "already running"
        offset = self.log.stat().st_size if self.log.exists() else 0
        command = [
            *_server_command(),
            "serve",
            "--jobs",
            str(self.jobs),
            "--state-dir",
            str(self.state_dir),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--log-level",
            "info",
            *self.args,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFL_")}
        with self.log.open("ab") as log:
            self.process = await trio.lowlevel.open_process(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
            )
        self.starts += 1
        with trio.fail_after(60):
            while True:
                text = self.log.read_bytes()[offset:].decode("utf-8", "replace")
                match = _BINDS.search(text)
                if match:
                    self.url = match.group(1).split(",")[0]
                    return self.url
                if self.process.poll() is not None:
                    self.process = None
                    raise RuntimeError(f"edgefl-server exited before listening:\n{text[-3000:]}")
                await trio.sleep(0.02)

    async def kill(self) -> None:
        """SIGKILL the server and reap it."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()
        self.process = None

    async def stop(self) -> int:
        """SIGTERM (graceful shutdown) and wait; returns the exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            code = await self.process.wait()
        self.process = None
        return code

    def rss_bytes(self) -> int:
        """The server's resident set size now."""
        assert self.process is not None
        return _status_kib(self.process.pid, "VmRSS") * 1024

    def peak_rss_bytes(self) -> int:
        """The server's peak resident set size so far."""
        assert self.process is not None
        return _status_kib(self.process.pid, "VmHWM") * 1024


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


@attrs.frozen
class StateSnapshot:
    """What a state directory holds for one job, read straight from SQLite."""

    job_id: str
    current_version: int
    finished: bool
    counters: dict[str, int]
    next_ticket: int
    tasks: dict[str, tuple[str, str, int]]  # task_id -> (device_id, status, version)
    pending_updates: list[str]  # task ids, acceptance order
    versions: list[tuple[int, int]]  # (version, num_updates)
    devices: int


def state_snapshot(state_dir: Path, job_id: str | None = None) -> StateSnapshot:
    """Read the committed state of ``job_id`` (default: the only non-retired job)."""
    import json

    uri = f"file:{state_dir / 'edgefl.sqlite3'}?mode=ro"
    db = sqlite3.connect(uri, uri=True)
    try:
        if job_id is None:
            rows = db.execute("SELECT job_id FROM jobs WHERE retired = 0").fetchall()
            assert len(rows) == 1, rows
            job_id = rows[0][0]
        version, finished, counters, next_ticket = db.execute(
            "SELECT current_version, finished, counters, next_ticket FROM jobs WHERE job_id = ?",
            (job_id,),
        ).fetchone()
        tasks = {
            t: (d, s, v)
            for t, d, s, v in db.execute(
                "SELECT task_id, device_id, status, version FROM tasks WHERE job_id = ?", (job_id,)
            )
        }
        pending = [
            r[0]
            for r in db.execute(
                "SELECT task_id FROM updates WHERE job_id = ? ORDER BY seq", (job_id,)
            )
        ]
        versions = list(
            db.execute(
                "SELECT version, num_updates FROM versions WHERE job_id = ? ORDER BY version",
                (job_id,),
            )
        )
        (devices,) = db.execute(
            "SELECT COUNT(*) FROM devices WHERE job_id = ?", (job_id,)
        ).fetchone()
    finally:
        db.close()
    return StateSnapshot(
        job_id=job_id,
        current_version=version,
        finished=bool(finished),
        counters=json.loads(counters),
        next_ticket=next_ticket,
        tasks=tasks,
        pending_updates=pending,
        versions=versions,
        devices=devices,
    )


def version_weights(state_dir: Path, job_id: str, version: int) -> dict[str, np.ndarray]:
    path = state_dir / "jobs" / job_id / "versions" / f"v{version:06d}.npz"
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}
