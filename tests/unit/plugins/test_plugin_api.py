"""edgefl.api: light to import, value types validated at construction."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest

from edgefl import api
from edgefl.api import AggregatorSettings, Candidate, TrainResult, TrainTask, Update


def test_importing_the_api_pulls_in_no_server_or_ml_runtime() -> None:
    script = (
        "import sys, edgefl.api\n"
        "heavy = ('torch', 'executorch', 'trio', 'quart', 'quart_trio', 'hypercorn')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def test_all_is_sorted_and_complete() -> None:
    assert api.__all__ == sorted(api.__all__)
    for name in api.__all__:
        assert hasattr(api, name)


def test_update_validation() -> None:
    delta = {"p": np.zeros(2, np.float32)}
    assert Update("d", "t", 1, delta).num_samples == 1
    with pytest.raises(ValueError, match="'version' must be >= 1"):
        Update("d", "t", 0, delta)
    with pytest.raises(ValueError, match="'num_samples' must be >= 1"):
        Update("d", "t", 1, delta, 0)
    with pytest.raises(TypeError, match=r"delta\['p'\] must be a numpy array, got list"):
        Update("d", "t", 1, {"p": [1.0]})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="delta must be a mapping"):
        Update("d", "t", 1, [("p", np.zeros(1))])  # type: ignore[arg-type]


def test_aggregator_settings_validation() -> None:
    s = AggregatorSettings(3, 1, False, None, 5)
    assert s.global_lr == 1.0
    assert isinstance(s.global_lr, float)
    with pytest.raises(ValueError, match="num_updates_for_model"):
        AggregatorSettings(0, 1.0, False, None, 5)
    with pytest.raises(ValueError, match="global_lr must be finite"):
        AggregatorSettings(1, float("inf"), False, None, 5)
    with pytest.raises(ValueError, match="'global_lr' must be > 0"):
        AggregatorSettings(1, 0.0, False, None, 5)
    with pytest.raises(ValueError, match="max_model_history"):
        AggregatorSettings(1, 1.0, False, 0, 5)
    with pytest.raises(TypeError, match="staleness_weight"):
        AggregatorSettings(1, 1.0, "yes", None, 5)  # type: ignore[arg-type]


def test_candidate_defaults() -> None:
    c = Candidate("d", "ios")
    assert (c.device_info, c.last_seen, c.mean_task_seconds) == ({}, 0.0, None)
    with pytest.raises(TypeError, match="device_info must be a mapping"):
        Candidate("d", "ios", ["platform=ios"])  # type: ignore[arg-type]


def test_train_task_needs_a_model_and_data() -> None:
    x = np.zeros((4, 2), np.float32)
    y = np.zeros(4, np.int64)
    with pytest.raises(ValueError, match="needs program, or weights and model_path"):
        TrainTask(weights={"p": np.zeros(1, np.float32)}, x=x, y=y)
    with pytest.raises(ValueError, match="x and y must be given together"):
        TrainTask(program=b"pte", x=x)
    with pytest.raises(ValueError, match="needs the device's data"):
        TrainTask(program=b"pte")
    task = TrainTask(
        weights={"p": np.ones(2, np.float32)},
        model_path="/jobs/digits/model.pt2",
        indices=np.arange(3),
        dataset="digits",
        epochs=2,
        lr=0.1,
        batch_size=4,
        seed=9,
    )
    copy = pickle.loads(pickle.dumps(task))
    np.testing.assert_array_equal(copy.indices, [0, 1, 2])
    assert (copy.epochs, copy.lr, copy.batch_size, copy.seed) == (2, 0.1, 4, 9)


def test_train_result() -> None:
    result = TrainResult(delta={"p": np.ones(1, np.float32)}, num_samples=8, loss=0.5, seconds=1)
    assert pickle.loads(pickle.dumps(result)).num_samples == 8
    with pytest.raises(ValueError, match="num_samples"):
        TrainResult(delta={}, num_samples=-1, loss=0.0, seconds=0.0)
