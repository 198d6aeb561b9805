"""The prepared GPU check: training and generation cost of full-size base models under each memory preset.

For each family (Mochi-1 and Wan 2.1 1.3B at full size, random weights built on the GPU: no download) it runs, each
in its own process so that each peak is its own (benchmarks/train_step.py does the training rows):
  - DreamRelation training steps at the family's default clip with gradient checkpointing under bf16, fp8 and
    offload: s/step, peak GPU GB, MFU, and the peak our estimate (dreamrelation.models.memory) predicts;
  - a plain-LoRA step under bf16, for the overhead ratio DreamRelation / plain LoRA;
  - two denoising steps of generation (the transformer on CFG's batch of 2, no grad) under bf16: s/step, peak GB.
It writes OUT/gpu_check.json and OUT/gpu_check.md and prints the table. On a GPU it must finish within 8 minutes.
`--preset tiny --device cpu` runs the same code on tiny models in seconds (what the test suite checks).

The GPU machine is expected to hold only torch: install the other packages from wheels carried beside the
repository first (pip install --no-deps wheels/*.whl); a missing one fails at once with its name.

    PYTHONPATH=. python benchmarks/gpu_check.py --preset full --device cuda --out gpu-check
    PYTHONPATH=. .venv/bin/python benchmarks/gpu_check.py --preset tiny --device cpu --out /tmp/gpu-check
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REQUIRED = ("torch", "diffusers", "transformers", "peft", "accelerate", "pydantic", "safetensors", "yaml")
# (train_step preset, clip flags) per family and check preset; tiny clips are 7x32x32 (Mochi) / 9x32x32 (Wan).
FAMILIES = {
    "full": {"Mochi-1": ("mochi-1", []), "Wan2.1-1.3B": ("wan2.1-1.3b", [])},
    "tiny": {
        "Mochi (tiny)": ("small", ["--frames", "7", "--height", "32", "--width", "32"]),
        "Wan (tiny)": ("small-wan", ["--frames", "9", "--height", "32", "--width", "32"]),
    },
}
TRAINING_ROWS = (("b", "bf16"), ("b", "fp8"), ("b", "offload"), ("a", "bf16"))
GENERATION_MARKER = "GPU_CHECK_GENERATION "


def missing_packages() -> list[str]:
    """The REQUIRED packages this interpreter cannot import."""
    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(FAMILIES), default="full", help="full-size models or tiny ones.")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda", help="Where to run (default cuda).")
    parser.add_argument("--steps", type=int, default=3, help="Timed training steps per row (default 3).")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed training steps first (default 1).")
    parser.add_argument("--out", type=Path, default=Path("gpu-check"), help="Folder of the JSON and the table.")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="Peak for MFU (default: H100 bf16 dense).")
    parser.add_argument("--generation", help=argparse.SUPPRESS)  # internal: time generation of one family
    return parser.parse_args(argv)


def check_machine(args: argparse.Namespace) -> None:
    """Exit with one line when a package or the GPU is missing."""
    if missing := missing_packages():
        sys.exit(f"gpu_check.py: missing packages {', '.join(missing)}: pip install --no-deps wheels/*.whl first")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check.py: --device cuda needs a CUDA GPU and none is visible (use --preset tiny --device cpu)")


def environment() -> dict:
    """The PYTHONPATH subprocesses need to import the package from this checkout."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else "")}


def training_row(args, family: str, config: str, memory: str) -> dict:
    """One train_step.py configuration in its own process; its measurements, or {"error": ...}."""
    step_preset, clip = FAMILIES[args.preset][family]
    command = [sys.executable, str(REPO / "benchmarks" / "train_step.py"), "--preset", step_preset, *clip,
               "--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--memory", memory, "--only", config]
    return _run(command, "TRAIN_STEP_RESULT ")


