"""`mobile-sam serve`: the web page and REST API (FastAPI + uvicorn), model loaded once.

Every setting can also come from an environment variable (``MOBILE_SAM_<NAME>``, e.g.
``MOBILE_SAM_MAX_UPLOAD_MB``); a flag on the command line wins. Limits are checked against
`mobile_sam.serve.limits.SERVE_BOUNDS` before anything starts: a bad value prints one line
and exits with code 2; a port in use, one line and code 1.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._common import UserError, add_backend_arguments, add_common_arguments, load_model

if TYPE_CHECKING:
    from fastapi import FastAPI

DEFAULT_PORT = 8000
# The environment variable through which `--workers` processes receive their settings.
WORKER_CONFIG_ENV = "MOBILE_SAM_SERVE_CONFIG"
# Seconds uvicorn lets requests finish after SIGTERM before cancelling them ("everything"
# jobs are cancelled at once; this bounds the rest).
GRACEFUL_SHUTDOWN_S = 3


@dataclass(frozen=True)
class Setting:
    """A `serve` option: its flag, environment variable, default (as text) and parser."""

    flag: str
    default: str | None
    help: str
    parse: Callable[[str, str], Any]  # (text, name for messages) -> value

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")

    @property
    def env(self) -> str:
        return "MOBILE_SAM_" + self.dest.upper()


class SettingError(ValueError):
    """A setting out of its bounds: one line, exit code 2."""


def _limit(limit_name: str, mib: bool = False) -> Callable[[str, str], Any]:
    """A parser for a limit of `SERVE_BOUNDS` (given in MiB when ``mib``: the bound is in
    bytes)."""
    from ..prompts import PromptError
    from ..serve.limits import SERVE_BOUNDS, check_serve_limit

    bound = SERVE_BOUNDS[limit_name]

    def parse(text: str, name: str) -> Any:
        if mib:
            expected = f"a number of MiB in (0, {bound.high / 2**20:g}]"
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not (math.isfinite(value) and 0 < value <= bound.high / 2**20):
                raise SettingError(f"{name} must be {expected}, got {text!r}")
            return max(1, int(value * 2**20))
        try:
            value = bound.kind(text)
        except ValueError:
            raise SettingError(f"{name} must be {bound.expected}, got {text!r}") from None
        try:
            return check_serve_limit(limit_name, value)
        except PromptError:
            raise SettingError(f"{name} must be {bound.expected}, got {text!r}") from None

    return parse


def _origins(text: str, name: str) -> list[str]:
    origins = [o.strip() for o in text.split(",") if o.strip()]
    for origin in origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise SettingError(f"{name}: origins are '*' or start with http:// or https://, "
                               f"got {origin!r}")
    return [o.rstrip("/") for o in origins]


def _token(text: str, name: str) -> str | None:
    if not text:
        return None
    if text != text.strip() or not text.isprintable():
        raise SettingError(f"{name} must be printable without surrounding spaces")
    return text


def _settings() -> list[Setting]:
    from ..serve.limits import (
        DEFAULT_CACHE_BYTES,
        DEFAULT_CACHE_ITEMS,
        DEFAULT_EVERYTHING_QUEUE,
        DEFAULT_EVERYTHING_TIMEOUT,
        DEFAULT_EVERYTHING_WORKERS,
        DEFAULT_MAX_PIXELS,
        DEFAULT_MAX_UPLOAD_BYTES,
    )

    return [
        Setting("--host", "127.0.0.1", "address to bind (default 127.0.0.1: this machine only; "
                "0.0.0.0 exposes the server to the network)", lambda text, name: text),
        Setting("--port", str(DEFAULT_PORT), "port (default %(default)s)", _limit("port")),
        Setting("--max-upload-mb", f"{DEFAULT_MAX_UPLOAD_BYTES / 2**20:g}",
                "largest accepted image file in MiB (default %(default)s)",
                _limit("max_upload_bytes", mib=True)),
        Setting("--max-pixels", str(DEFAULT_MAX_PIXELS),
                "largest accepted width*height (default %(default)s)", _limit("max_pixels")),
        Setting("--cache-items", str(DEFAULT_CACHE_ITEMS),
                "embeddings kept in memory, per worker (default %(default)s)",
                _limit("cache_items")),
        Setting("--cache-mb", f"{DEFAULT_CACHE_BYTES / 2**20:g}",
                "memory for cached embeddings and uploads in MiB, per worker "
                "(default %(default)s)", _limit("cache_bytes", mib=True)),
        Setting("--workers", "1", "server processes, each with its own model and embedding "
                "cache (default %(default)s; see docs/serve.md)", _limit("workers")),
        Setting("--everything-workers", str(DEFAULT_EVERYTHING_WORKERS),
                "'everything' jobs run at once per worker (default %(default)s)",
                _limit("everything_workers")),
        Setting("--everything-queue", str(DEFAULT_EVERYTHING_QUEUE),
                "'everything' jobs that may wait; more get 503 (default %(default)s)",
                _limit("everything_queue")),
        Setting("--everything-timeout", f"{DEFAULT_EVERYTHING_TIMEOUT:g}",
                "seconds an 'everything' request may take before it is stopped (504; "
                "default %(default)s)", _limit("everything_timeout")),
        Setting("--cors-origins", "", "comma-separated origins whose pages may call the API "
                "(e.g. https://app.example.com, or *); none by default", _origins),
        Setting("--token", "", "require 'Authorization: Bearer TOKEN' on /v1 (the page asks "
                "for it); prefer the environment variable, which ps does not show", _token),
    ]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="web page and REST API for interactive segmentation",
        description="Serve the segmentation page at / and the REST API under /v1 "
                    "(reference at /docs). Binds 127.0.0.1 unless --host says otherwise. "
                    "Each option can also be set by its environment variable MOBILE_SAM_<NAME> "
                    "(e.g. MOBILE_SAM_MAX_UPLOAD_MB, MOBILE_SAM_TOKEN; MOBILE_SAM_MODEL for "
                    "--model); a flag wins over the variable.")
    add_common_arguments(parser)
    add_backend_arguments(parser)
    parser.set_defaults(model=os.environ.get("MOBILE_SAM_MODEL", "vit_t"))
    for setting in _settings():
        parser.add_argument(setting.flag, default=None, metavar=setting.dest.upper(),
                            help=f"{setting.help} [env {setting.env}]".replace(
                                "%(default)s", str(setting.default)))
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


def resolve_settings(args: argparse.Namespace,
                     environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Each setting from its flag, else its environment variable, else its default, parsed
    and checked; :class:`SettingError` names the flag or variable that is out of bounds."""
    environ = dict(os.environ) if environ is None else environ
    values = {}
    for setting in _settings():
        given = getattr(args, setting.dest, None)
        if given is not None:
            text, name = given, setting.flag
        elif setting.env in environ:
            text, name = environ[setting.env], setting.env
        else:
            text, name = setting.default or "", setting.flag
        values[setting.dest] = setting.parse(text, name)
    return values


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port_free(host: str, port: int) -> None:
    """A `UserError` if ``host:port`` cannot be bound (in use, or not an address here)."""
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as probe:
            # As uvicorn binds: a port left in TIME_WAIT is free, one listened on is not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UserError(f"cannot listen on {host}:{port}: {reason}"
                        " (is another server using the port? choose one with --port)") from None


