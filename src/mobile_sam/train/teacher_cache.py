"""The teacher-embedding cache: the teacher's image embeddings, precomputed once, in fp16 shards.

Layout of a cache folder:

    plan.json            what is being built: teacher (source, sha256, config), image size,
                         embedding shape, shard size, image folder and its sorted image list
    prompt_decoder.pt    the teacher's prompt encoder + mask decoder ({"config", "model"}),
                         so that training never needs the (large) teacher itself
    shard_00000.npy      float16 array (n, C, h, w): the embeddings of up to `shard_size` images
                         (or the `--cache-codec int8` rows, see `codec`)
    shard_00000.json     its record: file size and sha256, and per image the relative path,
                         sha256 of the file's bytes and (H, W); images that could not be read
    manifest.json        written when every shard is done: everything above in one file

Every file is written atomically, the record after its shard, so a shard is done exactly when
its record exists and the shard has the recorded size; anything else (no record, a torn or
missing shard) is recomputed on the next run. Shard i is computed by rank i % world_size,
so `torchrun --nproc_per_node=N` splits the work with no coordination beyond two barriers.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..build import config_to_dict, safe_load
from ..io import ImageLoadError, atomic_write, save_json
from . import codec as codecs
from . import dist
from .augment import RECIPE, apply_view, pick_view, view_params, view_seed
from .data import ImageItem, images_root, list_images, model_input, read_image
from .models import LoadedModel, embedding_shape, file_sha256, prompt_decoder_state
from .sources import Location, is_url, join

FORMAT = "mobile_sam.teacher_cache/1"
MANIFEST = "manifest.json"
PLAN = "plan.json"
PROMPT_DECODER = "prompt_decoder.pt"


@dataclass(frozen=True)
class CacheEntry:
    """One cached image: where its embedding is (shard, row) and what it was computed from."""

    rel: str
    sha256: str
    size: tuple[int, int]
    shard: int
    row: int
    view: int = 0
    aug: dict[str, Any] | None = None


class CacheError(ValueError):
    """A cache folder that cannot be used as asked (incomplete, other teacher, other images)."""


def _shard_name(i: int) -> str:
    return f"shard_{i:05d}"


def _teacher_info(teacher: LoadedModel) -> dict[str, Any]:
    # Names only (vit_h, teacher.pt): no machine-specific path in the cache.
    return {"source": Path(teacher.source).name, "path": Path(teacher.path).name,
            "sha256": teacher.sha256, "config": config_to_dict(teacher.config)}


def _recorded_root(root: Location, out: Path) -> str:
    """How the manifest names the image root: a URL as given, a local folder relative to the
    cache folder (so the two can move together and no machine's absolute path is stored)."""
    if isinstance(root, str):
        return root
    try:
        return Path(os.path.relpath(root.resolve(), out.resolve())).as_posix()
    except ValueError:  # another drive (Windows): no relative path exists
        return str(root.resolve())


def resolve_root(recorded: str, folder: Path) -> Location:
    """The image root a manifest names (see `_recorded_root`; older caches hold an absolute
    path), as a location."""
    if is_url(recorded):
        return recorded
    path = Path(recorded)
    return path if path.is_absolute() else Path(os.path.normpath(folder.resolve() / path))


def _make_plan(teacher: LoadedModel, root: Location, items: Sequence[ImageItem],
               shard_size: int, decode_at_size: bool, out: Path, views: int,
               codec: str) -> dict[str, Any]:
    rels = [item.rel for item in items]
    augment = {"views": views, "augment": RECIPE} if views > 1 else {}
    stored = {"codec": codec} if codec != "fp16" else {}
    return {
        "format": FORMAT,
        "decode": "at_size" if decode_at_size else "full",
        "teacher": _teacher_info(teacher),
        "image_size": teacher.config.image_size,
        "embedding_shape": list(embedding_shape(teacher.config)),
        "dtype": "float16" if codec == "fp16" else "uint8",
        **stored,
        "shard_size": shard_size,
        "images_root": _recorded_root(root, out),
        "num_planned": len(rels),
        "images_sha256": hashlib.sha256("\n".join(rels).encode()).hexdigest(),
        "images": rels,
        **augment,
    }


def _plan_conflict(old: dict[str, Any], new: dict[str, Any], out: Path) -> str | None:
    """Why an existing plan cannot be resumed with the new arguments, or None."""
    if old.get("format") != FORMAT:
        return f"{out} holds a cache of another format ({old.get('format')!r})"
    if old["teacher"]["sha256"] != new["teacher"]["sha256"]:
        return (f"{out} was started with teacher {old['teacher']['source']!r} (sha256 "
                f"{old['teacher']['sha256'][:12]}…), not {new['teacher']['source']!r} (sha256 "
                f"{new['teacher']['sha256'][:12]}…); use another --out for another teacher")
    if old["shard_size"] != new["shard_size"]:
        return (f"{out} was started with --shard-size {old['shard_size']}, not "
                f"{new['shard_size']}; resume with the same value")
    if old.get("decode", "full") != new["decode"]:
        return (f"{out} was started with decode {old.get('decode', 'full')!r}, not "
                f"{new['decode']!r}; resume with the same --decode-at-size setting")
    if old.get("codec", "fp16") != new.get("codec", "fp16"):
        return (f"{out} was started with --cache-codec {old.get('codec', 'fp16')}, not "
                f"{new.get('codec', 'fp16')}; resume with the same value")
    if old.get("views", 1) != new.get("views", 1):
        return (f"{out} was started with --views {old.get('views', 1)}, not "
                f"{new.get('views', 1)}; resume with the same value")
    if old["images_sha256"] != new["images_sha256"]:
        return (f"the images under {new['images_root']} differ from those {out} was started with "
                f"({old['num_planned']} images then, {new['num_planned']} now); use another --out")
    return None


def _shard_done(out: Path, i: int) -> dict[str, Any] | None:
    """The record of shard i when the shard is complete, else None (missing or torn)."""
    record_path = out / f"{_shard_name(i)}.json"
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        size = (out / record["file"]).stat().st_size
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if size == record.get("bytes") else None


def _embed(teacher: torch.nn.Module, images: list[np.ndarray], device: torch.device,
           autocast_dtype: torch.dtype | None) -> np.ndarray:
    batch = torch.from_numpy(np.stack(images)).to(device)
    amp = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())
    with torch.inference_mode(), amp:
        emb = teacher(batch)
    return emb.float().cpu().numpy()


