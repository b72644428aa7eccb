"""DeviceModel, the config objects and the recipe's argument checks (no export: fast)."""

from __future__ import annotations

import math
import tomllib
from typing import Any

import numpy as np
import pytest
import tomli_w
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from edgefl import (
    DeviceManagerConfig,
    DeviceModel,
    ETFedBuffRecipe,
    EvaluatorConfig,
    ExportError,
    ModelManagerConfig,
    SimulationConfig,
)
from edgefl._jobfolder import JobSpec, ParamSpec, PluginSpec
from edgefl._recipe import DefaultGlobalLRWarning, derive_method

# --------------------------------------------------------------------------------------------------
# DeviceModel


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def test_device_model_returns_loss_then_int64_predictions() -> None:
    torch.manual_seed(0)
    model = DeviceModel(Tiny())
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    loss, predictions = model(x, y)
    logits = model.net(x)
    torch.testing.assert_close(loss, nn.functional.cross_entropy(logits, y))
    assert predictions.dtype == torch.int64
    assert not predictions.requires_grad
    assert torch.equal(predictions, logits.argmax(dim=1))
    assert [n for n, _ in model.named_parameters()] == ["net.fc.weight", "net.fc.bias"]


def test_device_model_loss_can_be_replaced_by_argument_or_subclass() -> None:
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    by_argument = DeviceModel(Tiny(), loss=nn.MultiMarginLoss())
    torch.testing.assert_close(
        by_argument(x, y)[0], nn.functional.multi_margin_loss(by_argument.net(x), y)
    )

    class Smoothed(DeviceModel):
        def __init__(self) -> None:
            super().__init__(Tiny())

        def loss(self, outputs: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
            return nn.functional.cross_entropy(outputs, label, label_smoothing=0.1)

    model = Smoothed()
    torch.testing.assert_close(
        model(x, y)[0], nn.functional.cross_entropy(model.net(x), y, label_smoothing=0.1)
    )
    assert "loss" not in dict(model.named_children())


def test_device_model_refuses_what_is_not_a_network() -> None:
    with pytest.raises(TypeError, match=r"net must be a torch\.nn\.Module"):
        DeviceModel(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="loss must be callable"):
        DeviceModel(Tiny(), loss=3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Config objects


def test_model_manager_defaults_are_nvflare_recipe_defaults_and_warn_about_global_lr() -> None:
    with pytest.warns(DefaultGlobalLRWarning, match="global_lr"):
        config = ModelManagerConfig()
    assert config.max_num_active_model_versions == 3
    assert config.max_model_version == 20
    assert config.update_timeout == 5.0
    assert config.num_updates_for_model == 100
    assert config.max_model_history == 10
    assert config.staleness_weight is False
    assert config.global_lr == 0.01
    assert config.aggregation_normalization == "count"
    assert config.effective_staleness == "none"


def test_explicit_global_lr_does_not_warn() -> None:
    # pytest turns warnings into errors: constructing is the assertion.
    config = ModelManagerConfig(global_lr=0.01, staleness_weight=True)
    assert config.global_lr == 0.01
    assert config.effective_staleness == "nvflare"
    assert ModelManagerConfig(global_lr=1, staleness="polynomial").effective_staleness == (
        "polynomial"
    )


def test_device_manager_defaults() -> None:
    config = DeviceManagerConfig()
    assert config.device_selection_size == 100
    assert config.min_hole_to_fill == 1
    assert config.device_reuse is True
    assert config.min_devices_to_start is None
    assert config.devices_to_start == 100
    assert (
        DeviceManagerConfig(device_selection_size=8, min_devices_to_start=2).devices_to_start == 2
    )


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ModelManagerConfig(global_lr=1.0, max_model_version=1), "max_model_version"),
        (lambda: ModelManagerConfig(global_lr=1.0, num_updates_for_model=0), "num_updates_for"),
        (lambda: ModelManagerConfig(global_lr=1.0, num_updates_for_model=True), "num_updates"),
        (lambda: ModelManagerConfig(global_lr=1.0, update_timeout=-1), "update_timeout"),
        (lambda: ModelManagerConfig(global_lr=1.0, max_model_history=-2), "max_model_history"),
        (lambda: ModelManagerConfig(global_lr=-0.1), "global_lr"),
        (lambda: ModelManagerConfig(global_lr=math.nan), "global_lr"),
        (lambda: ModelManagerConfig(global_lr=1.0, staleness="paper"), "staleness"),
        (lambda: ModelManagerConfig(global_lr=1.0, staleness_exponent=2.0), "staleness_exponent"),
        (
            lambda: ModelManagerConfig(global_lr=1.0, aggregation_normalization="sum"),
            "aggregation_normalization",
        ),
        (lambda: DeviceManagerConfig(device_selection_size=-3), "device_selection_size"),
        (
            lambda: DeviceManagerConfig(device_selection_size=4, min_hole_to_fill=5),
            r"min_hole_to_fill \(5\) must be <= device_selection_size \(4\)",
        ),
        (
            lambda: DeviceManagerConfig(device_selection_size=4, min_devices_to_start=5),
            "min_devices_to_start",
        ),
        (lambda: DeviceManagerConfig(task_timeout=0), "task_timeout"),
        (lambda: DeviceManagerConfig(device_sampling_strategy="fair"), "device_sampling_strategy"),
        (lambda: SimulationConfig(num_devices=0), "num_devices"),
        (lambda: SimulationConfig(num_workers=-1), "num_workers"),
        (lambda: SimulationConfig(job_timeout=0), "job_timeout"),
        (lambda: SimulationConfig(dataset="mnist"), "SimulationConfig.dataset"),
        (lambda: SimulationConfig(partition="shards"), "partition"),
        (lambda: SimulationConfig(trainer="no such plugin!"), "trainer"),
        (lambda: SimulationConfig(trainer_args={"a": None}), "trainer_args"),
        (lambda: EvaluatorConfig(eval_frequency=0, dataset=([[1.0]], [0])), "eval_frequency"),
    ],
)
def test_bad_config_values_are_refused_naming_the_field(make: Any, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_simulation_config_defaults_and_settings() -> None:
    config = SimulationConfig(task_processor=None)
    assert (config.job_timeout, config.num_devices, config.num_workers) == (60.0, 1000, 10)
    assert config.trainer == "executorch"
    assert "task_processor" not in config.settings()
    processor = object()
    assert SimulationConfig(task_processor=processor).task_processor is processor


def test_evaluator_config_takes_arrays_either_way() -> None:
    x = np.arange(24, dtype=np.float64).reshape(6, 4)
    y = np.array([0.0, 1, 2, 0, 1, 2])
    a = EvaluatorConfig(custom_dataset={"data": x, "labels": y})
    b = EvaluatorConfig(dataset=(x.tolist(), y.astype(int).tolist()))
    for config in (a, b):
        assert config.x.dtype == np.float32
        assert config.y.dtype == np.int64
        assert np.array_equal(config.x, x.astype(np.float32))
        assert np.array_equal(config.y, y.astype(np.int64))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one of custom_dataset"),
        ({"custom_dataset": {"data": [[1.0]], "labels": [0]}, "dataset": ([[1.0]], [0])}, "got"),
        ({"torchvision_dataset": {"name": "CIFAR10", "path": "/data"}}, "not supported"),
        ({"custom_dataset": {"data": [[1.0]]}}, "'labels'"),
        ({"custom_dataset": {"data": [[1.0], [2.0]], "labels": [0]}}, "labels of shape"),
        ({"dataset": ([[1.0]], [0.5])}, "labels must be integers"),
        ({"dataset": ([[math.inf]], [0])}, "NaN or infinite"),
        ({"dataset": ([[1.0]], [-1])}, "labels must be >= 0"),
    ],
)
def test_bad_evaluator_data_is_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        EvaluatorConfig(**kwargs)


