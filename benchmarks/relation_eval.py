"""Benchmark (issue #4): does a relation LoRA learn a held-out relation from a few videos, and which part of the
method matters? The Shapes World version of the paper's Table 1 and ablations (docs/method.md §7).

For each relation (default: the held-out ones, "orbits" and "jumps_over", which the toy base model never saw):
1. data: write its exemplar videos, 12 taking turns over 4 pairs of red, blue, yellow and green squares
   (dreamrelation.toyworld.examples, the same videos as assets/examples/ at the default settings;
   --exemplar-pairs 1: all of a red square acting on a blue square), with the
   generator's exact masks ('gt') and/or masks made by the basic segmenter ('basic', issue #3) from the videos
   alone; prepared once per setting under WORK_DIR/data and reused (the trainer caches their latents);
2. train each row's relation LoRA on them (a fresh base model per run, so no row sees another's adapters);
3. generate with prompts naming UNSEEN subject pairs (colours and shapes absent from the exemplars, e.g.
   "A magenta circle orbits a cyan triangle."), loading the exported LoRA into a fresh pipeline with stock
   diffusers, several seeds;
4. judge every video (dreamrelation.toyworld.judges): relation accuracy (the right relation with the prompt's
   first subject as the actor), appearance accuracy (both prompted colours present with the prompted shapes)
   and appearance leak (an exemplar subject the prompt did not ask for shows up);
5. and, apart, the fit: the same LoRA prompted with the exemplars' own caption ("A red square orbits a blue
   square."), judged for the relation: a LoRA must reproduce its exemplars' motion before it can carry it anywhere.

A seed is a full replicate: training seed s and generation seeds derived from s, over the same prompts; the
table gives each measure as mean ± standard deviation over seeds (0 with one seed), and the videos judged.

Every run trains as the app's "quick" preset does (dreamrelation.presets: steps, learning rate, method). Rows:
base (no adapter); direct-lora (one adapter on q,k,v,out, plain MSE); dreamrelation (the quick preset's method:
DreamRelation with the additions that won on this model, docs/toy-model.md); paper (the paper's method,
MethodConfig's defaults); and the ablations, each the quick preset's method with one part off: no-hybrid-mask
(mask_loss off); no-contrastive; no-subject-adapters; relation-on-v (relation adapter on V, subject adapters on
Q,K); relation-on-q (relation adapter on Q only). The defaults run base, direct-lora, dreamrelation and paper;
--rows names others. base, direct-lora and no-hybrid-mask do not read masks, so with --masks both they run once
(masks column '-').

    PYTHONPATH=. python benchmarks/relation_eval.py                       # defaults: toy model, ~41 min on 1 core
    PYTHONPATH=. python benchmarks/relation_eval.py --quick               # smoke run: ~1 min on 2 CPU cores
    PYTHONPATH=. python benchmarks/relation_eval.py --rows no-hybrid-mask,no-contrastive,no-subject-adapters
    PYTHONPATH=. python benchmarks/relation_eval.py --rows base,dreamrelation --relations orbits --seeds 1
    PYTHONPATH=. python benchmarks/relation_eval.py --quick --model tiny-random --cache-dir /tmp/cache

Outputs: a markdown table on stdout, and JSON (settings, per-row aggregates, every judged video, basic-mask
quality against the ground truth, timings) at --json, by default WORK_DIR/relation_eval.json. WORK_DIR
(--work-dir) defaults to $TMPDIR/dreamrelation-relation-eval, outside the repository, so a run leaves no
untracked files behind; LoRAs go to WORK_DIR/runs, videos to WORK_DIR/videos with --save-videos.

Timing on the toy model, one torch thread on 2 CPU cores shared with another run: a trained row takes about
4 min per seed for both relations (1600 steps, 24 + 4 videos), the base row 1 min; the defaults (3 trained rows,
3 seeds) about 41 min in all; --quick about 1 min.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from dreamrelation.config import (
    DataConfig,
    GenerateConfig,
    MasksConfig,
    MethodConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    describe_validation_error,
)
from dreamrelation.presets import TRAINING_PRESETS
from dreamrelation.toyworld.captions import caption
from dreamrelation.toyworld.examples import (
    DEFAULT_COUNT,
    DEFAULT_FRAMES,
    DEFAULT_PAIRS,
    DEFAULT_SEED,
    DEFAULT_SIZE,
    exemplar_scenes,
    unseen_prompts,
    write_examples,
)
from dreamrelation.toyworld.world import HELD_OUT_RELATIONS, RELATIONS, Subject, sample_scenes

DATA_VERSION = 1  # bump when the exemplar data would change for the same settings


@dataclass(frozen=True)
class Row:
    """One table row: a name (for --rows), what it is, and its method (None: the base model, no training)."""

    name: str
    label: str
    method: MethodConfig | None
    uses_masks: bool  # False: training never reads the masks, so the row is the same for every mask source


# Every run trains as the app's quick preset does (the recipe that won on this model, docs/toy-model.md); its
# method is the "dreamrelation" row, and the ablations switch one part of it off.
RECIPE = TRAINING_PRESETS["quick"].overrides
_METHOD = RECIPE["method"]
ROWS: dict[str, Row] = {
    row.name: row
    for row in (
        Row("base", "base model (no adapter)", None, False),
        Row("direct-lora", "direct LoRA (q,k,v,out; plain MSE)", MethodConfig(mode="direct-lora"), False),
        Row("dreamrelation", "DreamRelation (the quick preset's recipe)", MethodConfig(**_METHOD), True),
        Row("paper", "DreamRelation (the paper's recipe)", MethodConfig(), True),
        Row("no-hybrid-mask", "w/o hybrid mask", MethodConfig(**_METHOD, mask_loss=False), False),
        Row("no-contrastive", "w/o contrastive loss", MethodConfig(**_METHOD, contrastive=False), True),
        Row("no-subject-adapters", "w/o subject adapters", MethodConfig(**_METHOD, subject_adapters=False), True),
        Row("relation-on-v", "relation on V, subjects on Q,K", MethodConfig(**_METHOD, relation_placement="v"), True),
        Row("relation-on-q", "relation on Q only", MethodConfig(**_METHOD, relation_placement="q"), True),
    )
}
DEFAULT_ROWS = ("base", "direct-lora", "dreamrelation", "paper")
MASK_SOURCES = ("gt", "basic")

# Settings: (default, --quick). --quick is a smoke run of every code path at tiny sizes; an explicit option wins.
SETTINGS = {
    "exemplars": (DEFAULT_COUNT, 3),
    "steps": (RECIPE["train"]["steps"], 20),
    "seeds": (3, 1),
    "prompts_per_relation": (12, 2),
    "fit_prompts": (2, 1),
    "sample_steps": (None, 6),  # None: the model's
    "frames": (DEFAULT_FRAMES, 13),
    "size": (DEFAULT_SIZE, 64),
}


def _with_defaults(text: str, setting: str) -> str:
    """An option's help text with its SETTINGS default and --quick value."""
    default, quick = SETTINGS[setting]
    shown = "the model's" if default is None else default
    return f"{text} ({shown}; quick {quick})."


