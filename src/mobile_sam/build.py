"""Variants as data, one builder, and the one safe, strict checkpoint loader.

`sam_model_registry[name](checkpoint=...)` keeps the original API. Unlike the original,
a checkpoint of another variant is refused with a message naming the variant it holds.

`load_sam(path)` reads every kind of checkpoint file and builds the model it holds:

- official files (`mobile_sam.pt`, `sam_vit_*.pth`): a bare state dict, possibly under
  `model` / `state_dict` or with DDP's `module.` prefix; the variant is detected from its keys;
- training outputs `{"config": <SamConfig as dict>, "model": <state dict>, ...}` as
  `mobile_sam.train` writes them, whose config may be any variant (e.g. a smaller student);
- `.safetensors` files holding a state dict of a built-in variant.

Files are read with `torch.load(..., weights_only=True)` or safetensors: no pickled code runs.
"""
from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TinyViT,
    TinyViTConfig,
    TwoWayTransformer,
    ViTConfig,
)
from .modeling.vit import vit_kwargs

EncoderConfig = TinyViTConfig | ViTConfig


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


def config_to_dict(config: SamConfig) -> dict[str, Any]:
    """A SamConfig as JSON-able nested dicts; the encoder dict names its `type`."""
    out = dataclasses.asdict(config)
    out["encoder"]["type"] = "tiny_vit" if isinstance(config.encoder, TinyViTConfig) else "vit"
    return out


def config_from_dict(data: Mapping[str, Any], source: str = "config") -> SamConfig:
    """Inverse of `config_to_dict`; also accepts `dataclasses.asdict(SamConfig)` (no `type`:
    a TinyViT encoder is recognised by `embed_dims`, a ViT by `embed_dim`).

    Raises CheckpointError naming `source` (the file the config came from) and the problem.
    """
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{source}: a model config must be a mapping, got "
                              f"{type(data).__name__}")
    if not isinstance(data.get("encoder"), Mapping):
        raise CheckpointError(f"{source}: a model config needs an 'encoder' mapping; its keys "
                              f"are {sorted(map(str, data))}")
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
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise TypeError(f"unknown {cls.__name__} fields {unknown}")
    # JSON turns tuples into lists; the frozen configs want tuples (hashable, comparable).
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def build_sam(config: SamConfig | str, checkpoint: str | os.PathLike[str] | None = None) -> Sam:
    """Build a model in eval mode, optionally loading a checkpoint strictly."""
    if isinstance(config, str):
        config = get_config(config)
    loaded = None
    if checkpoint is not None:
        # Read and identify the file before building: a wrong variant fails fast, by name.
        loaded = read_checkpoint(checkpoint)
        loaded.check_holds(config)
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
    model.config = config  # type: ignore[assignment]  # read by training and export
    if loaded is not None:
        loaded.load_into(model, config.name)
    return model.eval()


def load_sam(checkpoint: str | os.PathLike[str], variant: str | None = None) -> Sam:
    """Build the model a checkpoint file holds and load it strictly (eval mode, CPU).

    Official files are identified by their keys, training outputs by their stored config
    (see the module docstring). Pass `variant` to insist on a built-in one; a file holding
    another model is then refused by name.
    """
    if variant is not None:
        return build_sam(variant, checkpoint)
    loaded = read_checkpoint(checkpoint)
    if loaded.config is None:
        raise CheckpointError(
            f"{loaded.path}: its keys match none of the known variants {sorted(VARIANTS)} and "
            "it carries no config; is it a SAM / MobileSAM checkpoint? (a model of another "
            "configuration is saved as {'config': <SamConfig as dict>, 'model': <state dict>}, "
            "as mobile_sam.train.models.save_model does)"
        )
    try:
        model = build_sam(loaded.config)
    except Exception as exc:  # the config came from the file: any failure means a bad file
        raise CheckpointError(f"{loaded.path}: its config {loaded.config.name!r} does not "
                              f"describe a buildable model: {exc}") from exc
    loaded.load_into(model, loaded.config.name)
    return model


def get_config(name: str) -> SamConfig:
    if name == "default":
        name = "vit_h"
    if name not in VARIANTS:
        raise ValueError(f"unknown model variant {name!r}; expected one of {sorted(VARIANTS)}")
    return VARIANTS[name]


def build_sam_vit_t(checkpoint: str | os.PathLike[str] | None = None) -> Sam:
    return build_sam("vit_t", checkpoint)


def build_sam_vit_b(checkpoint: str | os.PathLike[str] | None = None) -> Sam:
    return build_sam("vit_b", checkpoint)


def build_sam_vit_l(checkpoint: str | os.PathLike[str] | None = None) -> Sam:
    return build_sam("vit_l", checkpoint)


