"""Benchmark: what the evaluation loss costs (dreamrelation/train/evaluation.py), as a share of training time.

Trains a relation as the app's default does (a preset, the embedded toy model, a bundled example with its
ground-truth masks) with the evaluation loss at its default interval, and reads the run's progress.jsonl: the
seconds of every step and of every evaluation. Prints a markdown table; the project's target is a share
of at most 5 % at the default interval.

    PYTHONPATH=. .venv/bin/python benchmarks/eval_cost.py
    PYTHONPATH=. .venv/bin/python benchmarks/eval_cost.py --model tiny-random-wan --steps 100
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from dreamrelation.config import EXAMPLES_DIR, TrainConfig
from dreamrelation.presets import TRAINING_PRESETS, preset_run
from dreamrelation.train.progress import read_progress
from dreamrelation.train.trainer import train

TARGET_SHARE = 0.05


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="toy", help="Base model (default: the embedded toy model).")
    parser.add_argument("--example", default="orbits", help="Bundled example dataset (default orbits).")
    parser.add_argument("--preset", choices=list(TRAINING_PRESETS), default="quick", help="Training preset.")
    parser.add_argument("--steps", type=int, help="Steps (default: the preset's).")
    parser.add_argument("--eval-every", type=int, default=TrainConfig.model_fields["eval_every"].default,
                        help="Evaluation interval (default: the setting's default).")
    return parser.parse_args(argv)


def measure(args: argparse.Namespace, output_dir: Path) -> dict:
    """Train once; returns {steps, evaluations, train_s, eval_s, share} from the run's progress.jsonl."""
    overrides = {"model": {"name": args.model}, "data": {"data_dir": str(EXAMPLES_DIR / args.example)},
                 "train": {"output_dir": str(output_dir), "eval_every": args.eval_every}}
    if args.steps is not None:
        overrides["train"]["steps"] = args.steps
    run = preset_run(args.preset, overrides)
    train(run, show_progress=False)
    records = read_progress(output_dir / "progress.jsonl")
    step_seconds = [r["sec_per_step"] for r in records if "sec_per_step" in r]
    eval_seconds = [r["seconds"] for r in records if r.get("event") == "eval"]
    train_s, eval_s = sum(step_seconds), sum(eval_seconds)
    return {"steps": len(step_seconds), "evaluations": len(eval_seconds), "train_s": train_s, "eval_s": eval_s,
            "share": eval_s / (train_s + eval_s)}


def table(args: argparse.Namespace, result: dict) -> str:
    """The markdown table of one measurement."""
    verdict = "holds" if result["share"] <= TARGET_SHARE else "misses"
    return "\n".join([
        "| model | example | preset | steps | eval every | evaluations | training s | evaluation s | share |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {args.model} | {args.example} | {args.preset} | {result['steps']} | {args.eval_every} | "
        f"{result['evaluations']} | {result['train_s']:.1f} | {result['eval_s']:.2f} | {result['share']:.1%} |",
        "",
        f"Target: the evaluation loss at most {TARGET_SHARE:.0%} of training time; {verdict}.",
    ])


def main(argv=None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        print(table(args, measure(args, Path(folder) / "run")))


if __name__ == "__main__":
    main()