COLUMNS = ("relation_accuracy", "appearance_accuracy", "appearance_leak", "fit_accuracy")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line and resolve the defaults (--quick's where it is set); exits 2 on a bad value."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy", help="Base model: 'toy', 'tiny-random(-small)' or a pipeline folder.")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda[:N]'.")
    parser.add_argument("--cache-dir", type=Path, help="Model/latent cache (default $DREAMRELATION_CACHE or ~/.cache).")
    parser.add_argument(
        "--work-dir", type=Path, help="Prepared data, LoRAs, videos (default $TMPDIR/dreamrelation-relation-eval)."
    )
    parser.add_argument("--json", type=Path, help="Where the JSON results go (default WORK_DIR/relation_eval.json).")
    parser.add_argument("--relations", default=",".join(HELD_OUT_RELATIONS), help="Comma-separated relations.")
    parser.add_argument("--rows", default=",".join(DEFAULT_ROWS),
                        help=f"Comma-separated subset of: {', '.join(ROWS)} (default {', '.join(DEFAULT_ROWS)}).")
    parser.add_argument("--masks", choices=("gt", "basic", "both"), default="gt", help="Masks the rows train with.")
    parser.add_argument("--exemplars", type=int, help=_with_defaults("Exemplar videos per relation", "exemplars"))
    parser.add_argument("--exemplar-pairs", type=int, default=DEFAULT_PAIRS, help="Subject pairs the exemplar videos "
                        "take turns over (toyworld.examples.EXEMPLAR_PAIRS: squares of red, blue, yellow and green; "
                        f"{DEFAULT_PAIRS}; 1: a red and a blue square).")
    parser.add_argument("--steps", type=int, help=_with_defaults("Training steps per run", "steps"))
    parser.add_argument("--lr", type=float, default=RECIPE["train"]["learning_rate"],
                        help="Training learning rate (the quick preset's).")
    parser.add_argument("--method", type=json.loads, default={}, metavar="JSON",
                        help="MethodConfig fields set on every trained row over its own, for lever sweeps, e.g. "
                             "'{\"lambda_mask\": 5}'.")
    parser.add_argument("--train", type=json.loads, default={}, metavar="JSON",
                        help="TrainConfig fields set on every run, e.g. '{\"sigma_sampling\": \"shifted\"}'.")
    parser.add_argument("--prior-clips", type=int, default=0,
                        help="Prior preservation (docs/method.md §8): N clips the base generates for captions of its "
                        "trained relations with random subjects, mixed into every trained row (TrainConfig.prior_dir; "
                        "--train '{\"prior_share\": ...}' sets their share). 0: off.")
    parser.add_argument("--seeds", type=int, help=_with_defaults("Replicates, seeds 0..N-1", "seeds"))
    parser.add_argument("--prompts-per-relation", type=int,
                        help=_with_defaults("Unseen-subject prompts per relation", "prompts_per_relation"))
    parser.add_argument("--fit-prompts", type=int, help=_with_defaults(
        "Videos per relation and seed on the exemplars' own caption (the fit column)", "fit_prompts"))
    parser.add_argument("--sample-steps", type=int, help=_with_defaults("Denoising steps per video", "sample_steps"))
    parser.add_argument("--guidance", type=float, help="Classifier-free guidance scale (the model's).")
    parser.add_argument("--lora-scale", type=float, default=1.0, help="Strength of the relation LoRA at generation.")
    parser.add_argument("--frames", type=int, help=_with_defaults("Frames per clip, 6k+1", "frames"))
    parser.add_argument("--size", type=int, help=_with_defaults("Frame side in pixels, multiple of 16", "size"))
    parser.add_argument("--data-seed", type=int, default=DEFAULT_SEED, help="Seed of the exemplar scenes and the prompts.")
    parser.add_argument("--save-videos", action="store_true", help="Write every generated video to WORK_DIR/videos.")
    parser.add_argument("--quick", action="store_true", help="Few steps, 1 seed, tiny sizes: a minutes-long smoke run.")
    args = parser.parse_args(argv)
    for name, (default, quick) in SETTINGS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else default)
    args.relations = [name.strip() for name in args.relations.split(",") if name.strip()]
    args.rows = [name.strip() for name in args.rows.split(",") if name.strip()]
    unknown = [r for r in args.relations if r not in RELATIONS] + [r for r in args.rows if r not in ROWS]
    if unknown:
        parser.error(
            f"unknown relation or row {unknown[0]!r}; relations: {', '.join(RELATIONS)}; rows: {', '.join(ROWS)}"
        )
    if not args.relations or not args.rows:
        parser.error("name at least one relation and one row")
    for name in ("exemplars", "steps", "seeds", "prompts_per_relation", "fit_prompts"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.sample_steps is not None and args.sample_steps < 2:
        parser.error("--sample-steps must be at least 2 (diffusers' Mochi pipeline needs 2)")
    if (args.frames - 1) % 6 or args.frames < 7 or args.size % 16 or args.size < 32:
        parser.error("--frames must be 6k+1 (at least 7) and --size a multiple of 16 (at least 32)")
    try:
        MethodConfig.model_validate(args.method)
        TrainConfig.model_validate(args.train)
    except ValidationError as error:
        parser.error(f"--method / --train: {describe_validation_error(error)}")
    args.mask_sources = list(MASK_SOURCES) if args.masks == "both" else [args.masks]
    args.work_dir = args.work_dir or Path(tempfile.gettempdir()) / "dreamrelation-relation-eval"
    args.json = args.json or args.work_dir / "relation_eval.json"
    return args


# ---------------------------------------------------------------------------------------------------- data


def _copy_videos_and_captions(source: Path, target: Path) -> None:
    """Copy a dataset folder's videos, captions and scenes.json (not its masks) into `target`."""
    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file():
            shutil.copy2(path, target / path.name)


def mask_quality(gt_dir: Path, basic_dir: Path, num_frames: int, size: int) -> dict:
    """Compare a folder's basic-segmenter masks with its ground truth, as the trainer reads both.

    Returns {"iou": mean IoU over videos and both subjects in the trainer's subject order, "iou_any_order":
    the same with each video's better subject order, "order_as_captioned": videos whose subject 1 mask is
    the caption's subject 1, "videos": count}.
    """
    from dreamrelation.data.dataset import load_subject_masks, scan_dataset
    from dreamrelation.masks.quality import mask_iou as iou

    kept, best, ordered = [], [], 0
    for sample in scan_dataset(basic_dir):
        indices = list(range(num_frames))
        gt = load_subject_masks(gt_dir / "masks" / sample.name, indices, size, size) > 0.5
        basic = load_subject_masks(sample.mask_dir, indices, size, size) > 0.5
        straight = (iou(gt[0], basic[0]) + iou(gt[1], basic[1])) / 2
        swapped = (iou(gt[0], basic[1]) + iou(gt[1], basic[0])) / 2
        kept.append(straight)
        best.append(max(straight, swapped))
        ordered += straight >= swapped
    return {"iou": float(np.mean(kept)), "iou_any_order": float(np.mean(best)), "order_as_captioned": int(ordered),
            "videos": len(kept)}


def prepare_data(args, relation: str) -> dict:
    """Write (or reuse) one relation's exemplar datasets for every mask source the run needs.

    Returns {"dirs": {mask source: dataset folder}, "subjects": every exemplar Subject, "fit": (the first
    exemplar's caption, its subject 1, its subject 2), "captions": [...],
    "mask_quality": mask_quality(...) or None}. A folder is built in a staging folder and renamed when
    complete, so a reused folder is always whole; its name holds every setting it depends on.
    """
    from dreamrelation.masks.pipeline import make_masks

    key = (f"{relation}-x{args.exemplars}-p{args.exemplar_pairs}-f{args.frames}-s{args.size}-seed{args.data_seed}"
           f"-v{DATA_VERSION}")
    root = args.work_dir / "data" / key
    gt_dir = root / "gt"
    if not gt_dir.is_dir():
        write_examples(gt_dir, relation, args.exemplars, args.frames, args.size, args.data_seed, args.exemplar_pairs)
    dirs = {"gt": gt_dir}
    quality = None
    if "basic" in args.mask_sources:
        basic_dir = root / "basic"
        if not basic_dir.is_dir():
            staging = Path(tempfile.mkdtemp(dir=root, prefix=".basic-"))
            shutil.rmtree(staging)
            try:
                _copy_videos_and_captions(gt_dir, staging)
                failed = [r for r in make_masks(staging, MasksConfig(engine="basic")) if r.error]
                if failed:
                    raise RuntimeError(f"basic segmenter failed on {failed[0].name}: {failed[0].error}")
                staging.rename(basic_dir)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        dirs["basic"] = basic_dir
        quality = mask_quality(gt_dir, basic_dir, args.frames, args.size)
    scenes = exemplar_scenes(relation, args.exemplars, args.data_seed, args.exemplar_pairs)
    return {
        "dirs": dirs,
        "subjects": tuple(dict.fromkeys(subject for scene in scenes for subject in (scene.subject1, scene.subject2))),
        "fit": (caption(scenes[0]), scenes[0].subject1, scenes[0].subject2),
        "captions": sorted({caption(scene) for scene in scenes}),
        "mask_quality": quality,
    }


def prepare_prior(args) -> Path:
    """Write (or reuse) the prior-preservation clips: the base model's own videos of --prior-clips captions of its
    trained relations with random subject pairs (drawn from --data-seed + 1). Returns their folder."""
    from dreamrelation.models.base import ClipShape
    from dreamrelation.toyworld.world import TRAINED_RELATIONS
    from dreamrelation.train.prior import write_prior_clips

    folder = args.work_dir / "prior" / f"n{args.prior_clips}-f{args.frames}-s{args.size}-seed{args.data_seed}"
    captions = [caption(scene) for scene in sample_scenes(args.prior_clips, args.data_seed + 1, TRAINED_RELATIONS)]
    shape = ClipShape(num_frames=args.frames, height=args.size, width=args.size, fps=24)
    return write_prior_clips(load_fresh(args), captions, folder, shape, seed=args.data_seed,
                             steps=args.sample_steps, guidance_scale=args.guidance)


# ------------------------------------------------------------------------------------------- train + judge


def model_config(args) -> ModelConfig:
    """The base model's settings for every load of this run."""
    fields = {"name": args.model, "device": args.device}
    if args.cache_dir is not None:
        fields["cache_dir"] = args.cache_dir
    return ModelConfig(**fields)


def load_fresh(args):
    """A freshly loaded base pipeline (no adapters), its progress bar off."""
    from dreamrelation.models import load_model

    loaded = load_model(model_config(args))
    loaded.pipe.set_progress_bar_config(disable=True)
    return loaded


def row_method(args, row: Row) -> MethodConfig:
    """A trained row's MethodConfig with --method's fields set over its own (validated)."""
    return MethodConfig.model_validate({**row.method.model_dump(), **args.method})


def train_row(args, row: Row, data_dir: Path, output_dir: Path, seed: int) -> Path:
    """Train one row's relation LoRA on one dataset with training seed `seed`; returns the exported LoRA file."""
    from dreamrelation.train.trainer import train

    shutil.rmtree(output_dir, ignore_errors=True)
    run = RunConfig(
        model=model_config(args),
        data=DataConfig(data_dir=data_dir, num_frames=args.frames, height=args.size, width=args.size),
        method=row_method(args, row),
        train=TrainConfig(
            output_dir=output_dir,
            steps=args.steps,
            learning_rate=args.lr,
            seed=seed,
            checkpoint_every=args.steps,
            keep_checkpoints=1,
            **args.train,
        ),
    )
    return train(run, show_progress=False).lora_path


def judge_video(frames: np.ndarray, relation: str, first: Subject, second: Subject, exemplar_subjects) -> dict:
    """Score one generated video: the relation verdict (roles included) and the appearance checks."""
    from dreamrelation.toyworld.judges import judge_appearance, judge_relation

    verdict = judge_relation(frames, first, second)
    appearance = judge_appearance(frames, (first, second), exemplar_subjects)
    return {
        "verdict": verdict.label,
        "confidence": round(float(verdict.confidence), 4),
        "relation_ok": verdict.relation == relation and verdict.roles_match,
        "colour_ok": bool(appearance["colour_ok"]),
        "shape_ok": bool(appearance["shape_ok"]),
        "appearance_ok": bool(appearance["colour_ok"] and appearance["shape_ok"]),
        "leaked": list(appearance["leaked"]),
        "leak": bool(appearance["leak"]),
    }


def generate_and_judge(
    args, loaded, relation: str, prompts, seed: int, exemplar_subjects, video_dir: Path | None, kind: str = "unseen"
) -> list[dict]:
    """Generate every prompt once with generation seed 1000*seed + prompt index (+ 500 for kind 'fit', the
    exemplars' own caption); returns one record per video, its "kind" set."""
    from dreamrelation.generate import render

    records = []
    for index, (prompt, first, second) in enumerate(prompts):
        request = GenerateConfig(
            prompt=prompt, seed=1000 * seed + index + (500 if kind == "fit" else 0), steps=args.sample_steps,
            guidance_scale=args.guidance, num_frames=args.frames, height=args.size, width=args.size,
        )
        frames = render(loaded, request)
        if video_dir is not None:
            from dreamrelation.data.video import write_video

            write_video(video_dir / f"{kind}-{index:02d}.mp4", frames, fps=24)
        record = {"kind": kind, "relation": relation, "seed": seed, "prompt": prompt, "generation_seed": request.seed}
        records.append(record | judge_video(frames, relation, first, second, exemplar_subjects))
    return records


# ------------------------------------------------------------------------------------------------- report


def _mean_spread(values: Sequence[float]) -> dict:
    """{"mean", "spread" (sample standard deviation; 0 for one value), "per_seed"} of per-seed values."""
    values = [float(v) for v in values]
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "spread": spread, "per_seed": values}


