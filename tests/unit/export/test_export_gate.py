"""ExecuTorch programs train exactly like PyTorch, or are refused with the cause named.

Each architecture's program is run in the real ExecuTorch runtime and compared, by this test's
own eager-PyTorch step, with the model it came from; the gate itself (``verify_program``) must
accept exactly what agrees and refuse what does not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import torch
from _export_testlib import (
    IMAGE,
    MAX_BATCH,
    DropoutMLP,
    EagerStep,
    NormCNN,
    RuntimeStep,
    batch,
    make_model,
)
from torch import nn

from edgefl import DeviceModel, ExportError
from edgefl._export import (
    GATE_ATOL,
    GATE_RTOL,
    _export_unchecked,
    build_template,
    check_model,
    export_training_program,
    program_operators,
    verify_program,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from _export_testlib import Exported

pytestmark = pytest.mark.slow

TRAINABLE = ["mlp", "pool_cnn", "strided_bn_cnn"]


@pytest.mark.parametrize("name", TRAINABLE)
@pytest.mark.parametrize("size", [1, 7, MAX_BATCH])
def test_runtime_step_matches_pytorch(
    templates: Callable[[str], Exported], name: str, size: int
) -> None:
    job = templates(name)
    classes = int(job.model.net(torch.zeros((1, *job.input_shape[1:]))).shape[1])
    x, y = batch(job.input_shape, size, classes, seed=size)
    rt = RuntimeStep(job.template.program, x, y)
    eager = EagerStep(job.model, x, y)

    assert rt.loss.shape == ()
    torch.testing.assert_close(rt.loss, eager.loss, rtol=GATE_RTOL, atol=GATE_ATOL)
    assert rt.predictions.dtype == torch.int64
    assert torch.equal(rt.predictions, eager.predictions)
    assert set(rt.grads) == set(eager.grads)
    for param, grad in eager.grads.items():
        torch.testing.assert_close(rt.grads[param], grad, rtol=GATE_RTOL, atol=GATE_ATOL)
    # The program holds the model's trainable weights, bit for bit.
    trainable = {n: p for n, p in job.model.named_parameters() if p.requires_grad}
    assert set(rt.params) == set(trainable)
    for param, value in trainable.items():
        assert torch.equal(rt.params[param], value.detach())


@pytest.mark.parametrize("name", TRAINABLE)
def test_gate_accepts_every_batch_size(templates: Callable[[str], Exported], name: str) -> None:
    job = templates(name)
    verify_program(
        job.model, job.template.program, job.input_shape, job.output_shape, batch_sizes=[1, 7, 8]
    )


def test_gate_refuses_a_program_whose_weights_differ(templates: Callable[[str], Exported]) -> None:
    job = templates("mlp")
    other, _, _ = make_model("mlp", seed=1)
    with pytest.raises(
        ExportError, match=r"different weights than the model for 'net\.fc1\.weight'"
    ):
        verify_program(other, job.template.program, job.input_shape, job.output_shape)


def test_maxpool_gradient_bug_is_worked_around_and_gated(
    templates: Callable[[str], Exported],
) -> None:
    """The upstream pipeline gives wrong convolution gradients in front of a max-pool; the gate
    refuses that program. Ours decomposes the max-pool backward (and passes the gate above)."""
    job = templates("pool_cnn")
    kernel = "aten::max_pool2d_with_indices_backward.grad_input"
    assert kernel not in program_operators(job.template.program)
    buggy, _ = _export_unchecked(
        job.model, job.input_shape, job.output_shape, decompose_max_pool_backward=False
    )
    assert kernel in program_operators(buggy)
    with pytest.raises(ExportError, match=r"gradient of 'net\.features\.0\.(weight|bias)'"):
        verify_program(job.model, buggy, job.input_shape, job.output_shape)


def test_batchnorm_with_running_statistics_is_refused_naming_alternatives() -> None:
    model = DeviceModel(NormCNN())
    with pytest.raises(ExportError) as info:
        check_model(model, (MAX_BATCH, *IMAGE), (MAX_BATCH,))
    message = str(info.value)
    for word in ("BatchNorm", "track_running_stats=False", "GroupNorm", "LayerNorm", "norm"):
        assert word in message
    with pytest.raises(ExportError, match="BatchNorm"):
        export_training_program(model, (MAX_BATCH, *IMAGE), (MAX_BATCH,))


def test_avgpool_module_is_refused_before_export() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(144, 5)
    )
    with pytest.raises(ExportError, match=r"1 \(AvgPool2d\).*average pooling.*MaxPool2d"):
        check_model(DeviceModel(net), (MAX_BATCH, *IMAGE), (MAX_BATCH,))


class FunctionalAvgPool(nn.Module):
    """Average pooling without an nn.AvgPool2d module: only the kernel check can catch it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(nn.functional.avg_pool2d(self.conv(x), 2).flatten(1))


def test_missing_runtime_kernel_is_refused_naming_the_operator_and_layer() -> None:
    model = DeviceModel(FunctionalAvgPool())
    with pytest.raises(ExportError) as info:
        export_training_program(model, (MAX_BATCH, *IMAGE), (MAX_BATCH,))
    message = str(info.value)
    assert "no kernel for aten::avg_pool2d_backward.grad_input" in message
    assert "AvgPool2d" in message


def test_dropout_model_is_exported_and_checked_on_a_p0_copy() -> None:
    torch.manual_seed(0)
    model = DeviceModel(DropoutMLP())
    template, weights = build_template(model, (MAX_BATCH, 12), (MAX_BATCH,))
    assert set(weights) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    # The real program keeps its dropout: it trains (finite loss) but is random.
    x, y = batch((MAX_BATCH, 12), MAX_BATCH, 4)
    rt = RuntimeStep(template.program, x, y)
    assert torch.isfinite(rt.loss)
    # The real program cannot pass a plain comparison; the gate says so instead of passing it.
    with pytest.raises(ExportError, match="disagrees with PyTorch"):
        verify_program(model, template.program, (MAX_BATCH, 12), (MAX_BATCH,))
    assert model.net.drop.p == 0.5  # the user's model is untouched


def test_fixed_batch_model_is_refused_with_advice() -> None:
    class FixedBatch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(12, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.reshape(MAX_BATCH, 12))

    with pytest.raises(ExportError, match="variable batch size"):
        export_training_program(DeviceModel(FixedBatch()), (MAX_BATCH, 12), (MAX_BATCH,))
