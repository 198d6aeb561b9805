"""Write Shapes World scenes as a ready relation dataset folder (the layout of dreamrelation.data.dataset).

Per scene: NAME.mp4, NAME.txt (its caption) and masks/NAME/frame<N>.png with subjects.json, subject 1 (the
caption's first subject) in MASK_COLOURS[0]. scenes.json records every scene so a folder can be re-rendered
or judged against its ground truth.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from dreamrelation.data.dataset import write_subject_masks
from dreamrelation.data.video import write_video
from dreamrelation.toyworld.captions import caption
from dreamrelation.toyworld.render import render_scene
from dreamrelation.toyworld.world import Scene, Subject

MASK_COLOURS = ((255, 0, 0), (0, 255, 0))
MANIFEST = "scenes.json"


def write_relation_dataset(
    root: str | Path, scenes: Sequence[Scene], num_frames: int, height: int, width: int, fps: int = 24
) -> Path:
    """Render scenes into a relation dataset folder that scan_dataset accepts.

    Takes the folder (created if needed), the scenes, and each video's frame count, even height and width,
    and frame rate. Names the samples NNNN_RELATION in scene order. Writes the videos, captions, masks
    (subject order = caption order, recorded in each subjects.json) and scenes.json ({name: scene fields}).
    Returns the folder.
    """
    root = Path(root)
    manifest = {}
    for index, scene in enumerate(scenes):
        name = f"{index:04d}_{scene.relation}"
        frames, masks = render_scene(scene, num_frames, height, width)
        write_video(root / f"{name}.mp4", frames, fps)
        (root / f"{name}.txt").write_text(caption(scene) + "\n", encoding="utf-8")
        write_subject_masks(root / "masks" / name, masks, first_index=0, colors=MASK_COLOURS)
        manifest[name] = asdict(scene)
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return root


def read_scenes(root: str | Path) -> dict[str, Scene]:
    """Read back the scenes a write_relation_dataset folder holds: {sample name: Scene}, in name order."""
    manifest = json.loads((Path(root) / MANIFEST).read_text(encoding="utf-8"))
    return {
        name: Scene(**{**fields, "subject1": Subject(**fields["subject1"]), "subject2": Subject(**fields["subject2"])})
        for name, fields in sorted(manifest.items())
    }
