"""What the relation adapters draw, with what the judges read in it: a contact sheet of relation_eval's videos.

Takes a relation_eval run made with --save-videos (its WORK_DIR and JSON) and draws, per video, frames spread over
the clip, the judges' pixel classes of the middle frame (each vocabulary colour as itself, the background grey,
"no colour" black) and both prompted subjects' tracks over the last frame (subject 1 a white line, subject 2 a
black one), under a line with the row, the prompt and the judges' reading (relation, colours, shapes, leak).
Then prints, per row, how often each vocabulary colour shows as a subject (the leak rule), so a
leak or a lost track can be told apart from the judge's own misreading (e.g. blurred cyan read as blue);
benchmarks/vae_colours.py gives what the model's VAE returns for each colour, the best a video can show.

    PYTHONPATH=. python benchmarks/relation_eval.py --save-videos --work-dir W --json W/eval.json ...
    PYTHONPATH=. python benchmarks/contact_sheet.py --work-dir W --json W/eval.json --out docs/contact-sheet.png
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dreamrelation.data.video import probe_video, read_frames
from dreamrelation.toyworld.judges import colours_seen_as_subjects, judge_appearance, judge_relation
from dreamrelation.toyworld.tracking import COLOUR_NAMES, classify_pixels, track_subjects
from dreamrelation.toyworld.world import COLOURS, Subject

FRAMES_SHOWN = 5
LABEL_HEIGHT = 14


def subjects_of(prompt: str) -> tuple[Subject, Subject]:
    """The two subjects a Shapes World caption names ("A yellow circle orbits a cyan triangle.")."""
    words = prompt.lower().rstrip(".").split()
    found = [Subject(words[i + 1], words[i]) for i in range(len(words) - 1) if words[i] in COLOURS
             and words[i + 1] in ("circle", "square", "triangle")]
    return found[0], found[1]


def class_image(labels: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3): classify_pixels' labels of one frame painted (palette colours, -1 grey)."""
    palette = np.array([COLOURS[name] for name in COLOUR_NAMES] + [(128, 128, 128)], np.uint8)
    return palette[np.where(labels < 0, len(COLOUR_NAMES), labels)]


def panel(frames: np.ndarray, first: Subject, second: Subject) -> Image.Image:
    """One video's strip: FRAMES_SHOWN frames, the class map of the middle frame, the tracks over the last."""
    picks = np.linspace(0, len(frames) - 1, FRAMES_SHOWN).round().astype(int)
    tiles = [Image.fromarray(frames[i]) for i in picks]
    tiles.append(Image.fromarray(class_image(classify_pixels(frames[len(frames) // 2:len(frames) // 2 + 1])[0])))
    last = Image.fromarray(frames[-1]).copy()
    draw = ImageDraw.Draw(last)
    tracks = track_subjects(frames, first.colour, second.colour)
    for centres, present, colour in zip(tracks.centres, tracks.present, ("white", "black")):
        points = [tuple(c) for c, p in zip(centres, present) if p]
        if len(points) > 1:
            draw.line(points, fill=colour, width=1)
        for point in points[:1]:
            draw.ellipse([point[0] - 2, point[1] - 2, point[0] + 2, point[1] + 2], outline=colour)
    tiles.append(last)
    side = frames.shape[1]
    strip = Image.new("RGB", (side * len(tiles), side))
    for index, tile in enumerate(tiles):
        strip.paste(tile, (index * side, 0))
    return strip


def reading(frames: np.ndarray, first: Subject, second: Subject, exemplars: list[Subject]) -> str:
    """The judges' reading of a video, in a few words."""
    verdict = judge_relation(frames, first, second)
    appearance = judge_appearance(frames, (first, second), exemplars)
    shapes = ", ".join(f"{colour}: {shape or 'missing'}" for colour, shape in appearance["shapes"].items())
    leak = f"; leak {', '.join(appearance['leaked'])}" if appearance["leak"] else ""
    return f"{verdict.label} ({verdict.confidence:.2f}); {shapes}{leak}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, required=True, help="relation_eval's WORK_DIR (run with --save-videos).")
    parser.add_argument("--json", type=Path, required=True, help="relation_eval's JSON results.")
    parser.add_argument("--out", type=Path, default=Path("docs/contact-sheet.png"), help="The PNG to write.")
    parser.add_argument("--per-group", type=int, default=3, help="Videos per (row, relation, kind) on the sheet.")
    args = parser.parse_args(argv)
    results = json.loads(args.json.read_text())
    strips, census = [], {}
    for row in results["rows"]:
        for relation, exemplar in results["exemplars"].items():
            exemplars = [Subject(*reversed(phrase.split())) for phrase in exemplar["subjects"]]
            for kind in ("unseen", "fit"):
                videos = sorted((args.work_dir / "videos" / row["masks"] / relation / row["row"]).glob(f"seed*/{kind}-*.mp4"))
                for number, path in enumerate(videos):
                    info = probe_video(path)
                    frames = read_frames(path, list(range(info.num_frames)))
                    index = int(path.stem.split("-")[1])
                    prompt = exemplar["prompts"][index] if kind == "unseen" else exemplar["fit_caption"]
                    first, second = subjects_of(prompt)
                    census.setdefault((row["row"], kind), Counter()).update(colours_seen_as_subjects(frames))
                    census[(row["row"], kind)]["(videos)"] += 1
                    if number < args.per_group:
                        label = f"{row['row']} | {kind} | {prompt} -> {reading(frames, first, second, exemplars)}"
                        strips.append((label, panel(frames, first, second)))
    width = max(strip.width for _, strip in strips)
    sheet = Image.new("RGB", (width, sum(strip.height + LABEL_HEIGHT for _, strip in strips)), "white")
    draw, y = ImageDraw.Draw(sheet), 0
    for label, strip in strips:
        draw.text((2, y + 1), label, fill="black")
        sheet.paste(strip, (0, y + LABEL_HEIGHT))
        y += strip.height + LABEL_HEIGHT
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out} ({len(strips)} videos)\n")
    print("| row | kind | videos | " + " | ".join(COLOUR_NAMES) + " |")
    print("|---|---|---|" + "---|" * len(COLOUR_NAMES))
    for (row, kind), counts in census.items():
        shares = " | ".join(f"{counts[name] / counts['(videos)']:.2f}" for name in COLOUR_NAMES)
        print(f"| {row} | {kind} | {counts['(videos)']} | {shares} |")
    print("\n(share of videos in which each vocabulary colour shows as a subject: the leak rule)")


if __name__ == "__main__":
    sys.exit(main())
