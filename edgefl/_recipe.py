"""The user's job description: the config objects and :class:`ETFedBuffRecipe`.

Names, meanings and defaults are NVFlare's (FEDBUFF.md §2, §6; EDIP.md §14.1, §15), so a recipe
written for NVFlare's ``ETFedBuffRecipe`` runs here with imports from ``edgefl``. edgefl's own
additions (FEDBUFF.md §9) are extra keyword fields with defaults that keep the reference behaviour
unless they are set.

The config classes are plain, frozen and validated at construction: a bad value raises
``ValueError`` (or ``TypeError`` for a value of the wrong kind) whose message names the class and
the field. They import neither torch nor executorch, because the server rebuilds them from
``job.toml`` (:mod:`edgefl._jobfolder`); only :class:`ETFedBuffRecipe` needs torch.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from edgefl._jobfolder import JobSpec
    from edgefl._model import DeviceModel

__all__ = [
    "AGGREGATION_NORMALIZATIONS",
    "DEVICE_SAMPLING_STRATEGIES",
    "PARTITIONS",
    "STALENESS_MODES",
    "DefaultGlobalLRWarning",
    "DeviceManagerConfig",
    "ETFedBuffRecipe",
    "EvaluatorConfig",
    "ModelManagerConfig",
    "SimulationConfig",
    "check_json_table",
    "check_plugin_name",
    "check_shape",
    "derive_method",
]

AGGREGATION_NORMALIZATIONS: Final = ("count", "per_version", "k")
STALENESS_MODES: Final = ("none", "nvflare", "polynomial")
DEVICE_SAMPLING_STRATEGIES: Final = ("balanced", "random")
PARTITIONS: Final = ("iid", "dirichlet")

_PLUGIN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


class DefaultGlobalLRWarning(UserWarning):
    """``ModelManagerConfig.global_lr`` was left at the recipe default of 0.01.

    NVFlare's recipe default scales every aggregated update by 0.01, a hundred times smaller than
    its own model manager's default of 1.0 and far below the FedBuff paper's server step; jobs
    written without setting it train very slowly (FEDBUFF.md §2.1, §9.1). Pass ``global_lr``
    explicitly (``1.0`` averages the device updates, as FedAvg does) to silence this warning.
    """


class _DefaultGlobalLR(float):
    """The 0.01 default, recognisable by identity so that leaving it unset can be warned about."""

    __slots__ = ()

    def __repr__(self) -> str:
        return float.__repr__(self)


_DEFAULT_GLOBAL_LR: Final = _DefaultGlobalLR(0.01)


# --------------------------------------------------------------------------------------------------
# Field validation helpers (messages name "<Class>.<field>")


def _where(instance: object, attribute: attrs.Attribute[Any]) -> str:
    return f"{type(instance).__name__}.{attribute.name}"


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _is_number(value: object) -> bool:
    return _is_int(value) or isinstance(value, float | np.floating)


def _int_at_least(minimum: int, *, optional: bool = False) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if optional and value is None:
            return
        if not _is_int(value) or int(value) < minimum:  # type: ignore[call-overload]
            none = " or None" if optional else ""
            raise ValueError(
                f"{_where(instance, attribute)} must be an integer >= {minimum}{none},"
                f" got {value!r}"
            )

    return check


def _positive_number(*, optional: bool = False) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if optional and value is None:
            return
        if not _is_number(value) or not math.isfinite(value) or value <= 0:  # type: ignore[arg-type,operator]
            none = " or None" if optional else ""
            raise ValueError(
                f"{_where(instance, attribute)} must be a finite number > 0{none}, got {value!r}"
            )

    return check


def _bool(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{_where(instance, attribute)} must be True or False, got {value!r}")


def _one_of(choices: Sequence[str], *, optional: bool = False) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if optional and value is None:
            return
        if value not in choices:
            none = " or None" if optional else ""
            raise ValueError(
                f"{_where(instance, attribute)} must be one of {', '.join(map(repr, choices))}"
                f"{none}, got {value!r}"
            )

    return check


def _plugin_name(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_plugin_name(value, _where(instance, attribute))


def _json_table(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_json_table(value, _where(instance, attribute))


def _int_or_none(value: object) -> object:
    """Keep ints as ``int`` (numpy integers too) so configs compare and serialise plainly."""
    return int(value) if _is_int(value) else value  # type: ignore[call-overload]


def _float_or_none(value: object) -> object:
    if value is _DEFAULT_GLOBAL_LR or not _is_number(value):
        return value
    return float(value)  # type: ignore[arg-type]


def _zero_is_none(value: object) -> object:
    """``0`` and ``None`` both mean "disabled" for the version limits (FEDBUFF.md §2.1)."""
    value = _int_or_none(value)
    return None if value == 0 else value


def _freeze_table(value: object) -> object:
    return dict(value) if isinstance(value, Mapping) else value


def check_plugin_name(value: object, where: str) -> str:
    """An entry-point name such as ``"fedbuff"``; raises ``ValueError`` naming ``where``."""
    if not isinstance(value, str) or not _PLUGIN_NAME.match(value):
        raise ValueError(
            f"{where} must be an entry-point name (letters, digits, '_', '-', '.'), got {value!r}"
        )
    return value


def check_json_table(value: object, where: str, *, _depth: int = 0) -> None:
    """Check that ``value`` is a table ``job.toml`` can hold: str keys; values str, finite
    number, bool, or (nested) lists and tables of those. TOML has no null, so ``None`` is refused.
    """
    if not isinstance(value, Mapping):
        raise TypeError(f"{where} must be a mapping (dict), got {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(key, str):
            raise TypeError(f"{where}: keys must be strings, got {key!r}")
        _check_json_value(item, f"{where}[{key!r}]", _depth + 1)


def _check_json_value(value: object, where: str, depth: int) -> None:
    if depth > 16:
        raise ValueError(f"{where}: nested too deeply")
    if isinstance(value, bool | str):
        return
    if _is_int(value):
        return
    if isinstance(value, float | np.floating):
        if not math.isfinite(value):
            raise ValueError(f"{where} must be finite, got {value!r}")
        return
    if isinstance(value, Mapping):
        check_json_table(value, where, _depth=depth)
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_json_value(item, f"{where}[{i}]", depth + 1)
        return
    if value is None:
        raise ValueError(f"{where} is None; job.toml cannot store None: leave the key out")
    raise TypeError(
        f"{where} must be a str, number, bool, list or dict, got {type(value).__name__}"
    )


def check_shape(value: object, where: str) -> tuple[int, ...]:
    """A non-empty tuple of positive ints; raises ``ValueError`` naming ``where``."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ValueError(f"{where} must be a sequence of positive integers, got {value!r}")
    dims = tuple(value)
    if not dims or not all(_is_int(d) and int(d) >= 1 for d in dims):
        raise ValueError(
            f"{where} must be a non-empty sequence of positive integers, got {value!r}"
        )
    return tuple(int(d) for d in dims)


