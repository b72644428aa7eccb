"""examples/cifar10 on user-supplied CIFAR-10 files (tiny generated ones here): the recipe
workflow with a CNN (Conv2d + MaxPool2d) trained by simulated devices in the ExecuTorch runtime."""

from __future__ import annotations

import importlib.util
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cifar10" / "cifar10_fedbuff.py"


def _write_cifar(folder: Path, *, per_batch: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, size=per_batch)
        # class-dependent brightness, so there is something to learn
        data = rng.integers(0, 128, size=(per_batch, 3072)) + labels[:, None] * 12
        batch = {b"labels": labels.tolist(), b"data": data.astype(np.uint8)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


@pytest.mark.slow
def test_cifar10_example_runs_on_cifar_batch_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "cifar-10-batches-py"
    _write_cifar(data, per_batch=24)
    spec = importlib.util.spec_from_file_location("cifar10_fedbuff", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, example)  # as `python cifar10_fedbuff.py` would
    spec.loader.exec_module(example)
    status = example.main(
        [
            "--data",
            str(data),
            "--devices",
            "4",
            "--concurrency",
            "4",
            "--buffer",
            "2",
            "--versions",
            "3",
            "--batch-size",
            "8",
            "--trainer",
            "executorch",
            "--workers",
            "1",
            "--max-test",
            "16",
            "--job-folder",
            str(tmp_path / "job"),
        ]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert "cifar10_et: version 3/3 finished" in out
    for version in (1, 2, 3):
        assert f"version   {version}: test accuracy" in out
    assert (tmp_path / "job" / "eval.npz").is_file()
    with np.load(tmp_path / "job" / "eval.npz") as npz:
        assert npz["x"].shape == (16, 3, 32, 32)
    # 4 devices x 30 images each: 3 full batches of 8 per task, the CNN's 10 parameter tensors
    assert "updates accepted" in out
