"""Job folders: the self-contained form of a job that the server serves (architecture.md).

::

    job.toml        the job's settings (JobSpec): name, method, shapes, [model_manager],
                    [device_manager], [device_training_params], [aggregator], [selector],
                    [evaluator], [simulation], [[params]]
    weights.npz     the initial global weights: float32, names without "net."
    template.pte    the ExecuTorch training program holding the initial weights, every parameter
                    in its own buffer (the weight-patching template; also version 1's program)
    template.json   per parameter: name, shape, byte offset, byte length in template.pte,
                    plus the program's size and SHA-256
    model.pt2       torch.export.save of the DeviceModel (dynamic batch): evaluation, eager training
    eval.npz        optional held-out data: x float32 [N, *input_shape[1:]], y int64 [N]
    manifest.json   size and SHA-256 of each file above except job.toml

:func:`write_job_folder` writes everything into a temporary folder beside the target, checks that
it loads, then renames it into place, so a reader never sees half a job. :func:`load_job_folder`
checks every file before returning anything and raises :class:`JobFolderError` naming the file and
the problem. Loading needs numpy only (no torch, no executorch) unless ``verify_program=True``.

TOML has no null: ``None`` settings are left out, except ``max_num_active_model_versions`` and
``max_model_history`` (whose defaults are not ``None``), which store ``None`` as 0 (both mean
"no limit", FEDBUFF.md §2.1).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import tomllib
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import numpy as np

from edgefl._export import ProgramTemplate, _check_pte_header
from edgefl._recipe import (
    DeviceManagerConfig,
    ModelManagerConfig,
    SimulationConfig,
    _check_training_params,
    check_json_table,
    check_plugin_name,
    check_shape,
)

if TYPE_CHECKING:
    import numpy.typing as npt

    from edgefl.api import Weights

__all__ = [
    "FILES",
    "FORMAT",
    "JobFolder",
    "JobFolderError",
    "JobSpec",
    "ParamSpec",
    "PluginSpec",
    "load_job_folder",
    "write_job_folder",
]

FORMAT: Final = 1
FILES: Final = (
    "job.toml",
    "manifest.json",
    "weights.npz",
    "template.pte",
    "template.json",
    "model.pt2",
)
"""The files every job folder has (``eval.npz`` is optional)."""

_CHECKED: Final = ("weights.npz", "template.pte", "template.json", "model.pt2", "eval.npz")
"""The files ``manifest.json`` records (size and SHA-256). ``job.toml`` is not among them: it is
meant to be read and may be edited by hand; its content is validated instead."""


class JobFolderError(Exception):
    """A job folder is missing, incomplete or damaged.

    Attributes:
        path: the folder.
        file: the file at fault (``None`` for the folder itself).
        problem: what is wrong.
    """

    def __init__(self, path: str | Path, file: str | None, problem: str) -> None:
        self.path = Path(path)
        self.file = file
        self.problem = problem
        where = self.path / file if file else self.path
        super().__init__(f"{where}: {problem}")


# --------------------------------------------------------------------------------------------------
# JobSpec


def _int_tuple(value: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(d) for d in value)


def _table(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else value  # type: ignore[return-value]


@attrs.frozen
class PluginSpec:
    """A plugin chosen by entry-point name, with its keyword arguments."""

    name: str = attrs.field()
    args: dict[str, Any] = attrs.field(factory=dict, converter=_table)

    @name.validator
    def _check_name(self, attribute: attrs.Attribute[Any], value: object) -> None:
        check_plugin_name(value, "plugin name")

    @args.validator
    def _check_args(self, attribute: attrs.Attribute[Any], value: object) -> None:
        check_json_table(value, f"{self.name} args")


@attrs.frozen
class ParamSpec:
    """One trainable parameter: name (without ``net.``) and shape."""

    name: str = attrs.field(validator=attrs.validators.instance_of(str))
    shape: tuple[int, ...] = attrs.field(converter=_int_tuple)


def _input_shape(value: object) -> tuple[int, ...]:
    return check_shape(value, "input_shape")


def _output_shape(value: object) -> tuple[int, ...]:
    return check_shape(value, "output_shape")


def _param_tuple(value: Sequence[ParamSpec]) -> tuple[ParamSpec, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class JobSpec:
    """A job's settings: everything in ``job.toml``. Validated at construction.

    Args:
        name: the job name devices ask for.
        method: the EDIP device method sent in task meta (EDIP.md §10.3).
        input_shape: the training input shape; ``input_shape[0]`` is the largest batch.
        output_shape: the label shape.
        model_manager: :class:`~edgefl.ModelManagerConfig`.
        device_manager: :class:`~edgefl.DeviceManagerConfig`.
        device_wait_timeout: seconds to wait for enough devices before ending (``None``: forever).
        device_training_params: the trainer ``args`` sent to devices (EDIP.md §4.4).
        aggregator, selector, evaluator: the plugins and their arguments.
        eval_frequency: evaluate version ``v`` when ``v % eval_frequency == 0``.
        simulation: simulated-device settings (``task_processor`` is never stored), or ``None``.
        params: the trainable parameters, in program order: the update schema.
    """

    name: str = attrs.field(validator=attrs.validators.instance_of(str))
    method: str = attrs.field(validator=attrs.validators.instance_of(str))
    input_shape: tuple[int, ...] = attrs.field(converter=_input_shape)
    output_shape: tuple[int, ...] = attrs.field(converter=_output_shape)
    model_manager: ModelManagerConfig = attrs.field(
        validator=attrs.validators.instance_of(ModelManagerConfig)
    )
    device_manager: DeviceManagerConfig = attrs.field(
        validator=attrs.validators.instance_of(DeviceManagerConfig)
    )
    device_wait_timeout: float | None = None
    device_training_params: dict[str, Any] = attrs.field(factory=dict, converter=_table)
    aggregator: PluginSpec = attrs.field(factory=functools.partial(PluginSpec, "fedbuff"))
    selector: PluginSpec = attrs.field(factory=functools.partial(PluginSpec, "random"))
    evaluator: PluginSpec = attrs.field(factory=functools.partial(PluginSpec, "none"))
    eval_frequency: int = 1
    simulation: SimulationConfig | None = None
    params: tuple[ParamSpec, ...] = attrs.field(default=(), converter=_param_tuple)

    def __attrs_post_init__(self) -> None:
        if not self.name or not self.method:
            raise ValueError("name and method must be non-empty")
        if self.output_shape[0] != self.input_shape[0]:
            raise ValueError(
                f"output_shape[0] ({self.output_shape[0]}) must equal input_shape[0]"
                f" ({self.input_shape[0]})"
            )
        k = self.model_manager.num_updates_for_model
        c = self.device_manager.device_selection_size
        if k > c:
            raise ValueError(
                f"model_manager.num_updates_for_model ({k}) must be <="
                f" device_manager.device_selection_size ({c})"
            )
        if self.device_wait_timeout is not None and (
            isinstance(self.device_wait_timeout, bool)
            or not isinstance(self.device_wait_timeout, int | float)
            or not math.isfinite(self.device_wait_timeout)
            or self.device_wait_timeout <= 0
        ):
            raise ValueError(
                f"device_wait_timeout must be a number > 0, got {self.device_wait_timeout!r}"
            )
        _check_training_params(self.device_training_params, self.input_shape[0])
        for attr in ("aggregator", "selector", "evaluator"):
            if not isinstance(getattr(self, attr), PluginSpec):
                raise TypeError(f"{attr} must be a PluginSpec")
        if type(self.eval_frequency) is not int or self.eval_frequency < 1:
            raise ValueError(f"eval_frequency must be an integer >= 1, got {self.eval_frequency!r}")
        if self.simulation is not None and not isinstance(self.simulation, SimulationConfig):
            raise TypeError("simulation must be a SimulationConfig or None")
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError("params: a parameter name appears twice")

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Parameter name (without ``net.``) -> shape: the schema of device updates."""
        return {p.name: p.shape for p in self.params}

    @property
    def batch_size(self) -> int:
        """The batch size devices train with: ``device_training_params["batch_size"]``, else the
        largest the program accepts (``input_shape[0]``)."""
        value = self.device_training_params.get("batch_size", self.input_shape[0])
        return int(value)

    @property
    def max_batch_size(self) -> int:
        """The largest batch the training program accepts."""
        return self.input_shape[0]

    def to_toml_dict(self) -> dict[str, Any]:
        """The ``job.toml`` document."""
        mm = attrs.asdict(self.model_manager)
        for key in ("max_num_active_model_versions", "max_model_history"):
            if mm[key] is None:
                mm[key] = 0
        mm["global_lr"] = float(mm["global_lr"])
        doc: dict[str, Any] = {
            "format": FORMAT,
            "name": self.name,
            "method": self.method,
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
        }
        if self.device_wait_timeout is not None:
            doc["device_wait_timeout"] = float(self.device_wait_timeout)
        doc["model_manager"] = _drop_none(mm)
        doc["device_manager"] = _drop_none(attrs.asdict(self.device_manager))
        doc["device_training_params"] = dict(self.device_training_params)
        doc["aggregator"] = {"name": self.aggregator.name, "args": dict(self.aggregator.args)}
        doc["selector"] = {"name": self.selector.name, "args": dict(self.selector.args)}
        doc["evaluator"] = {
            "name": self.evaluator.name,
            "eval_frequency": self.eval_frequency,
            "args": dict(self.evaluator.args),
        }
        if self.simulation is not None:
            doc["simulation"] = _drop_none(self.simulation.settings())
        doc["params"] = [{"name": p.name, "shape": list(p.shape)} for p in self.params]
        return doc

    @classmethod
    def from_toml_dict(cls, doc: Mapping[str, Any]) -> JobSpec:
        """Build from a parsed ``job.toml``.

        Raises:
            ValueError, TypeError: an unknown, missing or invalid key (named in the message).
        """
        doc = dict(doc)
        if doc.pop("format", None) != FORMAT:
            raise ValueError(f"'format' must be {FORMAT}")
        _no_unknown(
            doc,
            "job.toml",
            {
                "name",
                "method",
                "input_shape",
                "output_shape",
                "device_wait_timeout",
                "model_manager",
                "device_manager",
                "device_training_params",
                "aggregator",
                "selector",
                "evaluator",
                "simulation",
                "params",
            },
        )
        for key in ("name", "method", "input_shape", "output_shape", "params"):
            if key not in doc:
                raise ValueError(f"missing key {key!r}")
        ev = _section(doc, "evaluator", {"name", "eval_frequency", "args"})
        sim = doc.get("simulation")
        params = doc["params"]
        if not isinstance(params, list):
            raise ValueError("'params' must be an array of tables [[params]]")
        param_specs = []
        for i, p in enumerate(params):
            if not isinstance(p, Mapping) or set(p) != {"name", "shape"}:
                raise ValueError(f"params[{i}] must have exactly 'name' and 'shape'")
            if not isinstance(p["name"], str) or not isinstance(p["shape"], list):
                raise ValueError(f"params[{i}]: name must be a string and shape an array")
            if not all(type(d) is int and d >= 0 for d in p["shape"]):
                raise ValueError(f"params[{i}] ({p['name']}): shape must hold integers >= 0")
            param_specs.append(ParamSpec(p["name"], p["shape"]))
        return cls(
            name=doc["name"],
            method=doc["method"],
            input_shape=doc["input_shape"],
            output_shape=doc["output_shape"],
            model_manager=_build(ModelManagerConfig, _section(doc, "model_manager")),
            device_manager=_build(DeviceManagerConfig, _section(doc, "device_manager")),
            device_wait_timeout=doc.get("device_wait_timeout"),
            device_training_params=_section(doc, "device_training_params"),
            aggregator=_plugin(doc, "aggregator"),
            selector=_plugin(doc, "selector"),
            evaluator=PluginSpec(ev.get("name", "none"), ev.get("args", {})),
            eval_frequency=ev.get("eval_frequency", 1),
            simulation=None
            if sim is None
            else _build(SimulationConfig, _section(doc, "simulation")),
            params=tuple(param_specs),
        )


