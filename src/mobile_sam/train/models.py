"""Models for training and evaluation: configs as plain dicts, loading from any checkpoint.

A checkpoint given to `distill`/`eval` can be:

- a built-in name (`vit_t`, `vit_b`, `vit_l`, `vit_h`, or a known file name): the published
  weights, downloaded into the cache when missing (`mobile_sam.weights`);
- a plain state dict of a built-in variant (the official layout; the variant is detected);
- a dict `{"config": <SamConfig as dict>, "model": <state dict>}`, which is how custom
  configurations (e.g. the tiny ones used in tests) and our training checkpoints travel.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..build import (VARIANTS, CheckpointError, SamConfig, build_sam, check_state_dict,
                     detect_variant, load_state_dict_file)
from ..modeling import Sam, TinyViTConfig, ViTConfig

# The parts a student takes over from its teacher unchanged (decoupled distillation).
PROMPT_DECODER_PREFIXES = ("prompt_encoder.", "mask_decoder.")


def config_to_dict(config: SamConfig) -> dict[str, Any]:
    """A SamConfig as JSON-able nested dicts; the encoder dict names its `type`."""
    out = dataclasses.asdict(config)
    out["encoder"]["type"] = "tiny_vit" if isinstance(config.encoder, TinyViTConfig) else "vit"
    return out


def config_from_dict(data: Mapping[str, Any], source: str = "config") -> SamConfig:
    """Inverse of `config_to_dict`; also accepts `dataclasses.asdict(SamConfig)` (no `type`:
    a TinyViT encoder is recognised by `embed_dims`, a ViT by `embed_dim`)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("encoder"), Mapping):
        raise CheckpointError(f"{source}: a model config needs an 'encoder' mapping, got {data!r}")
    enc = dict(data["encoder"])
    kind = enc.pop("type", None) or ("tiny_vit" if "embed_dims" in enc else "vit")
    classes = {"tiny_vit": TinyViTConfig, "vit": ViTConfig}
    if kind not in classes:
        raise CheckpointError(f"{source}: unknown encoder type {kind!r}; expected tiny_vit or vit")
    try:
        encoder = _dataclass_from(classes[kind], enc)
        top = {k: v for k, v in data.items() if k != "encoder"}
        return SamConfig(encoder=encoder, **top)
    except TypeError as exc:
        raise CheckpointError(f"{source}: not a valid model config: {exc}") from None


def _dataclass_from(cls: type, values: Mapping[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise TypeError(f"unknown {cls.__name__} fields {unknown}")
    # JSON turns tuples into lists; the frozen configs want tuples (hashable, comparable).
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class LoadedModel:
    """A model with where it came from: `source` as given, `path` resolved, `sha256` of it."""

    model: Sam
    config: SamConfig
    source: str
    path: Path
    sha256: str


def _peek_config(path: Path) -> Mapping[str, Any] | None:
    """The `config` entry of a `{"config", "model"}` checkpoint, read without loading tensors."""
    if path.suffix == ".safetensors":
        return None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # old (non-zip) format or not a checkpoint: load_state_dict_file reports it
        return None
    config = obj.get("config") if isinstance(obj, Mapping) else None
    return config if isinstance(config, Mapping) else None


def load_any(spec: str | os.PathLike[str], *, download: bool = True) -> LoadedModel:
    """Load a model from a built-in name or a checkpoint file (see the module docstring).

    The model is returned in eval mode on the CPU. Raises FileNotFoundError for a missing
    file and CheckpointError for a file that holds no usable model.
    """
    from ..weights import resolve_checkpoint

    path = resolve_checkpoint(spec, download=download)
    state_dict = load_state_dict_file(path)
    raw = _peek_config(path)
    if raw is not None:
        config = config_from_dict(raw, source=str(path))
    else:
        variant = detect_variant(state_dict)
        if variant is None:
            raise CheckpointError(
                f"{path}: its keys match none of the built-in variants {sorted(VARIANTS)} and it "
                "carries no config; save custom models as {'config': <SamConfig as dict>, "
                "'model': <state dict>}"
            )
        config = VARIANTS[variant]
    model = build_sam(config)
    check_state_dict(model, state_dict, expected=config.name, source=str(path))
    model.load_state_dict(state_dict, strict=True)
    return LoadedModel(model.eval(), config, os.fspath(spec), Path(path), file_sha256(path))


def save_model(path: str | os.PathLike[str], model: Sam, config: SamConfig) -> Path:
    """Write a model so that `load_any` and `sam_model_registry` read it back.

    A built-in variant is written as a plain state dict, the official layout (the original
    MobileSAM code loads it too); any other config as `{"config": ..., "model": ...}`.
    """
    from ..io import atomic_write

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    builtin = VARIANTS.get(config.name) == config
    obj: Any = state if builtin else {"config": config_to_dict(config), "model": state}
    return atomic_write(path, lambda f: torch.save(obj, f))


def encoder_out_chans(config: SamConfig) -> int:
    return config.encoder.out_chans


def embedding_shape(config: SamConfig) -> tuple[int, int, int]:
    """C, h, w of the image embedding a config produces."""
    return (encoder_out_chans(config), config.embedding_size, config.embedding_size)


def check_student_fits(student: SamConfig, teacher: SamConfig, teacher_shape: tuple[int, ...],
                       image_size: int) -> None:
    """Raise ValueError (naming both sides) unless the student's embedding can be compared with
    the teacher's and the teacher's prompt encoder and mask decoder fit the student."""
    got = embedding_shape(student)
    if tuple(teacher_shape) != got:
        raise ValueError(
            f"student {student.name!r} makes {'x'.join(map(str, got))} embeddings but the teacher's "
            f"are {'x'.join(map(str, teacher_shape))}; pick a student config with out_chans="
            f"{teacher_shape[0]} and embedding_size={teacher_shape[-1]}"
        )
    if student.image_size != image_size:
        raise ValueError(f"student {student.name!r} takes {student.image_size}² images but the "
                         f"teacher's embeddings were computed from {image_size}² inputs")
    if student.encoder.img_size != image_size:
        raise ValueError(f"student encoder img_size {student.encoder.img_size} != image_size "
                         f"{image_size} in config {student.name!r}")
    keys = ("prompt_embed_dim", "decoder_depth", "decoder_heads", "decoder_mlp_dim")
    diff = {k: (getattr(student, k), getattr(teacher, k)) for k in keys
            if getattr(student, k) != getattr(teacher, k)}
    if diff:
        raise ValueError("the teacher's prompt encoder and mask decoder do not fit the student: "
                         + ", ".join(f"{k} student {s} vs teacher {t}" for k, (s, t) in diff.items()))


def prompt_decoder_state(model: Sam) -> dict[str, torch.Tensor]:
    """The prompt encoder's and mask decoder's entries of a model's state dict."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            if k.startswith(PROMPT_DECODER_PREFIXES)}


def load_prompt_decoder(model: Sam, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy a teacher's prompt encoder and mask decoder into `model`, strictly."""
    own = {k: v for k, v in model.state_dict().items() if k.startswith(PROMPT_DECODER_PREFIXES)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        raise CheckpointError(f"{source}: prompt encoder / mask decoder do not fit the student "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]}, "
                              f"shape mismatches {shapes[:3]})")
    model.load_state_dict(dict(state), strict=False)
