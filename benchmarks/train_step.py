"""Benchmark: cost of one DreamRelation training step against a plain single-adapter LoRA step.

Times the library's real `train_step` (dreamrelation.train.trainer) on the same model and the same random
cached data in two configurations, each in its own process so its peak memory is its own:

  (a) plain LoRA     MethodConfig(mode="direct-lora", contrastive=False, mask_loss=False): one adapter on
                     q, k, v and out of every block, plain MSE;
  (b) DreamRelation  MethodConfig() defaults: relation/subject1/subject2/ffn adapters, hybrid-mask loss and
                     the relational contrastive loss; one mode per step, drawn as the trainer draws it.

It prints a markdown table of seconds/step (warm-up steps excluded), peak memory and the ratio (b)/(a); the
project's target is (b)/(a) <= 1.10.

Presets:
  small    (default, CPU) the tiny-random "small" Mochi pipeline (a few million parameters), 25 frames at
           128x128 -> latents (12, 5, 16, 16); peak memory is the process's max RSS.
  mochi-1  (needs --device cuda) the full-size MochiTransformer3DModel with random bf16 weights built on the
           GPU (no download), 61 frames at 480x848 -> latents (12, 11, 60, 106), gradient checkpointing on;
           peak memory is torch.cuda.max_memory_allocated, plus MFU against --peak-tflops.

Run from the repository root:
  PYTHONPATH=. .venv/bin/python benchmarks/train_step.py
  PYTHONPATH=. python benchmarks/train_step.py --preset mochi-1 --device cuda --steps 10 --warmup 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import types

import torch

CONFIGS = {
    "a": ("plain LoRA", dict(mode="direct-lora", contrastive=False, mask_loss=False)),
    "b": ("DreamRelation", {}),
}
PRESETS = {
    # frames, height, width, text tokens (L), valid text tokens, gradient checkpointing
    "small": dict(frames=25, height=128, width=128, text_len=32, valid_tokens=12, checkpointing=False),
    "mochi-1": dict(frames=61, height=480, width=848, text_len=256, valid_tokens=30, checkpointing=True),
}
CLIPS = 4  # random cached clips the steps draw from
CAPTION_DROPOUT = 0.1  # TrainConfig's default
RESULT_MARKER = "TRAIN_STEP_RESULT "


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; frames/height/width/device default to the preset's values."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small", help="Model and data size.")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="Where to run (default: cpu small, cuda mochi-1).")
    parser.add_argument("--frames", type=int, help="Clip frames, 6k+1 (default: 25 small, 61 mochi-1).")
    parser.add_argument("--height", type=int, help="Clip height in pixels, multiple of 16 (default: 128 / 480).")
    parser.add_argument("--width", type=int, help="Clip width in pixels, multiple of 16 (default: 128 / 848).")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps run first in each configuration.")
    parser.add_argument("--steps", type=int, default=50, help="Timed steps per configuration (default 50).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the weights, the data and every draw.")
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="Accelerator peak for MFU (default 989: H100 bf16 dense)."
    )
    # Internal: run one configuration in this process and print its measurements as JSON.
    parser.add_argument("--only", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    args.device = args.device or ("cuda" if args.preset == "mochi-1" else "cpu")
    for name in ("frames", "height", "width"):
        if getattr(args, name) is None:
            setattr(args, name, preset[name])
    if args.frames < 1 or (args.frames - 1) % 6:
        parser.error(f"--frames must be 6k+1 (e.g. 13, 25, 61), got {args.frames}")
    if args.height < 16 or args.width < 16 or args.height % 16 or args.width % 16:
        parser.error(f"--height and --width must be multiples of 16, got {args.height}x{args.width}")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    return args


def check_device(args: argparse.Namespace) -> None:
    """Exit with a one-line message when the preset cannot run on this machine."""
    if args.preset == "mochi-1" and args.device != "cuda":
        sys.exit("train_step.py: --preset mochi-1 runs only on a CUDA GPU (--device cuda); use --preset small on CPU.")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"train_step.py: --preset {args.preset} --device cuda needs a CUDA GPU and none is visible here.")


def latent_shape(args: argparse.Namespace) -> tuple[int, int, int, int]:
    """(C, F', H', W') of Mochi's VAE: 12 channels, 6x in time with a causal first frame, 8x in space."""
    return 12, (args.frames - 1) // 6 + 1, args.height // 8, args.width // 8


def build_small(device: str, seed: int):
    """The tiny-random "small" Mochi pipeline's fp32 transformer on `device`, and its VAE config."""
    from dreamrelation.models.tiny_random import build_tiny_pipeline

    pipe = build_tiny_pipeline(seed=seed, size="small")
    return pipe.transformer.to(device), pipe.vae.config


def build_mochi1(seed: int):
    """Full-size Mochi-1 transformer with random bf16 weights, built straight on the GPU (no download).

    Constructed on the meta device with bf16 as the default dtype (so no fp32 copy is ever materialised), then
    allocated on cuda and initialised in place: norm weights 1, biases 0, everything else (pos_frequencies
    included) normal(0, 0.02). The VAE config is a stand-in with identity latent statistics.
    """
    from diffusers import MochiTransformer3DModel

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            transformer = MochiTransformer3DModel()
    finally:
        torch.set_default_dtype(previous)
    transformer.to_empty(device="cuda")
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in transformer.modules():
            for name, parameter in module.named_parameters(recurse=False):
                if name == "weight" and "Norm" in type(module).__name__:
                    parameter.fill_(1.0)
                elif name == "bias":
                    parameter.zero_()
                else:
                    parameter.normal_(0.0, 0.02)
    return transformer, types.SimpleNamespace(latents_mean=None, latents_std=None, scaling_factor=1.0)


def blob_masks(shape: tuple[int, int, int, int], generator: torch.Generator) -> torch.Tensor:
    """(2, F', H', W') subject masks in [0, 1]: two Gaussian blobs, each moving on a straight line."""
    _, frames, height, width = shape
    ys = torch.arange(height, dtype=torch.float32).view(1, height, 1)
    xs = torch.arange(width, dtype=torch.float32).view(1, 1, width)
    t = torch.linspace(0.0, 1.0, frames).view(frames, 1, 1)
    radius = 0.15 * min(height, width)
    masks = []
    for _ in range(2):
        start, end = torch.rand(2, 2, generator=generator) * torch.tensor([height, width])
        cy, cx = start[0] + t * (end[0] - start[0]), start[1] + t * (end[1] - start[1])
        masks.append(torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * radius**2)))
    return torch.stack(masks)


