"""What the server tells devices about training: ``job_data.config`` and per-platform task meta.

Both SDKs are picky here and partly broken (EDIP §4.4, §10.3, R14, R17, R18): the config must have
exactly the ``Trainer.DLTrainer`` component named ``trainer`` and an ``executors`` object, and the
real training parameters reach Android only through the task meta, where iOS must not see a
``learning_rate`` (it would silently train at 0.01 instead).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ._messages import Platform
from ._values import INT64_MAX, check_json_object

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "TASK_KIND",
    "TASK_NAME",
    "job_config",
    "task_meta",
]

TASK_NAME = "train"
"""The one task name: ``executors`` maps it to the trainer, ``/task`` hands it out."""

TASK_KIND = "APP_DEFINED"
"""``task_data.kind`` of the reference's ExecuTorch task payload (EDIP §10.1)."""


def job_config(device_training_params: Mapping[str, object] | None) -> dict[str, object]:
    """The ``job_data.config`` object (EDIP §4.4), always valid for both SDKs.

    ``device_training_params`` (the recipe's, e.g. ``{"epoch": 3, "lr": 0.0001, "batch_size": 1}``)
    become the trainer's ``args`` verbatim; ``None`` gives ``args: {}`` (the task meta then carries
    the parameters). The reference sent ``job_data: {}`` in that case, which both SDKs reject (R36).

    Raises:
        TypeError, ValueError: the params are not a JSON object without nulls.
    """
    args: dict[str, object] = {}
    if device_training_params is not None:
        check_json_object(device_training_params, where="device_training_params", allow_null=False)
        args = dict(device_training_params)
    return {
        "components": [{"type": "Trainer.DLTrainer", "name": "trainer", "args": args}],
        "executors": {TASK_NAME: "@trainer"},
    }


def _positive_int(name: str, value: object) -> int:
    if type(value) is not int or not 1 <= value <= INT64_MAX:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def task_meta(
    platform: Platform,
    *,
    model_version: int,
    total_epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    method: str | None = None,
    num_rounds: int | None = None,
) -> dict[str, object]:
    """``task_data.meta`` for an ``OK`` task reply to a device of ``platform`` (EDIP §10.1, §10.3).

    Always holds ``model_version`` and the ``model_buffer_*`` keys; then each training parameter
    that is not ``None``: ``total_epochs``, ``batch_size`` (must equal ``input_shape[0]`` of the
    exported program), ``learning_rate`` (never for iOS, R18), ``method``, and for the UI
    ``contribution_round`` (= ``model_version``) with ``num_rounds`` when given.

    Raises:
        ValueError: a count is not an integer >= 1, or ``learning_rate`` is not a finite number.
    """
    meta: dict[str, object] = {
        "model_version": _positive_int("model_version", model_version),
        "model_buffer_type": "executorch",
        "model_buffer_native_format": "binary",
        "model_buffer_encoding": "base64",
    }
    if total_epochs is not None:
        meta["total_epochs"] = _positive_int("total_epochs", total_epochs)
    if batch_size is not None:
        meta["batch_size"] = _positive_int("batch_size", batch_size)
    if learning_rate is not None:
        if isinstance(learning_rate, bool) or not isinstance(learning_rate, int | float):
            raise ValueError(f"learning_rate must be a number, got {learning_rate!r}")
        if not math.isfinite(learning_rate):
            raise ValueError(f"learning_rate must be finite, got {learning_rate!r}")
        if platform is not Platform.IOS:
            meta["learning_rate"] = float(learning_rate)
    if method is not None:
        if type(method) is not str or not method:
            raise ValueError(f"method must be a non-empty string, got {method!r}")
        meta["method"] = method
    if num_rounds is not None:
        meta["contribution_round"] = model_version
        meta["num_rounds"] = _positive_int("num_rounds", num_rounds)
    return meta
