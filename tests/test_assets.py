"""Assets (the toy model, the example datasets) come from $DREAMRELATION_ASSETS or the checkout; missing ones
are named in one line instead of a silent fallback."""

import os
import subprocess
import sys

import pytest

from dreamrelation.config import ModelConfig


def test_the_default_model_is_the_toy_one():
    assert ModelConfig().name == "toy"


def test_a_missing_toy_model_fails_in_one_line_naming_its_folder(tmp_path):
    env = {**os.environ, "DREAMRELATION_ASSETS": str(tmp_path / "assets")}
    result = subprocess.run(
        [sys.executable, "-m", "dreamrelation.cli", "ingest", str(tmp_path / "clip.mp4"), "--data", str(tmp_path / "d")],
        env=env, capture_output=True, text=True,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dreamrelation: error: the toy model is missing")
    assert f"{tmp_path / 'assets' / 'models' / 'toy'} holds no model_index.json" in lines[0]
    assert "DREAMRELATION_ASSETS" in lines[0] and "--model tiny-random" in lines[0]


def test_missing_examples_are_named(tmp_path, monkeypatch):
    from dreamrelation.studio import datasets
    from dreamrelation.studio.workspace import StudioError, Workspace

    monkeypatch.setattr(datasets, "EXAMPLES_DIR", tmp_path / "examples")
    workspace = Workspace(tmp_path / "home")
    assert datasets.list_examples() == []
    with pytest.raises(StudioError, match=f"no folder {tmp_path / 'examples'} .*DREAMRELATION_ASSETS"):
        datasets.copy_example(workspace, workspace.owner_key("session:abc"), "orbits")
