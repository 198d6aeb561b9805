"""Shapes World: scenes, rendering, captions, the dataset writer and the judges."""

from __future__ import annotations

import numpy as np
import pytest

from dreamrelation.data.dataset import load_subject_masks, scan_dataset
from dreamrelation.data.video import read_frames, write_video
from dreamrelation.toyworld.captions import PromptSubject, caption, parse_caption, prompt_subjects
from dreamrelation.toyworld.dataset import read_scenes, write_relation_dataset
from dreamrelation.toyworld.judges import (
    NONE,
    confusion_matrix,
    format_confusion,
    judge_appearance,
    judge_relation,
)
from dreamrelation.toyworld.render import render_scene, shape_mask
from dreamrelation.toyworld.tracking import largest_components
from dreamrelation.toyworld.world import (
    COLOURS,
    HELD_OUT_RELATIONS,
    RELATIONS,
    SHAPES,
    Scene,
    Subject,
    half_side,
    sample_scenes,
    trajectories,
)

FRAMES = 25  # 5 latent frames for a Mochi-style VAE (6k + 1 frames)


def _round_trip(frames: np.ndarray, tmp_path) -> np.ndarray:
    """Encode uint8 (F, H, W, 3) frames as H.264 mp4 and decode them again: lossy, as judged videos are."""
    path = write_video(tmp_path / "clip.mp4", frames)
    return read_frames(path, list(range(len(frames))))


def test_vocabulary_and_held_out_relations():
    assert len(SHAPES) >= 3 and len(COLOURS) >= 6 and len(RELATIONS) >= 6
    assert HELD_OUT_RELATIONS == ("orbits", "jumps_over")
    with pytest.raises(ValueError, match="different colours"):
        Scene(Subject("circle", "red"), Subject("square", "red"), "orbits", 0)


@pytest.mark.parametrize("height, width", [(96, 96), (96, 128)])
def test_every_relation_fits_the_frame_at_the_largest_size(height, width):
    big = Subject("square", "red", "large"), Subject("square", "blue", "large")
    for relation in RELATIONS:
        for seed in range(5):
            centres = trajectories(Scene(*big, relation, seed), FRAMES, height, width)
            half = half_side(big[0], height, width)
            assert centres.shape == (2, FRAMES, 2)
            assert (centres - half >= 0).all() and (centres[..., 0] + half <= width).all()
            assert (centres[..., 1] + half <= height).all()
            assert np.array_equal(centres, trajectories(Scene(*big, relation, seed), FRAMES, height, width))


def test_masks_match_the_rendered_pixels():
    for scene in sample_scenes(2 * len(RELATIONS), seed=1):
        frames, masks = render_scene(scene, FRAMES, 96, 96)
        assert frames.dtype == np.uint8 and frames.shape == (FRAMES, 96, 96, 3)
        assert masks.dtype == bool and masks.shape == (2, FRAMES, 96, 96)
        assert not (masks[0] & masks[1]).any()
        for subject, mask in zip((scene.subject1, scene.subject2), masks):
            # Every pixel of the subject's colour is in its mask, and the mask holds nothing else.
            assert np.array_equal((frames == COLOURS[subject.colour]).all(axis=-1), mask), scene


def test_subject_1_occludes_subject_2():
    # Two large squares orbiting: their corners cross on the diagonals.
    scene = Scene(Subject("square", "red", "large"), Subject("square", "blue", "large"), "orbits", 3)
    _, masks = render_scene(scene, FRAMES, 96, 96)
    centres = trajectories(scene, FRAMES, 96, 96)
    half = half_side(scene.subject1, 96, 96)
    drawn = np.stack([[shape_mask("square", c, half, 96, 96) for c in path] for path in centres])
    assert (drawn[0] & drawn[1]).any()
    assert np.array_equal(masks[0], drawn[0]) and np.array_equal(masks[1], drawn[1] & ~drawn[0])


