"""Packaging metadata: one version, the licence file and the typing marker ship with the package."""
from __future__ import annotations

import importlib.metadata
import importlib.resources
import re
from pathlib import Path

import pytest

import mobile_sam

REPO = Path(__file__).resolve().parents[1]


def test_py_typed_marker_is_in_the_package() -> None:
    assert importlib.resources.files("mobile_sam").joinpath("py.typed").is_file()


def test_version_has_one_source() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.dev\d+)?", mobile_sam.__version__)
    # pyproject.toml reads the version from mobile_sam.__version__; an install carries it.
    assert importlib.metadata.version("mobile_sam") == mobile_sam.__version__


def test_pyproject_ships_license_and_marker() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    meta = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))
    project, setuptools = meta["project"], meta["tool"]["setuptools"]
    assert "version" not in project and "version" in project["dynamic"]
    assert setuptools["dynamic"]["version"] == {"attr": "mobile_sam.__version__"}
    assert "py.typed" in setuptools["package-data"]["mobile_sam"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text("utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert set(project["urls"]) >= {"Homepage", "Documentation", "Issues"}
