"""The OpenAPI 3 document of the routes the server has, shipped in the package as ``openapi.json``.

The document describes exactly what :class:`edgefl._app.EdipCore` serves: ``POST /job``,
``POST``/``GET /task``, ``POST /result``, ``POST /selection``, ``GET /healthz`` and
``GET /openapi.json`` itself, the identity headers, the request and reply bodies, and the EDIP
error body of every non-200 reply. ``tests/hostile/test_openapi.py`` runs schemathesis against a
live server with it, so the document and the server cannot drift apart silently.

The server serves :data:`OPENAPI_JSON` (the file's bytes, read once) at ``/openapi.json``.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any, Final

__all__ = ["OPENAPI_CONTENT_TYPE", "openapi_bytes", "openapi_document"]

OPENAPI_CONTENT_TYPE: Final = "application/json"


@functools.cache
def openapi_bytes() -> bytes:
    """The document as served (the packaged ``openapi.json``, read once)."""
    return resources.files("edgefl").joinpath("openapi.json").read_bytes()


def openapi_document() -> dict[str, Any]:
    """A fresh copy of the document as a dict (safe to modify)."""
    document: dict[str, Any] = json.loads(openapi_bytes())
    return document
