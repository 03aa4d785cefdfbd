"""Builder, registry and checkpoint loading: key-for-key with the official files, safe, strict,
and a clear error for every way a checkpoint can be wrong."""
from __future__ import annotations

import argparse
import json
import os

import pytest
import torch

from conftest import tiny_sam_config
from mobile_sam import CheckpointError, load_sam, sam_model_registry
from mobile_sam.build import (
    VARIANTS,
    build_sam,
    config_to_dict,
    detect_variant,
    load_state_dict_file,
)


@pytest.mark.parametrize("variant", ["vit_t", "vit_b", "vit_l", "vit_h"])
def test_state_dict_matches_manifest(reference_dir, variant):
    manifest = json.loads((reference_dir / f"state_dict_{variant}.json").read_text())
    with torch.device("meta"):  # shapes only: no memory, no random init cost
        model = build_sam(variant)
    state = model.state_dict()
    assert list(state) == list(manifest)
    for key, info in manifest.items():
        assert list(state[key].shape) == info["shape"], key
        assert str(state[key].dtype).removeprefix("torch.") == info["dtype"], key
    assert detect_variant(state) == variant


def test_parameter_counts_match_reference():
    with torch.device("meta"):
        counts = {v: sum(p.numel() for p in build_sam(v).parameters()) for v in VARIANTS}
    assert counts == {"vit_t": 10_130_092, "vit_b": 93_735_472, "vit_l": 312_342_832,
                      "vit_h": 641_090_608}


def test_registry_names_and_eval_mode():
    assert set(sam_model_registry) == {"default", "vit_t", "vit_b", "vit_l", "vit_h"}
    model = sam_model_registry["vit_t"]()
    assert not model.training and not any(m.training for m in model.modules())


def test_loaded_values_are_the_checkpoints(fixture_checkpoint, fixture_model):
    saved = torch.load(fixture_checkpoint, map_location="cpu", weights_only=True)
    state = fixture_model.state_dict()
    assert set(state) == set(saved)
    for key, value in saved.items():
        assert torch.equal(state[key], value), key


@pytest.mark.parametrize("wrap", ["bare", "model", "state_dict", "module_prefix"])
def test_accepted_checkpoint_layouts(tmp_path, fixture_checkpoint, wrap):
    sd = torch.load(fixture_checkpoint, map_location="cpu", weights_only=True)
    obj = {
        "bare": sd,
        "model": {"model": sd, "epoch": 3},
        "state_dict": {"state_dict": sd, "optimizer": {}},
        "module_prefix": {f"module.{k}": v for k, v in sd.items()},
    }[wrap]
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path)
    model = sam_model_registry["vit_t"](checkpoint=path)
    key = "mask_decoder.iou_token.weight"
    assert torch.equal(model.state_dict()[key], sd[key])


def test_wrong_variant_names_the_variant_held(fixture_checkpoint):
    for name in ("default", "vit_b"):
        with pytest.raises(CheckpointError, match=r"holds a 'vit_t' checkpoint.*sam_model_registry\['vit_t'\]"):
            sam_model_registry[name](checkpoint=fixture_checkpoint)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="checkpoint file not found: .*nope.pt"):
        sam_model_registry["vit_t"](checkpoint="/nonexistent/nope.pt")


def test_truncated_file(tmp_path, fixture_checkpoint):
    path = tmp_path / "truncated.pt"
    path.write_bytes(fixture_checkpoint.read_bytes()[: 1 << 20])
    with pytest.raises(CheckpointError, match=r"truncated\.pt is not a readable PyTorch checkpoint"):
        sam_model_registry["vit_t"](checkpoint=path)


@pytest.mark.parametrize("text", ["hello, not a checkpoint\n", "not an image\n"])
def test_not_a_checkpoint(tmp_path, text):
    path = tmp_path / "notes.txt"
    path.write_text(text)
    with pytest.raises(CheckpointError,
                       match="notes.txt is not a readable PyTorch checkpoint") as info:
        load_state_dict_file(path)
    assert "weights_only" not in str(info.value)  # torch's advice to load the file unsafely