def test_captions_parse_back():
    for relation, record in RELATIONS.items():
        scene = Scene(Subject("circle", "red"), Subject("triangle", "blue"), relation, 0)
        text = caption(scene)
        assert text == f"A red circle {record.verb} a blue triangle."
        assert parse_caption(text) == ("red circle", relation, "blue triangle")
        assert parse_caption(text.upper().rstrip(".")) == ("red circle", relation, "blue triangle")
        assert prompt_subjects(text) == (PromptSubject("red", "circle"), PromptSubject("blue", "triangle"))
    assert prompt_subjects("A cyan square <R> a magenta circle")[1] == PromptSubject("magenta", "circle")
    with pytest.raises(ValueError):
        parse_caption("A red circle dances with a blue triangle.")
    with pytest.raises(ValueError):
        prompt_subjects("A red circle orbits.")


def test_largest_components_keeps_each_frames_biggest_blob():
    mask = np.zeros((3, 8, 8), bool)
    mask[0, :2, :2] = mask[0, 4:, 4:] = True  # 4 and 16 pixels
    mask[1, 0, :] = mask[1, :, 0] = True  # one L-shaped blob
    mask[1, 3, 3] = mask[1, 4, 4] = True  # diagonal neighbours are separate (4-connected)
    kept = largest_components(mask)
    assert np.array_equal(kept[0], np.pad(np.ones((4, 4), bool), ((4, 0), (4, 0))))
    assert kept[1].sum() == 15 and kept[1][0].all() and not kept[1, 3, 3]
    assert not kept[2].any()


def test_relation_judge_accuracy(tmp_path):
    # 10 videos per relation over both backgrounds, three frame sizes and random colours, shapes and sizes,
    # through an mp4 round trip; each judged with the prompt's subjects in order and reversed.
    scenes = sample_scenes(10 * len(RELATIONS), seed=0)
    sizes = [(96, 96), (128, 128), (96, 128)]
    labels, predictions = [], []
    for index, scene in enumerate(scenes):
        frames, _ = render_scene(scene, FRAMES, *sizes[index % len(sizes)])
        decoded = _round_trip(frames, tmp_path)
        swapped = scene.relation if RELATIONS[scene.relation].symmetric else f"{scene.relation} (roles swapped)"
        labels += [scene.relation, swapped]
        predictions += [
            judge_relation(decoded, scene.subject1, scene.subject2).label,
            judge_relation(decoded, scene.subject2, scene.subject1).label,
        ]
    accuracy = np.mean(np.array(labels) == np.array(predictions))
    names, matrix = confusion_matrix(labels, predictions)
    legend = "\n".join(f"{i:>3} {name}" for i, name in enumerate(names))
    assert accuracy >= 0.95, f"accuracy {accuracy:.3f}\n{legend}\n{format_confusion(names, matrix)}"


def test_relation_judge_says_none_without_motion_or_subject(tmp_path):
    scene = Scene(Subject("circle", "red"), Subject("square", "blue"), "orbits", 0)
    frames, _ = render_scene(scene, FRAMES, 96, 96)
    still = np.repeat(frames[:1], FRAMES, axis=0)
    assert judge_relation(still, scene.subject1, scene.subject2).relation == NONE
    assert judge_relation(frames, scene.subject1, PromptSubject("green", "square")).relation == NONE


def test_appearance_judge_flags_missing_colours_wrong_shapes_and_leaks(tmp_path):
    scene = Scene(Subject("circle", "red", "small"), Subject("square", "blue", "small"), "pushes", 4, "textured")
    frames, masks = render_scene(scene, FRAMES, 96, 96)
    prompt = prompt_subjects(caption(scene))
    exemplars = [Subject("triangle", "green"), Subject("triangle", "red")]
    verdict = judge_appearance(_round_trip(frames, tmp_path), prompt, exemplars)
    assert verdict == {
        "colour_ok": True,
        "shape_ok": True,
        "shapes": {"red": "circle", "blue": "square"},
        "leaked": [],
        "leak": False,
    }
    # The exemplar's green replaces the prompted blue.
    recoloured = frames.copy()
    recoloured[masks[1]] = COLOURS["green"]
    verdict = judge_appearance(_round_trip(recoloured, tmp_path), prompt, exemplars)
    assert not verdict["colour_ok"] and verdict["leaked"] == ["green triangle"] and verdict["leak"]
    # The prompted red circle comes out as the exemplar's red triangle.
    triangle = Scene(Subject("triangle", "red", "small"), scene.subject2, "pushes", 4, "textured")
    verdict = judge_appearance(_round_trip(render_scene(triangle, FRAMES, 96, 96)[0], tmp_path), prompt, exemplars)
    assert verdict["colour_ok"] and not verdict["shape_ok"] and verdict["leaked"] == ["red triangle"]