def _compute_shard(teacher: LoadedModel, root: Location, rels: Sequence[str], out: Path, i: int,
                   batch_size: int, device: torch.device, autocast_dtype: torch.dtype | None,
                   tick: Callable[[int], None], warn: Callable[[str], None],
                   long_side: int | None, views: int = 1, codec: str = "fp16") -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    chunks: list[np.ndarray] = []
    pending: list[np.ndarray] = []

    def flush() -> None:
        if pending:
            chunks.append(_embed(teacher.model.image_encoder, pending, device, autocast_dtype))
            tick(len(pending))
            pending.clear()

    for rel in rels:
        try:
            rgb, sha = read_image(join(root, rel), long_side)
        except (ImageLoadError, OSError) as exc:
            skipped.append({"rel": rel, "error": str(exc)})
            warn(f"skipping: {exc}")
            tick(1)
            continue
        entry = {"rel": rel, "sha256": sha, "size": [int(rgb.shape[0]), int(rgb.shape[1])]}
        for v in range(views):
            view: dict[str, Any] = {"view": v} if views > 1 else {}
            if v > 0:
                seed = view_seed(rel, v)
                view.update(aug_seed=seed, aug=view_params(RECIPE, seed, rgb.shape[:2]))
            pixels = apply_view(rgb, view["aug"]) if v > 0 else rgb
            entries.append({**entry, **view})
            pending.append(model_input(pixels, teacher.config.image_size)[0])
            if len(pending) >= batch_size:
                flush()
    flush()
    shape = embedding_shape(teacher.config)
    array = np.concatenate(chunks) if chunks else np.zeros((0, *shape), np.float32)
    if array.shape[1:] != shape:
        raise RuntimeError(f"teacher produced {array.shape[1:]} embeddings, config says {shape}")
    array = codecs.encode(array, codec)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    data = buffer.getvalue()
    name = _shard_name(i)
    atomic_write(out / f"{name}.npy", lambda f: f.write(data))
    record = {"shard": i, "file": f"{name}.npy", "bytes": len(data),
              "sha256": hashlib.sha256(data).hexdigest(), "count": len(entries),
              "teacher_sha256": teacher.sha256, "entries": entries, "skipped": skipped}
    save_json(out / f"{name}.json", record)
    return record


