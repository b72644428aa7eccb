"""``edgefl-server simulate`` and ``simulate_job``: a job folder served on loopback to a fleet of
every device kind, with slow devices and devices that vanish, and a clean stop on Ctrl-C."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from typing import TYPE_CHECKING

import pytest

from edgefl.__main__ import main
from edgefl._runtime import VersionPublished
from edgefl._simulate import FleetConfig, simulate_job

if TYPE_CHECKING:
    from pathlib import Path


def _export(folder: Path, *, versions: int, devices: int, buffer: int) -> Path:
    import torch
    from torch import nn

    from edgefl._data import prepare
    from edgefl._model import DeviceModel
    from edgefl._recipe import (
        DeviceManagerConfig,
        ETFedBuffRecipe,
        EvaluatorConfig,
        ModelManagerConfig,
        SimulationConfig,
    )

    torch.manual_seed(0)
    recipe = ETFedBuffRecipe(
        job_name="digits_sim",
        device_model=DeviceModel(nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))),
        input_shape=(8, 64),
        output_shape=(8,),
        model_manager_config=ModelManagerConfig(
            max_model_version=versions, num_updates_for_model=buffer, global_lr=1.0
        ),
        device_manager_config=DeviceManagerConfig(
            device_selection_size=devices, task_timeout=3.0, device_ttl=6.0
        ),
        evaluator_config=EvaluatorConfig(dataset=prepare("digits").test.take()),
        simulation_config=SimulationConfig(
            num_devices=devices, num_workers=1, trainer="eager", seed=1
        ),
        device_training_params={"epoch": 2, "lr": 0.2, "batch_size": 8},
    )
    return recipe.export(folder)


@pytest.fixture(scope="module")
def job_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tmp_path_factory.mktemp("sim") / "job", versions=4, devices=10, buffer=2)


@pytest.mark.slow
async def test_fleet_of_every_kind_with_slow_devices_and_dropouts(
    job_folder: Path, tmp_path: Path
) -> None:
    config = FleetConfig(
        num_devices=10,
        num_workers=1,
        trainer="eager",
        seed=1,
        platform_mix={"android": 1, "ios": 1, "python": 1, "cbor": 1},
        delay=(0.0, 0.3),
        dropout=0.2,
    )
    published: list[int] = []
    report = await simulate_job(
        job_folder,
        config,
        state_dir=tmp_path / "state",
        listeners=[
            lambda e: published.append(e.version) if isinstance(e, VersionPublished) else None
        ],
    )
    assert report.finished, report.error
    assert report.version == report.max_version == 4
    assert published == [2, 3, 4]  # version 1 was out before the fleet started
    assert report.protocol_errors == 0, report.fleet.errors
    assert report.fleet.by_kind == {"android": 3, "ios": 3, "python": 2, "cbor": 2}
    # The whole fleet is selected at once (device_selection_size = 10), so every device gets a
    # first task; these devices' seeded coins say they vanish with it.
    first_task_dropouts = sum(
        random.Random(f"1/{i}").random() < 0.2 for i in range(config.num_devices)
    )
    assert first_task_dropouts == 2
    assert report.fleet.dropped_out >= first_task_dropouts
    assert report.fleet.tasks >= report.fleet.reports_ok + report.fleet.dropped_out
    stats = report.server
    assert stats.updates_accepted >= 3 * 2  # versions 2..4, two updates each
    assert stats.updates_accepted == report.fleet.reports_ok - sum(stats.updates_discarded.values())
    # the run's metrics were kept in the state directory and read back
    assert report.metrics_path is not None
    lines = [json.loads(x) for x in report.metrics_path.read_text().splitlines()]
    assert [m["version"] for m in lines] == [1, 2, 3, 4]
    assert report.accuracy_by_version()[-1][1] > 30.0


@pytest.mark.slow
def test_simulate_command_stops_cleanly_on_ctrl_c(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _export(tmp_path / "job", versions=500, devices=4, buffer=2)
    state = tmp_path / "state"
    interrupted = threading.Event()

    def interrupt_after_version_3() -> None:
        # Wait (on the file system, not a clock) until three versions were evaluated.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            for metrics in state.glob("**/metrics.jsonl"):
                if len(metrics.read_text().splitlines()) >= 3:
                    os.kill(os.getpid(), signal.SIGINT)
                    interrupted.set()
                    return
            time.sleep(0.05)

    watcher = threading.Thread(target=interrupt_after_version_3, daemon=True)
    watcher.start()
    status = main(
        ["simulate", str(job), "--state-dir", str(state), "--platforms", "android=1,cbor=1"]
    )
    watcher.join(timeout=10)
    out = capsys.readouterr().out
    assert interrupted.is_set()
    assert status == 130, out
    assert "simulating job 'digits_sim': 4 devices, 1 workers, trainer eager" in out
    assert "NOT finished" in out
    assert "0 protocol errors" in out
    assert f"metrics: {state}" in out
    # what was done before Ctrl-C is kept: the versions evaluated so far are in metrics.jsonl
    (metrics,) = state.glob("**/metrics.jsonl")
    versions = [json.loads(x)["version"] for x in metrics.read_text().splitlines()]
    assert versions[:3] == [1, 2, 3]
    assert max(versions) < 500