def build_sam_vit_h(checkpoint: str | os.PathLike[str] | None = None) -> Sam:
    return build_sam("vit_h", checkpoint)


build_sam_vit_t.__doc__ = "MobileSAM (TinyViT encoder). Returns the model in eval mode."
build_sam_vit_b.__doc__ = "SAM ViT-B. Returns the model in eval mode."
build_sam_vit_l.__doc__ = "SAM ViT-L. Returns the model in eval mode."
build_sam_vit_h.__doc__ = "SAM ViT-H. Returns the model in eval mode."

class _Registry(dict[str, Callable[..., Sam]]):
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


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint file holds: its state dict and the config of its model.

    `config` is the file's own config (a training output), else the built-in variant whose
    keys and shapes the state dict has, else None (a model this package cannot identify).
    """

    path: Path
    state_dict: dict[str, torch.Tensor]
    config: SamConfig | None

    def check_holds(self, config: SamConfig) -> None:
        """Refuse, by name, a file that holds another model than `config`."""
        held = self.config
        if held is None or held.name == config.name:
            return
        if held.name in VARIANTS:
            hint = f"use sam_model_registry[{held.name!r}] (or --model {held.name})"
        else:
            hint = "load_sam(path) builds the model from the config the file carries"
        raise CheckpointError(f"{self.path} holds a {held.name!r} checkpoint but the model "
                              f"asked for is {config.name!r}; {hint}")

    def load_into(self, model: torch.nn.Module, expected: str) -> None:
        """Copy the weights into `model` (config named `expected`) strictly; every key and
        shape that does not fit is named in a CheckpointError."""
        check_state_dict(model, self.state_dict, expected=expected, source=str(self.path))
        model.load_state_dict(self.state_dict, strict=True)


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read any checkpoint file (see the module docstring) safely onto the CPU and identify
    the model it holds, without building it.

    Raises FileNotFoundError for a missing file and CheckpointError, naming the file, for one
    that is unreadable, holds pickled objects, or whose config or state dict is malformed.
    """
    path = Path(path)
    obj = safe_load(path)
    if isinstance(obj, Mapping) and "config" in obj:  # a training output
        if not isinstance(obj.get("model"), Mapping):
            raise CheckpointError(
                f"{path} carries a model config but no 'model' state dict (its keys: "
                f"{sorted(map(str, obj))}); a training output is "
                "{'config': <SamConfig as dict>, 'model': <state dict>}"
            )
        config = config_from_dict(obj["config"], source=str(path))
        return Checkpoint(path, _unwrap_state_dict(obj["model"], path), config)
    state_dict = _unwrap_state_dict(obj, path)
    variant = detect_variant(state_dict)
    return Checkpoint(path, state_dict, VARIANTS[variant] if variant is not None else None)


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely onto the CPU and return its state dict.

    Accepts a bare state dict, or a dict holding it under `model` or `state_dict`, with or
    without DistributedDataParallel's `module.` prefix; `.safetensors` files too. Pickled
    code is never executed (`weights_only=True`).
    """
    path = Path(path)
    return _unwrap_state_dict(safe_load(path), path)


def safe_load(path: str | os.PathLike[str]) -> object:
    """The object a checkpoint file holds, read onto the CPU without running pickled code:
    tensors, containers and numbers only (`weights_only=True`, or safetensors).

    Raises FileNotFoundError for a missing file and CheckpointError naming the file for one
    that cannot be read or holds other pickled objects.
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
        return load_file(str(path), device="cpu")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to parse untrusted bytes means "unreadable"
        raise _unreadable(path, exc) from exc


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    """The error for a file torch.load refused. torch's own message advises loading with
    weights_only=False, i.e. running whatever code the file holds: that is never repeated."""
    text = str(exc)
    # "Unsupported global: GLOBAL x.y", or for a blocked module (os, subprocess, ...)
    # "unsupported GLOBAL posix.system whose module posix is blocked".
    found = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", text, re.IGNORECASE)
    if found:
        return CheckpointError(
            f"{path} is not a plain weights file: besides tensors it holds pickled Python "
            f"objects (e.g. {found.group(1)}), which are never loaded because unpickling them "
            "can run arbitrary code. Save the weights alone, e.g. "
            "torch.save(model.state_dict(), path), or as .safetensors"
        )
    detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    reason = detail.group(1) if detail else (text.strip().splitlines() or [""])[0]
    if not reason.strip() or "weights_only" in reason:
        reason = type(exc).__name__
    return CheckpointError(
        f"{path} is not a readable PyTorch checkpoint (truncated, corrupt, or not a "
        f"checkpoint; only plain tensors are accepted): {reason.strip()}"
    )


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
