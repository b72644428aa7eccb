"""``DeviceModel``: the network wrapper that devices train (FEDBUFF.md §7.1)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["DeviceModel"]


class DeviceModel(nn.Module):
    """Wraps a network for on-device training: ``forward(input, label) -> (loss, predictions)``.

    ExecuTorch's training runtime and the phone SDKs read output 0 as the (scalar float) loss and
    output 1 as int64 predictions, so the order is fixed. The network is stored as ``net``, so
    every parameter is named ``net.<name>`` inside an exported program; weights outside a program
    drop that prefix.

    The loss is ``nn.CrossEntropyLoss()`` unless one is given (any callable
    ``loss(outputs, label) -> scalar``, usually an ``nn.Module``) or a subclass defines ``loss``
    (a module attribute or a method) or overrides :meth:`compute_loss`.

    Args:
        net: the network; ``net(input)`` returns logits of shape ``[B, classes]``.
        loss: the loss, or ``None`` for cross-entropy.

    Example::

        class TrainingNet(DeviceModel):
            def __init__(self) -> None:
                super().__init__(Cifar10ConvNet())
    """

    net: nn.Module

    def __init__(
        self,
        net: nn.Module,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        if loss is not None and not callable(loss):
            raise TypeError(f"loss must be callable (e.g. an nn.Module), got {type(loss).__name__}")
        self.net = net
        if loss is not None:
            self.loss = loss
        elif not hasattr(type(self), "loss"):
            self.loss = nn.CrossEntropyLoss()

    def compute_loss(self, outputs: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """The scalar loss of the network's ``outputs`` against ``label``."""
        loss: Any = self.loss
        result: torch.Tensor = loss(outputs, label)
        return result

    def forward(
        self, input: torch.Tensor, label: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, predictions)``: predictions are ``argmax(dim=1)`` of the outputs, int64,
        detached (they carry no gradient)."""
        outputs = self.net(input)
        return self.compute_loss(outputs, label), outputs.detach().argmax(dim=1)