def random_dataset(args: argparse.Namespace, text_dim: int, seed: int):
    """A PreparedDataset of CLIPS random clips in the cache's format (fp32 on the CPU, as the trainer reads it)."""
    from dreamrelation.data.cache import ClipShape, PreparedDataset

    preset = PRESETS[args.preset]
    shape, length, valid = latent_shape(args), preset["text_len"], preset["valid_tokens"]
    generator = torch.Generator().manual_seed(seed)

    def prompt(valid_tokens: int) -> dict[str, torch.Tensor]:
        mask = torch.zeros(length, dtype=torch.bool)
        mask[:valid_tokens] = True
        return {"prompt_embeds": torch.randn(length, text_dim, generator=generator), "prompt_mask": mask}

    records = [
        {
            "latent_mean": torch.randn(shape, generator=generator),
            "latent_logvar": torch.full(shape, -10.0),
            **prompt(valid),
            "subject_masks": blob_masks(shape, generator),
        }
        for _ in range(CLIPS)
    ]
    return PreparedDataset(
        records=records,
        empty_prompt=prompt(1),  # the empty caption encodes to its end-of-sequence token alone
        captions=["A bear is shaking hands with a raccoon."] * CLIPS,
        shape=ClipShape(args.frames, args.height, args.width),
        encoded=0,
    )


def per_token_parameters(transformer: torch.nn.Module) -> tuple[int, int]:
    """(N_video, N_text): base weights each video token / each text token is multiplied by in one forward.

    Video stream: q, k, v, out and the feed-forward of every block, and proj_out. Text stream: add_q/k/v_proj,
    to_add_out and ff_context. The modulation layers and embedders act once per sample (or not at all in
    backward) and are left out. Call before adapters are added (peft wraps the Linear layers).
    """
    video = text = 0
    for name, module in transformer.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if name == "proj_out":
            video += module.weight.numel()
        elif name.startswith("transformer_blocks."):
            local = name.split(".", 2)[2]  # e.g. "attn1.to_q", "ff.net.0.proj"
            if local.startswith(("attn1.add_", "attn1.to_add_out", "ff_context.")):
                text += module.weight.numel()
            elif local.startswith(("attn1.to_", "ff.")):
                video += module.weight.numel()
    return video, text


