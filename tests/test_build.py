"""Builder, registry and checkpoint loading: key-for-key with the official files, safe, strict,
and a clear error for every way a checkpoint can be wrong."""
from __future__ import annotations

import json

import pytest
import torch

from mobile_sam import CheckpointError, sam_model_registry
from mobile_sam.build import VARIANTS, build_sam, detect_variant, load_state_dict_file


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


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, not a checkpoint\n")
    with pytest.raises(CheckpointError, match="notes.txt is not a readable PyTorch checkpoint"):
        load_state_dict_file(path)


class Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_pickled_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"x": torch.zeros(1), "evil": Evil()}, path)
    with pytest.raises(CheckpointError, match="only plain tensors are accepted"):
        load_state_dict_file(path)
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
