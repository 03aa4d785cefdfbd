"""`mobile-sam download [NAME ...] [--all] [--list]`: fetch checkpoints ahead of time.

NAME is a variant (`vit_t`) or a file name (`mobile_sam.pt`); none means `vit_t`. Files go to
the cache folder (`$MOBILE_SAM_HOME`, else `$XDG_CACHE_HOME/mobile_sam`, else
`~/.cache/mobile_sam`), verified by size and sha256; an already cached file is re-hashed.
`--list` shows every known checkpoint with its variant, size and cached path.
"""
from __future__ import annotations

import argparse
import sys

from ._common import report


def _checkpoint_name(text: str):
    from ..weights import CHECKPOINTS, find_checkpoint

    spec = find_checkpoint(text) if "/" not in text and "\\" not in text else None
    if spec is None:
        known = [name for v, s in CHECKPOINTS.items() for name in (v, s.file_name)]
        raise argparse.ArgumentTypeError(
            f"unknown checkpoint {text!r}; known names: {', '.join(known)}"
        )
    return spec


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "download",
        help="download checkpoints into the cache ahead of time",
        description="Download and verify checkpoints into the cache folder ($MOBILE_SAM_HOME, "
                    "else ~/.cache/mobile_sam). Without NAME: vit_t (mobile_sam.pt).",
    )
    parser.add_argument("names", nargs="*", type=_checkpoint_name, metavar="NAME",
                        help="variant (vit_t, vit_b, vit_l, vit_h) or file name (mobile_sam.pt)")
    parser.add_argument("--all", action="store_true", help="download every known checkpoint")
    parser.add_argument("--list", action="store_true",
                        help="show the known checkpoints and which are cached")
    parser.set_defaults(func=run)


def format_size(size: int) -> str:
    """Bytes in binary units with one decimal, e.g. `38.8 MiB`."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def list_checkpoints() -> list[str]:
    """Lines of the `--list` table: file name, variant, size, cached path or why not."""
    from ..weights import cache_dir, list_cached

    folder = cache_dir()
    rows = [("NAME", "VARIANT", "SIZE", "PATH")]
    for spec, path in list_cached(folder):
        if path is not None:
            where = str(path)
        else:
            file, part = folder / spec.file_name, folder / (spec.file_name + ".part")
            if file.is_file():
                where = (f"not cached ({file} has {file.stat().st_size} bytes instead of "
                         f"{spec.size}; delete it)")
            elif part.is_file():
                where = (f"not cached (partial download: {format_size(part.stat().st_size)} "
                         f"of {format_size(spec.size)})")
            else:
                where = "not cached"
        rows.append((spec.file_name, spec.variant, format_size(spec.size), where))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"cache folder: {folder}"]
    lines += [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}  {d}" for a, b, c, d in rows]
    return lines


def run(args: argparse.Namespace) -> int:
    from ..weights import CHECKPOINTS, WeightsDownloadError, ensure_checkpoint

    if args.all:
        specs = list(CHECKPOINTS.values())
    elif args.names:
        specs = list({spec.file_name: spec for spec in args.names}.values())
    elif args.list:
        specs = []
    else:
        specs = [CHECKPOINTS["vit_t"]]
    failed = 0
    for spec in specs:
        try:
            path = ensure_checkpoint(spec, verify_hash=True, progress=sys.stderr.isatty())
        except (WeightsDownloadError, OSError) as exc:
            report("download", str(exc))
            failed += 1
            continue
        print(f"{spec.file_name} ({spec.variant}): {path}")
    if args.list:
        print("\n".join(list_checkpoints()))
    return 1 if failed else 0
