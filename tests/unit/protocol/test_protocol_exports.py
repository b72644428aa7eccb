"""The public surface: exports, and that importing ``protocol`` stays light (in a subprocess)."""

from __future__ import annotations

import subprocess
import sys
import types

import protocol

HEAVY = ("trio", "quart", "quart_trio", "hypercorn", "torch", "executorch", "edgefl")


def test_importing_protocol_loads_no_framework_or_ml_runtime() -> None:
    code = f"import sys, protocol; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""


def test_every_export_exists_and_shows_the_public_module() -> None:
    assert sorted(protocol.__all__) == sorted(set(protocol.__all__))
    for name in protocol.__all__:
        obj = getattr(protocol, name)
        module = getattr(obj, "__module__", None)
        if isinstance(obj, type | types.FunctionType):
            assert module == "protocol", name


def test_private_modules_declare_their_exports() -> None:
    from protocol import _codec, _device_config, _errors, _headers, _machine, _messages, _tensors

    exported = set(protocol.__all__)
    for module in (_codec, _device_config, _errors, _headers, _machine, _messages, _tensors):
        assert set(module.__all__) <= exported, module.__name__
