"""The built-in evaluators (plugins.evaluators) against a hand-checked linear model."""

from __future__ import annotations

import math
import types
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from torch import nn

from edgefl.api import Evaluator
from plugins.evaluators import ClassificationEvaluator, NoEvaluator

pytestmark = pytest.mark.slow  # the module fixture exports a model (~2-3 s)

if TYPE_CHECKING:
    from pathlib import Path


class _Wrapped(nn.Module):
    """The DeviceModel contract: forward(input, label) -> (loss, predictions)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(2, 3)
        self.loss = nn.CrossEntropyLoss()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(x)
        return self.loss(out, y), out.detach().argmax(dim=1)


# logits = (x0, x1, -x0 - x1): class 0 when x0 is largest, 1 when x1 is, 2 when both are negative.
_W = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], dtype=np.float32)
_B = np.zeros(3, dtype=np.float32)
_X = np.array([[2.0, 1.0], [1.0, 3.0], [-1.0, -1.0], [0.5, 2.0]], dtype=np.float32)
_Y = np.array([0, 1, 2, 0], dtype=np.int64)  # the last sample is predicted 1: wrong


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
    folder = tmp_path_factory.mktemp("job")
    batch = torch.export.Dim("batch", min=1, max=4)
    program = torch.export.export(
        _Wrapped(),
        (torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64)),
        dynamic_shapes={"x": {0: batch}, "y": {0: batch}},
    )
    torch.export.save(program, str(folder / "model.pt2"))
    np.savez(folder / "eval.npz", x=_X, y=_Y)
    return types.SimpleNamespace(path=folder, spec=types.SimpleNamespace(input_shape=(4, 2)))


def _expected_loss() -> float:
    logits = _X @ _W.T + _B
    log_z = np.log(np.exp(logits).sum(axis=1))
    return float(np.mean(log_z - logits[np.arange(4), _Y]))


@pytest.mark.parametrize("batch_size", [None, 1, 3])
def test_classification_evaluator_matches_hand_computed_metrics(
    job: types.SimpleNamespace, batch_size: int | None
) -> None:
    evaluator = ClassificationEvaluator(job, batch_size=batch_size)
    assert isinstance(evaluator, Evaluator)
    metrics = evaluator.evaluate({"weight": _W, "bias": _B})
    assert metrics["accuracy"] == pytest.approx(75.0)
    assert metrics["accuracy_class_0"] == pytest.approx(50.0)
    assert metrics["accuracy_class_1"] == pytest.approx(100.0)
    assert metrics["accuracy_class_2"] == pytest.approx(100.0)
    assert metrics["samples"] == 4
    assert metrics["loss"] == pytest.approx(_expected_loss(), rel=1e-6)
    assert set(metrics) == {
        "accuracy",
        "loss",
        "samples",
        "accuracy_class_0",
        "accuracy_class_1",
        "accuracy_class_2",
    }


def test_each_call_uses_the_given_weights(job: types.SimpleNamespace) -> None:
    evaluator = ClassificationEvaluator(job)
    # Swapping the first two rows swaps classes 0 and 1: only the class-2 sample stays right.
    swapped = evaluator.evaluate({"weight": _W[[1, 0, 2]], "bias": _B})
    assert swapped["accuracy"] == pytest.approx(50.0)
    assert swapped["accuracy_class_2"] == pytest.approx(100.0)
    assert swapped["accuracy_class_1"] == pytest.approx(0.0)
    # a huge bias on class 2 predicts 2 everywhere
    biased = evaluator.evaluate({"weight": _W, "bias": np.array([0, 0, 100], np.float32)})
    assert biased["accuracy"] == pytest.approx(25.0)
    assert math.isfinite(biased["loss"])
    assert biased["loss"] > 50
    again = evaluator.evaluate({"weight": _W, "bias": _B})
    assert again["accuracy"] == pytest.approx(75.0)


def test_classification_evaluator_errors_name_the_problem(
    job: types.SimpleNamespace, tmp_path: Path
) -> None:
    evaluator = ClassificationEvaluator(job)
    with pytest.raises(ValueError, match=r"missing \['bias'\]"):
        evaluator.evaluate({"weight": _W})
    with pytest.raises(ValueError, match=r"weights\['weight'\] has shape \(2, 3\)"):
        evaluator.evaluate({"weight": _W.T.copy(), "bias": _B})
    with pytest.raises(ValueError, match=r"eval\.npz does not exist"):
        ClassificationEvaluator(types.SimpleNamespace(path=tmp_path))
    np.savez(tmp_path / "eval.npz", x=_X, y=_Y[:3])
    with pytest.raises(ValueError, match="same"):
        ClassificationEvaluator(types.SimpleNamespace(path=tmp_path))
    np.savez(tmp_path / "eval.npz", x=_X, y=_Y)
    with pytest.raises(ValueError, match=r"model\.pt2 does not exist"):
        ClassificationEvaluator(types.SimpleNamespace(path=tmp_path))
    with pytest.raises(ValueError, match="batch_size"):
        ClassificationEvaluator(job, batch_size=0)


def test_max_samples_limits_the_evaluation(job: types.SimpleNamespace) -> None:
    metrics = ClassificationEvaluator(job, max_samples=2).evaluate({"weight": _W, "bias": _B})
    assert metrics["samples"] == 2
    assert metrics["accuracy"] == pytest.approx(100.0)


def test_no_evaluator_reports_nothing(job: types.SimpleNamespace) -> None:
    evaluator = NoEvaluator(job)
    assert isinstance(evaluator, Evaluator)
    assert evaluator.evaluate({"weight": _W}) == {}
    with pytest.raises(TypeError, match="no arguments"):
        NoEvaluator(job, batch_size=3)
