"""The CLI, `SAM(...)` and the server on an exported ONNX folder where torch cannot be imported.

The parent process exports the tiny model and computes the torch results; a subprocess with
torch blocked (conftest.BLOCK_TORCH) runs `mobile-sam --help`, `export` (refused with the
install line), `segment`, `everything`, `SAM(EXPORT_DIR)` and a /health + upload + predict +
everything round trip through the server, and the parent compares what it wrote.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")

from conftest import BLOCK_TORCH
from mobile_sam import SAM, SamAutomaticMaskGenerator, SamPredictor
from mobile_sam.cli import _common
from mobile_sam.masks import coco_to_mask
from mobile_sam.onnx import export as E

POINT = (40.0, 30.0)
BOX = (10.0, 12.0, 90.0, 70.0)
EVERYTHING = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}

SCRIPT = """
import contextlib, io, json, sys
import numpy as np
from PIL import Image
from fastapi.testclient import TestClient

from mobile_sam import SAM
from mobile_sam.cli import main
from mobile_sam.onnx.runtime import open_export_folder
from mobile_sam.serve import create_app

bundle, image_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
report = {}

def cli(name, argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()) as std:
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    report[name] = {"code": code, "stderr": err.getvalue(), "stdout": std.getvalue()}

cli("help", ["--help"])
cli("export", ["export", "--model", "vit_t", "--out", out + "/export"])
cli("segment_checkpoint", ["segment", image_path, "--point", "40,30", "--model", "vit_t",
                           "--out", out + "/never"])
cli("segment", ["segment", image_path, "--point", "40,30", "--box", "10,12,90,70",
                "--model", bundle, "--out", out + "/segment"])
cli("everything", ["everything", image_path, "--model", bundle, "--out", out + "/everything",
                   "--points-per-side", "4", "--pred-iou-thresh", "0",
                   "--stability-score-thresh", "0"])

image = np.asarray(Image.open(image_path).convert("RGB"))
result = SAM(bundle).predict(image, points=[40, 30], multimask_output=True)[0]
np.savez(out + "/api.npz", masks=result.masks, scores=result.scores)

with TestClient(create_app(open_export_folder(bundle))) as client:
    report["health"] = client.get("/health").json()
    with open(image_path, "rb") as f:
        upload = client.post("/v1/images", files={"file": ("a.png", f.read(), "image/png")})
    image_id = upload.json()["id"]
    predict = client.post(f"/v1/images/{image_id}/predict",
                          json={"point_coords": [[40, 30]], "point_labels": [1],
                                "multimask_output": True, "mask_format": "rle"})
    everything = client.post(f"/v1/images/{image_id}/everything",
                             json={"points_per_side": 4, "pred_iou_thresh": 0,
                                   "stability_score_thresh": 0})
    embedding = client.get(f"/v1/images/{image_id}/embedding")
    report["serve"] = {"upload": upload.status_code, "predict": predict.json(),
                       "everything": everything.json(), "embedding": embedding.status_code}
    with open(out + "/embedding.npy", "wb") as f:
        f.write(embedding.content)

report["torch_imported"] = "torch" in sys.modules
with open(out + "/report.json", "w") as f:
    json.dump(report, f)
