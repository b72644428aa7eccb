"""Benchmark: the simulated devices' trainers.

* The eager trainer (``model.pt2`` in PyTorch, weights loaded from the task, delta computed)
  against plain PyTorch training of the same ``DeviceModel`` on the same data, batch order, epochs
  and learning rate. Target (DESIGN.md "Performance targets"): within 1.5x.
* The ExecuTorch trainer (the task's ``.pte`` in the ExecuTorch runtime): time per training step.
* The spawn pool: tasks per second through ``TrainerPool`` with 2 workers against the same tasks
  trained one after another in this process.

Two models: the demo's digits MLP (64-64-10, batches of 16: overhead-bound, the hard case for the
ratio) and NVFlare's CIFAR-10 CNN (62,006 parameters, batches of 32, random images). Torch runs
single-threaded, as in a pool worker. Each figure is the median of ``--repeats`` runs.

Run: ``python bench/bench_trainer.py [--repeats 15]``. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import trio
from torch import nn

from edgefl import (
    DeviceManagerConfig,
    DeviceModel,
    ETFedBuffRecipe,
    ModelManagerConfig,
    load_job_folder,
)
from edgefl._simulate import TrainerPool
from edgefl._trainers import EagerTrainer, ExecuTorchTrainer
from edgefl.api import TrainTask

if TYPE_CHECKING:
    from collections.abc import Callable


class Cifar10ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(400, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        out: torch.Tensor = self.fc3(torch.relu(self.fc2(x)))
        return out


def _job(net: nn.Module, input_shape: tuple[int, ...], folder: Path) -> Any:
    recipe = ETFedBuffRecipe(
        job_name="bench",
        device_model=DeviceModel(net),
        input_shape=input_shape,
        output_shape=(input_shape[0],),
        model_manager_config=ModelManagerConfig(
            max_model_version=2, num_updates_for_model=1, global_lr=1.0
        ),
        device_manager_config=DeviceManagerConfig(device_selection_size=1),
    )
    return load_job_folder(recipe.export(folder))


def _plain(
    model: DeviceModel,
    weights: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch: int,
    seed: int,
) -> float:
    """Plain PyTorch: the same batches in the same order, SGD; returns seconds."""
    started = time.perf_counter()
    with torch.no_grad():
        for name, p in model.net.named_parameters():
            p.copy_(torch.from_numpy(weights[name]))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for b in range(len(y) // batch):
            idx = torch.from_numpy(order[b * batch : (b + 1) * batch])
            optimizer.zero_grad(set_to_none=True)
            loss = model(xt[idx], yt[idx])[0]
            loss.backward()
            optimizer.step()
    return time.perf_counter() - started


def _median(fn: Callable[[], float], repeats: int) -> float:
    fn()  # warm-up
    return float(statistics.median(fn() for _ in range(repeats)))


def _cifar_files(folder: Path, per_batch: int) -> str:
    """Random images in the CIFAR-10 python-batch format; returns the data set spec."""
    import pickle

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, size=per_batch).tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return f"cifar10:{folder}"


def bench_model(
    name: str,
    net: nn.Module,
    input_shape: tuple[int, ...],
    dataset: str,
    indices: np.ndarray,
    repeats: int,
) -> dict[str, Any]:
    """Tasks carry indices into ``dataset``, as in a simulation."""
    from edgefl._data import load_dataset

    batch = input_shape[0]
    epochs, lr = 2, 0.05
    x, y = load_dataset(dataset).take(indices)
    x = x.reshape((-1, *input_shape[1:]))
    steps = epochs * (len(y) // batch)
    with tempfile.TemporaryDirectory() as tmp:
        job = _job(net, input_shape, Path(tmp) / "job")
        weights = job.initial_weights
        program = job.template.patch(weights)
        common: dict[str, Any] = {
            "indices": indices,
            "dataset": dataset,
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch,
            "seed": 1,
        }
        eager_task = TrainTask(weights=weights, model_path=str(job.path / "model.pt2"), **common)
        et_task = TrainTask(program=program, **common)
        eager = EagerTrainer(input_shape=input_shape)
        et = ExecuTorchTrainer(input_shape=input_shape)
        model = DeviceModel(net)
        plain_s = _median(
            lambda: _plain(model, weights, x, y, epochs=epochs, lr=lr, batch=batch, seed=1),
            repeats,
        )

        def eager_run() -> float:
            started = time.perf_counter()
            eager.train(eager_task)
            return time.perf_counter() - started

        def et_run() -> float:
            started = time.perf_counter()
            et.train(et_task)
            return time.perf_counter() - started

        eager_s = _median(eager_run, repeats)
        et_s = _median(et_run, max(3, repeats // 3))
        pool = trio.run(_pool_rate, eager, eager_task, input_shape, dataset, 40)
    return {
        "model": name,
        "parameters": sum(p.numel() for p in net.parameters()),
        "batch": batch,
        "steps_per_task": steps,
        "plain_pytorch_task_ms": round(plain_s * 1000, 2),
        "eager_trainer_task_ms": round(eager_s * 1000, 2),
        "eager_over_plain": round(eager_s / plain_s, 3),
        "target_eager_over_plain": 1.5,
        "executorch_task_ms": round(et_s * 1000, 2),
        "executorch_step_ms": round(et_s / steps * 1000, 3),
        "plain_pytorch_step_ms": round(plain_s / steps * 1000, 3),
        **pool,
    }


async def _pool_rate(
    trainer: EagerTrainer,
    task: TrainTask,
    input_shape: tuple[int, ...],
    dataset: str,
    n: int,
) -> dict[str, Any]:
    """Tasks per second through a 2-worker spawn pool (after each worker trained once) vs the
    same tasks one after another in this process."""
    started = time.perf_counter()
    for _ in range(n):
        trainer.train(task)
    inline = n / (time.perf_counter() - started)
    pool = TrainerPool("eager", {"input_shape": list(input_shape)}, num_workers=2, dataset=dataset)
    try:
        await pool.start()
        async with trio.open_nursery() as nursery:  # each worker loads model.pt2 once
            for _ in range(4):
                nursery.start_soon(pool.train, task)
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(pool.train, task)
        pooled = n / (time.perf_counter() - started)
    finally:
        await pool.aclose()
    return {
        "inline_tasks_per_s": round(inline, 1),
        "pool2_tasks_per_s": round(pooled, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from edgefl._data import partition, prepare

    digits_shard = partition(prepare("digits"), 20, seed=0, min_size=16)[0]
    with tempfile.TemporaryDirectory() as tmp:
        cifar = _cifar_files(Path(tmp) / "cifar", per_batch=64)
        results = [
            bench_model(
                "digits MLP 64-64-10",
                nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)),
                (16, 64),
                "digits",
                digits_shard,
                repeats=args.repeats,
            ),
            bench_model(
                "CIFAR-10 CNN",
                Cifar10ConvNet(),
                (32, 3, 32, 32),
                cifar,
                np.arange(320),
                repeats=max(3, args.repeats // 3),
            ),
        ]
    print(json.dumps({"torch_threads": 1, "results": results}, indent=2))


if __name__ == "__main__":
    main()
