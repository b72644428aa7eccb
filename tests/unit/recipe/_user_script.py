"""A user's job script, run as ``python _user_script.py OUT_DIR`` by the recipe tests.

The model classes live in this script's ``__main__``, as in a user's own file: the job folder it
writes must work in a process that cannot import them. The recipe call is the one from the
issue, written as users write it for NVFlare (only the imports differ).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgefl import (
    DeviceManagerConfig,
    DeviceModel,
    ETFedBuffRecipe,
    EvaluatorConfig,
    ModelManagerConfig,
    SimulationConfig,
    load_job_folder,
)


class Cifar10ConvNet(nn.Module):
    """A small CIFAR-10-shaped CNN (3x32x32 in, 10 classes out)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 8, 5)
        self.fc1 = nn.Linear(8 * 5 * 5, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


class TrainingNet(DeviceModel):
    def __init__(self) -> None:
        DeviceModel.__init__(self, Cifar10ConvNet())


def main(out: Path) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    test_x = rng.standard_normal((40, 3, 32, 32)).astype(np.float32)
    test_y = rng.integers(0, 10, 40)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recipe = ETFedBuffRecipe(
            job_name="cifar10_et",
            device_model=TrainingNet(),
            input_shape=(32, 3, 32, 32),
            output_shape=(32,),
            model_manager_config=ModelManagerConfig(
                max_model_version=3,
                update_timeout=1000.0,
                num_updates_for_model=8,
            ),
            device_manager_config=DeviceManagerConfig(
                device_selection_size=8,
                min_hole_to_fill=8,
            ),
            evaluator_config=EvaluatorConfig(custom_dataset={"data": test_x, "labels": test_y}),
            simulation_config=SimulationConfig(task_processor=None, num_devices=8),
            device_training_params={"epoch": 3, "lr": 0.0001, "batch_size": 32},
        )
    folder = recipe.export(out / "cifar10_et")
    job = load_job_folder(folder, verify_program=True)
    params = {n.removeprefix("net."): p for n, p in recipe.device_model.named_parameters()}
    report = {
        "warnings": [type(w.message).__name__ for w in caught],
        "spec_equal": job.spec == recipe._spec(list(job.param_shapes.items())),
        "weights_bitwise": sorted(job.initial_weights) == sorted(params)
        and all(
            job.initial_weights[n].tobytes() == p.detach().numpy().tobytes()
            for n, p in params.items()
        ),
        "folder": str(folder),
    }
    (out / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