def derive_method(input_shape: Sequence[int]) -> str:
    """The EDIP device ``method`` (EDIP.md §10.3) for an input shape, when none is given.

    Android picks its input layout from it: ``cnn`` feeds ``[B, 3, 32, 32]``, ``xor`` feeds
    ``[B, 2]`` (and refuses batches above 4), anything else feeds ``[B, N/B]``.
    """
    tail = tuple(input_shape[1:])
    if tail == (3, 32, 32):
        return "cnn"
    if tail == (2,) and input_shape[0] <= 4:
        return "xor"
    return "mlp"


# --------------------------------------------------------------------------------------------------
# Config objects


@attrs.frozen(kw_only=True)
class ModelManagerConfig:
    """How global model versions are produced (FEDBUFF.md §2.1, §9.2).

    Args:
        max_num_active_model_versions: versions a device may still train on (relay bookkeeping;
            ``None`` or 0 disables the limit).
        max_model_version: the job ends when the global version reaches this; version 1 is the
            initial model, so ``M`` gives ``M - 1`` aggregation steps. At least 2.
        update_timeout: seconds allowed for a child-to-parent report (hierarchies only).
        num_updates_for_model: the FedBuff buffer size K: device contributions that produce a new
            version. At most the recipe's ``device_selection_size``.
        max_model_history: staleness cut-off: updates for a version ``v`` with
            ``V - v >= max_model_history`` are dropped (``None`` or 0: no cut-off).
        staleness_weight: NVFlare's switch for the ``1 / (1 + sqrt(V_new - v))`` weight.
        global_lr: the server learning rate applied to the averaged device diff. The default
            0.01 is NVFlare's recipe default; leaving it unset warns
            (:class:`DefaultGlobalLRWarning`).
        aggregation_normalization: what the buffered sum is divided by: ``"count"`` (the
            contributions aggregated; NVFlare main), ``"per_version"`` (each version's own count;
            NVFlare 2.7.x) or ``"k"`` (``num_updates_for_model``; the FedBuff paper).
        staleness: ``"none"``, ``"nvflare"`` or ``"polynomial"`` (``1 / (1 + tau)^a``); ``None``
            follows ``staleness_weight`` (``"nvflare"`` when true, else ``"none"``).
        staleness_exponent: the polynomial exponent ``a``, in ``(0, 1]``.
    """

    max_num_active_model_versions: int | None = attrs.field(
        default=3, converter=_zero_is_none, validator=_int_at_least(1, optional=True)
    )
    max_model_version: int = attrs.field(
        default=20, converter=_int_or_none, validator=_int_at_least(2)
    )
    update_timeout: float = attrs.field(
        default=5.0, converter=_float_or_none, validator=_positive_number()
    )
    num_updates_for_model: int = attrs.field(
        default=100, converter=_int_or_none, validator=_int_at_least(1)
    )
    max_model_history: int | None = attrs.field(
        default=10, converter=_zero_is_none, validator=_int_at_least(1, optional=True)
    )
    staleness_weight: bool = attrs.field(default=False, validator=_bool)
    global_lr: float = attrs.field(
        default=_DEFAULT_GLOBAL_LR, converter=_float_or_none, validator=_positive_number()
    )
    aggregation_normalization: str = attrs.field(
        default="count", validator=_one_of(AGGREGATION_NORMALIZATIONS)
    )
    staleness: str | None = attrs.field(
        default=None, validator=_one_of(STALENESS_MODES, optional=True)
    )
    staleness_exponent: float = attrs.field(default=0.5, converter=_float_or_none)

    @staleness_exponent.validator
    def _check_exponent(self, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, float) or not 0.0 < value <= 1.0:
            raise ValueError(f"{_where(self, attribute)} must be in (0, 1], got {value!r}")

    def __attrs_post_init__(self) -> None:
        if self.global_lr is _DEFAULT_GLOBAL_LR:
            warnings.warn(
                "ModelManagerConfig.global_lr is left at the recipe default 0.01, which scales"
                " every aggregated update by 0.01 (NVFlare's model manager defaults to 1.0);"
                " pass global_lr explicitly, e.g. global_lr=1.0 to average device updates",
                DefaultGlobalLRWarning,
                stacklevel=3,
            )

    @property
    def effective_staleness(self) -> str:
        """The staleness mode in force: ``staleness``, or what ``staleness_weight`` implies."""
        if self.staleness is not None:
            return self.staleness
        return "nvflare" if self.staleness_weight else "none"