def build_cache(teacher: LoadedModel, images: str | os.PathLike[str], out: str | os.PathLike[str],
                *, shard_size: int = 64, batch_size: int = 1, info: dist.DistInfo | None = None,
                precision: str = "fp32", progress: bool = True, decode_at_size: bool = False,
                views: int = 1, codec: str = "fp16", warn: Callable[[str], None] | None = None) -> EmbeddingCache | None:
    """Compute (or finish computing) the teacher's embeddings of every image under `images`.

    Resumable: shards already done are kept. Under torchrun each rank computes shards
    i % world_size == rank. Returns the finished cache on rank 0, None on other ranks.
    `precision` fp16/bf16 runs the teacher under autocast (CUDA); the cache is fp16 either way.
    `decode_at_size`: decode large JPEGs at a reduced scale (`data.decode_image`); recorded in
    the manifest, and training then decodes the same way. `views` > 1: also cache views 1..K-1
    of each image drawn from `augment.RECIPE` (seed and crop/flip recorded per entry).
    `codec`: how embeddings are stored (`codec.CODECS`: fp16, or int8 with per-channel scales).
    """
    info = info or dist.DistInfo(0, 1, 0, torch.device("cpu"))
    codecs.check(codec)
    if views < 1:
        raise ValueError(f"--views must be >= 1, got {views}")
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"--shard-size and --batch-size must be >= 1, got {shard_size}, {batch_size}")
    autocast_dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, ...)
    if autocast_dtype is ...:
        raise ValueError(f"--precision must be fp32, fp16 or bf16, got {precision!r}")
    items = list_images(images)
    root = images_root(images)
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out must be a folder, got a file: {out}")
    plan = _make_plan(teacher, root, items, shard_size, decode_at_size, out, views, codec)

    problem: str | None = None
    if info.is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
            if (out / PLAN).is_file():
                problem = _plan_conflict(json.loads((out / PLAN).read_text("utf-8")), plan, out)
            else:
                save_json(out / PLAN, plan)
            if problem is None and not (out / PROMPT_DECODER).is_file():
                obj = {"config": config_to_dict(teacher.config),
                       "model": prompt_decoder_state(teacher.model)}
                atomic_write(out / PROMPT_DECODER, lambda f: torch.save(obj, f))
        except OSError as exc:
            problem = f"cannot write the cache folder {out}: {exc}"
    problem = dist.broadcast_object(problem)  # type: ignore[assignment]
    if problem:
        raise CacheError(problem)

    say = warn or _write_above_bar
    rels = plan["images"]
    n_shards = (len(rels) + shard_size - 1) // shard_size
    mine = [i for i in range(n_shards) if i % info.world_size == info.rank]
    teacher.model.to(info.device).eval()
    bar = _progress_bar(sum(len(rels[i * shard_size:(i + 1) * shard_size]) for i in mine),
                        enabled=progress and info.is_main,
                        desc=f"teacher embeddings (rank 0 of {info.world_size})"
                        if info.distributed else "teacher embeddings")
    for i in mine:
        shard_rels = rels[i * shard_size:(i + 1) * shard_size]
        if _shard_done(out, i) is not None:
            bar.update(len(shard_rels))
            continue
        _compute_shard(teacher, root, shard_rels, out, i, batch_size, info.device,
                       autocast_dtype, bar.update, say,
                       teacher.config.image_size if decode_at_size else None, views, codec)
    bar.close()
    dist.barrier()
    if not info.is_main:
        return None
    # The plan as first written (a resumed run may name the same teacher differently).
    return _write_manifest(out, json.loads((out / PLAN).read_text("utf-8")), n_shards)