"""


@pytest.fixture(scope="module")
def bundle(tiny_sam, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("torchfree") / "bundle"
    E.export_onnx(tiny_sam, out)
    return out


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    rng = np.random.default_rng(3)
    small = Image.fromarray(rng.integers(0, 255, (12, 20, 3), dtype=np.uint8))
    path = tmp_path_factory.mktemp("torchfree_image") / "a.png"
    small.resize((150, 97), Image.BILINEAR).save(path)
    return path


@pytest.fixture(scope="module")
def blocked_run(bundle, image_file, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("torchfree_out")
    code = BLOCK_TORCH + textwrap.dedent(SCRIPT)
    result = subprocess.run([sys.executable, "-c", code, str(bundle), str(image_file), str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads((out / "report.json").read_text()), out


def care(got: np.ndarray, want_logits: np.ndarray) -> None:
    """Masks equal wherever the torch logit is not within 2e-2 of the threshold."""
    sure = np.abs(want_logits) >= 2e-2
    np.testing.assert_array_equal(got[sure], (want_logits > 0)[sure])


@pytest.fixture(scope="module")
def image(image_file) -> np.ndarray:
    return np.asarray(Image.open(image_file).convert("RGB"))


@pytest.fixture(scope="module")
def torch_predictor(tiny_sam, image) -> SamPredictor:
    predictor = SamPredictor(tiny_sam, backend="torch")
    predictor.set_image(image)
    return predictor


@pytest.fixture(scope="module")
def torch_everything(tiny_sam, image) -> list[dict]:
    return SamAutomaticMaskGenerator(tiny_sam, **EVERYTHING).generate(image)


def test_torch_is_never_imported(blocked_run):
    report, _ = blocked_run
    assert report["torch_imported"] is False


def test_help_lists_every_subcommand_and_names_the_extra(blocked_run):
    report, _ = blocked_run
    help_ = report["help"]
    assert help_["code"] == 0
    for name in ("segment", "everything", "download", "export", "serve", "distill", "eval"):
        assert name in help_["stdout"]
    assert 'pip install "mobile_sam[torch]"' in " ".join(help_["stdout"].split())


def test_torch_only_commands_say_one_line(blocked_run):
    report, _ = blocked_run
    for name in ("export", "segment_checkpoint"):
        run = report[name]
        assert run["code"] == 1
        lines = run["stderr"].strip().splitlines()
        assert len(lines) == 1 and "needs torch" in lines[0], run["stderr"]
        assert 'pip install "mobile_sam[torch]"' in lines[0]


def test_segment_matches_the_torch_predictor(blocked_run, torch_predictor):
    report, out = blocked_run
    assert report["segment"]["code"] == 0, report["segment"]["stderr"]
    doc = json.loads((out / "segment" / "a.json").read_text())
    mask = np.asarray(Image.open(out / "segment" / doc["objects"][0]["masks"][0]["file"])) > 0
    logits, scores, _ = torch_predictor.predict(
        np.array([POINT]), np.array([1]), box=np.array(BOX), multimask_output=False,
        return_logits=True)
    care(mask, logits[0])
    assert doc["objects"][0]["masks"][0]["score"] == pytest.approx(float(scores[0]), abs=2e-4)


def test_everything_matches_torch(blocked_run, torch_everything):
    report, out = blocked_run
    assert report["everything"]["code"] == 0, report["everything"]["stderr"]
    got = json.loads((out / "everything" / "a.json").read_text())["annotations"]
    want = torch_everything
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        assert g["point_coords"] == w["point_coords"]
        assert g["predicted_iou"] == pytest.approx(w["predicted_iou"], abs=2e-4)
        assert g["area"] == pytest.approx(w["area"], rel=0.02)


def test_sam_on_an_export_folder_matches_torch(blocked_run, tiny_sam, torch_predictor, image):
    _, out = blocked_run
    api = np.load(out / "api.npz")
    logits, scores, _ = torch_predictor.predict(
        np.array([POINT]), np.array([1]), multimask_output=True, return_logits=True)
    assert api["masks"].shape == logits.shape and api["masks"].dtype == bool
    for got, want in zip(api["masks"], logits, strict=True):
        care(got, want)
    np.testing.assert_allclose(api["scores"], scores, atol=2e-4)
    torch_result = SAM(tiny_sam, backend="torch").predict(image, points=[POINT],
                                                          multimask_output=True)[0]
    np.testing.assert_allclose(api["scores"], torch_result.scores, atol=2e-4)


def test_server_round_trip(blocked_run, torch_predictor, torch_everything):
    report, out = blocked_run
    serve = report["serve"]
    assert report["health"]["status"] == "ok" and report["health"]["model_input_size"] == 256
    assert serve["upload"] == 200 and serve["embedding"] == 200
    predictor = torch_predictor
    embedding = np.load(out / "embedding.npy")
    np.testing.assert_allclose(embedding, predictor.get_image_embedding().numpy(), atol=1e-4)
    logits, scores, _ = predictor.predict(np.array([POINT]), np.array([1]),
                                          multimask_output=True, return_logits=True)
    predict = serve["predict"]
    np.testing.assert_allclose(predict["scores"], scores, atol=2e-4)
    for rle, want in zip(predict["masks"], logits, strict=True):
        care(coco_to_mask(rle), want)
    records = serve["everything"]["masks"]
    assert len(records) == len(torch_everything) > 0
    np.testing.assert_allclose([r["predicted_iou"] for r in records],
                               [r["predicted_iou"] for r in torch_everything], atol=2e-4)


def test_cli_choices_match_the_runtime():
    from mobile_sam.runtime import BACKENDS, PRECISIONS

    assert _common.BACKEND_CHOICES == BACKENDS
    assert _common.PRECISION_CHOICES == PRECISIONS


def test_export_folder_options_are_checked(bundle, image_file, tmp_path, capsys):
    from mobile_sam.cli import main

    for argv, needle in [(["--backend", "torch"], "runs in onnxruntime or OpenVINO"),
                         (["--device", "cuda:0"], "runs on the CPU"),
                         (["--precision", "bf16"], "precision must be one of")]:
        assert main(["segment", str(image_file), "--point", "1,1", "--model", str(bundle),
                     "--out", str(tmp_path), *argv]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0] and str(bundle) in err[0], err
    with pytest.raises(ValueError, match="runs in onnxruntime"):
        SAM(bundle, backend="torch")
    sam = SAM(bundle)
    assert sam.to("cpu") is sam
    with pytest.raises(ValueError, match="runs on the CPU"):
        sam.to("cuda:0")


def test_openvino_runs_the_export_folder_like_onnxruntime(bundle, image):
    pytest.importorskip("openvino")
    openvino = SAM(bundle, backend="openvino")
    assert openvino.predictor.backend == "openvino"
    onnxruntime = SAM(bundle, backend="onnxruntime")
    for sam in (openvino, onnxruntime):
        sam.predictor.set_image(image)
    np.testing.assert_allclose(openvino.predictor.get_image_embedding(),
                               onnxruntime.predictor.get_image_embedding(), atol=1e-4)
    kwargs = dict(points=[[[40, 30], [100, 80]]], labels=[[1, 0]], bboxes=[BOX],
                  multimask_output=True)
    got, want = openvino.predict(image, **kwargs)[0], onnxruntime.predict(image, **kwargs)[0]
    np.testing.assert_allclose(got.scores, want.scores, atol=2e-4)
    assert (got.masks != want.masks).mean() < 1e-3


def test_torch_names_say_what_to_install_when_torch_is_missing():
    """Where torch is not installed (ModuleNotFoundError, as pip leaves it), the lazily
    imported torch names of the package raise one line naming the extra."""
    code = textwrap.dedent("""
        import sys
        class Missing:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ModuleNotFoundError(f"No module named {name!r}", name="torch")
        sys.meta_path.insert(0, Missing())
        import mobile_sam
        from mobile_sam import SAM
        try:
            mobile_sam.sam_model_registry
        except ImportError as exc:
            print(type(exc).__name__, exc)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("MissingDependencyError mobile_sam.sam_model_registry "
                                    "needs torch")
    assert 'pip install "mobile_sam[torch]"' in result.stdout


