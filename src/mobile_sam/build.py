"""Variants as data, one builder, and safe strict checkpoint loading.

`sam_model_registry[name](checkpoint=...)` keeps the original API. Unlike the original,
a checkpoint of another variant is refused with a message naming the variant it holds.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping, Union

import torch

from .modeling import (ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TinyViT, TinyViTConfig,
                       TwoWayTransformer, ViTConfig)
from .modeling.vit import vit_kwargs

EncoderConfig = Union[TinyViTConfig, ViTConfig]


@dataclass(frozen=True)
class SamConfig:
    """Everything that differs between variants is the image encoder's config."""

    name: str
    encoder: EncoderConfig
    prompt_embed_dim: int = 256
    image_size: int = 1024
    embedding_size: int = 64  # image_size / 16
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048


VARIANTS: dict[str, SamConfig] = {
    "vit_t": SamConfig("vit_t", TinyViTConfig()),
    "vit_b": SamConfig("vit_b", ViTConfig(768, 12, 12, (2, 5, 8, 11))),
    "vit_l": SamConfig("vit_l", ViTConfig(1024, 24, 16, (5, 11, 17, 23))),
    "vit_h": SamConfig("vit_h", ViTConfig(1280, 32, 16, (7, 15, 23, 31))),
}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, or keys that do not fit the model."""


def build_sam(config: SamConfig | str, checkpoint: str | os.PathLike | None = None) -> Sam:
    """Build a model in eval mode, optionally loading a checkpoint strictly."""
    if isinstance(config, str):
        config = get_config(config)
    state_dict = None
    if checkpoint is not None:
        # Read and identify the file before building: a wrong variant fails fast, by name.
        state_dict = load_state_dict_file(checkpoint)
        held = detect_variant(state_dict)
        if held is not None and held != config.name:
            raise CheckpointError(
                f"{checkpoint} holds a {held!r} checkpoint but the model asked for is "
                f"{config.name!r}; use sam_model_registry[{held!r}] (or --model {held})"
            )
    enc = config.encoder
    image_encoder = (TinyViT(**asdict(enc)) if isinstance(enc, TinyViTConfig)
                     else ImageEncoderViT(**vit_kwargs(enc)))
    size = config.embedding_size
    dim = config.prompt_embed_dim
    model = Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(size, size),
                                     input_image_size=(config.image_size, config.image_size),
                                     mask_in_chans=16),
        mask_decoder=MaskDecoder(
            transformer_dim=dim,
            transformer=TwoWayTransformer(depth=config.decoder_depth, embedding_dim=dim,
                                          num_heads=config.decoder_heads,
                                          mlp_dim=config.decoder_mlp_dim),
        ),
    )
    model.config = config
    if state_dict is not None:
        check_state_dict(model, state_dict, expected=config.name, source=str(checkpoint))
        model.load_state_dict(state_dict, strict=True)
    return model.eval()


def load_sam(checkpoint: str | os.PathLike, variant: str | None = None) -> Sam:
    """Build the variant a checkpoint holds (detected from its keys) and load it strictly.

    Pass `variant` to insist on one; a file of another variant is then refused by name.
    """
    if variant is None:
        state_dict = load_state_dict_file(checkpoint)
        variant = detect_variant(state_dict)
        if variant is None:
            raise CheckpointError(
                f"{checkpoint}: its keys match none of the known variants {sorted(VARIANTS)}; "
                "is it a SAM / MobileSAM checkpoint?"
            )
    return build_sam(variant, checkpoint)


def get_config(name: str) -> SamConfig:
    if name == "default":
        name = "vit_h"
    if name not in VARIANTS:
        raise ValueError(f"unknown model variant {name!r}; expected one of {sorted(VARIANTS)}")
    return VARIANTS[name]


def build_sam_vit_t(checkpoint: str | os.PathLike | None = None) -> Sam:
    return build_sam("vit_t", checkpoint)


def build_sam_vit_b(checkpoint: str | os.PathLike | None = None) -> Sam:
    return build_sam("vit_b", checkpoint)


def build_sam_vit_l(checkpoint: str | os.PathLike | None = None) -> Sam:
    return build_sam("vit_l", checkpoint)


def build_sam_vit_h(checkpoint: str | os.PathLike | None = None) -> Sam:
    return build_sam("vit_h", checkpoint)


build_sam_vit_t.__doc__ = "MobileSAM (TinyViT encoder). Returns the model in eval mode."
build_sam_vit_b.__doc__ = "SAM ViT-B. Returns the model in eval mode."
build_sam_vit_l.__doc__ = "SAM ViT-L. Returns the model in eval mode."
build_sam_vit_h.__doc__ = "SAM ViT-H. Returns the model in eval mode."

class _Registry(dict):
    """A dict whose unknown keys raise a KeyError naming the known ones."""

    def __missing__(self, key: object) -> Callable[..., Sam]:
        raise KeyError(f"unknown model type {key!r}; known model types: {', '.join(self)}")


# `default` is ViT-H as in the original; a MobileSAM file given to it is refused by name.
sam_model_registry: dict[str, Callable[..., Sam]] = _Registry({
    "default": build_sam_vit_h,
    "vit_h": build_sam_vit_h,
    "vit_l": build_sam_vit_l,
    "vit_b": build_sam_vit_b,
    "vit_t": build_sam_vit_t,
})


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely onto the CPU and return its state dict.

    Accepts a bare state dict, or a dict holding it under `model` or `state_dict`, with or
    without DistributedDataParallel's `module.` prefix; `.safetensors` files too. Pickled
    code is never executed (`weights_only=True`).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise CheckpointError(f"{path}: reading .safetensors needs `pip install safetensors`") from exc
        obj: object = load_file(str(path), device="cpu")
    else:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # any failure to parse untrusted bytes means "unreadable"
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(
                f"{path} is not a readable PyTorch checkpoint (truncated, corrupt, or not a "
                f"checkpoint; only plain tensors are accepted): {first_line}"
            ) from exc
    return _unwrap_state_dict(obj, path)


def _unwrap_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path} does not hold a state dict (got {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors, e.g. {bad[:3]}")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def detect_variant(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Name of the built-in variant whose keys and shapes the state dict has, else None."""
    for name, config in VARIANTS.items():
        if _matches(config, state_dict):
            return name
    return None


def _matches(config: SamConfig, sd: Mapping[str, torch.Tensor]) -> bool:
    enc = config.encoder
    if isinstance(enc, TinyViTConfig):
        key = "image_encoder.patch_embed.seq.0.c.weight"
        head = sd.get("image_encoder.neck.0.weight")
        return key in sd and head is not None and head.shape[1] == enc.embed_dims[-1]
    pos = sd.get("image_encoder.pos_embed")
    if pos is None or pos.shape[-1] != enc.embed_dim:
        return False
    depth = 1 + max((int(k.split(".")[2]) for k in sd if k.startswith("image_encoder.blocks.")),
                    default=-1)
    return depth == enc.depth


def check_state_dict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor],
                     expected: str, source: str) -> None:
    """Raise CheckpointError naming the problem if `state_dict` does not fit `model` exactly."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong_shape = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
                   for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
    if not (missing or unexpected or wrong_shape):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
    if wrong_shape:
        parts.append(f"{len(wrong_shape)} shape mismatches (e.g. {wrong_shape[:2]})")
    raise CheckpointError(f"{source} does not fit model {expected!r}: " + "; ".join(parts))