class Evil:
    def __reduce__(self):
        return (print, ("code ran",))


class RunsAShell:
    def __reduce__(self):
        return (os.system, ("echo code ran",))


@pytest.mark.parametrize(("obj", "named"), [(Evil(), "print"),
                                            (argparse.Namespace(lr=0.1), "argparse.Namespace"),
                                            (RunsAShell(), f"{os.name}.system")])
def test_pickled_objects_are_refused_without_suggesting_unsafe_loading(tmp_path, capsys, obj,
                                                                        named):
    path = tmp_path / "evil.pt"
    torch.save({"x": torch.zeros(1), "extra": obj}, path)
    for load in (load_state_dict_file, load_sam):
        with pytest.raises(CheckpointError) as info:
            load(path)
        message = str(info.value)
        assert message.startswith(f"{path} is not a plain weights file: besides tensors it "
                                  f"holds pickled Python objects (e.g. {named})")
        # torch's own message says to retry with weights_only=False, i.e. to run the file's code
        for unsafe in ("weights_only", "add_safe_globals", "trust", "\x1b"):
            assert unsafe not in message
    assert "code ran" not in capsys.readouterr().out


def test_non_tensor_dict(tmp_path):
    path = tmp_path / "hparams.pt"
    torch.save({"lr": 0.1, "epochs": 3}, path)
    with pytest.raises(CheckpointError, match="not tensors"):
        load_state_dict_file(path)


def test_missing_and_extra_keys_are_refused(tmp_path, fixture_checkpoint):
    sd = torch.load(fixture_checkpoint, map_location="cpu", weights_only=True)
    extra = dict(sd, **{"mask_decoder.extra.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match=r"1 unexpected keys.*mask_decoder\.extra\.weight"):
        sam_model_registry["vit_t"](checkpoint=tmp_path / "extra.pt")
    missing = dict(sd)
    del missing["mask_decoder.iou_token.weight"]
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"1 missing keys.*iou_token"):
        sam_model_registry["vit_t"](checkpoint=tmp_path / "missing.pt")


def test_shape_mismatch_is_refused(tmp_path, fixture_checkpoint):
    sd = torch.load(fixture_checkpoint, map_location="cpu", weights_only=True)
    sd["mask_decoder.iou_token.weight"] = torch.zeros(1, 128)
    torch.save(sd, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match=r"shape mismatches.*iou_token.*\(1, 128\)"):
        sam_model_registry["vit_t"](checkpoint=tmp_path / "shape.pt")


def test_unknown_variant():
    with pytest.raises(ValueError, match="unknown model variant 'vit_x'"):
        build_sam("vit_x")


# ------------------------------------------------------------------ training outputs


def _tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    model = build_sam(tiny_sam_config())
    for module in model.modules():  # non-trivial statistics, so that every buffer matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _outputs(model) -> list[torch.Tensor]:
    """Image embedding, mask logits and predicted IoU of one fixed image and point."""
    image = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    points = (torch.tensor([[[60.0, 90.0], [200.0, 30.0]]]), torch.tensor([[1, 0]]))
    with torch.inference_mode():
        embedding = model.image_encoder(image)
        sparse, dense = model.prompt_encoder(points=points, boxes=None, masks=None)
        masks, iou = model.mask_decoder(embedding, model.prompt_encoder.get_dense_pe(), sparse,
                                        dense, multimask_output=True)
    return [embedding, masks, iou]


def test_training_output_loads_with_load_sam(tmp_path):
    from mobile_sam.train.models import save_model

    model = _tiny_model()
    path = save_model(tmp_path / "student.pt", model, tiny_sam_config())
    assert "tiny" not in VARIANTS  # a variant only the file's own config describes
    loaded = load_sam(path)
    assert loaded.config == tiny_sam_config() and not loaded.training
    for got, want in zip(_outputs(loaded), _outputs(model), strict=True):
        assert torch.equal(got, want)
    assert not torch.equal(_outputs(_tiny_model(seed=1))[1], _outputs(model)[1])

    # The file holds another model than the registry entry asked for: refused by name.
    with pytest.raises(CheckpointError, match=r"holds a 'tiny' checkpoint but the model asked "
                                              r"for is 'vit_t'; load_sam\(path\)"):
        sam_model_registry["vit_t"](checkpoint=path)


def test_distillation_checkpoint_loads_with_load_sam(tmp_path):
    """A checkpoint mid-training carries optimizer state besides config and model."""
    model = _tiny_model(seed=2)
    path = tmp_path / "step_00000010.pt"
    torch.save({"format": "mobile_sam.distill_checkpoint/1", "config": config_to_dict(
        tiny_sam_config()), "model": model.state_dict(), "step": 10,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.001}]}}, path)
    assert torch.equal(_outputs(load_sam(path))[1], _outputs(model)[1])