def _drop_none(table: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in table.items() if v is not None}


def _no_unknown(table: Mapping[str, Any], where: str, known: set[str]) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}")


def _section(doc: Mapping[str, Any], key: str, known: set[str] | None = None) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, Mapping):
        raise ValueError(f"[{key}] must be a table")
    if known is not None:
        _no_unknown(value, f"[{key}]", known)
    return dict(value)


def _plugin(doc: Mapping[str, Any], key: str) -> PluginSpec:
    table = _section(doc, key, {"name", "args"})
    if "name" not in table:
        raise ValueError(f"[{key}] needs a name")
    return PluginSpec(table["name"], table.get("args", {}))


def _build(cls: type[Any], table: dict[str, Any]) -> Any:
    known = {f.name for f in attrs.fields(cls) if f.init and f.name != "task_processor"}
    _no_unknown(table, f"[{cls.__name__}]", known)
    return cls(**table)


# --------------------------------------------------------------------------------------------------
# Loading


@attrs.frozen(eq=False)
class JobFolder:
    """A loaded, checked job folder.

    Attributes:
        path: the folder.
        spec: its settings.
        initial_weights: the initial global weights (float32, names without ``net.``).
        template: the patching template (``template.patch(weights) -> bytes``: a complete
            ``.pte`` for any weights); ``template.program`` is version 1's program.
    """

    path: Path
    spec: JobSpec
    initial_weights: Weights
    template: ProgramTemplate

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Parameter name -> shape: the schema for ``decode_tensor_map``."""
        return self.spec.param_shapes

    @property
    def model_path(self) -> Path:
        """``model.pt2`` (see :func:`edgefl._export.load_inference_module`)."""
        return self.path / "model.pt2"

    @property
    def eval_path(self) -> Path | None:
        """``eval.npz`` if the job has held-out data."""
        path = self.path / "eval.npz"
        return path if path.is_file() else None

    def eval_data(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]] | None:
        """The held-out ``(x, y)``, or ``None``."""
        path = self.eval_path
        return None if path is None else _read_eval(self.path, self.spec)


def _read(path: Path, file: str) -> bytes:
    try:
        return (path / file).read_bytes()
    except FileNotFoundError:
        raise JobFolderError(path, file, "missing") from None
    except OSError as exc:
        raise JobFolderError(path, file, f"cannot be read: {exc}") from exc


def _read_npz(path: Path, file: str, data: bytes | None = None) -> dict[str, np.ndarray]:
    if data is None:
        data = _read(path, file)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise JobFolderError(path, file, f"not a readable .npz archive: {exc}") from exc


def _read_eval(
    path: Path, spec: JobSpec, data: bytes | None = None
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    arrays = _read_npz(path, "eval.npz", data)
    if set(arrays) != {"x", "y"}:
        raise JobFolderError(path, "eval.npz", f"must hold arrays x and y, holds {sorted(arrays)}")
    x, y = arrays["x"], arrays["y"]
    want = tuple(spec.input_shape[1:])
    if x.dtype != np.float32 or x.ndim < 1 or tuple(x.shape[1:]) != want or x.shape[0] < 1:
        raise JobFolderError(
            path,
            "eval.npz",
            f"x must be float32 [N, {', '.join(map(str, want))}], got {x.dtype} {x.shape}",
        )
    if y.dtype != np.int64 or y.shape != (x.shape[0],):
        raise JobFolderError(
            path, "eval.npz", f"y must be int64 [{x.shape[0]}], got {y.dtype} {y.shape}"
        )
    return x, y


def _manifest(files: Mapping[str, bytes]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "files": {
            name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            for name, data in files.items()
        },
    }


def _rewrite_manifest(folder: Path) -> None:
    """Record a folder's current files in ``manifest.json`` (tests use it to build folders that
    are consistent but wrong)."""
    files = {n: (folder / n).read_bytes() for n in _CHECKED if (folder / n).is_file()}
    _write(folder / "manifest.json", json.dumps(_manifest(files), indent=1).encode("utf-8"))


def _read_checked(folder: Path) -> dict[str, bytes]:
    """The files ``manifest.json`` records, each checked against its size and SHA-256."""
    try:
        manifest = json.loads(_read(folder, "manifest.json"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JobFolderError(folder, "manifest.json", f"not valid JSON: {exc}") from exc
    entries = manifest.get("files") if isinstance(manifest, Mapping) else None
    if manifest.get("format") != FORMAT or not isinstance(entries, Mapping):
        raise JobFolderError(folder, "manifest.json", f"not a format-{FORMAT} manifest")
    unknown = sorted(set(entries) - set(_CHECKED))
    if unknown:
        raise JobFolderError(folder, "manifest.json", f"lists unknown files {unknown}")
    files: dict[str, bytes] = {}
    for name in _CHECKED:
        entry = entries.get(name)
        if entry is None:
            if name != "eval.npz":
                raise JobFolderError(folder, "manifest.json", f"does not list {name}")
            if (folder / name).exists():
                raise JobFolderError(folder, name, "present but not listed in manifest.json")
            continue
        if not isinstance(entry, Mapping) or set(entry) != {"bytes", "sha256"}:
            raise JobFolderError(folder, "manifest.json", f"bad entry for {name}: {entry!r}")
        data = _read(folder, name)
        if len(data) != entry["bytes"]:
            raise JobFolderError(
                folder,
                name,
                f"{len(data)} bytes, manifest.json records {entry['bytes']}"
                " (truncated or replaced)",
            )
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise JobFolderError(
                folder, name, "its SHA-256 differs from manifest.json (damaged or replaced)"
            )
        files[name] = data
    return files


def load_job_folder(path: str | Path, *, verify_program: bool = False) -> JobFolder:
    """Load and check a job folder; nothing is returned unless every file is sound.

    Checks: ``job.toml`` parses and validates; every other file has the size and SHA-256 that
    ``manifest.json`` records; ``weights.npz`` holds exactly the ``[[params]]``
    as float32 arrays of their shapes; ``template.pte`` has the size and SHA-256 recorded in
    ``template.json``, its parameter slots lie inside it, do not overlap, match ``[[params]]``,
    and hold exactly the bytes of ``weights.npz``; ``model.pt2`` is a zip archive;
    ``eval.npz`` (if present, and required by the ``classification`` evaluator) has the input
    shape. With ``verify_program`` the slots are also re-derived from the program's structure
    (imports executorch).

    Raises:
        JobFolderError: naming the file and the problem.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise JobFolderError(folder, None, "not a directory")
    text = _read(folder, "job.toml")
    try:
        doc = tomllib.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise JobFolderError(folder, "job.toml", f"not valid TOML: {exc}") from exc
    try:
        spec = JobSpec.from_toml_dict(doc)
    except (ValueError, TypeError) as exc:
        raise JobFolderError(folder, "job.toml", str(exc)) from exc
    if not spec.params:
        raise JobFolderError(folder, "job.toml", "no [[params]]: the job has nothing to train")

    files = _read_checked(folder)
    weights = _read_npz(folder, "weights.npz", files["weights.npz"])
    shapes = spec.param_shapes
    if set(weights) != set(shapes):
        raise JobFolderError(
            folder,
            "weights.npz",
            f"holds {sorted(weights)}, job.toml [[params]] lists {sorted(shapes)}",
        )
    for name, array in weights.items():
        if array.dtype != np.float32 or array.shape != shapes[name]:
            raise JobFolderError(
                folder,
                "weights.npz",
                f"{name!r} is {array.dtype} {array.shape}, job.toml says float32 {shapes[name]}",
            )
    weights = {name: weights[name] for name in shapes}  # program order

    program = files["template.pte"]
    try:
        _check_pte_header(program)
    except ValueError as exc:
        raise JobFolderError(folder, "template.pte", str(exc)) from exc
    try:
        template_doc = json.loads(files["template.json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JobFolderError(folder, "template.json", f"not valid JSON: {exc}") from exc
    if isinstance(template_doc, Mapping) and (
        template_doc.get("program_bytes") != len(program)
        or template_doc.get("program_sha256") != hashlib.sha256(program).hexdigest()
    ):
        raise JobFolderError(
            folder,
            "template.pte",
            f"{len(program)} bytes whose size or SHA-256 differ from template.json (truncated,"
            " damaged or replaced)",
        )
    try:
        template = ProgramTemplate.from_json(program, template_doc)
    except (ValueError, TypeError) as exc:
        raise JobFolderError(folder, "template.json", str(exc)) from exc
    if template.param_shapes != shapes or list(template.param_shapes) != list(shapes):
        raise JobFolderError(
            folder,
            "template.json",
            f"its parameters {template.param_shapes} differ from job.toml [[params]] {shapes}",
        )
    held = template.weights()
    for name, array in weights.items():
        if held[name].tobytes() != array.tobytes():
            raise JobFolderError(
                folder,
                "template.pte",
                f"the bytes at {name!r}'s offset are not the weights in weights.npz (damaged or"
                " mismatched template)",
            )
    if verify_program:
        try:
            located = ProgramTemplate.from_program(program)
        except Exception as exc:
            raise JobFolderError(folder, "template.pte", f"cannot be read: {exc}") from exc
        if located.slots != template.slots:
            raise JobFolderError(
                folder,
                "template.json",
                "its offsets are not where the program keeps its parameters",
            )

    if not zipfile.is_zipfile(io.BytesIO(files["model.pt2"])):
        raise JobFolderError(folder, "model.pt2", "not a torch.export archive (zip)")

    if "eval.npz" in files:
        _read_eval(folder, spec, files["eval.npz"])
    elif spec.evaluator.name == "classification":
        raise JobFolderError(folder, "eval.npz", "missing; the classification evaluator needs it")
    return JobFolder(path=folder, spec=spec, initial_weights=weights, template=template)


# --------------------------------------------------------------------------------------------------
# Writing


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_job_folder(
    folder: str | Path,
    *,
    spec: JobSpec,
    weights: Mapping[str, np.ndarray],
    template: ProgramTemplate,
    inference_program: bytes,
    eval_data: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """Write a job folder atomically at ``folder`` and return its path.

    The files go to a temporary folder beside ``folder``, which is loaded back with
    :func:`load_job_folder` and then renamed into place. An existing job folder at ``folder`` is
    replaced (moved aside, then deleted); a file or a non-empty folder without ``job.toml`` is
    refused.

    Raises:
        ValueError: the parts do not fit together (``spec.params``, the template and ``weights``).
        FileExistsError: ``folder`` is something other than a job folder.
    """
    target = Path(folder).absolute()
    shapes = spec.param_shapes
    if template.param_shapes != shapes:
        raise ValueError(f"spec.params {shapes} differ from the template's {template.param_shapes}")
    arrays = {name: np.ascontiguousarray(weights[name], dtype=np.float32) for name in shapes}
    if set(weights) != set(shapes):
        raise ValueError(f"weights hold {sorted(weights)}, spec.params list {sorted(shapes)}")
    held = template.weights()
    for name, array in arrays.items():
        if held[name].tobytes() != array.tobytes():
            raise ValueError(f"the template does not hold weights[{name!r}]")
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not (target / "job.toml").is_file():
        raise FileExistsError(f"{target} is a non-empty folder that is not a job folder")
    target.parent.mkdir(parents=True, exist_ok=True)

    files = {
        "weights.npz": _npz_bytes(arrays),
        "template.pte": template.program,
        "template.json": json.dumps(template.to_json(), indent=1).encode("utf-8"),
        "model.pt2": inference_program,
    }
    if eval_data is not None:
        x, y = eval_data
        files["eval.npz"] = _npz_bytes(
            {
                "x": np.ascontiguousarray(x, dtype=np.float32),
                "y": np.ascontiguousarray(y, dtype=np.int64),
            }
        )
    import tomli_w  # writing only: the server reads job.toml with the standard tomllib

    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        _write(tmp / "job.toml", tomli_w.dumps(spec.to_toml_dict()).encode("utf-8"))
        for name, data in files.items():
            _write(tmp / name, data)
        _write(tmp / "manifest.json", json.dumps(_manifest(files), indent=1).encode("utf-8"))
        _fsync_dir(tmp)
        load_job_folder(tmp)  # never publish a folder that does not load
        if target.exists():
            old = Path(
                tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent)
            )
            os.replace(target, old / "job")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
