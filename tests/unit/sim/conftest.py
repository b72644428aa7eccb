from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path

    from edgefl._jobfolder import JobFolder


@pytest.fixture(scope="session")
def digits_job(tmp_path_factory: pytest.TempPathFactory) -> JobFolder:
    """A small digits job (MLP 64 -> 16 -> 10, batches up to 8) exported once per session."""
    import torch
    from torch import nn

    from edgefl._data import prepare
    from edgefl._jobfolder import load_job_folder
    from edgefl._model import DeviceModel
    from edgefl._recipe import (
        DeviceManagerConfig,
        ETFedBuffRecipe,
        EvaluatorConfig,
        ModelManagerConfig,
    )

    torch.manual_seed(0)
    recipe = ETFedBuffRecipe(
        job_name="digits_unit",
        device_model=DeviceModel(nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))),
        input_shape=(8, 64),
        output_shape=(8,),
        model_manager_config=ModelManagerConfig(
            max_model_version=3, num_updates_for_model=2, global_lr=1.0
        ),
        device_manager_config=DeviceManagerConfig(device_selection_size=2),
        evaluator_config=EvaluatorConfig(dataset=prepare("digits").test.take()),
        device_training_params={"epoch": 1, "lr": 0.1, "batch_size": 8},
    )
    folder: Path = tmp_path_factory.mktemp("jobs") / "digits_unit"
    return load_job_folder(recipe.export(folder))