@attrs.frozen(kw_only=True)
class DeviceManagerConfig:
    """How devices are chosen to train (FEDBUFF.md §2.2, §9.7, §9.8).

    Args:
        device_selection_size: devices holding a training ticket at once (FedBuff concurrency C).
        min_hole_to_fill: refill the selection only when at least this many slots are free
            (1: replace each finished device at once, asynchronous; ``device_selection_size``:
            wait for all, synchronous). At most ``device_selection_size``.
        device_reuse: a device that reported may be selected again (False: at most once per job).
        initial_min_client_num: NVFlare's minimum number of distinct leaf clients before the
            first selection (a single edgefl server is one client, so 1).
        device_sampling_strategy: ``"balanced"`` (NVFlare main) or ``"random"`` (2.7.x).
        min_devices_to_start: usable devices needed before the first selection; ``None`` keeps the
            reference rule (a full selection: ``device_selection_size``). At most
            ``device_selection_size``.
        task_timeout: seconds a selected device may take from selection to report before its
            ticket expires and the slot is given to another device.
        device_ttl: seconds after its last poll when a device is forgotten.
    """

    device_selection_size: int = attrs.field(
        default=100, converter=_int_or_none, validator=_int_at_least(1)
    )
    min_hole_to_fill: int = attrs.field(
        default=1, converter=_int_or_none, validator=_int_at_least(1)
    )
    device_reuse: bool = attrs.field(default=True, validator=_bool)
    initial_min_client_num: int = attrs.field(
        default=1, converter=_int_or_none, validator=_int_at_least(1)
    )
    device_sampling_strategy: str = attrs.field(
        default="balanced", validator=_one_of(DEVICE_SAMPLING_STRATEGIES)
    )
    min_devices_to_start: int | None = attrs.field(
        default=None, converter=_int_or_none, validator=_int_at_least(1, optional=True)
    )
    task_timeout: float = attrs.field(
        default=600.0, converter=_float_or_none, validator=_positive_number()
    )
    device_ttl: float = attrs.field(
        default=3600.0, converter=_float_or_none, validator=_positive_number()
    )

    def __attrs_post_init__(self) -> None:
        size = self.device_selection_size
        if self.min_hole_to_fill > size:
            raise ValueError(
                f"DeviceManagerConfig.min_hole_to_fill ({self.min_hole_to_fill}) must be <="
                f" device_selection_size ({size})"
            )
        if self.min_devices_to_start is not None and self.min_devices_to_start > size:
            raise ValueError(
                f"DeviceManagerConfig.min_devices_to_start ({self.min_devices_to_start}) must be"
                f" <= device_selection_size ({size})"
            )

    @property
    def devices_to_start(self) -> int:
        """Usable devices needed before the first selection."""
        if self.min_devices_to_start is None:
            return self.device_selection_size
        return self.min_devices_to_start


