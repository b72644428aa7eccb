"""Gated ExecuTorch export of a :class:`~edgefl.DeviceModel`, and weight patching.

Pipeline (notes/EXECUTORCH.md, FEDBUFF.md §7.2), with two deliberate departures from NVFlare:

1. ``torch.export.export`` of the ``DeviceModel`` with a **dynamic batch dimension**
   (``1 .. input_shape[0]``), so a device may train any batch up to the exported maximum.
2. The joint forward+backward graph is built by composing ``_export_forward_backward``'s own steps
   (decomposition, then detach removal) with one change: ``aten.max_pool2d_with_indices_backward``
   is decomposed with torch's registered decomposition. ExecuTorch 1.5.1's portable kernel for it
   does not zero its output, which silently inflates the gradients of any convolution in front of
   a max-pool by ~1e5 (upstream issue 21686).
3. ``to_edge`` -> ``to_executorch`` -> the ``.pte`` bytes.

**The gate.** No program leaves this module unchecked: it is loaded in the ExecuTorch runtime,
trained one step at the largest and at the smallest batch, and its loss and gradients are compared
with eager PyTorch from the same weights (``rtol=1e-4, atol=1e-6``); its parameters must equal the
model's bit for bit. Models the runtime cannot train are refused before or after export with a
message naming the cause: BatchNorm with running statistics, average pooling (no backward kernel),
anything else without a kernel, or any numerical disagreement. Dropout is random, so its program
is checked on a copy with ``p=0`` (the real program must still load and train).

**Weight patching.** A new model version's program differs from the previous one only in the
parameter bytes, so it is made by writing the new float32 weights into a copy of a *template*
program at each parameter's byte offset (:class:`ProgramTemplate`): about a millisecond instead of
seconds. The exporter stores identical tensors once (two zero biases share one buffer), so the
template is exported from a copy whose trainable parameters hold distinct random values, and the
real initial weights are patched in afterwards. Offsets come from the program's structure (the
flatbuffer, read with ExecuTorch's own deserializer): parameter ``i`` of the training method is
output ``parameters_index + i``, a memory-planned tensor whose ``data_buffer_idx`` indexes the
mutable-data segment's offsets. Values are never searched for.

torch and executorch are imported lazily: :class:`ProgramTemplate` (used by the server on every
version) needs only numpy. Exports are serialised by one process-wide lock (PT2 export is not
thread-safe) and may run in a worker thread.
"""

from __future__ import annotations

import copy
import hashlib
import io
import itertools
import math
import re
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

import attrs
import numpy as np

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from edgefl._model import DeviceModel
    from edgefl.api import Weights

__all__ = [
    "EXPORT_LOCK",
    "GATE_ATOL",
    "GATE_RTOL",
    "ExportError",
    "JobArtifacts",
    "ParamSlot",
    "ProgramTemplate",
    "check_model",
    "export_inference_program",
    "export_job_artifacts",
    "export_training_program",
    "load_inference_module",
    "load_weights",
    "program_operators",
    "verify_program",
]

GATE_RTOL: Final = 1e-4
GATE_ATOL: Final = 1e-6
PREFIX: Final = "net."

EXPORT_LOCK: Final = threading.RLock()
"""Held around every ``torch.export`` / ExecuTorch lowering in this process (they share global
state and fail in confusing ways when two threads export at once)."""

_PTE_IDENTIFIER = re.compile(rb"ET\d\d")
_EXTENDED_HEADER_MAGIC: Final = b"eh00"

# Runtime kernels known to be missing, with the layer that needs them and what to use instead.
_MISSING_KERNEL_HINTS: Final = {
    "avg_pool2d_backward": (
        "AvgPool2d",
        "use MaxPool2d, a strided Conv2d, or AdaptiveAvgPool2d(1) for global average pooling",
    ),
    "avg_pool3d_backward": ("AvgPool3d", "use MaxPool3d or a strided Conv3d"),
}


class ExportError(Exception):
    """A model cannot be exported to a trainable ExecuTorch program, or the program it gives
    fails the gate. The message names the cause (a layer, an operator, a tensor)."""

    status_hint: int = 500


# --------------------------------------------------------------------------------------------------
# Program templates (numpy only)


def _int_tuple(value: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(d) for d in value)


def _slot_tuple(value: Sequence[ParamSlot]) -> tuple[ParamSlot, ...]:
    return tuple(value)


@attrs.frozen
class ParamSlot:
    """Where one trainable parameter's float32 data sits in a program.

    Args:
        name: the parameter name without ``net.``.
        shape: its shape.
        offset: byte offset of its first element in the ``.pte`` file.
        nbytes: ``4 * prod(shape)``.
    """

    name: str
    shape: tuple[int, ...] = attrs.field(converter=_int_tuple)
    offset: int
    nbytes: int


