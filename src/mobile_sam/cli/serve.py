"""`mobile-sam serve`: the web page and REST API (FastAPI + uvicorn), model loaded once."""
from __future__ import annotations

import argparse
import ipaddress
import sys

from ._common import (
    UserError,
    add_backend_arguments,
    add_common_arguments,
    load_model_or_folder,
)

DEFAULT_PORT = 8000


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..serve.limits import (
        DEFAULT_CACHE_BYTES,
        DEFAULT_CACHE_ITEMS,
        DEFAULT_MAX_PIXELS,
        DEFAULT_MAX_UPLOAD_BYTES,
    )

    parser = subparsers.add_parser(
        "serve", help="web page and REST API for interactive segmentation",
        description="Serve the segmentation page at / and the REST API under /v1 "
                    "(reference at /docs). Binds 127.0.0.1 unless --host says otherwise.")
    add_common_arguments(parser)
    add_backend_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; "
                             "0.0.0.0 exposes the server to the network)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 8000)")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_BYTES / 2**20,
                        help="largest accepted image file in MiB (default %(default)g)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="largest accepted width*height (default %(default)d)")
    parser.add_argument("--cache-items", type=int, default=DEFAULT_CACHE_ITEMS,
                        help="embeddings kept in memory (default %(default)d)")
    parser.add_argument("--cache-mb", type=float, default=DEFAULT_CACHE_BYTES / 2**20,
                        help="memory for cached embeddings and uploads in MiB "
                             "(default %(default)g)")
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"],
                        help="uvicorn log level")
    parser.set_defaults(func=run)


def _have_serve() -> bool:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        return False
    return True


def _check_args(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {args.port}")
    for flag, value in [("--max-upload-mb", args.max_upload_mb), ("--max-pixels", args.max_pixels),
                        ("--cache-items", args.cache_items), ("--cache-mb", args.cache_mb)]:
        if not value > 0:
            raise UserError(f"{flag} must be > 0, got {value}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    if not _have_serve():
        raise UserError("mobile-sam serve needs FastAPI and uvicorn: "
                        "pip install 'mobile_sam[serve]'")
    import uvicorn

    from ..serve import create_app

    model = load_model_or_folder(args)
    app = create_app(
        model,
        backend=args.backend,
        precision=args.precision,
        max_upload_bytes=max(1, int(args.max_upload_mb * 2**20)),
        max_pixels=args.max_pixels,
        cache_items=args.cache_items,
        cache_bytes=max(1, int(args.cache_mb * 2**20)),
    )
    if not _is_loopback(args.host):
        print(f"mobile-sam serve: warning: binding {args.host}: anyone who can reach this "
              "machine can use the server (there is no authentication)", file=sys.stderr)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"mobile-sam serve: http://{shown}:{args.port}/ (API reference at /docs)",
          file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, ws="none")
    return 0
