"""The runtime package: its import graph, and the keys and files of its export caches."""
from __future__ import annotations

import ast
import copy
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mobile_sam
from conftest import tiny_sam_config
from mobile_sam.build import build_sam
from mobile_sam.runtime import cache

PACKAGE = Path(mobile_sam.__file__).resolve().parent
ENCODER_FILES = {"modeling/common.py", "modeling/tiny_vit.py", "onnx/export.py"}
# The prompt encoder packs prompts with `prompts.pack_prompts` (which resizes coordinates with
# `transforms`): both are among the decoder's sources.
DECODER_FILES = {"modeling/common.py", "modeling/fast_decoder.py", "modeling/mask_decoder.py",
                 "modeling/prompt_encoder.py", "modeling/transformer.py", "runtime/openvino.py",
                 "prompts.py", "transforms.py"}
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                    reason="openvino is not installed")


def _imports(path: Path) -> set[str]:
    """The mobile_sam modules a source file imports anywhere (module level or in a function)."""
    package = ".".join(("mobile_sam", *path.relative_to(PACKAGE).parent.parts))
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            if node.module:
                found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)  # names may be submodules
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("mobile_sam")}


def test_runtime_modules_import_without_a_cycle():
    """Any runtime module can be imported first: the imports between them form no cycle (so
    every import order works), and the model code does not import the runtime."""
    modules = {"mobile_sam.runtime" + ("" if p.stem == "__init__" else f".{p.stem}"): _imports(p)
               for p in (PACKAGE / "runtime").glob("*.py")}
    edges = {m: {d for d in deps if d in modules and d != m} for m, deps in modules.items()}
    assert len(edges) >= 6 and edges["mobile_sam.runtime"]
    order = []
    while edges:
        free = [m for m, deps in edges.items() if not deps - set(order)]
        assert free, f"import cycle among {sorted(edges)}"
        order += free
        edges = {m: d for m, d in edges.items() if m not in free}
    for path in (PACKAGE / "modeling").glob("*.py"):
        assert not {m for m in _imports(path) if m.startswith("mobile_sam.runtime")}, path


def _relative(paths: list[Path]) -> set[str]:
    return {p.relative_to(PACKAGE).as_posix() for p in paths}


def _decoder_sources(model) -> list[Path]:
    from mobile_sam.modeling.fast_decoder import FullDecoder
    from mobile_sam.runtime import openvino

    return cache.graph_sources([FullDecoder(model.mask_decoder, model.prompt_encoder)],
                               [openvino._graphs, openvino._convert])


def test_graph_sources_are_the_files_the_graphs_come_from(tiny_sam):
    from mobile_sam.build import SamConfig, build_sam
    from mobile_sam.modeling import ViTConfig
    from mobile_sam.onnx.export import export_encoder

    encoder = cache.graph_sources([tiny_sam.image_encoder], [export_encoder])
    assert _relative(encoder) == ENCODER_FILES
    assert _relative(_decoder_sources(tiny_sam)) == DECODER_FILES
    # Derived from the model: another encoder class brings its own file.
    vit = build_sam(SamConfig("tiny_vit_b", ViTConfig(32, 2, 2, (1,), img_size=64, out_chans=32),
                              prompt_embed_dim=32, image_size=64, embedding_size=4,
                              decoder_heads=2, decoder_mlp_dim=64))
    assert _relative(cache.graph_sources([vit.image_encoder], [export_encoder])) == \
        {"modeling/common.py", "modeling/vit.py", "onnx/export.py"}


def _folders(model) -> tuple[Path, Path | None]:
    from mobile_sam.runtime import openvino

    if importlib.util.find_spec("openvino") is None:
        return cache.encoder_onnx_folder(model), None
    return cache.encoder_onnx_folder(model), openvino.decoder_graphs_folder(model)


@pytest.mark.parametrize("changed", sorted(ENCODER_FILES | DECODER_FILES | {"masks.py"}))
def test_cache_keys_follow_every_source_file(tiny_sam, monkeypatch, changed):
    """A change to any file a graph is made from gives that graph a new cache folder; the
    other graph, and files neither is made from, keep theirs."""
    before = _folders(tiny_sam)
    read = cache._source_bytes
    monkeypatch.setattr(cache, "_source_bytes", lambda path: read(path) + (
        b"\n# changed\n" if path.relative_to(PACKAGE).as_posix() == changed else b""))
    after = _folders(tiny_sam)
    assert (after[0] != before[0]) == (changed in ENCODER_FILES)
    if before[1] is not None:
        assert (after[1] != before[1]) == (changed in DECODER_FILES)


