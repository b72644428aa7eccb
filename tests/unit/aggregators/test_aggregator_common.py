"""The shared kernels."""

from __future__ import annotations

import doctest
from typing import TYPE_CHECKING

import numpy as np
import pytest

import aggregators.fedasync
import aggregators.fedbuff
from aggregators._common import add_into, check_delta, check_number, server_step

if TYPE_CHECKING:
    from types import ModuleType


def test_add_into_scales_in_place() -> None:
    sums = {"a": np.array([1.0, 1.0], np.float32)}
    target = sums["a"]
    add_into(sums, {"a": np.array([1.0, 2.0], np.float32)})
    add_into(sums, {"a": np.array([1.0, 1.0], np.float32)}, 3.0)
    assert sums["a"] is target
    np.testing.assert_array_equal(target, [5.0, 6.0])


def test_check_delta_sets_then_enforces_the_schema() -> None:
    schema = check_delta({"a": np.zeros((2, 3), np.float32)}, None)
    assert schema == {"a": (2, 3)}
    assert check_delta({"a": np.ones((2, 3), np.float64)}, schema) is schema
    with pytest.raises(ValueError, match=r"update.delta\['a'\] has shape \(3, 2\)"):
        check_delta({"a": np.zeros((3, 2), np.float32)}, schema)


def test_server_step_refuses_overflow() -> None:
    with pytest.raises(ValueError, match="overflowed"):
        server_step({"a": np.array([3e38], np.float32)}, {"a": np.array([3e38])}, 1.0)
    with pytest.raises(ValueError, match="shape"):
        server_step({"a": np.zeros(2, np.float32)}, {"a": np.zeros(3)}, 1.0)


def test_check_number() -> None:
    assert check_number("x", 1, low=0.0) == 1.0
    with pytest.raises(TypeError, match="x must be a number"):
        check_number("x", True, low=0.0)
    with pytest.raises(ValueError, match=r"x must be in \[0.0, 1.0\]"):
        check_number("x", float("nan"), low=0.0, high=1.0)


@pytest.mark.parametrize("module", [aggregators.fedbuff, aggregators.fedasync])
def test_docstring_examples(module: ModuleType) -> None:
    failed, attempted = doctest.testmod(module)
    assert attempted > 0
    assert failed == 0