# ------------------------------------------------------------------------------ Docker image

ROOT = Path(__file__).resolve().parents[1]


def docker_instructions(path: Path) -> list[tuple[str, str]]:
    """A Dockerfile's instructions as (KEYWORD, arguments with single spaces), continuation
    lines joined and comments left out."""
    joined = ROOT.joinpath(path).read_text().replace("\\\n", " ")
    words = [line.split() for line in joined.splitlines()]
    return [(w[0].upper(), " ".join(w[1:])) for w in words if w and not w[0].startswith("#")]


def test_runtime_dockerfile_installs_the_torch_free_extra_as_a_user():
    import tomllib

    steps = docker_instructions(Path("docker/Dockerfile.runtime"))
    keywords = [keyword for keyword, _ in steps]
    assert steps[0] == ("FROM", "python:3.11-slim")
    assert not any("torch" in args.lower() for _, args in steps)
    installs = [args for keyword, args in steps if keyword == "RUN" and "pip install" in args]
    assert installs == ['pip install -c constraints.txt ".[runtime]" && rm -rf /src']
    # What that line installs: the core dependencies and the runtime extra, none of them torch.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["runtime"]
    assert not [r for r in wanted if r.lower().startswith(("torch", "torchvision", "timm"))]
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert keywords.index("USER") > max(i for i, (k, a) in enumerate(steps) if k == "RUN")
    [healthcheck] = [args for keyword, args in steps if keyword == "HEALTHCHECK"]
    assert "/health" in healthcheck.split("CMD", 1)[1]
    env = " ".join(args for keyword, args in steps if keyword == "ENV")
    assert "MOBILE_SAM_MODEL=/models/mobile_sam_onnx" in env.split()
    assert ("ENTRYPOINT", '["mobile-sam-entrypoint"]') in steps
    assert ("COPY", "docker/entrypoint.sh /usr/local/bin/mobile-sam-entrypoint") in steps