def step_flops(transformer: torch.nn.Module, args: argparse.Namespace) -> tuple[float, float]:
    """(model FLOPs, hardware FLOPs) of one training step; hardware adds the checkpointing recomputation.

    linear    = 2 * (N_video * T_video + N_text * T_text)            forward matmuls
    attention = 4 * S^2 * hidden * layers, S = T_video + valid text   forward QK^T and PV
    model     = 2 * linear + 3 * attention   (backward: input grads only, the base is frozen, ~1x linear;
                                              2x attention; adapter weight grads negligible)
    hardware  = model + linear + attention   when gradient checkpointing recomputes every block's forward
    """
    config, preset = transformer.config, PRESETS[args.preset]
    _, frames, height, width = latent_shape(args)
    video_tokens = frames * (height // config.patch_size) * (width // config.patch_size)
    sequence = video_tokens + preset["valid_tokens"]
    hidden = config.num_attention_heads * config.attention_head_dim
    n_video, n_text = per_token_parameters(transformer)
    linear = 2.0 * (n_video * video_tokens + n_text * preset["text_len"])
    attention = 4.0 * sequence**2 * hidden * config.num_layers
    model = 2 * linear + 3 * attention
    return model, model + (linear + attention if preset["checkpointing"] else 0.0)


def measure(args: argparse.Namespace) -> dict:
    """Build the model and data, add configuration `args.only`'s adapters, run warm-up + timed steps.

    Returns seconds of every timed step (and per mode), the trainable parameter count, peak memory and FLOPs.
    """
    from accelerate import Accelerator

    from dreamrelation.config import MethodConfig
    from dreamrelation.method.adapters import add_adapters, training_modes
    from dreamrelation.method.losses import RelationalContrastiveLoss
    from dreamrelation.models.mochi import MochiSpecification
    from dreamrelation.train.trainer import StepContext, TrainState, train_step

    name, overrides = CONFIGS[args.only]
    method = MethodConfig(**overrides)
    cuda = args.device == "cuda"
    if args.preset == "mochi-1":
        transformer, vae_config = build_mochi1(args.seed)
    else:
        transformer, vae_config = build_small(args.device, args.seed)
    dataset = random_dataset(args, transformer.config.text_embed_dim, args.seed)
    flops = step_flops(transformer, args)
    dtype = transformer.dtype  # the base's compute dtype, read before the fp32 adapters are added

    transformer.requires_grad_(False)
    adapters = add_adapters(transformer, MochiSpecification(), method)
    if PRESETS[args.preset]["checkpointing"]:
        transformer.enable_gradient_checkpointing()
    trainable = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-4, weight_decay=0.01)
    accelerator = Accelerator(mixed_precision="no", cpu=not cuda)
    model, optimizer = accelerator.prepare(transformer, optimizer)
    ctx = StepContext(
        spec=MochiSpecification(),
        model=model,
        transformer=transformer,
        optimizer=optimizer,
        dataset=dataset,
        vae_config=vae_config,
        dtype=dtype,
        method=method,
        caption_dropout=CAPTION_DROPOUT,
        accelerator=accelerator,
    )
    contrastive = None
    if method.contrastive:
        contrastive = RelationalContrastiveLoss(
            num_positives=4, num_negatives=10, positive_bank_size=10, negative_bank_size=64, temperature=0.07
        )
    state = TrainState(
        step=0,
        data_generator=torch.Generator().manual_seed(args.seed),
        mode_generator=torch.Generator().manual_seed(args.seed),
        contrastive=contrastive,
    )
    setup_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    modes = training_modes(method)
    seconds, per_mode = [], {mode.name: [] for mode in modes}
    for index in range(args.warmup + args.steps):
        mode = modes[int(torch.randint(len(modes), (1,), generator=state.mode_generator))]  # as the trainer draws
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        train_step(ctx, mode, state)  # ends in loss.item(), which waits for the device
        elapsed = time.perf_counter() - started
        state.step += 1
        if index >= args.warmup:
            seconds.append(elapsed)
            per_mode[mode.name].append(elapsed)

    result = {
        "config": args.only,
        "name": name,
        "adapters": adapters,
        "trainable": sum(p.numel() for p in trainable),
        "seconds": seconds,
        "per_mode": {mode: values for mode, values in per_mode.items() if values},
        "setup_rss_mb": setup_rss,
        # Linux reports ru_maxrss in KiB.
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "model_flops": flops[0],
        "hardware_flops": flops[1],
    }
    if cuda:  # a fresh process per configuration, so this peak is the configuration's own
        result["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return result


def run_in_subprocess(config: str) -> dict:
    """Re-run this script with `--only config` in a fresh interpreter and return what it measured."""
    command = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--only", config]
    completed = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if completed.returncode != 0 or not lines:
        sys.exit(f"train_step.py: configuration ({config}) failed with exit code {completed.returncode}")
    return json.loads(lines[-1][len(RESULT_MARKER) :])


def typical_seconds(result: dict) -> float:
    """Expected seconds/step: the mean over modes (drawn uniformly) of each mode's median step time.

    Medians keep a step slowed by another process on the machine from skewing the result; a plain median of
    all steps would instead pick the most frequent (cheaper) modes of DreamRelation.
    """
    return statistics.mean(statistics.median(values) for values in result["per_mode"].values())


def table(args: argparse.Namespace, results: list[dict]) -> str:
    """The markdown report: one row per configuration, the (b)/(a) ratio and a footer of formulas and targets."""
    cuda = args.device == "cuda"
    header = ["config", "adapters", "trainable params", "s/step", "s/step (mean)", "per mode median s/step (steps)"]
    header += ["peak RSS MB", "RSS growth in steps MB"]
    header += ["peak GPU GB", "MFU", "HFU"] if cuda else ["model GFLOP/s"]
    rows = [header, ["---"] * len(header)]
    for r in results:
        typical, mean = typical_seconds(r), statistics.mean(r["seconds"])
        modes = ", ".join(f"{m} {statistics.median(v):.4f} ({len(v)})" for m, v in r["per_mode"].items())
        row = [f"({r['config']}) {r['name']}", "+".join(r["adapters"]), f"{r['trainable']:,}"]
        row += [f"{typical:.4f}", f"{mean:.4f}", modes]
        row += [f"{r['peak_rss_mb']:.0f}", f"{r['peak_rss_mb'] - r['setup_rss_mb']:.0f}"]
        if cuda:
            peak = args.peak_tflops * 1e12
            row += [f"{r['peak_gpu_gb']:.1f}", f"{r['model_flops'] / typical / peak:.1%}"]
            row += [f"{r['hardware_flops'] / typical / peak:.1%}"]
        else:
            row += [f"{r['model_flops'] / typical / 1e9:.1f}"]
        rows.append(row)

    a, b = results

    def ratio(value) -> str:
        return f"{value(b) / value(a):.3f}" if value(a) > 0 else "-"

    row = ["(b)/(a)", "", "", ratio(typical_seconds)]
    row += [ratio(lambda r: statistics.mean(r["seconds"])), "", ratio(lambda r: r["peak_rss_mb"])]
    row += [ratio(lambda r: r["peak_rss_mb"] - r["setup_rss_mb"])]
    row += [ratio(lambda r: r["peak_gpu_gb"]), "", ""] if cuda else [""]
    rows.append(row)
    lines = ["| " + " | ".join(row) + " |" for row in rows]

    c, f, h, w = latent_shape(args)
    preset = PRESETS[args.preset]
    lines += [
        "",
        f"Preset {args.preset} on {args.device} ({torch.get_num_threads()} CPU threads), {args.frames} frames at "
        f"{args.height}x{args.width} -> latents ({c}, {f}, {h}, {w}), text ({preset['text_len']} tokens, "
        f"{preset['valid_tokens']} valid), gradient checkpointing {'on' if preset['checkpointing'] else 'off'}; "
        f"{args.warmup} warm-up + {args.steps} timed steps per configuration, each in its own process.",
        "Target: (b)/(a) s/step <= 1.10. s/step = mean over the uniformly drawn modes of each mode's median "
        "step time (robust to a step slowed by other processes); s/step (mean) = plain mean of the timed steps. "
        "Peak RSS is the process's ru_maxrss (Python, model and data "
        "included); RSS growth in steps is how far the steps pushed it above its level after setup.",
        f"Model FLOPs/step: {a['model_flops'] / 1e12:.4g} T (hardware, with recomputation: "
        f"{a['hardware_flops'] / 1e12:.4g} T) = 2*linear + 3*attention, linear = 2*(N_video*T_video + "
        "N_text*T_text), attention = 4*S^2*hidden*layers (S = video + valid text tokens); backward = input grads "
        "of the frozen base (~1x linear, 2x attention), adapter FLOPs left out; hardware adds one forward "
        "(linear + attention) when gradient checkpointing recomputes.",
    ]
    if cuda:
        lines += [
            f"MFU = model FLOPs / s/step / {args.peak_tflops:g} TFLOP/s (--peak-tflops); HFU counts the "
            "recomputation. Peak GPU = torch.cuda.max_memory_allocated.",
            "Mochi-1 targets: < 3.35 s/step (the reference's Mochi LoRA step on one H100) and <= 40 GB peak GPU.",
        ]
    return "\n".join(lines)


def main() -> None:
    """Measure one configuration (--only) or both, each in a subprocess, and print the table."""
    args = parse_args()
    check_device(args)
    if args.only:
        print(RESULT_MARKER + json.dumps(measure(args)), flush=True)
        return
    print(table(args, [run_in_subprocess(config) for config in CONFIGS]))


if __name__ == "__main__":
    main()