def _eval_arrays(
    value: object, where: str
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """``(x, y)`` from ``{"data": ..., "labels": ...}`` or a pair; float32 / int64, same length."""
    if isinstance(value, Mapping):
        unknown = set(value) - {"data", "labels"}
        if unknown or not {"data", "labels"} <= set(value):
            raise ValueError(
                f"{where} must be {{'data': ..., 'labels': ...}},"
                f" got keys {sorted(map(str, value))}"
            )
        data, labels = value["data"], value["labels"]
    elif isinstance(value, tuple | list) and len(value) == 2:
        data, labels = value
    else:
        raise TypeError(f"{where} must be (data, labels) or {{'data':..., 'labels':...}}")
    try:
        x = np.asarray(data)
        y = np.asarray(labels)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: cannot read the arrays: {exc}") from exc
    if x.dtype.kind not in "fiu" or x.ndim < 2:
        raise ValueError(
            f"{where}: data must be a numeric array of shape [N, ...], got {x.dtype} {x.shape}"
        )
    if y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0)):
        raise ValueError(f"{where}: labels must be integers, got {y.dtype}")
    if y.ndim != 1 or y.shape[0] != x.shape[0] or x.shape[0] == 0:
        raise ValueError(
            f"{where}: need N >= 1 samples and labels of shape [N]; got data {x.shape},"
            f" labels {y.shape}"
        )
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    if not np.all(np.isfinite(x32)):
        raise ValueError(f"{where}: data holds NaN or infinite values")
    if np.any(y < 0):
        raise ValueError(f"{where}: labels must be >= 0")
    return x32, np.ascontiguousarray(y, dtype=np.int64)


@attrs.frozen(kw_only=True, eq=False)
class EvaluatorConfig:
    """Server-side evaluation of each new global version (EDIP.md §15).

    Give the held-out data as ``custom_dataset={"data": x, "labels": y}`` (NVFlare's form) or as
    ``dataset=(x, y)``; either way it travels in the job folder as ``eval.npz`` (float32 inputs,
    int64 class labels).

    Args:
        eval_frequency: evaluate version ``v`` when ``v % eval_frequency == 0``.
        torchvision_dataset: NVFlare's option; not supported (a job folder must be
            self-contained): pass the arrays instead.
        custom_dataset: ``{"data": array [N, ...], "labels": array [N]}``.
        dataset: ``(data, labels)``, the same arrays as a pair.
        evaluator: the ``edgefl.evaluators`` plugin name.
        evaluator_args: keyword arguments for the plugin (a ``job.toml`` table).
    """

    eval_frequency: int = attrs.field(default=1, converter=_int_or_none, validator=_int_at_least(1))
    torchvision_dataset: Mapping[str, object] | None = None
    custom_dataset: Mapping[str, object] | None = None
    dataset: tuple[object, object] | None = None
    evaluator: str = attrs.field(default="classification", validator=_plugin_name)
    evaluator_args: Mapping[str, object] = attrs.field(
        factory=dict, converter=_freeze_table, validator=_json_table
    )
    x: npt.NDArray[np.float32] = attrs.field(init=False, repr=False)
    y: npt.NDArray[np.int64] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.torchvision_dataset is not None:
            raise ValueError(
                "EvaluatorConfig.torchvision_dataset is not supported: a job folder carries its"
                " own test data; pass custom_dataset={'data': x, 'labels': y} or dataset=(x, y)"
            )
        given = [n for n in ("custom_dataset", "dataset") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                "EvaluatorConfig needs exactly one of custom_dataset={'data':..., 'labels':...}"
                f" or dataset=(x, y); got {' and '.join(given) or 'neither'}"
            )
        where = f"EvaluatorConfig.{given[0]}"
        x, y = _eval_arrays(getattr(self, given[0]), where)
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)


