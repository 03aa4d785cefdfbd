"""Web service and page for interactive segmentation (needs the ``serve`` extra:
``pip install 'mobile_sam[serve]'``).

``create_app(model, ...)`` builds a FastAPI app; ``mobile-sam serve`` runs it with uvicorn;
``BackgroundServer(app)`` runs it in a daemon thread (notebooks, tests, benchmarks).
FastAPI is imported on first use of these names, so ``mobile_sam.serve.limits`` works without it.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {"ApiError": "errors", "BackgroundServer": "background", "create_app": "app"}
__all__ = ["ApiError", "BackgroundServer", "create_app"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from .app import create_app
    from .background import BackgroundServer
    from .errors import ApiError