def test_derive_method_follows_the_android_layouts() -> None:
    assert derive_method((4, 3, 32, 32)) == "cnn"
    assert derive_method((4, 2)) == "xor"
    assert derive_method((8, 2)) == "mlp"  # Android refuses xor batches above 4
    assert derive_method((32, 64)) == "mlp"


# --------------------------------------------------------------------------------------------------
# JobSpec <-> job.toml


@given(
    version=st.integers(2, 10**6),
    k=st.integers(1, 50),
    extra=st.integers(0, 50),
    history=st.one_of(st.none(), st.integers(1, 100)),
    active=st.one_of(st.none(), st.integers(1, 100)),
    lr=st.floats(1e-6, 10.0),
    staleness=st.sampled_from([None, "none", "nvflare", "polynomial"]),
    wait=st.one_of(st.none(), st.floats(0.5, 1e6)),
    start=st.one_of(st.none(), st.integers(1, 50)),
    args=st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(), st.booleans(), st.floats(-1e9, 1e9)),
        max_size=4,
    ),
)
def test_job_spec_toml_round_trip(
    version: int,
    k: int,
    extra: int,
    history: int | None,
    active: int | None,
    lr: float,
    staleness: str | None,
    wait: float | None,
    start: int | None,
    args: dict[str, object],
) -> None:
    size = k + extra
    spec = JobSpec(
        name="job",
        method="mlp",
        input_shape=(8, 64),
        output_shape=(8,),
        model_manager=ModelManagerConfig(
            max_model_version=version,
            num_updates_for_model=k,
            max_model_history=history,
            max_num_active_model_versions=active,
            global_lr=lr,
            staleness=staleness,
        ),
        device_manager=DeviceManagerConfig(
            device_selection_size=size,
            min_devices_to_start=None if start is None else min(start, size),
        ),
        device_wait_timeout=wait,
        device_training_params={"epoch": 2, "lr": 0.05, "batch_size": 4},
        aggregator=PluginSpec("fedbuff", args),
        selector=PluginSpec("random"),
        evaluator=PluginSpec("none"),
        simulation=SimulationConfig(num_devices=3, trainer_args=args),
        params=(ParamSpec("fc.weight", (10, 64)), ParamSpec("fc.bias", (10,))),
    )
    assert JobSpec.from_toml_dict(tomllib.loads(tomli_w.dumps(spec.to_toml_dict()))) == spec