@attrs.frozen(kw_only=True, eq=False)
class SimulationConfig:
    """Simulated devices (EDIP.md §14.1) plus what edgefl's simulator needs.

    Args:
        task_processor: NVFlare's per-device processor object. edgefl's simulated devices use a
            trainer plugin instead (``trainer``); an object given here stays with the recipe (it
            is not written to the job folder).
        job_timeout: seconds a simulated device keeps asking ``/job`` before giving up.
        num_devices: simulated devices.
        num_workers: worker processes that train concurrently.
        trainer: the ``edgefl.trainers`` plugin: ``"executorch"`` (the device's own ``.pte``
            in the ExecuTorch runtime: faithful) or ``"eager"`` (``model.pt2`` in PyTorch: fast).
        trainer_args: keyword arguments for the trainer plugin.
        dataset: the data set the devices train on: ``"digits"`` or ``"cifar10:<dir>"``.
        partition: how samples are split across devices: ``"iid"`` or ``"dirichlet"``.
        dirichlet_alpha: the Dirichlet concentration for ``partition="dirichlet"`` (smaller is
            more skewed).
        seed: seeds the partition, the device order and local shuffling.
    """

    task_processor: object | None = None
    job_timeout: float = attrs.field(
        default=60.0, converter=_float_or_none, validator=_positive_number()
    )
    num_devices: int = attrs.field(default=1000, converter=_int_or_none, validator=_int_at_least(1))
    num_workers: int = attrs.field(default=10, converter=_int_or_none, validator=_int_at_least(1))
    trainer: str = attrs.field(default="executorch", validator=_plugin_name)
    trainer_args: Mapping[str, object] = attrs.field(
        factory=dict, converter=_freeze_table, validator=_json_table
    )
    dataset: str = attrs.field(default="digits")
    partition: str = attrs.field(default="iid", validator=_one_of(PARTITIONS))
    dirichlet_alpha: float = attrs.field(
        default=0.5, converter=_float_or_none, validator=_positive_number()
    )
    seed: int = attrs.field(default=0, converter=_int_or_none, validator=_int_at_least(0))

    @dataset.validator
    def _check_dataset(self, attribute: attrs.Attribute[Any], value: object) -> None:
        from edgefl._data import DataError, parse_dataset_spec

        try:
            parse_dataset_spec(value)  # type: ignore[arg-type]
        except DataError as exc:
            raise ValueError(f"SimulationConfig.dataset: {exc}") from None

    def settings(self) -> dict[str, object]:
        """The fields a job folder stores (everything but ``task_processor``)."""
        return {
            f.name: getattr(self, f.name)
            for f in attrs.fields(SimulationConfig)
            if f.name != "task_processor"
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SimulationConfig):
            return NotImplemented
        return self.settings() == other.settings() and self.task_processor is other.task_processor

    __hash__ = None  # type: ignore[assignment]


# --------------------------------------------------------------------------------------------------
# The recipe