def test_an_exemplar_colour_leaks_as_a_subject_sized_blob_not_as_a_fringe():
    scene = Scene(Subject("circle", "cyan"), Subject("triangle", "magenta"), "approaches", 0)
    frames, _ = render_scene(scene, FRAMES, 96, 96)
    prompt, exemplars = [scene.subject1, scene.subject2], [Subject("square", "blue")]
    # The smallest subject, a small triangle, covers 0.18**2 / 2 of 96**2 pixels: 149.
    fringe, subject = frames.copy(), frames.copy()
    fringe[:, 2:14, 2:14] = COLOURS["blue"]  # 144 pixels on every frame
    subject[:, 2:15, 2:14] = COLOURS["blue"]  # 156
    assert judge_appearance(fringe, prompt, exemplars)["leaked"] == []
    assert judge_appearance(subject, prompt, exemplars)["leaked"] == ["blue square"]
    # On a quarter of the frames it counts, on fewer it does not.
    quarter, fewer = frames.copy(), frames.copy()
    quarter[: -(-FRAMES // 4), 2:15, 2:14] = COLOURS["blue"]
    fewer[: FRAMES // 4 - 1, 2:15, 2:14] = COLOURS["blue"]
    assert judge_appearance(quarter, prompt, exemplars)["leak"]
    assert not judge_appearance(fewer, prompt, exemplars)["leak"]


def test_confusion_matrix_counts_in_relation_order():
    names, matrix = confusion_matrix(["orbits", "approaches", "orbits"], ["orbits", NONE, "jumps_over"])
    assert names == ["approaches", "orbits", "jumps_over", NONE]
    assert matrix.tolist() == [[0, 0, 0, 1], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_written_dataset_loads_with_masks_in_caption_order(tmp_path):
    scenes = sample_scenes(3, seed=2)
    num_frames = 13
    root = write_relation_dataset(tmp_path / "shapes", scenes, num_frames, 96, 96)
    samples = scan_dataset(root)
    assert [s.caption for s in samples] == [caption(scene) for scene in scenes]
    assert list(read_scenes(root).values()) == scenes
    for sample, scene in zip(samples, scenes):
        _, rendered = render_scene(scene, num_frames, 96, 96)
        loaded = load_subject_masks(sample.mask_dir, list(range(num_frames)), 96, 96)
        assert np.array_equal(loaded.astype(bool), rendered)


def test_held_out_colour_pairs_are_symmetric_and_leave_every_colour_in_training():
    from dreamrelation.toyworld.world import COLOURS, HELD_OUT_COLOUR_PAIRS, is_held_out_pair

    assert is_held_out_pair("red", "cyan") and is_held_out_pair("cyan", "red") and not is_held_out_pair("red", "blue")
    for colour in COLOURS:
        partners = [other for other in COLOURS if other != colour and not is_held_out_pair(colour, other)]
        assert len(partners) == len(COLOURS) - 2  # one held-out partner per colour
    assert len(HELD_OUT_COLOUR_PAIRS) == 3


def test_largest_components_breaks_ties_by_raster_order_and_never_joins_frames():
    mask = np.zeros((2, 6, 6), bool)
    mask[0, 4:, :2] = mask[0, :2, 4:] = True  # two 4-pixel blobs: the top-right one comes first row by row
    mask[1, 4:, :2] = True  # where frame 0 had a blob too
    kept = largest_components(mask)
    expected = np.zeros_like(mask)
    expected[0, :2, 4:] = expected[1, 4:, :2] = True
    np.testing.assert_array_equal(kept, expected)