def _write_above_bar(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def _progress_bar(total: int, enabled: bool, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="img", dynamic_ncols=True)


def _write_manifest(out: Path, plan: dict[str, Any], n_shards: int) -> EmbeddingCache:
    shards, entries, skipped = [], [], []
    for i in range(n_shards):
        record = _shard_done(out, i)
        if record is None:
            raise CacheError(f"{out}: shard {i} is missing after all ranks finished; rerun the "
                             "same command to compute it")
        shards.append({k: record[k] for k in ("file", "bytes", "sha256", "count")})
        for row, e in enumerate(record["entries"]):
            entries.append({**e, "shard": i, "row": row})
        skipped += record["skipped"]
    if not entries:
        raise CacheError(f"none of the {len(plan['images'])} images under {plan['images_root']} "
                         f"could be read (first error: {skipped[0]['error'] if skipped else '?'})")
    manifest = {k: v for k, v in plan.items() if k != "images"}
    manifest.update({
        "prompt_decoder": {"file": PROMPT_DECODER, "sha256": file_sha256(out / PROMPT_DECODER)},
        "num_images": len(entries),
        "shards": shards,
        "entries": entries,
        "skipped": skipped,
    })
    save_json(out / MANIFEST, manifest)
    return EmbeddingCache.open(out)


class EmbeddingCache:
    """A finished cache folder, read-only. Embeddings are memory-mapped, one shard at a time."""

    def __init__(self, folder: Path, manifest: dict[str, Any], manifest_sha256: str) -> None:
        self.folder = folder
        self.manifest = manifest
        self.manifest_sha256 = manifest_sha256
        self.teacher: dict[str, Any] = manifest["teacher"]
        self.image_size: int = int(manifest["image_size"])
        self.embedding_shape: tuple[int, int, int] = tuple(manifest["embedding_shape"])  # type: ignore[assignment]
        self.image_root = resolve_root(manifest["images_root"], folder)
        self.entries = [CacheEntry(e["rel"], e["sha256"], tuple(e["size"]), e["shard"], e["row"],
                                   e.get("view", 0), e.get("aug"))
                        for e in manifest["entries"]]
        self.views: int = int(manifest.get("views", 1))
        self.codec: str = manifest.get("codec", "fp16")
        self.recipe: dict[str, Any] | None = manifest.get("augment")
        # Entry indices of each image's views (view 0 first); one per image without views.
        self.groups: list[list[int]] = []
        for i, e in enumerate(self.entries):
            if e.view == 0:
                self.groups.append([])
            self.groups[-1].append(i)
        self.skipped: list[dict[str, str]] = manifest["skipped"]
        self._shards: dict[int, np.ndarray] = {}

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> EmbeddingCache:
        """Open a finished cache; a missing or unfinished one raises naming what to do."""
        folder = Path(folder).expanduser()
        path = folder / MANIFEST
        if not path.is_file():
            if (folder / PLAN).is_file():
                plan = json.loads((folder / PLAN).read_text("utf-8"))
                total = -(-plan["num_planned"] // plan["shard_size"])
                done = sum(_shard_done(folder, i) is not None for i in range(total))
                raise CacheError(f"cache {folder} is unfinished ({done} of {total} shards done); "
                                 "rerun `mobile-sam distill cache` with the same arguments")
            raise CacheError(f"{folder} is not a teacher-embedding cache (no {MANIFEST}); make "
                             "one with `mobile-sam distill cache`")
        data = path.read_bytes()
        manifest = json.loads(data)
        if manifest.get("format") != FORMAT:
            raise CacheError(f"{path}: unknown cache format {manifest.get('format')!r}")
        return cls(folder, manifest, hashlib.sha256(data).hexdigest())

    def __len__(self) -> int:
        return len(self.entries)

    def view_entry(self, image: int, epoch: int, seed: int) -> int:
        """The entry training uses for image `image` in `epoch`: one of its views, seeded."""
        group = self.groups[image]
        return group[pick_view(len(group), image, epoch, seed)]

    def view_pixels(self, index: int, rgb: np.ndarray) -> np.ndarray:
        """The pixels the teacher saw for entry `index`, given its decoded image: rebuilt from
        the manifest's recipe and the entry's seed (and checked against the recorded box)."""
        entry = self.entries[index]
        if entry.aug is None:
            return rgb
        seed = int(self.manifest["entries"][index]["aug_seed"])
        params = view_params(self.recipe or {}, seed, rgb.shape[:2])
        if params != entry.aug:
            raise CacheError(f"{self.folder}: entry {index} ({entry.rel} view {entry.view}) "
                             f"records {entry.aug}, its seed gives {params}; rebuild the cache")
        return apply_view(rgb, params)

    def _shard(self, i: int) -> np.ndarray:
        if i not in self._shards:
            info = self.manifest["shards"][i]
            array = np.load(self.folder / info["file"], mmap_mode="r", allow_pickle=False)
            shape, dtype = codecs.stored(self.codec, info["count"], self.embedding_shape)
            if array.shape != shape or array.dtype != dtype:
                raise CacheError(f"{self.folder / info['file']} holds {array.dtype} "
                                 f"{array.shape}, the manifest says {dtype} {shape}")
            self._shards[i] = array
        return self._shards[i]

    def embedding(self, index: int) -> np.ndarray:
        """The teacher embedding of entry `index`: (C, h, w), float16 (or float32 decoded from
        an int8 cache)."""
        entry = self.entries[index]
        return codecs.decode(self._shard(entry.shard)[entry.row], self.codec, self.embedding_shape)

    def prompt_decoder(self) -> dict[str, torch.Tensor]:
        """The teacher's prompt encoder + mask decoder state, checked against the manifest."""
        path = self.folder / self.manifest["prompt_decoder"]["file"]
        if file_sha256(path) != self.manifest["prompt_decoder"]["sha256"]:
            raise CacheError(f"{path} does not match the sha256 recorded in the manifest")
        return safe_load(path)["model"]  # type: ignore[index]

    def verify(self) -> None:
        """Re-hash every shard; raise CacheError naming the first one that differs."""
        for info in self.manifest["shards"]:
            if file_sha256(self.folder / info["file"]) != info["sha256"]:
                raise CacheError(f"{self.folder / info['file']}: sha256 differs from the manifest")

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers re-open the memory maps themselves.
        return {**self.__dict__, "_shards": {}}
