"""Benchmark: time to the first training step and peak memory of a real training run, cold and warm latent cache.

Runs dreamrelation.train.trainer.train on a tiny model on the CPU twice with the same cache folder, each run in its
own process so that each peak RSS is its own:
  cold  the cache holds no latents: the text encoder and the VAE load and encode every clip and caption;
  warm  the same run again: every clip and caption comes from the cache, and the encoders never load.
The model is built (saved once in the cache folder) before either run, so cold pays for encoding, not building.
Time to first step runs from the call of train() to its first on_step event: loading the model, preparing the data
(encoding, or reading the cache), adding the adapters. "Encoders loaded" is what the run's pipeline holds once it
is done (the trainer loads the text encoder and the VAE only when a clip is missing from the cache); "clips
encoded" is TrainResult.encoded_clips. It prints a markdown table.

Run from the repository root:
  PYTHONPATH=. .venv/bin/python benchmarks/cache_warmth.py
  PYTHONPATH=. .venv/bin/python benchmarks/cache_warmth.py --model tiny-random-wan22-5b --size 64
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import run_marked  # noqa: E402  (the child-process protocol of the benchmarks)

RUNS = ("cold", "warm")  # in this order, on one cache folder
RESULT_MARKER = "CACHE_WARMTH_RESULT "


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags: the model, the toy-world data's size, the steps and the work folder."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-random-wan22", help="A model the trainer takes; built in code "
                        "like the tiny-random ones, so nothing downloads (default tiny-random-wan22).")
    parser.add_argument("--videos", type=int, default=4, help="Toy-world videos in the dataset (default 4).")
    parser.add_argument("--frames", type=int, default=13, help="Frames per clip, the model's rule (default 13).")
    parser.add_argument("--size", type=int, default=64, help="Clip height and width in pixels (default 64).")
    parser.add_argument("--steps", type=int, default=3, help="Training steps per run (default 3).")
    parser.add_argument("--work", type=Path, help="An empty or new folder for the data, the cache and the runs "
                        "(default: a temporary folder, removed afterwards).")
    # Internal: one run in this process, its measurements printed as JSON.
    parser.add_argument("--run", choices=RUNS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def model_config(args: argparse.Namespace, work: Path):
    """The ModelConfig every run in `work` uses: the model on the CPU, with its cache (built model, latents) there."""
    from dreamrelation.config import ModelConfig

    return ModelConfig(name=args.model, device="cpu", cache_dir=work / "cache")


def run_config(args: argparse.Namespace, work: Path):
    """The RunConfig of the run named args.run in `work`: every run shares the data and the cache folder."""
    from dreamrelation.config import DataConfig, RunConfig, TrainConfig

    return RunConfig(
        model=model_config(args, work),
        data=DataConfig(data_dir=work / "data", num_frames=args.frames, height=args.size, width=args.size),
        train=TrainConfig(output_dir=work / args.run, steps=args.steps),
    )


def measure(args: argparse.Namespace) -> dict:
    """Run train() once in this process; returns seconds to its first step and in all, clips encoded, the
    encoders its pipeline holds at the end, and max RSS before the call and at the end (MB)."""
    from dreamrelation.models import ENCODERS
    from dreamrelation.train import trainer
    from dreamrelation.train.callbacks import TrainerCallback

    pipes = []
    load_model = trainer.load_model

    def recording_load(*positional, **keywords):
        loaded = load_model(*positional, **keywords)
        pipes.append(loaded.pipe)  # kept to see afterwards which components the run ever loaded
        return loaded

    trainer.load_model = recording_load  # this process makes one run: nothing else calls it

    class FirstStep(TrainerCallback):
        at: float | None = None

        def on_step(self, report) -> None:
            self.at = self.at or time.perf_counter()

    first = FirstStep()
    run = run_config(args, args.work)
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    started = time.perf_counter()
    result = trainer.train(run, show_progress=False, callbacks=[first])
    finished = time.perf_counter()
    return {
        "run": args.run,
        "first_step_s": first.at - started,
        "train_s": finished - started,
        "encoded": result.encoded_clips,
        "encoders": [name for name in ENCODERS if getattr(pipes[0], name, None) is not None],
        "rss_start_mb": rss_start,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def prepare(args: argparse.Namespace, work: Path) -> None:
    """Write the toy-world dataset into `work` and build the model in its cache (before either run is timed)."""
    from dreamrelation.models import resolve_folder
    from dreamrelation.toyworld.dataset import write_relation_dataset
    from dreamrelation.toyworld.world import sample_scenes

    write_relation_dataset(work / "data", sample_scenes(args.videos, seed=0), args.frames, args.size, args.size)
    resolve_folder(model_config(args, work))


def table(args: argparse.Namespace, results: list[dict]) -> str:
    """The markdown report: one row per run, the warm/cold ratios and a footer saying what was measured."""
    import torch

    rows = [["cache", "time to first step s", f"run s ({args.steps} steps)", "clips encoded", "encoders loaded",
             "max RSS before train() MB", "peak RSS MB"]]
    rows.append(["---"] * len(rows[0]))
    for r in results:
        rows.append([r["run"], f"{r['first_step_s']:.2f}", f"{r['train_s']:.2f}", str(r["encoded"]),
                     ", ".join(r["encoders"]) or "none", f"{r['rss_start_mb']:.0f}", f"{r['peak_rss_mb']:.0f}"])
    cold, warm = results
    rows.append(["warm/cold", f"{warm['first_step_s'] / cold['first_step_s']:.2f}",
                 f"{warm['train_s'] / cold['train_s']:.2f}", "", "", "",
                 f"{warm['peak_rss_mb'] / cold['peak_rss_mb']:.2f}"])
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    lines += [
        "",
        f"{args.model} on cpu ({torch.get_num_threads()} CPU threads), {args.videos} toy-world videos of "
        f"{args.frames} frames at {args.size}x{args.size}, the trainer's defaults otherwise; each run in its own "
        "process on one cache folder, the model built before both. Time to first step = train() called to its "
        "first on_step event. RSS = the process's ru_maxrss (Python and imports included).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Measure one run (--run) or prepare a work folder and measure both, each in a subprocess; print the table."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.run:
        print(RESULT_MARKER + json.dumps(measure(args)), flush=True)
        return
    if args.work is not None and args.work.exists() and any(args.work.iterdir()):
        sys.exit(f"cache_warmth.py: --work {args.work} is not empty; a cold run needs an empty cache")
    with nullcontext(args.work) if args.work else tempfile.TemporaryDirectory(prefix="cache-warmth-") as folder:
        work = Path(folder)
        work.mkdir(parents=True, exist_ok=True)
        prepare(args, work)
        results = []
        for name in RUNS:
            command = [sys.executable, os.path.abspath(__file__), *argv, "--work", str(work), "--run", name]
            result = run_marked(command, RESULT_MARKER)
            if "error" in result:
                sys.exit(f"cache_warmth.py: the {name} run failed: {result['error']}")
            results.append(result)
    print(table(args, results))


if __name__ == "__main__":
    main()
