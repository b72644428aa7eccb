"""The plugin interfaces of edgefl and the values that cross them.

One small synchronous :class:`typing.Protocol` per plugin kind, each registered under its own entry
point group (see ``docs/plugins.md``):

=================  ======================  =====================================================
group              Protocol                constructed as
=================  ======================  =====================================================
edgefl.aggregators :class:`Aggregator`     ``cls(settings: AggregatorSettings, **args)``
edgefl.selectors   :class:`Selector`       ``cls(**args)``
edgefl.evaluators  :class:`Evaluator`      ``cls(job, **args)`` (``job``: the loaded job folder)
edgefl.trainers    :class:`Trainer`        ``cls(**args)``
=================  ======================  =====================================================

``args`` are the plugin's table in ``job.toml``. Plugins are plain, synchronous, single-threaded
objects: the server calls each instance from one thread at a time (usually a worker thread) and
never hands them trio objects. This module imports only numpy and attrs, so a plugin package can
depend on it without pulling in the server, torch or trio.

Weights are ``dict[str, float32 array]`` keyed by parameter name *without* the ``net.`` prefix that
names carry inside an exported program (FEDBUFF.md §7.1). A delta is ``trained - received``, so
adding it moves the model in the training direction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

import attrs
import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import random

__all__ = [
    "Aggregator",
    "AggregatorSettings",
    "Candidate",
    "Evaluator",
    "FloatArray",
    "IntArray",
    "Selector",
    "TrainResult",
    "TrainTask",
    "Trainer",
    "Update",
    "Weights",
]

FloatArray: TypeAlias = npt.NDArray[np.float32]
IntArray: TypeAlias = npt.NDArray[np.int64]
Weights: TypeAlias = dict[str, FloatArray]
"""Parameter name (without ``net.``) -> float32 array."""


def _check_weights(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, Mapping):
        raise TypeError(f"{attribute.name} must be a mapping of name -> array, got {type(value)}")
    for key, array in value.items():
        if not isinstance(key, str):
            raise TypeError(f"{attribute.name}: parameter names must be str, got {key!r}")
        if not isinstance(array, np.ndarray):
            raise TypeError(
                f"{attribute.name}[{key!r}] must be a numpy array, got {type(array).__name__}"
            )


def _check_str_mapping(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, Mapping):
        raise TypeError(f"{attribute.name} must be a mapping of str -> str, got {type(value)}")


def _check_finite(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{attribute.name} must be finite, got {value!r}")


def _check_optional_weights(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    if value is not None:
        _check_weights(instance, attribute, value)


# --------------------------------------------------------------------------------------------------
# Aggregators


@attrs.frozen(eq=False)
class Update:
    """One device contribution, as the server hands it to an aggregator.

    Args:
        device_id: the reporting device.
        task_id: the task the report answers (unique per job).
        version: the model version the server handed this device for the task (the server's own
            record, not the device's cookie); staleness is computed from it. At least 1.
        delta: ``trained - received`` per parameter, float32, names without ``net.``.
        num_samples: local training samples behind the delta (sample-weighted aggregators use it;
            phones do not report it, so it defaults to 1). At least 1.
    """

    device_id: str = attrs.field(validator=attrs.validators.instance_of(str))
    task_id: str = attrs.field(validator=attrs.validators.instance_of(str))
    version: int = attrs.field(
        validator=[attrs.validators.instance_of(int), attrs.validators.ge(1)]
    )
    delta: Weights = attrs.field(validator=_check_weights)
    num_samples: int = attrs.field(
        default=1, validator=[attrs.validators.instance_of(int), attrs.validators.ge(1)]
    )


@attrs.frozen
class AggregatorSettings:
    """The job's model-manager and device-manager settings that aggregators may use.

    Names and meanings are those of NVFlare's ``ModelManagerConfig`` / ``DeviceManagerConfig``
    (FEDBUFF.md §2). Aggregator-specific options (normalization, staleness function, momentum, ...)
    are plugin ``args`` instead.

    Args:
        num_updates_for_model: the buffer size K: contributions that trigger a new version.
        global_lr: the server learning rate applied to the aggregated delta.
        staleness_weight: NVFlare's switch for the ``1/(1+sqrt(V_new-v))`` weight; a plugin's own
            staleness argument, when given, takes precedence.
        max_model_history: staleness cut-off: updates with ``V - v >= max_model_history`` are
            dropped by the server before they reach the aggregator (``None``: no cut-off).
        device_selection_size: devices training concurrently (FedBuff concurrency C).
    """

    num_updates_for_model: int = attrs.field(
        validator=[attrs.validators.instance_of(int), attrs.validators.ge(1)]
    )
    global_lr: float = attrs.field(
        converter=float, validator=[_check_finite, attrs.validators.gt(0.0)]
    )
    staleness_weight: bool = attrs.field(validator=attrs.validators.instance_of(bool))
    max_model_history: int | None = attrs.field(
        validator=attrs.validators.optional(
            [attrs.validators.instance_of(int), attrs.validators.ge(1)]
        )
    )
    device_selection_size: int = attrs.field(
        validator=[attrs.validators.instance_of(int), attrs.validators.ge(1)]
    )


@runtime_checkable
class Aggregator(Protocol):
    """Folds device updates into new global model versions (group ``edgefl.aggregators``).

    Constructed as ``cls(settings, **args)``; unknown or invalid ``args`` raise ``TypeError`` or
    ``ValueError`` naming the argument. Memory must stay proportional to the model size (times a
    small number of retained versions), never to the number of updates received.

    The server calls, for each accepted report, ``accept`` and then ``ready``; when ``ready`` is
    true it calls ``aggregate`` and publishes the result as version ``current_version + 1``.
    ``state_dict``/``load_state_dict`` carry whatever must survive a restart *besides* the buffered
    updates (e.g. server momentum); the server persists accepted updates itself and replays them
    through ``accept`` after ``load_state_dict`` when it resumes.
    """

    def accept(self, update: Update, current_version: int) -> None:
        """Fold ``update`` in. Raises ``ValueError`` (state unchanged) when its key set or
        shapes differ from the first update seen, or it holds non-finite values."""
        ...

    def ready(self, current_version: int, selected: int) -> bool:
        """Whether a new version should be produced now. ``selected``: devices currently holding a
        selection ticket (trained or training, not yet reported)."""
        ...

    def aggregate(self, weights: Weights, current_version: int) -> Weights:
        """The next global weights: every key of ``weights`` (keys without contributions keep
        their value), float32. Empties the buffers it consumed; ``weights`` is not modified.
        Raises ``ValueError``, keeping its buffers, when no usable result exists (a delta for a
        tensor ``weights`` lacks, a value overflowing float32)."""
        ...

    def pending(self) -> int:
        """Contributions buffered and not yet aggregated."""
        ...

    def state_dict(self) -> dict[str, np.ndarray]:
        """Arrays to persist across restarts (may be empty)."""
        ...

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what ``state_dict`` returned."""
        ...


# --------------------------------------------------------------------------------------------------
# Selectors


@attrs.frozen
class Candidate:
    """A device that could be given a selection ticket.

    Args:
        device_id: the device.
        platform: ``"android"``, ``"ios"`` or ``"generic"``.
        device_info: the device's self-description (EDIP ``X-Flare-Device-Info``), e.g.
            ``{"platform": "android", "app_version": "1.4.2", ...}``.
        last_seen: when it last polled (the server's clock, seconds).
        mean_task_seconds: mean time from task delivery to report over its past tasks, ``None``
            when it never completed one.
    """

    device_id: str = attrs.field(validator=attrs.validators.instance_of(str))
    platform: str = attrs.field(validator=attrs.validators.instance_of(str))
    device_info: Mapping[str, str] = attrs.field(factory=dict, validator=_check_str_mapping)
    last_seen: float = attrs.field(default=0.0, converter=float)
    mean_task_seconds: float | None = attrs.field(default=None)


@runtime_checkable
class Selector(Protocol):
    """Chooses which devices get selection tickets (group ``edgefl.selectors``; ``cls(**args)``)."""

    def select(self, candidates: Sequence[Candidate], k: int, rng: random.Random) -> list[str]:
        """Up to ``k`` distinct device ids drawn from ``candidates`` (fewer when fewer qualify).
        All randomness comes from ``rng`` so runs are reproducible."""
        ...


# --------------------------------------------------------------------------------------------------
# Evaluators


@runtime_checkable
class Evaluator(Protocol):
    """Scores global model versions (group ``edgefl.evaluators``).

    Constructed as ``cls(job, **args)`` where ``job`` is the loaded job folder
    (``edgefl._jobfolder.JobFolder``: ``path``, ``spec``, ``param_shapes``, ...).
    """

    def evaluate(self, weights: Weights) -> dict[str, float]:
        """Metrics of ``weights`` (e.g. ``{"accuracy": 93.1, "loss": 0.21}``; accuracy in
        percent). Runs in a worker thread, one version at a time, in version order."""
        ...


# --------------------------------------------------------------------------------------------------
# Trainers (simulated devices)


def _check_task(task: TrainTask) -> None:
    if task.program is None and (task.weights is None or task.model_path is None):
        raise ValueError("TrainTask needs program, or weights and model_path")
    if (task.x is None) != (task.y is None):
        raise ValueError("TrainTask: x and y must be given together")
    if task.x is None and task.indices is None:
        raise ValueError("TrainTask needs the device's data: x and y, or indices")


@attrs.frozen(kw_only=True, eq=False)
class TrainTask:
    """One local training run of a simulated device. Picklable (crosses into worker processes).

    Args:
        program: the ``.pte`` training program exactly as a phone receives it (ExecuTorch
            trainers); it holds the weights to start from.
        weights: the global weights to start from (eager trainers), names without ``net.``.
        model_path: the job's ``model.pt2`` (eager trainers).
        x, y: the device's training data (float32 inputs, int64 labels), or
        indices: positions of the device's samples in ``dataset``, which the trainer loads once
            per worker process.
        dataset: what ``indices`` refer to (a data set name or file path the trainer understands).
        epochs, lr, batch_size: local SGD settings (``batch_size`` equals ``input_shape[0]`` for
            ExecuTorch programs).
        momentum: local SGD momentum.
        seed: seeds shuffling (and anything else random) so a run is reproducible.
        model_version: the version being trained (for logs and results).
    """

    program: bytes | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(bytes))
    )
    weights: Weights | None = attrs.field(default=None, validator=_check_optional_weights)
    model_path: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(str))
    )
    x: FloatArray | None = None
    y: IntArray | None = None
    indices: IntArray | None = None
    dataset: str | None = None
    epochs: int = attrs.field(
        default=1, validator=[attrs.validators.instance_of(int), attrs.validators.ge(1)]
    )
    lr: float = attrs.field(default=0.01, converter=float, validator=_check_finite)
    batch_size: int = attrs.field(
        default=1, validator=[attrs.validators.instance_of(int), attrs.validators.ge(1)]
    )
    momentum: float = attrs.field(default=0.0, converter=float, validator=_check_finite)
    seed: int = attrs.field(default=0, validator=attrs.validators.instance_of(int))
    model_version: int = attrs.field(default=0, validator=attrs.validators.instance_of(int))

    def __attrs_post_init__(self) -> None:
        _check_task(self)


@attrs.frozen(kw_only=True, eq=False)
class TrainResult:
    """What a trainer returns.

    Args:
        delta: ``trained - received`` per trainable parameter, float32, names without ``net.``.
        num_samples: samples the device trained on (per epoch).
        loss: mean training loss of the last epoch.
        seconds: wall time of the training itself.
    """

    delta: Weights = attrs.field(validator=_check_weights)
    num_samples: int = attrs.field(
        validator=[attrs.validators.instance_of(int), attrs.validators.ge(0)]
    )
    loss: float = attrs.field(converter=float)
    seconds: float = attrs.field(converter=float)


@runtime_checkable
class Trainer(Protocol):
    """Trains a simulated device (group ``edgefl.trainers``; ``cls(**args)``).

    Instances live in worker processes (spawned), one task at a time per process.
    """

    def train(self, task: TrainTask) -> TrainResult:
        """Run local training and return the weight delta."""
        ...