def test_built_in_and_safetensors_files_load_with_load_sam(tmp_path, fixture_checkpoint,
                                                           fixture_model):
    safetensors = pytest.importorskip("safetensors.torch")
    state = torch.load(fixture_checkpoint, map_location="cpu", weights_only=True)
    path = tmp_path / "mobile_sam.safetensors"
    safetensors.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    for source in (fixture_checkpoint, path):
        model = load_sam(source)
        assert model.config == VARIANTS["vit_t"]
        for key, value in fixture_model.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), key
    with pytest.raises(CheckpointError, match=r"holds a 'vit_t' checkpoint.*'vit_b'"):
        load_sam(path, variant="vit_b")


def _bad_config(kind: str) -> dict:
    config = config_to_dict(tiny_sam_config())
    if kind == "not a mapping":
        return "vit_t"  # type: ignore[return-value]
    if kind == "no encoder":
        del config["encoder"]
    elif kind == "unknown encoder type":
        config["encoder"]["type"] = "resnet"
    elif kind == "unknown field":
        config["encoder"]["depthz"] = 3
    elif kind == "missing field":
        del config["name"]
    elif kind == "unbuildable":
        config["encoder"]["embed_dims"] = [16, 32]  # two stages' widths, four stages' depths
    return config


@pytest.mark.parametrize(("kind", "message"), [
    ("not a mapping", "a model config must be a mapping, got str"),
    ("no encoder", "a model config needs an 'encoder' mapping; its keys are"),
    ("unknown encoder type", "unknown encoder type 'resnet'"),
    ("unknown field", r"not a valid model config: unknown TinyViTConfig fields \['depthz'\]"),
    ("missing field", "not a valid model config: .*'name'"),
    ("unbuildable", "its config 'tiny' does not describe a buildable model"),
])
def test_training_output_with_bad_config_names_the_file(tmp_path, kind, message):
    path = tmp_path / "student.pt"
    torch.save({"config": _bad_config(kind), "model": _tiny_model().state_dict()}, path)
    with pytest.raises(CheckpointError, match=f"^{path}: {message}"):
        load_sam(path)


def test_training_output_without_model_names_the_file(tmp_path):
    path = tmp_path / "student.pt"
    torch.save({"config": config_to_dict(tiny_sam_config()),
                "state": _tiny_model().state_dict()}, path)
    with pytest.raises(CheckpointError, match=rf"^{path} carries a model config but no 'model' "
                                              r"state dict \(its keys: \['config', 'state'\]\)"):
        load_sam(path)


def test_training_output_that_does_not_fit_its_config(tmp_path):
    state = _tiny_model().state_dict()
    del state["mask_decoder.iou_token.weight"]
    path = tmp_path / "student.pt"
    torch.save({"config": config_to_dict(tiny_sam_config()), "model": state}, path)
    with pytest.raises(CheckpointError,
                       match=rf"^{path} does not fit model 'tiny': 1 missing keys"):
        load_sam(path)


def test_unknown_bare_state_dict_says_what_to_do(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(_tiny_model().state_dict(), path)
    with pytest.raises(CheckpointError, match=r"keys match none of the known variants.*carries "
                                              r"no config.*'config': <SamConfig as dict>"):
        load_sam(path)
