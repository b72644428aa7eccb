"""The built-in evaluators (entry point group ``edgefl.evaluators``).

* ``classification`` (:class:`ClassificationEvaluator`): accuracy in percent (EDIP §15), mean loss
  and per-class accuracy of a model version on the job's held-out ``eval.npz``, computed with the
  job's ``model.pt2`` (the ``DeviceModel`` exported with ``torch.export``: ``(input, label) ->
  (loss, predictions)``), so the server never imports user code.
* ``none`` (:class:`NoEvaluator`): reports nothing.

The server constructs an evaluator once per job (``cls(job, **args)``) and calls ``evaluate`` from a
worker thread, one version at a time, in version order.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    import numpy.typing as npt
    import torch

    from edgefl.api import Weights

__all__ = ["ClassificationEvaluator", "NoEvaluator"]


def _job_path(job: object) -> Path:
    """The folder of a loaded job (``JobFolder.path``), or a path given directly."""
    path = getattr(job, "path", job)
    if not isinstance(path, str | Path):
        raise TypeError(f"job must be a loaded job folder with a .path, got {type(job).__name__}")
    return Path(path)


class ClassificationEvaluator:
    """Accuracy, mean loss and per-class accuracy on the job's ``eval.npz``.

    Metrics returned by :meth:`evaluate`:

    * ``accuracy``: percent of test samples whose predicted class equals the label;
    * ``loss``: the model's loss averaged over all samples (batch losses weighted by batch size,
      exact for mean-reduced losses such as the default cross-entropy);
    * ``accuracy_class_<c>``: percent correct among the samples labelled ``c``, for every class
      present in the labels;
    * ``samples``: the number of test samples.

    Args:
        job: the loaded job folder (its ``path`` holds ``model.pt2`` and ``eval.npz``).
        batch_size: samples per forward pass (bounded by the model's dynamic batch range:
            batches larger than the exported maximum are split further).
        max_samples: evaluate on the first ``max_samples`` samples only (``None``: all).

    Raises:
        ValueError: ``eval.npz`` or ``model.pt2`` missing or malformed, or a bad argument; the
            message names the file or argument.
    """

    name: ClassVar[str] = "classification"

    def __init__(
        self, job: object, *, batch_size: int | None = None, max_samples: int | None = None
    ) -> None:
        folder = _job_path(job)
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if max_samples is not None and (
            isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1
        ):
            raise ValueError(f"max_samples must be a positive integer, got {max_samples!r}")
        self._x, self._y = _load_eval_set(folder / "eval.npz", max_samples)
        spec = getattr(job, "spec", None)
        input_shape = getattr(spec, "input_shape", None)
        # The exported model accepts batches up to its export batch (input_shape[0]).
        limit = int(input_shape[0]) if input_shape else None
        if input_shape and math.prod(self._x.shape[1:]) == math.prod(input_shape[1:]):
            self._x = self._x.reshape((-1, *(int(d) for d in input_shape[1:])))
        self._batch_size = batch_size or limit or 256
        if limit is not None:
            self._batch_size = min(self._batch_size, limit)
        self._model_path = folder / "model.pt2"
        if not self._model_path.is_file():
            raise ValueError(f"classification evaluator: {self._model_path} does not exist")
        self._module: torch.nn.Module | None = None
        self._lock = threading.Lock()

    def _load(self) -> torch.nn.Module:
        if self._module is None:
            from edgefl._export import load_inference_module

            try:
                self._module = load_inference_module(self._model_path, train=False)
            except ValueError as exc:
                raise ValueError(f"classification evaluator: {exc}") from exc
        return self._module

    def evaluate(self, weights: Weights) -> dict[str, float]:
        """Score ``weights`` (names without ``net.``) on the held-out set.

        Raises:
            ValueError: ``weights`` do not match the model's parameters.
        """
        import torch

        from edgefl._export import load_weights

        with self._lock:
            module = self._load()
            load_weights(module, weights)
            x, y = self._x, self._y
            n = int(y.shape[0])
            predictions = np.empty(n, dtype=np.int64)
            loss_sum = 0.0
            with torch.no_grad():
                for start in range(0, n, self._batch_size):
                    stop = min(start + self._batch_size, n)
                    loss, pred = module(
                        torch.from_numpy(x[start:stop]), torch.from_numpy(y[start:stop])
                    )[:2]
                    loss_sum += float(loss) * (stop - start)
                    predictions[start:stop] = pred.numpy().reshape(-1)
        correct = predictions == y
        metrics: dict[str, float] = {
            "accuracy": 100.0 * float(correct.mean()),
            "loss": loss_sum / n,
            "samples": float(n),
        }
        for c in np.unique(y).tolist():
            members = y == c
            metrics[f"accuracy_class_{c}"] = 100.0 * float(correct[members].mean())
        return metrics


class NoEvaluator:
    """Evaluates nothing (``evaluator = "none"``): every version gets empty metrics."""

    name: ClassVar[str] = "none"

    def __init__(self, job: object, **args: Any) -> None:
        if args:
            raise TypeError(f"the 'none' evaluator takes no arguments, got {sorted(args)}")

    def evaluate(self, weights: Weights) -> dict[str, float]:
        """Return ``{}``."""
        return {}


def _load_eval_set(
    path: Path, max_samples: int | None
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    if not path.is_file():
        raise ValueError(
            f"classification evaluator: {path} does not exist (give the recipe an "
            "EvaluatorConfig with a dataset, or use evaluator 'none')"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            x = np.asarray(npz["x"])
            y = np.asarray(npz["y"])
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(
            f"classification evaluator: cannot read x and y from {path}: {exc}"
        ) from exc
    if y.ndim != 1 or x.shape[:1] != y.shape or y.size == 0:
        raise ValueError(
            f"classification evaluator: {path}: x {x.shape} and y {y.shape} must hold the same "
            "non-zero number of samples, y one label each"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"classification evaluator: {path}: y must hold integer labels")
    if max_samples is not None:
        x, y = x[:max_samples], y[:max_samples]
    return (
        np.ascontiguousarray(x, dtype=np.float32),
        np.ascontiguousarray(y, dtype=np.int64),
    )