def _check_training_params(params: object, max_batch: int) -> dict[str, object]:
    if params is None:
        return {}
    check_json_table(params, "device_training_params")
    assert isinstance(params, Mapping)
    out = dict(params)
    if "epoch" in out and (not _is_int(out["epoch"]) or int(out["epoch"]) < 1):
        raise ValueError(
            f"device_training_params['epoch'] must be an integer >= 1, got {out['epoch']!r}"
        )
    if "lr" in out and (not _is_number(out["lr"]) or out["lr"] <= 0):
        raise ValueError(f"device_training_params['lr'] must be a number > 0, got {out['lr']!r}")
    if "batch_size" in out:
        bs = out["batch_size"]
        if not _is_int(bs) or not 1 <= int(bs) <= max_batch:
            raise ValueError(
                f"device_training_params['batch_size'] must be an integer in [1, {max_batch}]"
                f" (input_shape[0] is the largest batch the program trains), got {bs!r}"
            )
    if "method" in out and not isinstance(out["method"], str):
        raise ValueError(
            f"device_training_params['method'] must be a string, got {out['method']!r}"
        )
    return {k: _normalise_json(v) for k, v in out.items()}


def _normalise_table(table: Mapping[str, object]) -> dict[str, object]:
    return {k: _normalise_json(v) for k, v in table.items()}


def _normalise_json(value: object) -> object:
    """numpy scalars -> Python, tuples -> lists: a spec compares equal after a TOML round trip."""
    if isinstance(value, bool | str):
        return value
    if _is_int(value):
        return int(value)  # type: ignore[call-overload]
    if isinstance(value, float | np.floating):
        return float(value)
    if isinstance(value, Mapping):
        return {k: _normalise_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalise_json(v) for v in value]
    return value


