"""model.pt2: the DeviceModel without the user's classes, for evaluation and eager training."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from _export_testlib import MAX_BATCH, DropoutMLP, batch, make_model, model_with

from edgefl import DeviceModel
from edgefl._export import export_inference_program, load_inference_module, load_weights

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlp_pt2(tmp_path_factory: pytest.TempPathFactory) -> tuple[DeviceModel, Path]:
    model, input_shape, output_shape = make_model("mlp")
    path = tmp_path_factory.mktemp("pt2") / "model.pt2"
    path.write_bytes(export_inference_program(model, input_shape, output_shape))
    return model, path


@pytest.mark.parametrize("size", [1, 7, MAX_BATCH])
def test_loaded_module_computes_what_the_model_computes(
    mlp_pt2: tuple[DeviceModel, Path], size: int
) -> None:
    model, path = mlp_pt2
    module = load_inference_module(path)  # holds the initial weights
    x, y = batch((MAX_BATCH, 12), size, 4)
    with torch.no_grad():
        loss, predictions = module(x, y)
        want_loss, want_predictions = model(x, y)
    torch.testing.assert_close(loss, want_loss, rtol=1e-6, atol=1e-7)
    assert predictions.dtype == torch.int64
    assert torch.equal(predictions, want_predictions)


def test_loaded_module_trains_with_autograd_from_given_weights(
    mlp_pt2: tuple[DeviceModel, Path],
) -> None:
    model, path = mlp_pt2
    weights = {
        n.removeprefix("net."): p.detach().numpy() + 0.25
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    module = load_inference_module(path, weights, train=True)
    reference = model_with(model, weights)
    x, y = batch((MAX_BATCH, 12), 7, 4, seed=5)
    for m in (module, reference):
        optimizer = torch.optim.SGD(m.parameters(), lr=0.1)
        for _ in range(3):
            optimizer.zero_grad()
            m(x, y)[0].backward()
            optimizer.step()
    trained = dict(module.named_parameters())
    for name, p in reference.named_parameters():
        torch.testing.assert_close(trained[name], p, rtol=1e-5, atol=1e-6)
        if p.requires_grad:
            assert not np.array_equal(p.detach().numpy(), weights[name.removeprefix("net.")])
        else:  # the frozen layer
            assert torch.equal(p, dict(model.named_parameters())[name])


def test_load_weights_names_what_does_not_fit(mlp_pt2: tuple[DeviceModel, Path]) -> None:
    _, path = mlp_pt2
    module = load_inference_module(path)
    shapes = {
        n.removeprefix("net."): tuple(p.shape)
        for n, p in module.named_parameters()
        if p.requires_grad
    }
    good = {n: torch.zeros(s).numpy() for n, s in shapes.items()}
    with pytest.raises(ValueError, match=r"missing \['fc1.bias'\]"):
        load_weights(module, {k: v for k, v in good.items() if k != "fc1.bias"})
    with pytest.raises(ValueError, match=r"weights\['fc3.bias'\] has shape \(5,\)"):
        load_weights(module, {**good, "fc3.bias": torch.zeros(5).numpy()})


def test_dropout_is_removed_for_evaluation_and_kept_for_training(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DeviceModel(DropoutMLP())
    path = tmp_path / "model.pt2"
    path.write_bytes(export_inference_program(model, (MAX_BATCH, 12), (MAX_BATCH,)))
    x, y = batch((MAX_BATCH, 12), MAX_BATCH, 4)
    evaluating = load_inference_module(path)
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        first, second = evaluating(x, y)[0], evaluating(x, y)[0]
        want = reference(x, y)[0]
    assert torch.equal(first, second)
    torch.testing.assert_close(first, want, rtol=1e-6, atol=1e-7)
    training = load_inference_module(path, train=True)
    with torch.no_grad():
        losses = {float(training(x, y)[0]) for _ in range(4)}
    assert len(losses) > 1  # dropout masks differ from call to call


def test_unloadable_file_is_refused_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "model.pt2"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"model\.pt2: cannot load"):
        load_inference_module(bad)
