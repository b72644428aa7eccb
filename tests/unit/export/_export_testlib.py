"""Models, shared exports and runtime helpers for the export tests."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from edgefl import DeviceModel
from edgefl._export import ProgramTemplate, _quiet, build_template

if TYPE_CHECKING:
    from collections.abc import Callable

MAX_BATCH = 8
IMAGE = (3, 12, 12)


class MLP(nn.Module):
    """Linear layers whose biases all start at zero (so a plain export stores the equal ones
    once), one weight shared by two layers (one parameter, one slot) and a frozen weight (not a
    parameter of the job: it keeps its value)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 16)
        self.fc2 = nn.Linear(16, 16)
        self.fc3 = nn.Linear(16, 16)
        self.fc3.weight = self.fc2.weight
        self.frozen = nn.Linear(16, 16)
        self.frozen.weight.requires_grad_(False)
        self.head = nn.Linear(16, 4)
        for layer in (self.fc1, self.fc2, self.fc3, self.frozen, self.head):
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc2(torch.relu(self.fc1(x))))
        x = torch.relu(self.frozen(torch.relu(self.fc3(x))))
        return self.head(x)


class PoolCNN(nn.Module):
    """Conv2d -> MaxPool2d twice: the layer pair ExecuTorch 1.5.1's max-pool backward breaks."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(8 * 3 * 3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class StridedCNN(nn.Module):
    """Down-sampling by strided convolutions (no pooling), with the BatchNorm that trains on a
    device: batch statistics only (``track_running_stats=False``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(6, track_running_stats=False)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8 * 3 * 3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.norm(self.conv1(x)))))
        return self.head(x.flatten(1))


class NormCNN(nn.Module):
    """A convolution with BatchNorm and its running statistics (the default): refused."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(6)
        self.head = nn.Linear(6 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.conv(x))).flatten(1))


class DropoutMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 32)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


ARCHITECTURES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp": (MLP, (MAX_BATCH, 12)),
    "pool_cnn": (PoolCNN, (MAX_BATCH, *IMAGE)),
    "strided_bn_cnn": (StridedCNN, (MAX_BATCH, *IMAGE)),
}


def make_model(name: str, seed: int = 0) -> tuple[DeviceModel, tuple[int, ...], tuple[int, ...]]:
    """A fresh ``DeviceModel`` of architecture ``name`` (seeded) with its input/label shapes."""
    factory, input_shape = ARCHITECTURES[name]
    torch.manual_seed(seed)
    return DeviceModel(factory()), input_shape, (input_shape[0],)


class Exported:
    """One architecture's model, its gated template and its initial weights."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.model, self.input_shape, self.output_shape = make_model(name)
        self.template, self.weights = build_template(
            self.model, self.input_shape, self.output_shape
        )


# --------------------------------------------------------------------------------------------------
# Running programs


class RuntimeStep:
    """One ``forward_backward`` of a program in the ExecuTorch runtime."""

    def __init__(self, program: bytes, x: torch.Tensor, y: torch.Tensor) -> None:
        self._program = program  # the runtime module does not own its buffer
        with _quiet():
            from executorch.extension.training import (
                _load_for_executorch_for_training_from_buffer,
            )

            module = _load_for_executorch_for_training_from_buffer(program)
            outputs = module.forward_backward("forward", (x, y))
        self.loss = outputs[0]
        self.predictions = outputs[1]
        self.params = {k: v.clone() for k, v in module.named_parameters().items()}
        self.grads = {k: v.clone() for k, v in module.named_gradients().items()}
        del module


class EagerStep:
    """The same step in eager PyTorch on a copy of the model."""

    def __init__(self, model: DeviceModel, x: torch.Tensor, y: torch.Tensor) -> None:
        import copy

        m = copy.deepcopy(model)
        loss, predictions = m(x, y)
        loss.backward()
        self.loss = loss.detach()
        self.predictions = predictions
        self.grads = {n: p.grad.detach() for n, p in m.named_parameters() if p.grad is not None}


def batch(input_shape: tuple[int, ...], size: int, classes: int, seed: int = 1) -> tuple[Any, Any]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((size, *input_shape[1:]), generator=g)
    y = torch.randint(0, classes, (size,), generator=g)
    return x, y


def weights_like(template: ProgramTemplate, seed: int) -> dict[str, np.ndarray]:
    """Distinct random float32 weights for every parameter of ``template``."""
    rng = np.random.default_rng(seed)
    return {
        name: rng.standard_normal(shape).astype(np.float32) * 0.3
        for name, shape in template.param_shapes.items()
    }


def model_with(model: DeviceModel, weights: dict[str, np.ndarray]) -> DeviceModel:
    import copy

    from edgefl._export import load_weights

    m = copy.deepcopy(model)
    load_weights(m, weights)
    return m