# --------------------------------------------------------------------------------------------------
# The recipe's argument checks


class WithOwnParameter(DeviceModel):
    """A trainable parameter outside ``net``: devices would train it, but it has no home."""

    def __init__(self) -> None:
        super().__init__(Tiny())
        self.temperature = nn.Parameter(torch.ones(()))

    def compute_loss(self, outputs: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs / self.temperature, label)


def _recipe(**overrides: Any) -> ETFedBuffRecipe:
    kwargs: dict[str, Any] = {
        "job_name": "tiny",
        "device_model": DeviceModel(Tiny()),
        "input_shape": (8, 4),
        "output_shape": (8,),
        "model_manager_config": ModelManagerConfig(global_lr=1.0, num_updates_for_model=4),
        "device_manager_config": DeviceManagerConfig(device_selection_size=4),
        "device_training_params": {"epoch": 1, "lr": 0.1, "batch_size": 8},
    }
    kwargs.update(overrides)
    return ETFedBuffRecipe(**kwargs)


def test_a_valid_recipe_builds_its_spec() -> None:
    recipe = _recipe(
        evaluator_config=EvaluatorConfig(dataset=(np.zeros((3, 2, 2)), [0, 1, 2])),
        aggregator_args={"momentum": 0.5},
        device_wait_timeout=30,
    )
    spec = recipe.spec
    assert spec.name == "tiny"
    assert spec.method == "mlp"
    assert spec.aggregator.args == {
        "momentum": 0.5,
        "normalization": "count",
        "staleness": "none",
        "staleness_exponent": 0.5,
    }
    assert spec.evaluator.name == "classification"
    assert spec.device_wait_timeout == 30.0
    assert _recipe(method="xor").spec.method == "xor"


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"job_name": ""}, ValueError, "job_name"),
        ({"job_name": "a b"}, ValueError, "job_name"),
        ({"device_model": Tiny()}, TypeError, "device_model must be an edgefl.DeviceModel"),
        ({"input_shape": (8, -4)}, ValueError, "input_shape"),
        ({"input_shape": (8, 5)}, ValueError, r"input_shape \(8, 5\).*do not fit the model"),
        (  # the probe inputs cannot even be allocated: still a ValueError naming the shapes
            {"input_shape": (10**12, 4), "output_shape": (10**12,)},
            ValueError,
            r"input_shape \(1000000000000, 4\).*do not fit the model",
        ),
        (
            {"input_shape": (2**70, 4), "output_shape": (2**70,)},
            ValueError,
            r"input_shape \(1180591620717411303424, 4\).*do not fit the model",
        ),
        ({"output_shape": (7,)}, ValueError, r"output_shape\[0\] \(7\) must equal input_shape"),
        ({"output_shape": "8"}, ValueError, "output_shape"),
        (
            {"model_manager_config": ModelManagerConfig(global_lr=1.0, num_updates_for_model=5)},
            ValueError,
            r"num_updates_for_model \(5\) must be <=.*device_selection_size \(4\)",
        ),
        ({"model_manager_config": {"max_model_version": 3}}, TypeError, "model_manager_config"),
        ({"device_manager_config": None}, TypeError, "device_manager_config"),
        ({"evaluator_config": "x"}, TypeError, "evaluator_config"),
        ({"simulation_config": {}}, TypeError, "simulation_config"),
        ({"device_training_params": {"batch_size": 9}}, ValueError, r"\['batch_size'\]"),
        ({"device_training_params": {"epoch": 0}}, ValueError, r"\['epoch'\]"),
        ({"device_training_params": {"lr": -1}}, ValueError, r"\['lr'\]"),
        ({"device_training_params": {"note": None}}, ValueError, "device_training_params"),
        ({"custom_source_root": "/src"}, ValueError, "custom_source_root"),
        ({"device_wait_timeout": -5}, ValueError, "device_wait_timeout"),
        ({"initial_ckpt": "/no/such/file.pt"}, ValueError, "initial_ckpt"),
        ({"aggregator": "fed buff"}, ValueError, "aggregator"),
        ({"aggregator_args": {"normalization": "k"}}, ValueError, "contradicts"),
        (
            {"evaluator_config": EvaluatorConfig(dataset=(np.zeros((3, 5)), [0, 1, 2]))},
            ValueError,
            "does not fit input_shape",
        ),
        (
            {"device_model": DeviceModel(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)))},
            ExportError,
            "BatchNorm",
        ),
        ({"device_model": DeviceModel(Tiny().double())}, ExportError, "torch.float64"),
        ({"device_model": WithOwnParameter()}, ExportError, "'temperature' is outside"),
    ],
)
def test_bad_recipe_arguments_fail_at_construction(
    overrides: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        _recipe(**overrides)


def test_initial_checkpoint_is_loaded_into_the_model(tmp_path: Any) -> None:
    source = Tiny()
    with torch.no_grad():
        source.fc.bias.fill_(0.5)
    path = tmp_path / "init.pt"
    torch.save({"net." + k: v for k, v in source.state_dict().items()}, path)
    recipe = _recipe(initial_ckpt=path)
    assert torch.equal(recipe.device_model.net.fc.weight, source.fc.weight)
    assert torch.equal(recipe.device_model.net.fc.bias, torch.full((3,), 0.5))
    torch.save({"other.weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match=r"does not fit device_model\.net"):
        _recipe(initial_ckpt=path)
