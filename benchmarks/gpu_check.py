"""The prepared GPU check: training and generation cost of full-size base models under each memory preset.

For each model (Mochi-1, Wan 2.1 1.3B, Wan 2.2 TI2V-5B and Wan 2.2 A14B's high-noise expert at full size, random
weights built on the GPU: no download) it runs, each row in its own process so that each peak is its own
(benchmarks/train_step.py does the training rows):
  - DreamRelation training steps at the model's default clip with gradient checkpointing under bf16, fp8 and
    offload: s/step, peak GPU GB, MFU, and the peak our estimate (dreamrelation.models.memory) predicts;
  - a plain-LoRA step under bf16, for the overhead ratio DreamRelation / plain LoRA;
  - two denoising steps of generation (the transformer on CFG's batch of 2, no grad) under bf16: s/step, peak GB.
The A14B expert has no offload row: its 28 GB of bf16 weights would be built in CPU memory and cross PCIe every
step, minutes on their own. On one H200 the whole check must end within 10 minutes: rows run most important first
(every model's bf16 DreamRelation step, then its plain-LoRA step, generation, fp8, offload), each within what is
left of --budget (default 540 s); a row the budget cannot start is reported as not run, one it cuts short as
killed. It writes OUT/gpu_check.json and OUT/gpu_check.md and prints the table. `--preset tiny --device cpu` runs
the same code on tiny models in seconds (what the test suite checks; its Wan 2.2 expert has one row).

The GPU machine is expected to hold only torch: install the other packages from wheels carried beside the
repository first (pip install --no-deps wheels/*.whl); a missing one fails at once with its name.

    PYTHONPATH=. python benchmarks/gpu_check.py --preset full --device cuda --out gpu-check
    PYTHONPATH=. .venv/bin/python benchmarks/gpu_check.py --preset tiny --device cpu --out /tmp/gpu-check
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REQUIRED = ("torch", "diffusers", "transformers", "peft", "accelerate", "pydantic", "safetensors", "yaml")
# (kind, memory) of a row: a = plain-LoRA step, b = DreamRelation step, g = generation; in the table's order.
ROWS = (("b", "bf16"), ("b", "fp8"), ("b", "offload"), ("a", "bf16"), ("g", "bf16"))
NO_OFFLOAD = tuple(row for row in ROWS if row[1] != "offload")
PRIORITY = (("b", "bf16"), ("a", "bf16"), ("g", "bf16"), ("b", "fp8"), ("b", "offload"))  # the order rows run in
TINY_MOCHI = ["--frames", "7", "--height", "32", "--width", "32"]
TINY_WAN = ["--frames", "9", "--height", "32", "--width", "32"]
# (train_step preset, clip flags, rows) per model and check preset; full-size models train at their default clip.
MODELS = {
    "full": {
        "Mochi-1": ("mochi-1", [], ROWS),
        "Wan2.1-1.3B": ("wan2.1-1.3b", [], ROWS),
        "Wan2.2-TI2V-5B": ("wan2.2-5b", [], ROWS),
        "Wan2.2-A14B high": ("wan2.2-a14b-high", [], NO_OFFLOAD),
    },
    "tiny": {
        "Mochi (tiny)": ("small", TINY_MOCHI, ROWS),
        "Wan (tiny)": ("small-wan", TINY_WAN, ROWS),
        # The rows' code is the same for every model: one row covers the Wan 2.2 expert's preset.
        "Wan 2.2 expert (tiny)": ("small-wan22", TINY_WAN, (("b", "bf16"),)),
    },
}
FULL_SIZE_CLIPS = ["Clips: Mochi-1 61x480x848; Wan2.1-1.3B and the Wan2.2-A14B high-noise expert 81x480x832; "
                   "Wan2.2-TI2V-5B 121x704x1280 (its 16x VAE: latents 48x31x44x80)."]
GENERATION_MARKER = "GPU_CHECK_GENERATION "


def missing_packages() -> list[str]:
    """The REQUIRED packages this interpreter cannot import."""
    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line flags of the check (and the internal --generation of one model's generation row)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(MODELS), default="full", help="full-size models or tiny ones.")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda", help="Where to run (default cuda).")
    parser.add_argument("--steps", type=int, default=2, help="Timed training steps per row (default 2).")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed training steps first (default 1).")
    parser.add_argument("--budget", type=float, default=540.0, help="Seconds the rows may take in all (default "
                        "540); rows left when it is spent are reported as not run.")
    parser.add_argument("--out", type=Path, default=Path("gpu-check"), help="Folder of the JSON and the table.")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="Peak for MFU (default: H100 bf16 dense).")
    parser.add_argument("--generation", help=argparse.SUPPRESS)  # internal: time generation of one model
    return parser.parse_args(argv)


def check_machine(args: argparse.Namespace) -> None:
    """Exit with one line when a package or the GPU is missing."""
    if missing := missing_packages():
        sys.exit(f"gpu_check.py: missing packages {', '.join(missing)}: pip install --no-deps wheels/*.whl first")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check.py: --device cuda needs a CUDA GPU and none is visible (use --preset tiny --device cpu)")


@functools.cache
def train_step():
    """benchmarks/train_step.py as a module: its presets, and the child-process protocol every row uses. Imported
    once check_machine has passed (it needs torch and the package)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import train_step as module

    return module


