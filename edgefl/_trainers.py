"""The built-in trainers of simulated devices (entry point group ``edgefl.trainers``).

* :class:`ExecuTorchTrainer` (``executorch``, the default): trains the very ``.pte`` program a phone
  receives with the ExecuTorch training runtime, as the SDKs do (plain SGD through
  ``get_sgd_optimizer``). Faithful: it exercises the exported program, weight patching included.
* :class:`EagerTrainer` (``eager``): trains the job's ``model.pt2`` (the same ``DeviceModel``
  exported with ``torch.export``) in eager PyTorch from the weights the task carries. Fast.

Both follow the device contract of FEDBUFF.md §7.3: ``epochs`` passes over the device's samples in a
seeded random order, batches of ``batch_size`` with the incomplete last batch dropped (as iOS and
NVFlare's ExecuTorch simulator do), SGD, and the result is ``trained - received`` per trainable
parameter (names without ``net.``).

Trainers run inside worker processes (:mod:`edgefl._simulate` spawns them): the ExecuTorch runtime
holds the GIL for a whole step, and ``fork`` deadlocks once torch has run threaded. ``torch`` and
``executorch`` are imported on first use, never at module import.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edgefl.api import TrainResult, TrainTask, Weights

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    import numpy.typing as npt
    import torch

__all__ = ["EagerTrainer", "ExecuTorchTrainer", "TrainerError", "task_data"]

_PREFIX = "net."


class TrainerError(RuntimeError):
    """A task cannot be trained (wrong inputs for the trainer, a program that fails to run)."""


def _check_input_shape(input_shape: Sequence[int] | None) -> tuple[int, ...] | None:
    if input_shape is None:
        return None
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise TypeError(f"input_shape must be a sequence of ints, got {input_shape!r}") from None
    if len(shape) < 2 or any(d < 1 for d in shape):
        raise ValueError(f"input_shape must be (batch, *sample) with positive sizes, got {shape}")
    return shape


def task_data(
    task: TrainTask, input_shape: tuple[int, ...] | None = None
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """The device's samples as model-ready arrays.

    Uses ``task.x``/``task.y`` when given, else ``task.indices`` into the data set named by
    ``task.dataset`` (loaded once per process by :func:`edgefl._data.load_dataset`). With
    ``input_shape``, inputs are reshaped to ``[-1, *input_shape[1:]]`` (e.g. a model fed flat
    ``[B, 3072]`` vectors from CIFAR-10 images).

    Raises:
        TrainerError: no usable data, or samples that do not fit ``input_shape``.
    """
    if task.x is not None and task.y is not None:
        x = np.asarray(task.x, dtype=np.float32)
        y = np.asarray(task.y, dtype=np.int64)
    else:
        if task.dataset is None or task.indices is None:
            raise TrainerError("TrainTask has indices but no dataset to index")
        from edgefl._data import load_dataset

        x, y = load_dataset(task.dataset).take(task.indices)
    if input_shape is not None:
        sample = input_shape[1:]
        if math.prod(x.shape[1:]) != math.prod(sample):
            raise TrainerError(
                f"samples of shape {tuple(x.shape[1:])} do not fit the model input {input_shape}"
            )
        x = x.reshape((-1, *sample))
    if x.shape[0] == 0:
        raise TrainerError("TrainTask has no samples")
    return x, y


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[npt.NDArray[np.int64]]:
    """One epoch of shuffled batch positions; the incomplete last batch is dropped unless it is
    the only one (a device with fewer samples than a batch still trains once)."""
    order = rng.permutation(n)
    full = n // batch_size
    if full == 0:
        yield order
        return
    for b in range(full):
        yield order[b * batch_size : (b + 1) * batch_size]


class ExecuTorchTrainer:
    """Trains the task's ``.pte`` with the ExecuTorch training runtime (``task.program``).

    Args:
        input_shape: the job's export input shape; samples are reshaped to ``input_shape[1:]``.
    """

    name: ClassVar[str] = "executorch"

    def __init__(self, *, input_shape: Sequence[int] | None = None) -> None:
        self._input_shape = _check_input_shape(input_shape)

    def warm_up(self) -> None:
        """Import the runtime now (~3 s) rather than during the first task."""
        import executorch.extension.training  # noqa: F401

    def train(self, task: TrainTask) -> TrainResult:
        """Run ``task.epochs`` epochs of SGD in the runtime; return ``trained - received``.

        Raises:
            TrainerError: the task carries no program, or the runtime refuses it.
        """
        if task.program is None:
            raise TrainerError("the executorch trainer needs TrainTask.program (the .pte bytes)")
        import torch
        from executorch.extension.training import (
            _load_for_executorch_for_training_from_buffer,
            get_sgd_optimizer,
        )

        x, y = task_data(task, self._input_shape)
        started = time.perf_counter()
        program = task.program  # the module borrows these bytes: keep them alive (use-after-free)
        rng = np.random.default_rng(task.seed)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        initial: dict[str, torch.Tensor] | None = None
        optimizer: Any = None
        losses: list[float] = []
        samples = 0
        try:  # the runtime reports every failure as a RuntimeError carrying an error code
            with warnings.catch_warnings():
                # ExecuTorch marks its Python training API experimental, with a warning per call.
                warnings.filterwarnings("ignore", message=r".*experimental.*")
                module = _load_for_executorch_for_training_from_buffer(program)
            for _ in range(task.epochs):
                losses.clear()
                samples = 0
                for batch in _batches(len(y), task.batch_size, rng):
                    idx = torch.from_numpy(batch)
                    out = module.forward_backward("forward", (xt[idx], yt[idx]))
                    if initial is None:
                        # named_parameters() works only after the first step (nothing updated yet)
                        params = module.named_parameters()
                        initial = {k: v.detach().clone() for k, v in params.items()}
                        optimizer = get_sgd_optimizer(
                            params, task.lr, task.momentum, 0.0, 0.0, False
                        )
                    optimizer.step(module.named_gradients())
                    losses.append(float(out[0]))
                    samples += int(batch.size)
        except RuntimeError as exc:
            raise TrainerError(
                f"the ExecuTorch runtime failed on the task's program: {exc}"
            ) from exc
        assert initial is not None
        final = module.named_parameters()
        delta: Weights = {
            _strip(name): (final[name].detach() - start).numpy().astype(np.float32, copy=False)
            for name, start in initial.items()
        }
        del module
        return TrainResult(
            delta=delta,
            num_samples=samples,
            loss=float(np.mean(losses)) if losses else math.nan,
            seconds=time.perf_counter() - started,
        )


class EagerTrainer:
    """Trains the job's ``model.pt2`` in eager PyTorch from ``task.weights``.

    The exported module is loaded once per process and path; each task writes its start weights
    into it. Plain ``torch.optim.SGD``, the same update rule as the runtime's optimizer.

    Args:
        input_shape: the job's export input shape; samples are reshaped to ``input_shape[1:]``.
    """

    name: ClassVar[str] = "eager"

    def __init__(self, *, input_shape: Sequence[int] | None = None) -> None:
        self._input_shape = _check_input_shape(input_shape)
        self._modules: dict[str, torch.nn.Module] = {}

    def warm_up(self) -> None:
        """Import torch now rather than during the first task."""
        import torch  # noqa: F401

    def _module(self, path: str) -> torch.nn.Module:
        module = self._modules.get(path)
        if module is None:
            from edgefl._export import load_inference_module

            try:
                module = load_inference_module(path, train=True)
            except ValueError as exc:
                raise TrainerError(str(exc)) from exc
            self._modules[path] = module
        return module

    def train(self, task: TrainTask) -> TrainResult:
        """Run ``task.epochs`` epochs of SGD on ``model.pt2``; return ``trained - received``.

        Raises:
            TrainerError: no weights or model path, or weights that do not match the model.
        """
        if task.weights is None or task.model_path is None:
            raise TrainerError("the eager trainer needs TrainTask.weights and TrainTask.model_path")
        import torch

        from edgefl._export import load_weights

        if self._input_shape is not None and task.batch_size > self._input_shape[0]:
            raise TrainerError(
                f"batch_size {task.batch_size} exceeds the exported batch {self._input_shape[0]}"
            )
        module = self._module(task.model_path)
        try:
            load_weights(module, task.weights)
        except ValueError as exc:
            raise TrainerError(str(exc)) from exc
        params = {n: p for n, p in module.named_parameters() if p.requires_grad}
        x, y = task_data(task, self._input_shape)
        started = time.perf_counter()
        initial = {n: p.detach().clone() for n, p in params.items()}
        optimizer = torch.optim.SGD(params.values(), lr=task.lr, momentum=task.momentum)
        rng = np.random.default_rng(task.seed)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        # Call forward() itself: the exported module's pre-hook re-validates every input against
        # the export's shape constraints (~15 % of a small model's step); batches built here are
        # in range by construction (at most batch_size rows, float32 inputs, int64 labels).
        forward = module.forward
        losses: list[float] = []
        samples = 0
        for _ in range(task.epochs):
            losses.clear()
            samples = 0
            for batch in _batches(len(y), task.batch_size, rng):
                idx = torch.from_numpy(batch)
                optimizer.zero_grad(set_to_none=True)
                loss = forward(xt[idx], yt[idx])[0]
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                samples += int(batch.size)
        delta: Weights = {
            _strip(n): (p.detach() - initial[n]).numpy().astype(np.float32, copy=False)
            for n, p in params.items()
        }
        return TrainResult(
            delta=delta,
            num_samples=samples,
            loss=float(np.mean(losses)) if losses else math.nan,
            seconds=time.perf_counter() - started,
        )


def _strip(name: str) -> str:
    return name[len(_PREFIX) :] if name.startswith(_PREFIX) else name
