"""Models for training and evaluation: where a model came from, saving, student checks.

A model given to `distill`/`eval` is a built-in name (`vit_t`, `vit_b`, `vit_l`, `vit_h`, or
a known file name: the published weights, downloaded into the cache when missing) or any
checkpoint file `mobile_sam.build.load_sam` reads: an official state dict, or a training
output `{"config": <SamConfig as dict>, "model": <state dict>}` as `save_model` and the
distillation checkpoints write it.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..build import VARIANTS, CheckpointError, SamConfig, config_to_dict, load_sam
from ..modeling import Sam

# The parts a student takes over from its teacher unchanged (decoupled distillation).
PROMPT_DECODER_PREFIXES = ("prompt_encoder.", "mask_decoder.")


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


def load_any(spec: str | os.PathLike[str], *, download: bool = True) -> LoadedModel:
    """Resolve a built-in name or a path (`mobile_sam.weights.resolve_checkpoint`), load it
    with `load_sam` and record where it came from (see the module docstring).

    The model is returned in eval mode on the CPU. Raises FileNotFoundError for a missing
    file and CheckpointError for a file that holds no usable model.
    """
    from ..weights import resolve_checkpoint

    path = resolve_checkpoint(spec, download=download)
    model = load_sam(path)
    return LoadedModel(model, model.config, os.fspath(spec), Path(path), file_sha256(path))


def save_model(path: str | os.PathLike[str], model: Sam, config: SamConfig) -> Path:
    """Write a model so that `load_sam` reads it back (atomically: temporary name, rename).

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