class ETFedBuffRecipe:
    """An asynchronous (FedBuff) federated-learning job for ExecuTorch devices.

    The signature, names and defaults are NVFlare's ``ETFedBuffRecipe`` (FEDBUFF.md §6.2); the
    keyword arguments after ``device_wait_timeout`` are edgefl's. Everything is validated here, so
    a bad argument fails at construction with a message that names it.

    Args:
        job_name: the name devices send in ``/job``.
        device_model: the :class:`~edgefl.DeviceModel` to train (its ``net`` holds the weights).
        input_shape: the training input shape; ``input_shape[0]`` is the largest batch the device
            program trains (any batch from 1 to it works).
        output_shape: the label shape, ``(input_shape[0],)`` for class-index labels.
        model_manager_config: :class:`ModelManagerConfig`.
        device_manager_config: :class:`DeviceManagerConfig`.
        evaluator_config: :class:`EvaluatorConfig`, or ``None`` for no evaluation.
        simulation_config: :class:`SimulationConfig` for simulated devices, or ``None``.
        device_training_params: sent to devices as the trainer's ``args`` (EDIP.md §4.4), e.g.
            ``{"epoch": 3, "lr": 0.0001, "batch_size": 32}``; ``batch_size`` at most
            ``input_shape[0]``.
        custom_source_root: NVFlare's option; must be ``None`` (a job folder never carries code).
        initial_ckpt: a ``torch.save``-d state dict (of ``device_model.net``, keys with or without
            ``net.``) loaded into the model before export.
        device_wait_timeout: seconds to wait for enough devices before ending the job (``None``:
            forever).
        method: the EDIP device method (EDIP.md §10.3); default: ``device_training_params
            ["method"]``, else derived from ``input_shape`` (:func:`derive_method`).
        aggregator, aggregator_args: the ``edgefl.aggregators`` plugin and its arguments. For
            ``"fedbuff"`` the model manager's ``aggregation_normalization``, ``staleness`` and
            ``staleness_exponent`` are passed as its ``normalization``, ``staleness`` and
            ``staleness_exponent`` arguments.
        selector, selector_args: the ``edgefl.selectors`` plugin and its arguments.
    """

    def __init__(
        self,
        job_name: str,
        device_model: DeviceModel,
        input_shape: Sequence[int],
        output_shape: Sequence[int],
        model_manager_config: ModelManagerConfig,
        device_manager_config: DeviceManagerConfig,
        evaluator_config: EvaluatorConfig | None = None,
        simulation_config: SimulationConfig | None = None,
        device_training_params: Mapping[str, object] | None = None,
        custom_source_root: str | None = None,
        initial_ckpt: str | Path | None = None,
        device_wait_timeout: float | None = None,
        *,
        method: str | None = None,
        aggregator: str = "fedbuff",
        aggregator_args: Mapping[str, object] | None = None,
        selector: str = "random",
        selector_args: Mapping[str, object] | None = None,
    ) -> None:
        from edgefl._export import check_model
        from edgefl._model import DeviceModel

        if not isinstance(job_name, str) or not _JOB_NAME.match(job_name):
            raise ValueError(
                "job_name must be 1-128 characters of letters, digits, '_', '-', '.', starting"
                f" with a letter or digit; got {job_name!r}"
            )
        if not isinstance(device_model, DeviceModel):
            raise TypeError(
                "device_model must be an edgefl.DeviceModel (wrap your network:"
                f" DeviceModel(net) or a subclass), got {type(device_model).__name__}"
            )
        self.input_shape = check_shape(input_shape, "input_shape")
        self.output_shape = check_shape(output_shape, "output_shape")
        if self.output_shape[0] != self.input_shape[0]:
            raise ValueError(
                f"output_shape[0] ({self.output_shape[0]}) must equal input_shape[0]"
                f" ({self.input_shape[0]}): both are the batch dimension"
            )
        if not isinstance(model_manager_config, ModelManagerConfig):
            raise TypeError(
                "model_manager_config must be a ModelManagerConfig,"
                f" got {type(model_manager_config).__name__}"
            )
        if not isinstance(device_manager_config, DeviceManagerConfig):
            raise TypeError(
                "device_manager_config must be a DeviceManagerConfig,"
                f" got {type(device_manager_config).__name__}"
            )
        k = model_manager_config.num_updates_for_model
        c = device_manager_config.device_selection_size
        if k > c:
            raise ValueError(
                f"model_manager_config.num_updates_for_model ({k}) must be <="
                f" device_manager_config.device_selection_size ({c}): a version needs that many"
                " devices training at once"
            )
        if evaluator_config is not None and not isinstance(evaluator_config, EvaluatorConfig):
            raise TypeError(
                "evaluator_config must be an EvaluatorConfig or None,"
                f" got {type(evaluator_config).__name__}"
            )
        if simulation_config is not None and not isinstance(simulation_config, SimulationConfig):
            raise TypeError(
                "simulation_config must be a SimulationConfig or None,"
                f" got {type(simulation_config).__name__}"
            )
        if custom_source_root is not None:
            raise ValueError(
                "custom_source_root is not used by edgefl: a job folder holds the exported model,"
                " never user code; leave it None"
            )
        if device_wait_timeout is not None and (
            not _is_number(device_wait_timeout)
            or not math.isfinite(device_wait_timeout)
            or device_wait_timeout <= 0
        ):
            raise ValueError(
                f"device_wait_timeout must be a number > 0 or None, got {device_wait_timeout!r}"
            )
        self.job_name = job_name
        self.device_model = device_model
        self.model_manager_config = model_manager_config
        self.device_manager_config = device_manager_config
        self.evaluator_config = evaluator_config
        self.simulation_config = simulation_config
        self.device_training_params = _check_training_params(
            device_training_params, self.input_shape[0]
        )
        self.device_wait_timeout = (
            None if device_wait_timeout is None else float(device_wait_timeout)
        )
        if method is None:
            given = self.device_training_params.get("method")
            method = given if isinstance(given, str) else derive_method(self.input_shape)
        if not isinstance(method, str) or not method:
            raise ValueError(f"method must be a non-empty string, got {method!r}")
        self.method = method
        self.aggregator = check_plugin_name(aggregator, "aggregator")
        self.aggregator_args = self._aggregator_args(aggregator_args)
        self.selector = check_plugin_name(selector, "selector")
        if selector_args is not None:
            check_json_table(selector_args, "selector_args")
        self.selector_args = _normalise_table(selector_args or {})
        if initial_ckpt is not None:
            self._load_ckpt(initial_ckpt)
        # Refuses what cannot train on a device (BatchNorm with running statistics, ...) and
        # checks that the shapes fit the model, by running it once in PyTorch.
        check_model(device_model, self.input_shape, self.output_shape)
        if evaluator_config is not None:
            self._check_eval_shape(evaluator_config)

    def _aggregator_args(self, given: Mapping[str, object] | None) -> dict[str, object]:
        if given is not None:
            check_json_table(given, "aggregator_args")
        args: dict[str, object] = dict(given or {})
        if self.aggregator == "fedbuff":
            mm = self.model_manager_config
            for key, value in (
                ("normalization", mm.aggregation_normalization),
                ("staleness", mm.effective_staleness),
                ("staleness_exponent", mm.staleness_exponent),
            ):
                if key in args and args[key] != value:
                    raise ValueError(
                        f"aggregator_args[{key!r}] ({args[key]!r}) contradicts the model manager"
                        f" config ({value!r}); set it in ModelManagerConfig only"
                    )
                args[key] = value
        return _normalise_table(args)

    def _load_ckpt(self, path: str | Path) -> None:
        import torch

        p = Path(path)
        if not p.is_file():
            raise ValueError(f"initial_ckpt {str(p)!r} is not a file")
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds for a bad file
            raise ValueError(f"initial_ckpt {str(p)!r} cannot be read: {exc}") from exc
        if not isinstance(state, Mapping):
            raise ValueError(f"initial_ckpt {str(p)!r} must hold a state dict")
        state = {(k[4:] if k.startswith("net.") else k): v for k, v in state.items()}
        try:
            self.device_model.net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(
                f"initial_ckpt {str(p)!r} does not fit device_model.net: {exc}"
            ) from exc

    def _check_eval_shape(self, config: EvaluatorConfig) -> None:
        sample = tuple(config.x.shape[1:])
        want = self.input_shape[1:]
        if sample != want and math.prod(sample) != math.prod(want):
            raise ValueError(
                f"EvaluatorConfig data samples have shape {sample}, which does not fit"
                f" input_shape {self.input_shape} (samples must be {want})"
            )

    @property
    def spec(self) -> JobSpec:
        """The job's settings as the job folder stores them (parameters not yet known: empty)."""
        return self._spec(params=())

    def _spec(self, params: Sequence[tuple[str, tuple[int, ...]]]) -> JobSpec:
        from edgefl._jobfolder import JobSpec, ParamSpec, PluginSpec

        ev = self.evaluator_config
        sim = self.simulation_config
        return JobSpec(
            name=self.job_name,
            method=self.method,
            input_shape=self.input_shape,
            output_shape=self.output_shape,
            model_manager=self.model_manager_config,
            device_manager=self.device_manager_config,
            device_wait_timeout=self.device_wait_timeout,
            device_training_params=self.device_training_params,
            aggregator=PluginSpec(name=self.aggregator, args=self.aggregator_args),
            selector=PluginSpec(name=self.selector, args=self.selector_args),
            evaluator=(
                PluginSpec(name="none")
                if ev is None
                else PluginSpec(name=ev.evaluator, args=_normalise_table(ev.evaluator_args))
            ),
            eval_frequency=1 if ev is None else ev.eval_frequency,
            simulation=None if sim is None else attrs.evolve(sim, task_processor=None),
            params=tuple(ParamSpec(name=n, shape=s) for n, s in params),
        )

    def run(self, folder: str | Path | None = None, **kwargs: Any) -> Any:
        """Export the job (to ``folder``, or a temporary folder) and run it with simulated
        devices over loopback HTTP; returns the simulation report. ``kwargs`` go to
        ``edgefl._simulate.run_recipe`` (fleet overrides and simulation options)."""
        from edgefl._simulate import run_recipe

        return run_recipe(self, folder, **kwargs)

    def export(self, folder: str | Path) -> Path:
        """Export the model and write the self-contained job folder at ``folder``.

        The training program is exported once (gated: loaded in the ExecuTorch runtime, trained
        one step and compared with PyTorch), ``model.pt2`` is saved for evaluation and eager
        training, and everything is written to a temporary folder that is then renamed into
        place. An existing job folder at ``folder`` is replaced; any other non-empty folder is
        refused.

        Returns:
            The folder's path.

        Raises:
            ExportError: the model cannot be exported or fails the gate (the message says why).
            FileExistsError: ``folder`` exists and is not a job folder.
        """
        from edgefl._export import export_job_artifacts
        from edgefl._jobfolder import write_job_folder

        artifacts = export_job_artifacts(self.device_model, self.input_shape, self.output_shape)
        spec = self._spec(params=list(artifacts.template.param_shapes.items()))
        eval_data = None
        if self.evaluator_config is not None:
            x = self.evaluator_config.x.reshape((-1, *self.input_shape[1:]))
            eval_data = (x, self.evaluator_config.y)
        return write_job_folder(
            folder,
            spec=spec,
            weights=artifacts.weights,
            template=artifacts.template,
            inference_program=artifacts.inference_program,
            eval_data=eval_data,
        )