def _check_pte_header(program: bytes) -> None:
    """Cheap structural check of a ``.pte``: flatbuffer identifier and extended header sizes."""
    if len(program) < 40 or not _PTE_IDENTIFIER.fullmatch(program[4:8]):
        raise ValueError("not an ExecuTorch program (no 'ETnn' flatbuffer identifier)")
    if program[8:12] != _EXTENDED_HEADER_MAGIC:
        raise ValueError("ExecuTorch program without an extended header")
    header_len = int.from_bytes(program[12:16], "little")
    program_size = int.from_bytes(program[16:24], "little")
    segment_base = int.from_bytes(program[24:32], "little")
    segment_size = int.from_bytes(program[32:40], "little") if header_len >= 32 else 0
    end = max(program_size, segment_base + segment_size)
    if program_size > len(program) or end > len(program):
        raise ValueError(
            f"ExecuTorch program is truncated: {len(program)} bytes, its header needs {end}"
        )


@attrs.frozen(eq=False)
class ProgramTemplate:
    """A ``.pte`` training program plus where each trainable parameter's bytes are.

    ``patch(weights)`` gives the program of any other weights. Construction checks the slots:
    unique names, ``nbytes == 4 * prod(shape)``, inside the program, and pairwise disjoint (a
    template exported with shared tensors could not hold distinct weights).

    Raises:
        ValueError: the slots or the program are inconsistent (the message says which).
    """

    program: bytes = attrs.field(repr=lambda p: f"<{len(p)} bytes>")
    slots: tuple[ParamSlot, ...] = attrs.field(converter=_slot_tuple)
    _by_name: dict[str, ParamSlot] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.program, bytes):
            raise TypeError(f"program must be bytes, got {type(self.program).__name__}")
        _check_pte_header(self.program)
        by_name: dict[str, ParamSlot] = {}
        size = len(self.program)
        for slot in self.slots:
            if slot.name in by_name:
                raise ValueError(f"parameter {slot.name!r} appears twice")
            if slot.nbytes != 4 * math.prod(slot.shape):
                raise ValueError(
                    f"parameter {slot.name!r}: nbytes {slot.nbytes} does not match shape"
                    f" {slot.shape} (float32 needs {4 * math.prod(slot.shape)})"
                )
            if slot.offset < 0 or slot.offset + slot.nbytes > size:
                raise ValueError(
                    f"parameter {slot.name!r}: bytes {slot.offset}..{slot.offset + slot.nbytes}"
                    f" are out of range (the program has {size} bytes)"
                )
            by_name[slot.name] = slot
        ordered = sorted((s for s in self.slots if s.nbytes), key=lambda s: s.offset)
        for a, b in itertools.pairwise(ordered):
            if a.offset + a.nbytes > b.offset:
                raise ValueError(
                    f"parameters {a.name!r} and {b.name!r} overlap in the program (a template"
                    " needs one buffer per parameter)"
                )
        object.__setattr__(self, "_by_name", by_name)

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name (without ``net.``) -> shape, in program order: the update schema."""
        return {s.name: s.shape for s in self.slots}

    def patch(self, weights: Mapping[str, np.ndarray]) -> bytes:
        """A complete ``.pte`` holding ``weights`` (float32, names without ``net.``).

        Raises:
            ValueError: a name missing or unexpected, a wrong shape, or a non-float array.
        """
        missing = self._by_name.keys() - weights.keys()
        extra = weights.keys() - self._by_name.keys()
        if missing or extra:
            raise ValueError(
                "weights do not match the program's parameters:"
                + (f" missing {sorted(missing)}" if missing else "")
                + (f" unexpected {sorted(extra)}" if extra else "")
            )
        buf = bytearray(self.program)
        for slot in self.slots:
            w = weights[slot.name]
            if not isinstance(w, np.ndarray) or w.dtype.kind != "f":
                raise ValueError(
                    f"weights[{slot.name!r}] must be a float numpy array,"
                    f" got {getattr(w, 'dtype', type(w).__name__)}"
                )
            if w.shape != slot.shape:
                raise ValueError(
                    f"weights[{slot.name!r}] has shape {w.shape}, the program needs {slot.shape}"
                )
            dst = np.ndarray(slot.shape, dtype="<f4", buffer=buf, offset=slot.offset)
            dst[...] = w
        return bytes(buf)

    def weights(self) -> Weights:
        """The weights the template program currently holds (copies, float32)."""
        return {
            s.name: np.frombuffer(self.program, dtype="<f4", count=s.nbytes // 4, offset=s.offset)
            .reshape(s.shape)
            .astype(np.float32)
            for s in self.slots
        }

    def to_json(self) -> dict[str, object]:
        """The ``template.json`` document (offsets plus a checksum of the program)."""
        return {
            "format": 1,
            "program_bytes": len(self.program),
            "program_sha256": hashlib.sha256(self.program).hexdigest(),
            "params": [
                {"name": s.name, "shape": list(s.shape), "offset": s.offset, "nbytes": s.nbytes}
                for s in self.slots
            ],
        }

    @classmethod
    def from_json(cls, program: bytes, doc: object) -> ProgramTemplate:
        """Rebuild from ``template.pte`` bytes and the ``template.json`` document.

        Raises:
            ValueError: the document is malformed or does not describe ``program``.
        """
        if not isinstance(doc, Mapping) or doc.get("format") != 1:
            raise ValueError("not a format-1 template document")
        if doc.get("program_bytes") != len(program):
            raise ValueError(
                f"the program has {len(program)} bytes, the document says"
                f" {doc.get('program_bytes')!r} (truncated or replaced file)"
            )
        if doc.get("program_sha256") != hashlib.sha256(program).hexdigest():
            raise ValueError("the program's SHA-256 does not match the document (damaged file)")
        params = doc.get("params")
        if not isinstance(params, list):
            raise ValueError("'params' must be a list")
        slots = []
        for i, p in enumerate(params):
            if not isinstance(p, Mapping) or set(p) != {"name", "shape", "offset", "nbytes"}:
                raise ValueError(f"params[{i}] must have exactly name, shape, offset, nbytes")
            name, shape, offset, nbytes = p["name"], p["shape"], p["offset"], p["nbytes"]
            if (
                not isinstance(name, str)
                or not isinstance(shape, list)
                or not all(type(d) is int and d >= 0 for d in shape)
                or type(offset) is not int
                or type(nbytes) is not int
            ):
                raise ValueError(f"params[{i}] has a field of the wrong type: {dict(p)!r}")
            slots.append(ParamSlot(name=name, shape=tuple(shape), offset=offset, nbytes=nbytes))
        return cls(program=program, slots=tuple(slots))

    @classmethod
    def from_program(cls, program: bytes) -> ProgramTemplate:
        """Locate every trainable parameter of an exported training program.

        Reads the program with ExecuTorch's deserializer: the training metadata methods give the
        parameter names and the index of the first parameter output; each parameter output is a
        float32 memory-planned tensor whose ``data_buffer_idx`` indexes the offsets of the
        mutable-data segment.

        Raises:
            ExportError: the program is not an ExecuTorch training program this code understands.
        """
        _check_pte_header(program)
        prog, segment_base = _deserialize(program)
        plans = {plan.name: plan for plan in prog.execution_plan}
        forward = plans.get("forward")
        fqn_plan = plans.get("__et_training_fqn_forward")
        index_plan = plans.get("__et_training_parameters_index_forward")
        if forward is None or fqn_plan is None or index_plan is None:
            raise ExportError("the program has no training method 'forward' with parameter data")
        names = [fqn_plan.values[i].val.string_val for i in fqn_plan.outputs]
        first = index_plan.values[index_plan.outputs[0]].val.int_val
        segments = prog.mutable_data_segments or []
        if len(segments) != 1:
            raise ExportError(
                f"expected one mutable-data segment holding the parameters, found {len(segments)}"
            )
        sub = segments[0]
        base = segment_base + prog.segments[sub.segment_index].offset
        slots = []
        for i, fqn in enumerate(names):
            if not fqn.startswith(PREFIX):
                raise ExportError(
                    f"trainable parameter {fqn!r} is not inside device_model.net; every trainable"
                    " parameter must belong to the wrapped network"
                )
            tensor = forward.values[forward.outputs[first + i]].val
            if getattr(tensor, "scalar_type", None) is None or int(tensor.scalar_type) != 6:
                raise ExportError(f"parameter {fqn!r} is not a float32 tensor in the program")
            if tensor.allocation_info is None or not 0 < tensor.data_buffer_idx < len(sub.offsets):
                raise ExportError(f"parameter {fqn!r} has no data in the mutable-data segment")
            shape = tuple(int(d) for d in tensor.sizes)
            slots.append(
                ParamSlot(
                    name=fqn[len(PREFIX) :],
                    shape=shape,
                    offset=base + sub.offsets[tensor.data_buffer_idx],
                    nbytes=4 * math.prod(shape),
                )
            )
        try:
            return cls(program=program, slots=tuple(slots))
        except ValueError as exc:
            raise ExportError(f"cannot use the program as a template: {exc}") from exc


def _deserialize(program: bytes) -> tuple[Any, int]:
    """The flatbuffer ``Program`` (segments left in place) and the segment base offset."""
    with _quiet():
        from executorch.exir._serialize._flatbuffer_program import _flatbuffer_to_program
        from executorch.exir._serialize._program import _get_extended_header

    header = _get_extended_header(program)
    if header is None:
        raise ExportError("the program has no extended header")
    return _flatbuffer_to_program(program[: header.program_size]), header.segment_base_offset


def program_operators(program: bytes) -> set[str]:
    """The operators (``"namespace::name.overload"``) a ``.pte`` program calls."""
    prog, _ = _deserialize(program)
    return {
        f"{op.name}.{op.overload}" if op.overload else op.name
        for plan in prog.execution_plan
        for op in plan.operators
    }


# --------------------------------------------------------------------------------------------------
# Model checks (before export)


_WARNINGS_LOCK: Final = threading.RLock()


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the warnings torch/executorch internals emit during export (notes/EXECUTORCH.md):
    they are noise to a user, and with ``-W error`` they would abort the export.

    ``warnings.catch_warnings`` swaps process-wide state, so two threads interleaving it could
    leave the filters changed for good; the lock keeps these sections one at a time."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        for category in (FutureWarning, UserWarning):
            warnings.filterwarnings(
                "ignore",
                category=category,
                module=r"(torch|executorch|torchao|copyreg|importlib)(\.|$)",
            )
        warnings.filterwarnings("ignore", message=r".*(LeafSpec|experimental|Experimental).*")
        yield


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _refuse_unsupported_layers(model: torch.nn.Module) -> None:
    import torch
    from torch import nn
    from torch.nn.modules.batchnorm import _NormBase

    for name, module in model.named_modules():
        where = f"{name} ({type(module).__name__})" if name else type(module).__name__
        if isinstance(module, _NormBase) and module.track_running_stats:
            raise ExportError(
                f"{where}: BatchNorm with running statistics cannot be trained on a device"
                " (ExecuTorch has no kernel for its functional update). Use"
                " BatchNorm2d(..., track_running_stats=False), GroupNorm or LayerNorm instead"
            )
        if isinstance(module, nn.AvgPool1d | nn.AvgPool2d | nn.AvgPool3d):
            raise ExportError(
                f"{where}: average pooling cannot be trained on a device (the ExecuTorch runtime"
                " has no avg_pool backward kernel). Use MaxPool2d, a strided Conv2d, or"
                " AdaptiveAvgPool2d(1) for global average pooling"
            )
    for pname, p in _trainable(model).items():
        if not pname.startswith(PREFIX):
            raise ExportError(
                f"trainable parameter {pname!r} is outside device_model.net; every trainable"
                " parameter must belong to the wrapped network"
            )
        if p.dtype != torch.float32:
            raise ExportError(
                f"parameter {pname!r} is {p.dtype}; device programs train float32 weights"
                " (call net.float())"
            )


def _example_inputs(
    input_shape: Sequence[int], output_shape: Sequence[int], batch: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    b = input_shape[0] if batch is None else batch
    x = torch.randn((b, *input_shape[1:]), generator=torch.Generator().manual_seed(0))
    y = torch.zeros((b, *output_shape[1:]), dtype=torch.int64)
    return x, y


def check_model(
    model: DeviceModel, input_shape: Sequence[int], output_shape: Sequence[int]
) -> None:
    """Refuse what cannot become a device program, before any export.

    Checks the layers (BatchNorm with running statistics, average pooling), that every trainable
    parameter is float32 and inside ``model.net``, and runs the model once in PyTorch on inputs of
    ``input_shape`` / labels of ``output_shape``: it must return ``(loss, predictions)`` with a
    scalar float loss and int64 predictions of shape ``[B]``.

    Raises:
        ExportError: an unsupported layer or parameter.
        ValueError: the shapes do not fit the model (names ``input_shape`` / ``output_shape``).
    """
    import torch

    from edgefl._model import DeviceModel

    if not isinstance(model, DeviceModel):
        raise TypeError(f"device_model must be an edgefl.DeviceModel, got {type(model).__name__}")
    _refuse_unsupported_layers(model)
    if not _trainable(model):
        raise ExportError("device_model has no trainable parameters")
    probe = copy.deepcopy(model)  # the forward must not touch the user's model (e.g. lazy init)
    try:
        # Inside the try: shapes too large to allocate (or past int64) fail here, not in forward.
        x, y = _example_inputs(input_shape, output_shape)
        with torch.no_grad():
            out = probe(x, y)
    except Exception as exc:  # the user's forward may raise anything
        raise ValueError(
            f"input_shape {tuple(input_shape)} / output_shape {tuple(output_shape)} do not fit"
            f" the model: running it on such inputs failed with {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(out, tuple | list) or len(out) < 2:
        raise ValueError("device_model must return (loss, predictions)")
    loss, pred = out[0], out[1]
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0 or not loss.is_floating_point():
        raise ValueError(
            "device_model must return the loss first, as a scalar float tensor; got"
            f" {getattr(loss, 'shape', type(loss).__name__)}"
        )
    if (
        not isinstance(pred, torch.Tensor)
        or pred.dtype != torch.int64
        or pred.shape != (x.shape[0],)
    ):
        raise ValueError(
            "device_model must return int64 predictions of shape [B] second; got"
            f" {getattr(pred, 'dtype', type(pred).__name__)} {getattr(pred, 'shape', '')}"
            f" for input_shape {tuple(input_shape)}"
        )


# --------------------------------------------------------------------------------------------------
# Export


def _dynamic_shapes(input_shape: Sequence[int]) -> dict[str, dict[int, Any]] | None:
    import torch

    if input_shape[0] < 2:
        return None
    batch = torch.export.Dim("batch", min=1, max=int(input_shape[0]))
    return {"input": {0: batch}, "label": {0: batch}}


def _capture(
    model: torch.nn.Module, input_shape: Sequence[int], output_shape: Sequence[int]
) -> Any:
    import torch

    x, y = _example_inputs(input_shape, output_shape)
    try:
        return torch.export.export(
            model, (x, y), dynamic_shapes=_dynamic_shapes(input_shape), strict=True
        )
    except Exception as exc:
        text = str(exc)
        if "batch" in text and ("Constraints violated" in text or "specializ" in text):
            raise ExportError(
                "the model does not accept a variable batch size (it fixes the batch dimension,"
                " e.g. x.view(32, -1)); write it for any batch (x.flatten(1),"
                f" x.view(x.shape[0], -1)): {text.splitlines()[0]}"
            ) from exc
        raise ExportError(f"torch.export failed: {type(exc).__name__}: {text}") from exc


def _joint(ep: Any, *, decompose_max_pool_backward: bool = True) -> Any:
    """``_export_forward_backward`` with the max-pool backward decomposed (see module doc).

    ``decompose_max_pool_backward=False`` reproduces the upstream pipeline (and its bug); only
    tests use it, to show that the gate refuses the result."""
    import torch
    from torch._decomp import core_aten_decompositions, decomposition_table
    from torch.export.experimental import (
        _copy_graph_module_and_signature,
        _remove_detach_pass,
    )
    from torch.export.exported_program import _decompose_exported_program

    table = dict(core_aten_decompositions())
    if decompose_max_pool_backward:
        op = torch.ops.aten.max_pool2d_with_indices_backward.default
        table[op] = decomposition_table[op]
    try:
        joint = _decompose_exported_program(
            ep,
            cia_to_decomp={},
            python_decomp_table=table,
            joint_loss_index=0,
            decompose_custom_triton_ops=False,
        )
    except Exception as exc:
        raise ExportError(
            f"building the training graph failed: {type(exc).__name__}: {exc}"
        ) from exc
    gm, signature = _copy_graph_module_and_signature(joint)
    _remove_detach_pass(gm, signature)
    return joint._update(gm, signature)


def _random_ops(ep: Any) -> list[str]:
    """Operators in the graph that draw random numbers (dropout and friends)."""
    import torch

    found = set()
    for node in ep.graph.nodes:
        target = node.target
        if node.op == "call_function" and torch.Tag.nondeterministic_seeded in getattr(
            target, "tags", ()
        ):
            found.add(str(target))
    return sorted(found)


def _lower(ep: Any) -> bytes:
    from executorch.exir import ExecutorchBackendConfig, to_edge

    try:
        program = to_edge(ep).to_executorch(ExecutorchBackendConfig()).buffer
    except Exception as exc:
        text = str(exc)
        if "batch_norm" in text:
            raise ExportError(
                "BatchNorm with running statistics cannot be trained on a device; use"
                " BatchNorm2d(..., track_running_stats=False), GroupNorm or LayerNorm"
            ) from exc
        raise ExportError(
            f"lowering to ExecuTorch failed: {type(exc).__name__}: {text.splitlines()[0]}"
        ) from exc
    return bytes(program)


def _export_unchecked(
    model: torch.nn.Module,
    input_shape: Sequence[int],
    output_shape: Sequence[int],
    *,
    decompose_max_pool_backward: bool = True,
) -> tuple[bytes, list[str]]:
    """The training program of ``model`` and the random operators it uses (no gate)."""
    with EXPORT_LOCK, _quiet():
        joint = _joint(
            _capture(model, input_shape, output_shape),
            decompose_max_pool_backward=decompose_max_pool_backward,
        )
        return _lower(joint), _random_ops(joint)


def _cpu_copy(model: DeviceModel) -> DeviceModel:
    try:
        return copy.deepcopy(model).cpu()
    except Exception as exc:
        raise ExportError(f"device_model cannot be copied for export: {exc}") from exc


def export_training_program(
    model: DeviceModel,
    input_shape: Sequence[int],
    output_shape: Sequence[int],
    *,
    verify: bool = True,
) -> bytes:
    """The gated ``.pte`` training program of ``model`` with its current weights.

    A plain full export (the exporter may share identical tensors, so the result is not a
    patching template: see :func:`export_job_artifacts`).

    Raises:
        ExportError: the model cannot be exported or the program fails the gate.
    """
    check_model(model, input_shape, output_shape)
    reference = _cpu_copy(model)
    program, random_ops = _export_unchecked(reference, input_shape, output_shape)
    if verify:
        _gate(reference, program, input_shape, output_shape, random_ops)
    return program


def _distinct_copy(model: DeviceModel, seed: int = 0x5EED) -> DeviceModel:
    """A copy whose trainable parameters hold distinct random values (so none share storage)."""
    import torch

    distinct = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in _trainable(distinct).values():
            p.copy_(torch.rand(p.shape, generator=generator) * 2.0 - 1.0)
    return distinct


def _weights_of(model: torch.nn.Module) -> Weights:
    return {
        name[len(PREFIX) :]: p.detach().cpu().numpy().astype(np.float32, copy=True)
        for name, p in _trainable(model).items()
    }


@attrs.frozen(eq=False)
class JobArtifacts:
    """What a job folder is made of.

    Args:
        template: the patching template, holding the initial weights (= version 1's program).
        weights: the initial weights (trainable parameters of ``net``, names without ``net.``).
        inference_program: ``model.pt2`` bytes (:func:`export_inference_program`).
    """

    template: ProgramTemplate
    weights: Weights
    inference_program: bytes


def build_template(
    model: DeviceModel, input_shape: Sequence[int], output_shape: Sequence[int]
) -> tuple[ProgramTemplate, Weights]:
    """The gated patching template of ``model`` holding its current weights, and those weights."""
    check_model(model, input_shape, output_shape)
    reference = _cpu_copy(model)
    weights = _weights_of(reference)
    raw, random_ops = _export_unchecked(_distinct_copy(reference), input_shape, output_shape)
    located = ProgramTemplate.from_program(raw)
    if located.param_shapes != {n: tuple(w.shape) for n, w in weights.items()}:
        raise ExportError(
            "the program's parameters do not match the model's trainable parameters:"
            f" {located.param_shapes} vs { {n: w.shape for n, w in weights.items()} }"
        )
    template = ProgramTemplate(program=located.patch(weights), slots=located.slots)
    _gate(reference, template.program, input_shape, output_shape, random_ops)
    return template, weights


def export_job_artifacts(
    model: DeviceModel, input_shape: Sequence[int], output_shape: Sequence[int]
) -> JobArtifacts:
    """Everything a job folder needs: the gated template and ``model.pt2``."""
    template, weights = build_template(model, input_shape, output_shape)
    return JobArtifacts(
        template=template,
        weights=weights,
        inference_program=export_inference_program(model, input_shape, output_shape),
    )


# --------------------------------------------------------------------------------------------------
# The gate


def _missing_kernels(program: bytes) -> list[str]:
    with _quiet():
        from executorch.extension.pybindings.portable_lib import _get_operator_names

    registered = set(_get_operator_names())
    return sorted(
        op
        for op in program_operators(program)
        if op not in registered and not op.startswith("executorch_prim::")
    )


def _eager_step(
    model: DeviceModel, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
    """Loss, gradients and logits of one step in PyTorch, without touching ``model``."""
    import torch
    from torch.func import functional_call

    params = {
        n: p.detach().clone().requires_grad_(p.requires_grad) for n, p in model.named_parameters()
    }
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    out = functional_call(model, {**params, **buffers}, (x, y))
    trainable = [n for n, p in params.items() if p.requires_grad]
    grads = torch.autograd.grad(out[0], [params[n] for n in trainable], allow_unused=True)
    with torch.no_grad():
        logits = functional_call(
            model.net,
            {k[len(PREFIX) :]: v for k, v in {**params, **buffers}.items() if k.startswith(PREFIX)},
            (x,),
        )
    return (
        out[0].detach(),
        {
            n: (g if g is not None else torch.zeros_like(params[n])).detach()
            for n, g in zip(trainable, grads, strict=True)
        },
        logits if isinstance(logits, torch.Tensor) else None,
    )


def _describe_mismatch(what: str, got: torch.Tensor, want: torch.Tensor) -> str:
    err = float((got - want).abs().max()) if got.shape == want.shape else math.inf
    scale = float(want.abs().max()) if want.numel() else 0.0
    return f"{what} differs by up to {err:.3g} (PyTorch's largest magnitude {scale:.3g})"


def _gate(
    model: DeviceModel,
    program: bytes,
    input_shape: Sequence[int],
    output_shape: Sequence[int],
    random_ops: Sequence[str],
) -> None:
    if not random_ops:
        verify_program(model, program, input_shape, output_shape)
        return
    # Dropout: the real program must load and train (finite loss and gradients, the model's
    # weights); its numbers are checked on a copy exported with every dropout at p=0.
    verify_program(model, program, input_shape, output_shape, compare=False)
    from torch.nn.modules.dropout import _DropoutNd

    still = copy.deepcopy(model)
    for module in still.modules():
        if isinstance(module, _DropoutNd):
            module.p = 0.0
    check, _ = _export_unchecked(still, input_shape, output_shape)
    try:
        verify_program(still, check, input_shape, output_shape)
    except ExportError as exc:
        raise ExportError(
            f"{exc}. The model draws random numbers ({', '.join(random_ops)}) and its copy with"
            " every nn.Dropout at p=0 still disagrees: randomness outside nn.Dropout modules"
            " (e.g. functional dropout with a fixed p) cannot be checked; use nn.Dropout"
        ) from exc


def verify_program(
    model: DeviceModel,
    program: bytes,
    input_shape: Sequence[int],
    output_shape: Sequence[int],
    *,
    batch_sizes: Sequence[int] | None = None,
    compare: bool = True,
    rtol: float = GATE_RTOL,
    atol: float = GATE_ATOL,
    seed: int = 0,
) -> None:
    """The gate: train ``program`` one step in the ExecuTorch runtime and compare with PyTorch.

    For each batch size (default: ``input_shape[0]`` and 1), on seeded random inputs and labels:
    the runtime's parameters must equal ``model``'s trainable parameters bit for bit, and (with
    ``compare``) its loss and every gradient must match eager PyTorch within ``rtol``/``atol`` and
    its predictions must equal PyTorch's wherever the top two logits are not near a tie. Without
    ``compare`` (programs with dropout) loss and gradients need only be finite.

    Raises:
        ExportError: naming the cause: a missing kernel (and the layer that needs it), a runtime
            failure, different weights, or the first output that disagrees.
    """
    import torch

    missing = _missing_kernels(program)
    if missing:
        hints = [
            f"{layer} needs {op}; {advice}"
            for op in missing
            for key, (layer, advice) in _MISSING_KERNEL_HINTS.items()
            if key in op
        ]
        raise ExportError(
            f"the ExecuTorch runtime has no kernel for {', '.join(missing)}, so the program"
            " cannot train on a device" + (": " + "; ".join(hints) if hints else "")
        )
    with _quiet():
        from executorch.extension.training import _load_for_executorch_for_training_from_buffer

    max_batch = int(input_shape[0])
    sizes = list(batch_sizes) if batch_sizes is not None else sorted({max_batch, 1}, reverse=True)
    generator = torch.Generator().manual_seed(seed)
    expected = {n: p.detach() for n, p in _trainable(model).items()}
    for batch in sizes:
        if not 1 <= batch <= max_batch:
            raise ValueError(f"batch size {batch} is outside 1..{max_batch}")
        x = torch.randn((batch, *input_shape[1:]), generator=generator)
        try:
            with torch.no_grad():
                probe = model.net(x)
            classes = int(probe.shape[1]) if probe.ndim == 2 else 1
            y = torch.randint(0, classes, (batch, *output_shape[1:]), generator=generator)
            loss, grads, logits = _eager_step(model, x, y)
        except Exception as exc:  # the user's model may raise anything
            raise ExportError(
                f"PyTorch cannot train the model at batch {batch} ({type(exc).__name__}: {exc});"
                f" devices may train any batch from 1 to input_shape[0] = {max_batch}"
            ) from exc
        with _quiet():
            try:
                module = _load_for_executorch_for_training_from_buffer(program)
                outputs = module.forward_backward("forward", (x, y))
                got_params = module.named_parameters()
                got_grads = module.named_gradients()
            except Exception as exc:  # the runtime reports failures as RuntimeError
                raise ExportError(
                    f"the ExecuTorch runtime cannot train the program (batch {batch}):"
                    f" {type(exc).__name__}: {exc}"
                ) from exc
        if set(got_params) != set(expected):
            raise ExportError(
                f"the program trains parameters {sorted(got_params)}, the model has"
                f" {sorted(expected)}"
            )
        for name, want in expected.items():
            if got_params[name].shape != want.shape or not torch.equal(got_params[name], want):
                raise ExportError(
                    f"the program holds different weights than the model for {name!r}"
                )
        got_loss = outputs[0]
        if not bool(torch.isfinite(got_loss).all()) or not all(
            bool(torch.isfinite(g).all()) for g in got_grads.values()
        ):
            raise ExportError(f"the program's loss or gradients are not finite (batch {batch})")
        if not compare:
            continue
        problems = []
        if not torch.allclose(got_loss, loss, rtol=rtol, atol=atol):
            problems.append(_describe_mismatch("the loss", got_loss, loss))
        for name, want in grads.items():
            got = got_grads.get(name)
            if (
                got is None
                or got.shape != want.shape
                or not torch.allclose(got, want, rtol=rtol, atol=atol)
            ):
                problems.append(
                    _describe_mismatch(
                        f"the gradient of {name!r}",
                        got if got is not None else torch.full_like(want, math.nan),
                        want,
                    )
                )
        preds = outputs[1]
        if logits is not None and logits.ndim == 2 and logits.shape[1] > 1:
            top2 = logits.topk(2, dim=1).values
            clear = (top2[:, 0] - top2[:, 1]) > 1e-4 * (1 + top2[:, 0].abs())
            want_preds = logits.argmax(dim=1)
            if preds.shape != want_preds.shape or bool((preds[clear] != want_preds[clear]).any()):
                problems.append("the predictions differ")
        if problems:
            raise ExportError(
                f"the ExecuTorch program disagrees with PyTorch at batch {batch}"
                f" (rtol={rtol:g}, atol={atol:g}): " + "; ".join(problems) + "; it is refused"
            )
        del module


# --------------------------------------------------------------------------------------------------
# model.pt2: the DeviceModel for evaluation and eager training


def export_inference_program(
    model: DeviceModel, input_shape: Sequence[int], output_shape: Sequence[int]
) -> bytes:
    """``torch.export.save`` bytes of ``model`` (``(input, label) -> (loss, predictions)``, batch
    dynamic from 1 to ``input_shape[0]``), holding its current weights.

    The saved program is loaded back and run once; its loss must match the model's.

    Raises:
        ExportError: export fails or the reloaded program disagrees with the model.
    """
    import torch

    reference = _cpu_copy(model)
    with EXPORT_LOCK, _quiet():
        ep = _capture(reference, input_shape, output_shape)
        buffer = io.BytesIO()
        torch.export.save(ep, buffer)
        data = buffer.getvalue()
        reloaded = torch.export.load(io.BytesIO(data)).module()
    if _random_ops_in_module(reloaded):
        # Dropout: compare in evaluation mode, the way the evaluator runs it.
        _strip_dropout(reloaded)
        reference.eval()
    x, y = _example_inputs(input_shape, output_shape)
    with torch.no_grad():
        want = reference(x, y)[0]
        got = reloaded(x, y)[0]
    if not torch.allclose(got, want, rtol=GATE_RTOL, atol=GATE_ATOL):
        raise ExportError(
            f"the saved model.pt2 computes loss {float(got):.6g}, the model {float(want):.6g}"
        )
    return data


_DROPOUT_OPS: Final = (
    "aten.dropout.default",
    "aten.feature_dropout.default",
    "aten.alpha_dropout.default",
    "aten.feature_alpha_dropout.default",
)


def _random_ops_in_module(module: torch.nn.Module) -> bool:
    graph = getattr(module, "graph", None)
    return graph is not None and any(
        n.op == "call_function" and str(n.target) in _DROPOUT_OPS for n in graph.nodes
    )


def _strip_dropout(module: torch.nn.Module) -> None:
    """Evaluation mode for an exported module: dropout nodes pass their input through.

    An unlifted exported program cannot ``.eval()``; its graph was captured in training mode.
    BatchNorm is unaffected (only ``track_running_stats=False`` is exportable, which normalises
    with batch statistics in both modes).
    """
    graph: Any = module.graph
    changed = False
    for node in list(graph.nodes):
        if node.op == "call_function" and str(node.target) in _DROPOUT_OPS:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            changed = True
    if changed:
        module.recompile()  # type: ignore[operator]


def load_weights(module: torch.nn.Module, weights: Mapping[str, np.ndarray]) -> None:
    """Copy ``weights`` (names without ``net.``) into the trainable parameters of ``module``
    (a ``DeviceModel`` or the module of a loaded ``model.pt2``), in place.

    Raises:
        ValueError: a name missing or unexpected, or a shape that differs.
    """
    import torch

    params = {n[len(PREFIX) :]: p for n, p in _trainable(module).items() if n.startswith(PREFIX)}
    missing = params.keys() - weights.keys()
    extra = weights.keys() - params.keys()
    if missing or extra:
        raise ValueError(
            "weights do not match the model's parameters:"
            + (f" missing {sorted(missing)}" if missing else "")
            + (f" unexpected {sorted(extra)}" if extra else "")
        )
    with torch.no_grad():
        for name, p in params.items():
            w = np.asarray(weights[name])
            if tuple(w.shape) != tuple(p.shape):
                raise ValueError(
                    f"weights[{name!r}] has shape {tuple(w.shape)},"
                    f" the model needs {tuple(p.shape)}"
                )
            p.copy_(torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)))


def load_inference_module(
    path: str | Path, weights: Mapping[str, np.ndarray] | None = None, *, train: bool = False
) -> torch.nn.Module:
    """Load a job's ``model.pt2`` as a module ``(input, label) -> (loss, predictions)``.

    How to use it::

        m = load_inference_module(job.path / "model.pt2", weights)            # evaluation
        with torch.no_grad():
            loss, predictions = m(x, y)

        m = load_inference_module(job.path / "model.pt2", weights, train=True)  # eager training
        opt = torch.optim.SGD(m.parameters(), lr=0.01)
        loss = m(x, y)[0]; loss.backward(); opt.step()
        trained = {n.removeprefix("net."): p.detach().numpy() for n, p in m.named_parameters()}

    Batches from 1 to the exported ``input_shape[0]`` work. Parameters are named ``net.<name>``;
    ``weights`` use the names without ``net.`` (as everywhere outside a program); call
    :func:`load_weights` to load other weights later. ``train=False`` removes dropout from the
    graph (an exported module cannot switch to ``eval()``); ``train=True`` keeps it.

    Raises:
        ValueError: the file cannot be loaded or ``weights`` do not fit.
    """
    import torch

    try:
        with _quiet():
            module = torch.export.load(str(path)).module()
    except Exception as exc:
        raise ValueError(f"{path}: cannot load the exported model: {exc}") from exc
    if not train:
        _strip_dropout(module)
    if weights is not None:
        load_weights(module, weights)
    return module
