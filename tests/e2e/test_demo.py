"""``edgefl-server demo`` at a small size: a real server on loopback, real simulated devices of
every kind, the real ExecuTorch runtime (or eager PyTorch), real evaluation."""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING

import pytest

from edgefl.__main__ import main
from edgefl._demo import run_demo

if TYPE_CHECKING:
    from pathlib import Path

CHANCE = 10.0  # ten digit classes


def _check_run_folder(run: Path, versions: int) -> list[dict[str, object]]:
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["version"] for m in metrics] == list(range(1, versions + 1))
    table = (run / "accuracy.txt").read_text().splitlines()
    assert table[0].split() == ["version", "accuracy", "%", "test", "loss"]
    assert len(table) == 2 + versions
    assert table[-1].split()[0] == str(versions)
    png = (run / "accuracy.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 5000
    assert (run / "job" / "job.toml").is_file()
    assert "event=report_accepted" in (run / "server.log").read_text()
    return metrics


@pytest.mark.slow
def test_demo_command_with_the_executorch_runtime_and_every_device_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    status = main(
        [
            "demo",
            "--devices",
            "8",
            "--versions",
            "5",
            "--workers",
            "1",
            "--platforms",
            "android=1,ios=1,python=1,cbor=1",
            "--seed",
            "1",
            "--run-folder",
            str(run),
        ]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    metrics = _check_run_folder(run, versions=5)
    accuracy = [float(m["accuracy"]) for m in metrics]  # type: ignore[arg-type]
    assert accuracy[-1] > 3 * CHANCE, accuracy
    assert accuracy[-1] > accuracy[0] + 20, accuracy
    # the closing table, the counters and where everything is
    assert "version  test accuracy %" in out
    assert f"{accuracy[-1]:.2f}" in out
    assert "0 protocol errors" in out
    assert "(android 2, cbor 2, ios 2, python 2)" in out
    assert f"run folder: {run}" in out
    assert str(run / "accuracy.png") in out


@pytest.mark.slow
def test_demo_with_the_eager_trainer(tmp_path: Path) -> None:
    out = io.StringIO()
    result = run_demo(
        run_folder=tmp_path / "run",
        num_devices=6,
        versions=5,
        trainer="eager",
        num_workers=1,
        seed=2,
        platforms="android=1,ios=1",
        stream=out,
    )
    assert "edgefl demo: 6 simulated devices" in out.getvalue()
    report = result.report
    assert report.finished
    assert report.version == 5
    assert report.protocol_errors == 0
    assert report.fleet.by_kind == {"android": 3, "ios": 3}
    # FedBuff: a version needs num_updates_for_model (5) accepted updates
    assert report.server.updates_accepted >= 4 * 5
    rows = report.accuracy_by_version()
    assert [v for v, _ in rows] == [1, 2, 3, 4, 5]
    assert rows[-1][1] > 3 * CHANCE
    assert rows[-1][1] > rows[0][1] + 20
    metrics = _check_run_folder(result.run_folder, versions=5)
    assert metrics[-1]["accuracy"] == pytest.approx(rows[-1][1])
    assert set(result.files) == {"metrics", "table", "plot"}
