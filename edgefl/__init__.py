"""edgefl: a single-binary edge server for federated learning on phones."""

from __future__ import annotations

__all__: list[str] = []