@pytest.mark.slow
@needs_openvino
def test_an_edited_copy_of_the_package_gets_new_keys(tiny_checkpoint, tmp_path):
    """The same keys from a copy of the package at another place; an edited transformer.py
    gives the decoder graphs a new key, and leaves the encoder's."""
    script = (
        "import torch\n"
        "from mobile_sam.build import build_sam\n"
        "from mobile_sam.runtime import cache, openvino\n"
        "from tests.conftest import tiny_sam_config\n"
        "model = build_sam(tiny_sam_config())\n"
        f"model.load_state_dict(torch.load({str(tiny_checkpoint)!r}, weights_only=True))\n"
        "print(cache.encoder_onnx_folder(model).name, openvino.decoder_graphs_folder(model).name)\n"
    )

    def keys(src: Path) -> list[str]:
        path = os.pathsep.join([str(src), str(Path(__file__).parents[1])])
        env = dict(os.environ, PYTHONPATH=path)
        run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                             text=True, check=True)
        return run.stdout.split()

    copies = []
    for name in ("same", "edited"):
        shutil.copytree(PACKAGE, tmp_path / name / "mobile_sam",
                        ignore=shutil.ignore_patterns("__pycache__"))
        copies.append(tmp_path / name)
    edited = copies[1] / "mobile_sam" / "modeling" / "transformer.py"
    edited.write_text(edited.read_text() + "\n# edited\n")
    same, changed = keys(copies[0]), keys(copies[1])
    model = build_sam(tiny_sam_config())
    model.load_state_dict(torch.load(tiny_checkpoint, weights_only=True))
    assert same == [folder.name for folder in _folders(model)]
    assert same[0] == changed[0]
    assert same[1] != changed[1]


def test_cache_keys_follow_the_weights(tiny_sam):
    """Each graph's folder changes with its own weights, not with the others'."""
    model = copy.deepcopy(tiny_sam)
    before = _folders(model)
    with torch.no_grad():
        model.image_encoder.neck[1].bias.add_(1.0)
    after_encoder = _folders(model)
    assert after_encoder[0] != before[0]
    assert after_encoder[1] == before[1]
    with torch.no_grad():
        model.mask_decoder.iou_prediction_head.layers[-1].bias.add_(1.0)
    after_decoder = _folders(model)
    assert after_decoder[0] == after_encoder[0]
    if before[1] is not None:
        assert after_decoder[1] != before[1]


def test_interrupted_export_leaves_no_file(tiny_sam, monkeypatch, tmp_path):
    """An export that fails half-way leaves nothing in the cache folder, so the next call
    exports again instead of loading a partial file."""
    from mobile_sam.onnx import export

    def fail(model, path, opset):
        Path(path).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setenv("MOBILE_SAM_HOME", str(tmp_path))  # empty: the export must run
    monkeypatch.setattr(export, "export_encoder", fail)
    with pytest.raises(KeyboardInterrupt):
        cache.cached_encoder_onnx(tiny_sam)
    folder = cache.encoder_onnx_folder(tiny_sam)
    assert folder.is_relative_to(tmp_path)
    assert [p.name for p in folder.iterdir()] == [".lock"]  # the lock file only


def test_concurrent_exports_make_the_file_once(tiny_sam, monkeypatch, tmp_path):
    """Two exporters of the same graph at once (threads here; processes share the same file
    lock): the second waits for the first's file instead of exporting beside it, and neither
    ever sees a partial file."""
    import threading
    import time

    from mobile_sam.onnx import export

    exports = []

    def slow_export(model, path, opset):
        exports.append(path)
        Path(path).write_bytes(b"first half")
        time.sleep(0.3)
        Path(path).write_bytes(b"the whole graph")

    monkeypatch.setenv("MOBILE_SAM_HOME", str(tmp_path))
    monkeypatch.setattr(export, "export_encoder", slow_export)
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.cached_encoder_onnx(tiny_sam)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(exports) == 1
    assert len(results) == 2 and results[0] == results[1]
    assert results[0].read_bytes() == b"the whole graph"
    assert sorted(p.name for p in results[0].parent.iterdir()) == [".lock", "encoder.onnx"]


def test_weights_changed_during_an_export_are_not_cached(tiny_sam, monkeypatch, tmp_path):
    from mobile_sam.onnx import export

    model = copy.deepcopy(tiny_sam)

    def export_while_training(m, path, opset):
        Path(path).write_bytes(b"graph")
        with torch.no_grad():
            model.image_encoder.neck[1].bias.add_(1.0)

    monkeypatch.setenv("MOBILE_SAM_HOME", str(tmp_path))
    monkeypatch.setattr(export, "export_encoder", export_while_training)
    folder = cache.encoder_onnx_folder(model)
    with pytest.raises(RuntimeError, match="weights changed while the graph was exported"):
        cache.cached_encoder_onnx(model)
    assert [p.name for p in folder.iterdir()] == [".lock"]