def _run(command: list[str], marker: str) -> dict:
    started = time.perf_counter()
    completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment())
    lines = [line for line in completed.stdout.splitlines() if line.startswith(marker)]
    if completed.returncode != 0 or not lines:
        last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {completed.returncode}: {last[:300]}", "wall_s": time.perf_counter() - started}
    return {**json.loads(lines[-1][len(marker):]), "wall_s": time.perf_counter() - started}


def generation(args, family: str) -> dict:
    """Time two denoising steps of one family in a fresh process (this script with --generation)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--preset", args.preset, "--device", args.device,
               "--generation", family]
    return _run(command, GENERATION_MARKER)


def measure_generation(args) -> dict:
    """Two denoising steps: the transformer's forward on CFG's batch of 2 at the family's clip, without grad."""
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    import train_step

    step_preset, clip = FAMILIES[args.preset][args.generation]
    step_args = train_step.parse_args(["--preset", step_preset, *clip, "--device", args.device])
    preset = train_step.PRESETS[step_preset]
    transformer, _ = preset.build(step_args)
    shape = train_step.latent_shape(step_args, transformer)
    dataset = train_step.random_dataset(step_args, shape, getattr(transformer.config, preset.family.text_dim_key), 0)
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
    """The markdown report of every family's rows."""
    lines = ["| model | row | memory | s/step | peak GPU GB | estimated GB | MFU | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for family, rows in results.items():
        for row in rows:
            label = {"a": "plain LoRA step", "b": "DreamRelation step", "g": "generation (2 denoising steps)"}
            if "error" in row:
                lines.append(f"| {family} | {label[row['kind']]} | {row['memory']} | failed: {row['error']} | | | | "
                             f"{row['wall_s']:.0f} |")
                continue
            seconds = statistics.median(row["seconds"])
            peak = f"{row['peak_gpu_gb']:.1f}" if "peak_gpu_gb" in row else "- (CPU)"
            mfu = (f"{row['model_flops'] / seconds / (args.peak_tflops * 1e12):.1%}"
                   if "model_flops" in row and args.device == "cuda" else "-")
            estimate = f"{row['estimate_gb']:.1f}" if "estimate_gb" in row else "-"
            lines.append(f"| {family} | {label[row['kind']]} | {row['memory']} | {seconds:.3f} | {peak} | {estimate} | "
                         f"{mfu} | {row['wall_s']:.0f} |")
        ok = {(r["kind"], r["memory"]): r for r in rows if "error" not in r}
        if ("a", "bf16") in ok and ("b", "bf16") in ok:
            ratio = statistics.median(ok[("b", "bf16")]["seconds"]) / statistics.median(ok[("a", "bf16")]["seconds"])
            lines.append(f"| {family} | DreamRelation / plain LoRA (bf16) | | {ratio:.2f}x | | | | |")
    lines += ["", f"{args.preset} models on {args.device}; training rows: {args.warmup} warm-up + {args.steps} timed "
              "steps, median s/step, gradient checkpointing on for the full-size models; peak GPU = "
              f"torch.cuda.max_memory_allocated of the row's own process; estimated = dreamrelation.models.memory's "
              "estimate of the same step (transformer, adapters, activations and its fixed overhead; no encoders: "
              f"the rows feed cached data); MFU against {args.peak_tflops:g} TFLOP/s.",
              "Targets: Mochi-1 at 61x480x848 <= 40 GB with fp8 and < 3.35 s/step (the reference's, H100); "
              "Wan2.1-1.3B at 81x480x832 <= 20 GB; DreamRelation step <= 1.10x a plain LoRA step."]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    check_machine(args)
    if args.generation:
        print(GENERATION_MARKER + json.dumps(measure_generation(args)), flush=True)
        return
    started = time.perf_counter()
    results = {}
    for family in FAMILIES[args.preset]:
        rows = [{**training_row(args, family, config, memory), "kind": config, "memory": memory}
                for config, memory in TRAINING_ROWS]
        rows.append({**generation(args, family), "kind": "g", "memory": "bf16"})
        results[family] = rows
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