def aggregate(records: list[dict], seeds: Sequence[int], relations: Sequence[str]) -> dict:
    """Per-seed means of the measures on unseen-subject prompts (and relation accuracy per relation) and of the
    fit (relation accuracy on the exemplars' own caption), then mean ± spread over seeds."""
    def per_seed(key: str, keep=lambda r: True, kind: str = "unseen") -> list[float]:
        means = []
        for seed in seeds:
            chosen = [r[key] for r in records if r["seed"] == seed and r["kind"] == kind and keep(r)]
            means.append(float(np.mean(chosen)) if chosen else float("nan"))
        return means

    return {
        "relation_accuracy": _mean_spread(per_seed("relation_ok")),
        "appearance_accuracy": _mean_spread(per_seed("appearance_ok")),
        "appearance_leak": _mean_spread(per_seed("leak")),
        "fit_accuracy": _mean_spread(per_seed("relation_ok", kind="fit")),
        "relation_accuracy_by_relation": {
            relation: _mean_spread(per_seed("relation_ok", lambda r, rel=relation: r["relation"] == rel))
            for relation in relations
        },
        "videos": sum(r["kind"] == "unseen" for r in records),
        "fit_videos": sum(r["kind"] == "fit" for r in records),
    }


def _cell(stat: dict) -> str:
    return f"{stat['mean']:.2f} ± {stat['spread']:.2f}"


