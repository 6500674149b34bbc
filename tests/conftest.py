"""Shared fixtures: every engine test runs against both implementations."""

from __future__ import annotations

import importlib
import os
from typing import Any

import pytest

from gateway.fastpath import reference


def _compiled_engine() -> Any:
    try:
        module = importlib.import_module("gateway._fastpath")
    except ImportError:
        if os.environ.get("CI"):
            raise  # in CI the compiled fast path must exist; never skip it silently
        pytest.skip("gateway._fastpath is not built")
    return module.Engine


@pytest.fixture(params=["python", "cython"])
def engine_cls(request: pytest.FixtureRequest) -> Any:
    """The Engine class of one implementation (the suite runs once per implementation)."""
    if request.param == "python":
        return reference.Engine
    return _compiled_engine()