def build_app(config: dict[str, Any]) -> FastAPI:
    """Load the model and build the app for resolved settings (`resolve_settings` plus
    model, device, threads, backend, precision): used by one process and by each worker.
    ``config["model"]`` becomes the resolved checkpoint path."""
    from ..serve import create_app

    model_args = argparse.Namespace(model=config["model"], device=config["device"],
                                    threads=config["threads"])
    model = load_model(model_args)
    config["model"] = model_args.model
    return create_app(
        model,
        backend=config["backend"],
        precision=config["precision"],
        max_upload_bytes=config["max_upload_mb"],
        max_pixels=config["max_pixels"],
        cache_items=config["cache_items"],
        cache_bytes=config["cache_mb"],
        everything_workers=config["everything_workers"],
        everything_queue=config["everything_queue"],
        everything_timeout=config["everything_timeout"],
        cors_origins=config["cors_origins"],
        token=config["token"],
    )


def worker_app() -> FastAPI:
    """The app of one `--workers` process (a uvicorn factory): settings from the parent."""
    return build_app(json.loads(os.environ[WORKER_CONFIG_ENV]))


def run(args: argparse.Namespace) -> int:
    try:
        config = resolve_settings(args)
    except SettingError as exc:
        print(f"mobile-sam serve: error: {exc}", file=sys.stderr)
        return 2
    if not _have_serve():
        raise UserError("mobile-sam serve needs FastAPI and uvicorn: "
                        "pip install 'mobile_sam[serve]'")
    import uvicorn

    host, port, workers = config["host"], config["port"], config["workers"]
    check_port_free(host, port)
    config.update(model=args.model, device=args.device, threads=args.threads,
                  backend=args.backend, precision=args.precision)
    app = build_app(config)  # in one process; with workers, a check that the model loads
    if not _is_loopback(host) and config["token"] is None:
        print(f"mobile-sam serve: warning: binding {host}: anyone who can reach this "
              "machine can use the server (set --token or MOBILE_SAM_TOKEN to require one)",
              file=sys.stderr)
    shown = f"[{host}]" if ":" in host else host
    print(f"mobile-sam serve: http://{shown}:{port}/ (API reference at /docs)",
          file=sys.stderr)
    common = {"host": host, "port": port, "log_level": args.log_level, "ws": "none",
              "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S}
    if workers == 1:
        uvicorn.run(app, **common)
        return 0
    del app
    os.environ[WORKER_CONFIG_ENV] = json.dumps(config)
    uvicorn.run(f"{__name__}:worker_app", factory=True, workers=workers, **common)
    return 0
