"""Every public name of the original MobileSAM package, at its module path, with its call
signature: `tests/data/original_api.json` lists them as data, measured from the original package.

A name is "the same" when it imports from the same module path, is of the same kind (class,
function, dict with the same keys), and accepts every call the original accepts: the original's
parameters come first, in the same order, of the same kinds, with the same defaults; anything
this package adds after them has a default. Methods the original lists exist with the same
parameters.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import json
from pathlib import Path
from typing import Any

import pytest

MANIFEST = json.loads((Path(__file__).parent / "data" / "original_api.json").read_text())

# Modules whose every name is required; of the other modeling submodules, the main classes.
FULL_MODULES = [
    "mobile_sam", "mobile_sam.build_sam", "mobile_sam.predictor",
    "mobile_sam.automatic_mask_generator", "mobile_sam.modeling", "mobile_sam.utils",
    "mobile_sam.utils.amg", "mobile_sam.utils.onnx", "mobile_sam.utils.transforms",
]
MAIN_CLASSES = {
    "TinyViT", "ImageEncoderViT", "PromptEncoder", "PositionEmbeddingRandom", "MaskDecoder",
    "MLP", "TwoWayTransformer", "TwoWayAttentionBlock", "Attention", "LayerNorm2d", "MLPBlock",
    "Sam",
}
# TinyViT's internal building blocks, and ViT's, which the package offers as well.
BUILDING_BLOCKS = {
    "mobile_sam.modeling.tiny_vit_sam": {"Conv2d_BN", "MBConv", "PatchEmbed", "PatchMerging",
                                         "DropPath", "Mlp", "TinyViTBlock", "BasicLayer",
                                         "ConvLayer", "Attention"},
    "mobile_sam.modeling.image_encoder": {"Block", "PatchEmbed", "window_partition",
                                          "window_unpartition", "get_rel_pos",
                                          "add_decomposed_rel_pos"},
}
# Names whose constructor signature is allowed to differ: timm's model-zoo factories, which
# build 224² ImageNet classifiers the package does not offer.
NOT_OFFERED = {"register_tiny_vit_model", "tiny_vit_5m_224", "tiny_vit_11m_224",
               "tiny_vit_21m_224", "tiny_vit_21m_384", "tiny_vit_21m_512"}
# TinyViT's building blocks keep the original names and state-dict layout but take this
# package's arguments; only their presence is checked.
SIGNATURE_FREE = {("mobile_sam.modeling.tiny_vit_sam", n)
                  for n in BUILDING_BLOCKS["mobile_sam.modeling.tiny_vit_sam"]}


def required_names() -> list[tuple[str, str]]:
    out = []
    for module, names in MANIFEST.items():
        for name in names:
            if name in NOT_OFFERED:
                continue
            if (module in FULL_MODULES or name in MAIN_CLASSES
                    or name in BUILDING_BLOCKS.get(module, ())):
                out.append((module, name))
    return out


# ------------------------------------------------------------------ signature strings


def _split_top_level(text: str) -> list[str]:
    parts, depth, quote, current = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += ch
    if current.strip():
        parts.append(current.strip())
    return parts


def parse_signature(text: str) -> list[tuple[str, str, Any]]:
    """'(a, b: int = 1, *, c=None, **kw) -> X' -> [(name, kind, default)]; default is
    `inspect.Parameter.empty`, a Python literal, or the text of a non-literal default."""
    body = text.strip()
    if body.startswith("staticmethod "):
        body = body[len("staticmethod "):]
    depth, end = 0, None
    for i, ch in enumerate(body):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            end = i
            break
    params, keyword_only = [], False
    for part in _split_top_level(body[1:end]):
        if part == "*":
            keyword_only = True
            continue
        if part.startswith("**"):
            params.append((part[2:].split(":")[0].strip(), "VAR_KEYWORD", inspect.Parameter.empty))
            continue
        if part.startswith("*"):
            params.append((part[1:].split(":")[0].strip(), "VAR_POSITIONAL", inspect.Parameter.empty))
            keyword_only = True
            continue
        name_and_type, _, default_text = part.partition("=")
        name = name_and_type.split(":")[0].strip()
        default: Any = inspect.Parameter.empty
        if default_text:
            default_text = default_text.strip()
            try:
                default = ast.literal_eval(default_text)
            except (ValueError, SyntaxError):
                default = default_text
        params.append((name, "KEYWORD_ONLY" if keyword_only else "POSITIONAL_OR_KEYWORD", default))
    return params


def _same_default(original: Any, ours: Any) -> bool:
    if original is inspect.Parameter.empty or ours is inspect.Parameter.empty:
        return original is ours
    if isinstance(original, str) and original.startswith("<class '"):
        return inspect.isclass(ours) and original == f"<class '{ours.__module__}.{ours.__qualname__}'>"
    if isinstance(original, (list, tuple)) and isinstance(ours, (list, tuple)):
        return list(original) == list(ours)
    return original == ours and type(original) is type(ours) or (
        isinstance(original, float) and isinstance(ours, (int, float)) and original == ours)


def signature_problems(original: str, obj: Any) -> list[str]:
    wanted = parse_signature(original)
    ours = [p for p in inspect.signature(obj).parameters.values() if p.name not in ("self", "cls")]
    problems = []
    for i, (name, kind, default) in enumerate(wanted):
        if i >= len(ours):
            problems.append(f"missing parameter {name!r}")
            continue
        p = ours[i]
        if p.name != name:
            problems.append(f"parameter {i} is {p.name!r}, original {name!r}")
        elif kind != "KEYWORD_ONLY" and p.kind.name == "KEYWORD_ONLY":
            problems.append(f"{name!r} is keyword-only here, positional in the original")
        elif kind == "VAR_KEYWORD" and p.kind.name != "VAR_KEYWORD":
            problems.append(f"{name!r} must take **kwargs")
        elif not _same_default(default, p.default):
            problems.append(f"{name!r} default {p.default!r}, original {default!r}")
    for p in ours[len(wanted):]:
        if p.default is inspect.Parameter.empty and p.kind.name not in ("VAR_POSITIONAL",
                                                                         "VAR_KEYWORD"):
            problems.append(f"extra parameter {p.name!r} has no default")
    return problems


# ------------------------------------------------------------------ tests


def test_parser_reads_the_manifest_forms():
    sig = ("(model: mobile_sam.modeling.sam.Sam, points_per_side: Optional[int] = 32, "
           "point_grids: Optional[List[numpy.ndarray]] = None, output_mode: str = 'binary_mask',"
           " act: Type[torch.nn.Module] = <class 'torch.nn.modules.activation.GELU'>) -> None")
    assert parse_signature(sig) == [
        ("model", "POSITIONAL_OR_KEYWORD", inspect.Parameter.empty),
        ("points_per_side", "POSITIONAL_OR_KEYWORD", 32),
        ("point_grids", "POSITIONAL_OR_KEYWORD", None),
        ("output_mode", "POSITIONAL_OR_KEYWORD", "binary_mask"),
        ("act", "POSITIONAL_OR_KEYWORD", "<class 'torch.nn.modules.activation.GELU'>"),
    ]
    assert [k for _, k, _ in parse_signature("(*, transformer_dim: int, **kw)")] == [
        "KEYWORD_ONLY", "VAR_KEYWORD"]

    def renamed(points_per_side=32, model=None):  # the check must catch a swapped order
        pass
    assert signature_problems("(model, points_per_side=32)", renamed)


def test_manifest_covers_the_required_modules():
    assert set(FULL_MODULES) <= set(MANIFEST)
    names = required_names()
    assert len(names) > 100
    assert ("mobile_sam.utils.onnx", "SamOnnxModel") in names


@pytest.mark.parametrize("module,name", required_names(), ids=lambda v: v)
def test_original_name(module: str, name: str):
    entry = MANIFEST[module][name]
    mod = importlib.import_module(module)
    assert hasattr(mod, name), f"{module} has no {name}"
    obj = getattr(mod, name)
    kind = entry["kind"]
    if kind == "dict":
        assert isinstance(obj, dict)
        assert set(entry["keys"]) <= set(obj), f"{module}.{name} lacks keys"
        return
    assert (inspect.isclass(obj) if kind == "class" else callable(obj)), f"{name} is not a {kind}"
    if (module, name) not in SIGNATURE_FREE:
        problems = signature_problems(entry["signature"], obj)
        assert not problems, f"{module}.{name}{entry['signature']}: {problems}"
    for method, signature in entry.get("methods", {}).items():
        assert hasattr(obj, method), f"{module}.{name} has no {method}"
        if signature == "property" or (module, name) in SIGNATURE_FREE:
            continue
        problems = signature_problems(signature, getattr(obj, method))
        assert not problems, f"{module}.{name}.{method}{signature}: {problems}"


def test_same_objects_at_every_path():
    """A name re-exported at several paths is one object, as in the original."""
    seen: dict[tuple[str, str], Any] = {}
    for module, names in MANIFEST.items():
        for name, entry in names.items():
            if (module, name) not in set(required_names()):
                continue
            obj = getattr(importlib.import_module(module), name)
            key = (entry["defined_in"], name)
            if key in seen:
                assert seen[key] is obj, f"{module}.{name} is another object than in {key[0]}"
            seen[key] = obj