def format_table(results: list[dict], args, header: str) -> str:
    """The markdown table: one line per (row, masks) with every measure as mean ± spread and the video count."""
    relation_columns = [f"rel. acc. {relation}" for relation in args.relations]
    columns = ["row", "masks", "relation acc. (roles)", *relation_columns, "appearance acc.", "appearance leak",
               "fit (exemplar caption)", "videos"]
    lines = [header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for result in results:
        stats = result["metrics"]
        cells = [
            result["label"],
            result["masks"],
            _cell(stats["relation_accuracy"]),
            *(_cell(stats["relation_accuracy_by_relation"][relation]) for relation in args.relations),
            _cell(stats["appearance_accuracy"]),
            _cell(stats["appearance_leak"]),
            _cell(stats["fit_accuracy"]),
            f"{stats['videos']} + {stats['fit_videos']}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def settings_line(args, exemplar_subjects: dict[str, Sequence[str]]) -> str:
    """The run's settings in one line, for the table header; `exemplar_subjects`: {relation: subject phrases}."""
    pairs = "; ".join(f"{r}: {' / '.join(exemplar_subjects[r])}" for r in args.relations)
    return (
        f"**relation_eval** — model `{args.model}`; relations {', '.join(args.relations)}; {args.exemplars} exemplar "
        f"videos each ({pairs}); masks {args.masks}; {args.steps} training steps at lr {args.lr:g}"
        f"{''.join(f'; {k} {v}' for k, v in {**args.method, **args.train}.items())}; seeds "
        f"0..{args.seeds - 1}; {args.prompts_per_relation} unseen-subject prompts per relation (+ {args.fit_prompts} "
        f"on the exemplars' caption for the fit); {args.frames} frames "
        f"at {args.size}x{args.size}; {args.sample_steps} sampling steps, CFG {args.guidance:g}, LoRA scale "
        f"{args.lora_scale:g}. ± = standard deviation over seeds."
    )


# --------------------------------------------------------------------------------------------------- main


def plan(args) -> list[tuple[Row, str]]:
    """(row, mask source) pairs to run, in table order; rows that read no masks run once with masks '-'."""
    pairs = []
    for name in args.rows:
        row = ROWS[name]
        pairs += [(row, masks) for masks in args.mask_sources] if row.uses_masks else [(row, "-")]
    return pairs


def _quiet() -> None:
    """Silence progress bars and library warnings that would bury the progress lines."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def run(args) -> dict:
    """Prepare the data, train and judge every (row, masks, seed, relation); returns the JSON-ready results."""
    from dreamrelation.generate import relation_lora
    from dreamrelation.models import resolve_model

    _quiet()
    started = time.perf_counter()
    # A missing model fails now, not after the data is prepared; its defaults fill the sampling left unset.
    generation = resolve_model(model_config(args)).generation.resolve(args.sample_steps, args.guidance)
    args.sample_steps, args.guidance = generation.steps, generation.guidance_scale
    args.work_dir.mkdir(parents=True, exist_ok=True)
    data = {relation: prepare_data(args, relation) for relation in args.relations}
    if args.prior_clips:
        args.train = {**args.train, "prior_dir": str(prepare_prior(args))}
    prompts = {
        relation: unseen_prompts(relation, data[relation]["subjects"], args.prompts_per_relation, args.data_seed)
        for relation in args.relations
    }
    seeds = list(range(args.seeds))
    units = [(row, masks, seed, relation) for row, masks in plan(args) for seed in seeds for relation in args.relations]
    records: dict[tuple[str, str], list[dict]] = {}
    timings: dict[tuple[str, str], dict[str, float]] = {}
    base = None
    for done, (row, masks, seed, relation) in enumerate(units, 1):
        key = (row.name, masks)
        timing = timings.setdefault(key, {"train_s": 0.0, "generate_s": 0.0})
        tick = time.perf_counter()
        if row.method is None:
            base = base or load_fresh(args)  # never modified: rendering adds no adapter
            loaded = base
        else:
            output_dir = args.work_dir / "runs" / masks / relation / row.name / f"seed{seed}"
            lora = train_row(args, row, data[relation]["dirs"]["gt" if masks == "-" else masks], output_dir, seed)
            timing["train_s"] += time.perf_counter() - tick
            tick = time.perf_counter()
            loaded = load_fresh(args)
        video_dir = args.work_dir / "videos" / masks / relation / row.name / f"seed{seed}" if args.save_videos else None
        exemplar_subjects = data[relation]["subjects"]
        with relation_lora(loaded, None if row.method is None else {"transformer": lora}, args.lora_scale):
            found = generate_and_judge(args, loaded, relation, prompts[relation], seed, exemplar_subjects, video_dir)
            fit = [data[relation]["fit"]] * args.fit_prompts
            found += generate_and_judge(args, loaded, relation, fit, seed, exemplar_subjects, video_dir, kind="fit")
        timing["generate_s"] += time.perf_counter() - tick
        records.setdefault(key, []).extend(found)
        del loaded  # a trained row's pipeline is freed before the next loads (gc.collect() would cost 0.3 s a row)
        elapsed = time.perf_counter() - started
        eta = elapsed / done * (len(units) - done)
        accuracy = np.mean([r["relation_ok"] for r in found if r["kind"] == "unseen"])
        print(f"[{done}/{len(units)}] {row.name} masks={masks} seed={seed} {relation}: relation acc. {accuracy:.2f} "
              f"({elapsed:.0f} s elapsed, ~{eta:.0f} s left)", file=sys.stderr, flush=True)

    results = []
    for row, masks in plan(args):
        found = records[(row.name, masks)]
        results.append({
            "row": row.name, "label": row.label, "masks": masks,
            "method": row_method(args, row).model_dump(mode="json") if row.method else None,
            "metrics": aggregate(found, seeds, args.relations),
            "seconds": {k: round(v, 2) for k, v in timings[(row.name, masks)].items()},
            "videos": found,
        })
    settings = {
        key: (str(value) if isinstance(value, Path) else value)
        for key, value in vars(args).items()
        if key not in ("mask_sources",)
    }
    return {
        "settings": settings,
        "columns": list(COLUMNS),
        "exemplars": {
            relation: {
                "subjects": [s.phrase for s in data[relation]["subjects"]],
                "captions": data[relation]["captions"],
                "fit_caption": data[relation]["fit"][0],
                "prompts": [p for p, _, _ in prompts[relation]],
                "basic_mask_quality": data[relation]["mask_quality"],
            }
            for relation in args.relations
        },
        "rows": results,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark, print the markdown table, write the JSON; returns the results."""
    from dreamrelation.models import ModelLoadError

    args = parse_args(argv)
    try:
        results = run(args)
    except ModelLoadError as error:
        print(f"relation_eval: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    subjects = {relation: info["subjects"] for relation, info in results["exemplars"].items()}
    print(format_table(results["rows"], args, settings_line(args, subjects)))
    print()
    for relation, info in results["exemplars"].items():
        quality = info["basic_mask_quality"]
        if quality:
            print(f"basic masks vs ground truth, {relation}: IoU {quality['iou']:.2f} in the trainer's subject order "
                  f"({quality['iou_any_order']:.2f} in the better order); subject 1 is the caption's actor in "
                  f"{quality['order_as_captioned']}/{quality['videos']} videos")
    print(f"{results['elapsed_s']:.0f} s in all; JSON: {args.json}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
