"""Trainers of simulated devices: the ExecuTorch runtime on the .pte and eager PyTorch on
model.pt2 agree; the spawn pool runs them in worker processes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from edgefl._data import partition, prepare
from edgefl._simulate import SimulationError, TrainerPool, weights_in_program
from edgefl._trainers import EagerTrainer, ExecuTorchTrainer, TrainerError, task_data
from edgefl.api import Trainer, TrainTask

if TYPE_CHECKING:
    from edgefl._jobfolder import JobFolder


def _shifted(weights: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (v + rng.normal(0, 0.05, v.shape)).astype(np.float32) for k, v in weights.items()}


@pytest.fixture(scope="module")
def device_indices() -> np.ndarray:
    return partition(prepare("digits"), 10, seed=1, min_size=8)[3]


@pytest.mark.slow
def test_task_weights_are_read_back_from_a_patched_program(digits_job: JobFolder) -> None:
    weights = _shifted(digits_job.initial_weights, seed=7)
    read = weights_in_program(digits_job, digits_job.template.patch(weights))
    assert set(read) == set(weights)
    for name, value in weights.items():
        assert read[name].dtype == np.float32
        assert np.array_equal(read[name], value), name
    with pytest.raises(SimulationError, match="does not hold parameter"):
        weights_in_program(digits_job, digits_job.template.patch(weights)[:100])


@pytest.mark.slow
def test_executorch_and_eager_trainers_compute_the_same_update(
    digits_job: JobFolder, device_indices: np.ndarray
) -> None:
    weights = _shifted(digits_job.initial_weights, seed=11)
    common = {
        "indices": device_indices,
        "dataset": "digits",
        "epochs": 2,
        "lr": 0.1,
        "batch_size": 8,
        "seed": 5,
    }
    et = ExecuTorchTrainer(input_shape=digits_job.spec.input_shape)
    eager = EagerTrainer(input_shape=digits_job.spec.input_shape)
    assert isinstance(et, Trainer)
    assert isinstance(eager, Trainer)
    a = et.train(TrainTask(program=digits_job.template.patch(weights), **common))
    b = eager.train(
        TrainTask(weights=weights, model_path=str(digits_job.path / "model.pt2"), **common)
    )
    full_batches = device_indices.size // 8
    assert a.num_samples == b.num_samples == full_batches * 8
    assert a.loss == pytest.approx(b.loss, rel=1e-4)
    assert set(a.delta) == set(b.delta) == set(weights)
    for name in weights:
        assert a.delta[name].dtype == np.float32
        assert np.abs(a.delta[name]).max() > 1e-4, "training moved every parameter"
        np.testing.assert_allclose(a.delta[name], b.delta[name], rtol=1e-3, atol=2e-6)
    # the same seed gives the same update; another seed (another batch order) another one
    again = et.train(TrainTask(program=digits_job.template.patch(weights), **common))
    assert all(np.array_equal(again.delta[n], a.delta[n]) for n in weights)
    other = et.train(TrainTask(program=digits_job.template.patch(weights), **{**common, "seed": 6}))
    assert not all(np.array_equal(other.delta[n], a.delta[n]) for n in weights)


@pytest.mark.slow
def test_training_lowers_the_loss_on_the_device_data(
    digits_job: JobFolder, device_indices: np.ndarray
) -> None:
    trainer = EagerTrainer()
    task = TrainTask(
        weights=digits_job.initial_weights,
        model_path=str(digits_job.path / "model.pt2"),
        indices=device_indices,
        dataset="digits",
        epochs=5,
        lr=0.2,
        batch_size=8,
    )
    first = trainer.train(TrainTask(**{**_fields(task), "epochs": 1}))
    many = trainer.train(task)
    assert many.loss < first.loss
    assert many.seconds >= 0


def _fields(task: TrainTask) -> dict[str, object]:
    import attrs

    return attrs.asdict(task, recurse=False)


@pytest.mark.slow
def test_trainers_refuse_tasks_they_cannot_train(digits_job: JobFolder) -> None:
    x = np.zeros((4, 64), np.float32)
    y = np.zeros(4, np.int64)
    with pytest.raises(TrainerError, match=r"TrainTask\.program"):
        ExecuTorchTrainer().train(
            TrainTask(weights=digits_job.initial_weights, model_path="m.pt2", x=x, y=y)
        )
    with pytest.raises(TrainerError, match="ExecuTorch runtime failed"):
        ExecuTorchTrainer().train(TrainTask(program=b"not a program at all", x=x, y=y))
    with pytest.raises(TrainerError, match="weights"):
        EagerTrainer().train(TrainTask(program=b"x", x=x, y=y))
    bad = dict(digits_job.initial_weights)
    bad.pop(next(iter(bad)))
    with pytest.raises(TrainerError, match="missing"):
        EagerTrainer().train(
            TrainTask(weights=bad, model_path=str(digits_job.path / "model.pt2"), x=x, y=y)
        )
    with pytest.raises(ValueError, match="input_shape"):
        EagerTrainer(input_shape=(8,))


def test_task_data_reshapes_to_the_model_input() -> None:
    task = TrainTask(program=b"p", indices=np.arange(5), dataset="digits")
    x, y = task_data(task, (8, 1, 8, 8))
    assert x.shape == (5, 1, 8, 8)
    assert y.shape == (5,)
    with pytest.raises(TrainerError, match="do not fit the model input"):
        task_data(task, (8, 3, 32, 32))
    with pytest.raises(TrainerError, match="no dataset"):
        task_data(TrainTask(program=b"p", indices=np.arange(5)))


@pytest.mark.slow
async def test_pool_trains_in_spawned_workers(
    digits_job: JobFolder, device_indices: np.ndarray
) -> None:
    task = TrainTask(
        weights=digits_job.initial_weights,
        model_path=str(digits_job.path / "model.pt2"),
        indices=device_indices,
        dataset="digits",
        epochs=2,
        lr=0.1,
        batch_size=8,
        seed=2,
    )
    expected = EagerTrainer().train(task)
    pool = TrainerPool("eager", num_workers=1, dataset="digits")
    try:
        await pool.start()
        result = await pool.train(task)
    finally:
        await pool.aclose()
    for name, value in expected.delta.items():
        np.testing.assert_allclose(result.delta[name], value, rtol=1e-5, atol=1e-7)
    with pytest.raises(SimulationError, match="closed"):
        await pool.train(task)


def test_pool_names_a_missing_trainer_and_bad_arguments() -> None:
    with pytest.raises(SimulationError, match=r"not installed.*executorch"):
        TrainerPool("nonesuch")
    with pytest.raises(SimulationError, match="invalid arguments"):
        TrainerPool("eager", {"bogus": 1})
