"""The shipped assets/examples/ relation datasets are readable and are exactly what scripts/make_examples.py writes."""

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import load_script

from dreamrelation.data.dataset import check_captions, load_subject_masks, mask_frame_paths, scan_dataset
from dreamrelation.data.video import load_clip
from dreamrelation.toyworld.captions import parse_caption
from dreamrelation.toyworld import examples
from dreamrelation.toyworld.dataset import read_scenes
from dreamrelation.toyworld.world import HELD_OUT_RELATIONS, Subject

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "assets" / "examples"


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("relation", HELD_OUT_RELATIONS)
def test_shipped_examples_match_the_script(relation, tmp_path):
    script = load_script("scripts/make_examples.py")
    shipped = EXAMPLES / relation
    samples = scan_dataset(shipped)
    check_captions(shipped)  # what a run checks first: each caption names two subjects
    assert len(samples) == examples.DEFAULT_COUNT
    # The clips take turns over the first DEFAULT_PAIRS pairs, the first of them EXEMPLAR_SUBJECTS.
    pairs = examples.EXEMPLAR_PAIRS[: examples.DEFAULT_PAIRS]
    assert [parse_caption(sample.caption) for sample in samples[: len(pairs)]] == [
        (first.phrase, relation, second.phrase) for first, second in pairs]
    assert pairs[0] == examples.EXEMPLAR_SUBJECTS

    fresh = script.main(["--output", str(tmp_path), "--relations", relation])[0]
    assert files(fresh) == files(shipped)
    for name in ("scenes.json", *(f"{s.name}.txt" for s in samples)):
        assert (fresh / name).read_text() == (shipped / name).read_text()
    assert set(read_scenes(shipped)) == {s.name for s in samples}
    size, frames = examples.DEFAULT_SIZE, examples.DEFAULT_FRAMES
    for sample in samples:
        indices = list(mask_frame_paths(sample.mask_dir))
        assert indices == list(range(frames))
        shipped_masks = load_subject_masks(sample.mask_dir, indices, size, size)
        fresh_masks = load_subject_masks(fresh / "masks" / sample.name, indices, size, size)
        np.testing.assert_array_equal(shipped_masks, fresh_masks)
        assert json.loads((sample.mask_dir / "subjects.json").read_text()) == json.loads(
            (fresh / "masks" / sample.name / "subjects.json").read_text()
        )
        # Encoder builds may differ in bytes, never visibly: the decoded clips agree to within codec noise.
        shipped_clip = load_clip(sample.video, frames, size, size)[0].astype(np.int16)
        fresh_clip = load_clip(fresh / sample.video.name, frames, size, size)[0].astype(np.int16)
        assert np.abs(shipped_clip - fresh_clip).mean() < 1.0


def test_exemplar_variety_takes_turns_over_square_pairs_and_leaves_cyan_magenta_circles_triangles_unseen():
    scenes = examples.exemplar_scenes("orbits", count=5, pairs=3)
    phrases = [(s.subject1.phrase, s.subject2.phrase) for s in scenes]
    assert phrases == [("red square", "blue square"), ("yellow square", "green square"),
                       ("blue square", "red square"), ("red square", "blue square"), ("yellow square", "green square")]
    # A larger pair count changes the subjects, never the paths: the scene seeds are the one-pair ones.
    assert [s.seed for s in scenes] == [s.seed for s in examples.exemplar_scenes("orbits", count=5, pairs=1)]
    every = {subject for pair in examples.EXEMPLAR_PAIRS for subject in pair}
    assert {s.colour for s in every} == {"red", "blue", "yellow", "green"} and {s.shape for s in every} == {"square"}
    assert len(set(examples.EXEMPLAR_PAIRS)) == 12
    with pytest.raises(ValueError, match="pairs must be between 1 and 12"):
        examples.exemplar_scenes("orbits", pairs=13)


def test_unseen_prompts_name_only_colours_and_shapes_no_exemplar_shows():
    subjects = {subject for pair in examples.EXEMPLAR_PAIRS[:4] for subject in pair}
    prompts = examples.unseen_prompts("orbits", tuple(subjects), count=10, seed=0)
    # Squares of red, blue, yellow and green leave cyan and magenta circles and triangles: 2 x 2 x 2 = 8 prompts.
    assert len({prompt for prompt, _, _ in prompts}) == 8
    for prompt, first, second in prompts:
        assert {first.colour, second.colour} == {"cyan", "magenta"} and {first.shape, second.shape} <= {"circle", "triangle"}
        assert prompt == f"A {first.colour} {first.shape} orbits a {second.colour} {second.shape}."
    assert examples.unseen_prompts("orbits", tuple(subjects), 10, 0) == prompts
    with pytest.raises(ValueError, match="too many colours or shapes"):
        examples.unseen_prompts("orbits", (Subject("circle", "red"), Subject("triangle", "blue"), Subject("square", "green")), 1, 0)
