"""Federated CIFAR-10 on simulated phones: a small CNN, FedBuff, ExecuTorch.

Run (after downloading the python version of CIFAR-10, see README.md)::

    python examples/cifar10/cifar10_fedbuff.py --data ~/data/cifar-10-batches-py

The script defines the network in plain PyTorch, wraps it in a ``DeviceModel``, describes the job
with an ``ETFedBuffRecipe`` and runs it with simulated devices (``recipe.run()``): the job is
exported to an ExecuTorch training program, served by an in-process edgefl server on loopback,
and trained by simulated Android and iOS devices that speak EDIP over HTTP, each on its own shard
of the CIFAR-10 training batches. Every model version is evaluated on CIFAR-10's ``test_batch``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

from edgefl import (
    DeviceManagerConfig,
    DeviceModel,
    ETFedBuffRecipe,
    EvaluatorConfig,
    ModelManagerConfig,
    SimulationConfig,
)


class Cifar10ConvNet(nn.Module):
    """The classic small CIFAR-10 CNN (62,006 parameters, the net of NVFlare's mobile example)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        logits: torch.Tensor = self.fc3(x)
        return logits


class TrainingNet(DeviceModel):
    """What devices train: the CNN plus cross-entropy, ``(input, label) -> (loss, predictions)``."""

    def __init__(self) -> None:
        super().__init__(Cifar10ConvNet())


def build_recipe(args: argparse.Namespace) -> ETFedBuffRecipe:
    """The job: FedBuff with ``--concurrency`` devices training at once and a new version every
    ``--buffer`` updates."""
    from edgefl._data import prepare  # reads the CIFAR-10 python batches safely

    data = f"cifar10:{args.data}"
    # Held out for the server's evaluator; devices only ever see the training batches.
    test = prepare(data, max_test=args.max_test, seed=args.seed).test
    batch = args.batch_size
    return ETFedBuffRecipe(
        job_name="cifar10_et",
        device_model=TrainingNet(),
        input_shape=(batch, 3, 32, 32),
        output_shape=(batch,),
        model_manager_config=ModelManagerConfig(
            max_model_version=args.versions,
            num_updates_for_model=args.buffer,
            global_lr=1.0,
        ),
        device_manager_config=DeviceManagerConfig(
            device_selection_size=args.concurrency,
            min_hole_to_fill=1,
        ),
        evaluator_config=EvaluatorConfig(dataset=test.take()),
        simulation_config=SimulationConfig(
            num_devices=args.devices,
            num_workers=args.workers,
            trainer=args.trainer,
            dataset=data,
            partition=args.partition,
            dirichlet_alpha=args.alpha,
            seed=args.seed,
        ),
        device_training_params={"epoch": args.epochs, "lr": args.lr, "batch_size": batch},
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="folder of the CIFAR-10 python batches (data_batch_1..5, test_batch)",
    )
    parser.add_argument("--devices", type=int, default=16, help="simulated devices")
    parser.add_argument("--concurrency", type=int, default=8, help="devices training at once")
    parser.add_argument("--buffer", type=int, default=8, help="updates per new model version")
    parser.add_argument("--versions", type=int, default=20, help="model versions to train")
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per task")
    parser.add_argument("--lr", type=float, default=0.05, help="local learning rate")
    parser.add_argument("--batch-size", type=int, default=32, help="local batch size")
    parser.add_argument(
        "--trainer",
        default="eager",
        help="'eager' (PyTorch, fast) or 'executorch' (the .pte in the ExecuTorch runtime, as on"
        " a phone; ~0.4 s per step for this CNN on a laptop core)",
    )
    parser.add_argument("--workers", type=int, default=2, help="training processes")
    parser.add_argument("--partition", choices=("iid", "dirichlet"), default="iid")
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration")
    parser.add_argument("--max-train", type=int, help="train on at most this many images")
    parser.add_argument(
        "--max-test", type=int, default=2000, help="evaluate on this many test images"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--job-folder", type=Path, help="keep the exported job folder here (default: temporary)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    recipe = build_recipe(args)
    report = recipe.run(
        args.job_folder,
        max_train=args.max_train,
        platform_mix={"android": 1, "ios": 1},
    )
    for version, accuracy in report.accuracy_by_version():
        print(f"version {version:3d}: test accuracy {accuracy:5.1f} %")
    print(
        f"{report.job_name}: version {report.version}/{report.max_version}"
        f" {'finished' if report.finished else 'NOT finished'} in {report.seconds:.0f} s;"
        f" {report.server.updates_accepted} updates accepted"
    )
    return 0 if report.finished and report.protocol_errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
