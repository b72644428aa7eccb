"""Tensor maps (EDIP §6.2, §6.4): the three device forms and CBOR typed arrays ↔ float32 arrays."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, TypeAlias

if TYPE_CHECKING:
    from collections.abc import Mapping

    import numpy as np
    import numpy.typing as npt

__all__ = ["NET_PREFIX", "TensorForm", "decode_tensor_map", "encode_tensor_map"]

NET_PREFIX = "net."

TensorForm: TypeAlias = Literal["android", "ios", "python", "cbor"]


def decode_tensor_map(
    data: Mapping[str, object], schema: Mapping[str, tuple[int, ...]]
) -> dict[str, npt.NDArray[np.float32]]:
    """Validate a result's tensor map against ``schema`` and convert it to float32 arrays."""
    raise NotImplementedError


def encode_tensor_map(
    tensors: Mapping[str, npt.NDArray[np.floating]], form: TensorForm
) -> dict[str, object]:
    """Write ``tensors`` as a result's ``data`` map in the given device form."""
    raise NotImplementedError
