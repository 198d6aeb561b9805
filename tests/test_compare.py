"""Compare with the base: the same request rendered with and without the relation, side by side."""

import numpy as np
import pytest

from dreamrelation import cli
from dreamrelation.config import DataConfig, GenerateConfig, MethodConfig, ModelConfig, RunConfig, TrainConfig
from dreamrelation.generate import GenerationError, comparison_paths, generate, side_by_side
from dreamrelation.models import load_model
from dreamrelation.train.trainer import train

from helpers import write_two_subject_dataset

CLIP = dict(num_frames=13, height=64, width=64)
PROMPT = "A red square is approaching a green square."


@pytest.fixture(scope="module")
def relation(tmp_path_factory, cache_dir):
    """(model config, a trained relation's run folder) on the tiny Wan."""
    root = tmp_path_factory.mktemp("compare")
    model = ModelConfig(name="tiny-random-wan", device="cpu", cache_dir=cache_dir)
    data = write_two_subject_dataset(root / "data", num_videos=1, **CLIP)
    run = RunConfig(model=model, data=DataConfig(data_dir=data, **CLIP), method=MethodConfig(rank=4),
                    train=TrainConfig(output_dir=root / "run", steps=4, learning_rate=1e-2, eval_every=0))
    train(run, show_progress=False)
    return model, root / "run"


def test_the_base_half_is_a_plain_base_generation_with_that_seed(relation, tmp_path):
    model, run = relation
    loaded = load_model(model)
    request = GenerateConfig(prompt=PROMPT, steps=3, seed=7, compare=True)
    result = generate(model, run, request, tmp_path / "out.mp4", loaded=loaded)
    plain = generate(model, None, request.model_copy(update={"compare": False}), tmp_path / "plain.mp4", loaded=loaded)
    alone = generate(model, run, request.model_copy(update={"compare": False}), tmp_path / "alone.mp4", loaded=loaded)

    comparison = result.comparison
    assert np.array_equal(comparison.base_frames, plain.frames)
    assert np.array_equal(result.frames, alone.frames)  # comparing changes nothing of the relation's video
    assert not np.array_equal(result.frames, plain.frames)
    frames, height, width, _ = plain.frames.shape
    band = comparison.frames.shape[1] - height
    assert comparison.frames.shape == (frames, band + height, 2 * width, 3) and band % 2 == 0 and band >= 12
    assert np.array_equal(comparison.frames[:, band:, :width], plain.frames)
    assert np.array_equal(comparison.frames[:, band:, width:], result.frames)
    assert comparison.frames[:, :band].max() > 200  # the labels are drawn (white, anti-aliased)
    assert (comparison.base_path, comparison.path) == comparison_paths(tmp_path / "out.mp4")
    assert comparison.base_path.is_file() and comparison.path.is_file() and result.path.is_file()


def test_the_labels_sit_above_their_halves():
    left = np.zeros((2, 64, 48, 3), np.uint8)
    both = side_by_side(left, left + 10, ("base", "relation"))
    band = both.shape[1] - 64
    header = both[0, :band]
    assert header[:, :48].max() > 200 and header[:, 48:].max() > 200  # one label over each half
    assert (both[:, band:, 48:] == 10).all() and (both[:, band:, :48] == 0).all()


def test_compare_without_a_relation_is_one_line(relation, tmp_path):
    model, _ = relation
    with pytest.raises(GenerationError, match="^compare shows a relation beside the base model: choose a relation"):
        generate(model, None, GenerateConfig(prompt=PROMPT, compare=True), tmp_path / "x.mp4")


def test_the_cli_writes_the_three_videos(relation, tmp_path, capsys, monkeypatch, cache_dir):
    model, run = relation
    monkeypatch.setenv("DREAMRELATION_CACHE", str(cache_dir))
    code = cli.main(["generate", "--lora", str(run), "--prompt", PROMPT, "--output", str(tmp_path / "v.mp4"),
                     "--steps", "2", "--compare", "--model", "tiny-random-wan", "--device", "cpu"])
    assert code == 0
    out = capsys.readouterr().out
    assert "v_base.mp4 (the base model alone)" in out and "v_compare.mp4 (side by side)" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4", "v_base.mp4", "v_compare.mp4"]