def run_row(args, model: str, row: tuple[str, str], seconds_left: float) -> dict:
    """One row of `model` in its own process, killed after `seconds_left`: a train_step.py configuration, or this
    script's --generation. Its measurements, {"error": ...} or, with no time left, {"not_run": ...}."""
    if seconds_left <= 0:
        return {"not_run": "time budget spent"}
    kind, memory = row
    step_preset, clip, _ = MODELS[args.preset][model]
    if kind == "g":
        command = [sys.executable, str(Path(__file__).resolve()), "--preset", args.preset, "--device", args.device,
                   "--generation", model]
        return train_step().run_marked(command, GENERATION_MARKER, seconds_left)
    command = [sys.executable, str(REPO / "benchmarks" / "train_step.py"), "--preset", step_preset, *clip,
               "--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--memory", memory, "--only", kind]
    return train_step().run_marked(command, train_step().RESULT_MARKER, seconds_left)


def measure_generation(args) -> dict:
    """Two denoising steps: the transformer's forward on CFG's batch of 2 at the model's clip, without grad."""
    import torch

    step = train_step()
    step_preset, clip, _ = MODELS[args.preset][args.generation]
    step_args = step.parse_args(["--preset", step_preset, *clip, "--device", args.device])
    preset = step.PRESETS[step_preset]
    transformer, _ = preset.build(step_args)
    shape = step.latent_shape(step_args, transformer)
    dataset = step.random_dataset(step_args, shape, getattr(transformer.config, preset.family.text_dim_key), 0)
    record = dataset.records[0]
    device, dtype = torch.device(args.device), transformer.dtype
    latents = record["latent_mean"][None].repeat(2, 1, 1, 1, 1).to(device)
    text = record["prompt_embeds"][None].repeat(2, 1, 1).to(device)
    mask = record["prompt_mask"][None].repeat(2, 1).to(device)
    sigmas = torch.full((2,), 0.5, device=device)
    seconds = []
    with torch.no_grad():
        for _ in range(2):
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            preset.spec.training_forward(transformer, latents, torch.randn_like(latents), sigmas, text, mask, dtype)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - started)
    result = {"seconds": seconds, "latent_shape": list(shape)}
    if device.type == "cuda":
        result["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return result


def table(args, results: dict) -> str:
    """The markdown report of every model's rows."""
    lines = ["| model | row | memory | s/step | peak GPU GB | estimated GB | MFU | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    label = {"a": "plain LoRA step", "b": "DreamRelation step", "g": "generation (2 denoising steps)"}
    for model, rows in results.items():
        for row in rows:
            if "not_run" in row or "error" in row:
                what = f"not run: {row['not_run']}" if "not_run" in row else f"failed: {row['error']}"
                wall = f"{row['wall_s']:.0f}" if "wall_s" in row else "-"
                lines.append(f"| {model} | {label[row['kind']]} | {row['memory']} | {what} | | | | {wall} |")
                continue
            seconds = statistics.median(row["seconds"])
            peak = f"{row['peak_gpu_gb']:.1f}" if "peak_gpu_gb" in row else "- (CPU)"
            mfu = (f"{row['model_flops'] / seconds / (args.peak_tflops * 1e12):.1%}"
                   if "model_flops" in row and args.device == "cuda" else "-")
            estimate = f"{row['estimate_gb']:.1f}" if "estimate_gb" in row else "-"
            lines.append(f"| {model} | {label[row['kind']]} | {row['memory']} | {seconds:.3f} | {peak} | {estimate} | "
                         f"{mfu} | {row['wall_s']:.0f} |")
        ok = {(r["kind"], r["memory"]): r for r in rows if "seconds" in r}
        if ("a", "bf16") in ok and ("b", "bf16") in ok:
            ratio = statistics.median(ok[("b", "bf16")]["seconds"]) / statistics.median(ok[("a", "bf16")]["seconds"])
            lines.append(f"| {model} | DreamRelation / plain LoRA (bf16) | | {ratio:.2f}x | | | | |")
    lines += ["", f"{args.preset} models on {args.device}; training rows: {args.warmup} warm-up + {args.steps} timed "
              "steps, median s/step, gradient checkpointing on for the full-size models; peak GPU = "
              f"torch.cuda.max_memory_allocated of the row's own process; estimated = dreamrelation.models.memory's "
              "estimate of the same step (transformer, adapters, activations and its fixed overhead; no encoders: "
              f"the rows feed cached data); MFU against {args.peak_tflops:g} TFLOP/s; --budget {args.budget:g} s.",
              *(FULL_SIZE_CLIPS if args.preset == "full" else []),
              "Targets: Mochi-1 at 61x480x848 <= 40 GB with fp8 and < 3.35 s/step (the reference's, H100); "
              "Wan2.1-1.3B at 81x480x832 <= 20 GB; DreamRelation step <= 1.10x a plain LoRA step."]
    return "\n".join(lines)


def main(argv=None) -> None:
    """Run every row of the preset's models (or, internally, one model's generation) and write the report."""
    args = parse_args(argv)
    check_machine(args)
    if args.generation:
        print(GENERATION_MARKER + json.dumps(measure_generation(args)), flush=True)
        return
    started = time.perf_counter()
    models = MODELS[args.preset]
    measured = {}
    for row in PRIORITY:  # a run the budget cuts short keeps every model's most telling rows
        for model, (_, _, rows) in models.items():
            if row in rows:
                measured[model, row] = run_row(args, model, row, args.budget - (time.perf_counter() - started))
    results = {model: [{**measured[model, row], "kind": row[0], "memory": row[1]} for row in rows]
               for model, (_, _, rows) in models.items()}
    report = table(args, results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(
        {"preset": args.preset, "device": args.device, "wall_s": time.perf_counter() - started, "results": results},
        indent=1))
    (args.out / "gpu_check.md").write_text(report + "\n")
    print(report)
    print(f"\nwrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
