"""The DreamRelation training run: named phases, then one readable step function.

    prepare model -> prepare data (encode once, cached) -> add adapters -> optimizer -> resume -> train -> export

accelerate handles devices, mixed precision and multi-process data parallelism (`accelerate launch`).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from diffusers.optimization import get_cosine_schedule_with_warmup
from tqdm.auto import tqdm

from dreamrelation.config import MethodConfig, RunConfig
from dreamrelation.data.cache import PreparedDataset, prepare_dataset
from dreamrelation.data.dataset import scan_dataset
from dreamrelation.export import export_lora
from dreamrelation.method.adapters import (
    TrainingMode,
    activate_adapters,
    adapter_parameter_count,
    add_adapters,
    exported_adapters,
    training_modes,
)
from dreamrelation.method.losses import RelationalContrastiveLoss, hybrid_mask_loss, select_loss_mask
from dreamrelation.models import LoadedModel, load_model, model_clip_defaults, model_specification, plan_memory, resolve_device
from dreamrelation.models import memory
from dreamrelation.models.base import ModelSpecification
from dreamrelation.train import checkpoint as ckpt
from dreamrelation.train.progress import ProgressLog

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output_dir: Path
    lora_path: Path
    steps: int
    losses: list[float]  # total loss of every step run in this call
    encoded_clips: int  # clips encoded by this call (0 when the cache had them all)


@dataclass
class TrainState:
    """What a step reads and changes besides the model: saved whole in every checkpoint."""

    step: int
    data_generator: torch.Generator  # per process: clip choice, noise, sigma, caption dropout, bank draws
    mode_generator: torch.Generator  # same on every process, so all ranks train the same mode each step
    contrastive: RelationalContrastiveLoss | None


def plan_training_memory(run: RunConfig) -> memory.MemoryPlan:
    """The memory preset `run` trains with (models/memory.py), before any weight loads; raises
    memory.InsufficientMemory with the fix when nothing fits the GPU (the app and CLI refuse with it)."""
    shape = model_clip_defaults(run.model).resolve(run.data.num_frames, run.data.height, run.data.width)
    spec = model_specification(run.model)
    return plan_memory(
        run.model, shape, training=True, gradient_checkpointing=run.train.gradient_checkpointing,
        adapter_parameters=lambda transformer: adapter_parameter_count(transformer, spec, run.method),
    )


def warmup_steps(run: RunConfig) -> int:
    """The configured warm-up, scaled down to at most 10% of a short run."""
    return min(run.train.warmup_steps, run.train.steps // 10)


def train(run: RunConfig, loaded: LoadedModel | None = None, show_progress: bool = True) -> TrainResult:
    """Train a relation LoRA as `run` says; returns where it went. Resumes when `run.train.resume` is set.

    `loaded` lets a caller reuse a pipeline already in memory (it is modified: adapters are added).
    """
    out = Path(run.train.output_dir)
    accelerator = Accelerator(
        mixed_precision="no",  # the base is loaded in its compute dtype; adapters stay fp32 (peft casts inputs)
        cpu=resolve_device(run.model.device).type == "cpu",  # also makes `accelerate launch` use gloo on CPU
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    # Phase 0: the dataset folder is checked before anything heavy loads.
    samples = scan_dataset(run.data.data_dir, run.data.masks_dir)

    # Phase 1: model, stored as the memory plan says.
    if loaded is None:
        model_config = run.model.model_copy(update={"device": str(accelerator.device)})
        loaded = load_model(model_config, plan_training_memory(run.model_copy(update={"model": model_config})),
                            training=True)
    logger.info("%s", loaded.memory.reason)
    spec, pipe = loaded.spec, loaded.pipe

    # Phase 2: data, encoded once (the main process fills the cache, the others read it).
    with accelerator.main_process_first():
        dataset = prepare_dataset(
            loaded, samples, run.data, run.model.cache_dir, show_progress and accelerator.is_main_process
        )
    keep_decoders = run.train.sample_every > 0
    if not keep_decoders:
        for component in spec.offload_after_encoding(pipe):
            component.to("cpu")

    # Phase 3: adapters and optimizer.
    transformer = pipe.transformer
    transformer.requires_grad_(False)
    set_seed(run.train.seed)  # the adapters' Kaiming init draws from the global generator
    add_adapters(transformer, spec, run.method)
    offload = loaded.memory.preset == "offload"
    if run.train.gradient_checkpointing or offload:  # offload frees a block's weights only when recomputed
        transformer.enable_gradient_checkpointing()
    if offload:
        memory.offload_frozen_weights(transformer, accelerator.device)
    trainable = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=run.train.learning_rate, weight_decay=run.train.weight_decay)
    lr_schedule = get_cosine_schedule_with_warmup(optimizer, warmup_steps(run), run.train.steps)
    # An offloaded transformer places itself; accelerate would try to move it whole.
    model, optimizer = accelerator.prepare(transformer, optimizer, device_placement=[not offload, True])

    # Phase 4: state, fresh or resumed.
    state = TrainState(
        step=0,
        data_generator=torch.Generator().manual_seed(run.train.seed + accelerator.process_index),
        mode_generator=torch.Generator().manual_seed(run.train.seed),
        contrastive=_contrastive_loss(run) if run.method.contrastive and run.method.mode == "dreamrelation" else None,
    )
    if run.train.resume and (latest := ckpt.latest_checkpoint(out)) is not None:
        _restore(latest, transformer, optimizer, lr_schedule, state, accelerator.process_index)
    elif accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(run.to_yaml())
    progress = ProgressLog(out / "progress.jsonl") if accelerator.is_main_process else None
    if progress:
        progress.write(event="start", step=state.step, steps=run.train.steps, clips=len(dataset.records))

    # Phase 5: the loop.
    ctx = StepContext(
        spec=spec,
        model=model,
        transformer=transformer,
        optimizer=optimizer,
        dataset=dataset,
        vae_config=pipe.vae.config,
        dtype=loaded.dtype,
        method=run.method,
        caption_dropout=run.train.caption_dropout,
        accelerator=accelerator,
    )
    modes = training_modes(run.method)
    losses: list[float] = []
    # Whole iterations (step, checkpoint, sample) of the last few: a median of them is an ETA that neither a
    # slow first step nor an occasional checkpoint throws off.
    recent_iterations: deque[float] = deque(maxlen=20)
    previous_start = None
    bar = tqdm(total=run.train.steps, initial=state.step, desc="training", disable=not (show_progress and accelerator.is_main_process))
    while state.step < run.train.steps:
        started = time.perf_counter()
        if previous_start is not None:
            recent_iterations.append(started - previous_start)
        previous_start = started
        mode = modes[int(torch.randint(len(modes), (1,), generator=state.mode_generator))]
        terms = train_step(ctx, mode, state)
        lr_schedule.step()
        state.step += 1
        elapsed = time.perf_counter() - started
        losses.append(terms["loss"])
        bar.update(1)
        bar.set_postfix(loss=f"{terms['loss']:.4f}", mode=mode.name)
        if progress and (state.step % run.train.log_every == 0 or state.step == run.train.steps):
            progress.write(
                step=state.step,
                steps=run.train.steps,
                mode=mode.name,
                **terms,
                lr=lr_schedule.get_last_lr()[0],
                sec_per_step=round(elapsed, 4),
                eta_s=round(statistics.median(recent_iterations or [elapsed]) * (run.train.steps - state.step), 1),
            )
        if state.step % run.train.checkpoint_every == 0 or state.step == run.train.steps:
            _save(out, run, transformer, optimizer, lr_schedule, state, accelerator)
        if keep_decoders and state.step % run.train.sample_every == 0 and accelerator.is_main_process:
            _render_sample(run, loaded, dataset, out / "samples" / f"step-{state.step:07d}.mp4")
    bar.close()

    # Phase 6: export (main process) and a final record.
    lora_path = out / "relation_lora.safetensors"
    if accelerator.is_main_process:
        lora_path = export_lora(type(pipe), transformer, run, out, dataset.captions)
        progress.write(event="done", step=state.step, lora=str(lora_path))
    accelerator.wait_for_everyone()
    activate_adapters(transformer, exported_adapters(run.method))
    return TrainResult(out, lora_path, state.step, losses, dataset.encoded)


@dataclass
class StepContext:
    """What every step uses and no step changes (besides the weights the optimizer updates)."""

    spec: ModelSpecification
    model: torch.nn.Module  # what the forward pass calls (DDP-wrapped under `accelerate launch`)
    transformer: torch.nn.Module  # the unwrapped peft model, whose active adapters each mode switches
    optimizer: torch.optim.Optimizer
    dataset: PreparedDataset
    vae_config: object  # latent statistics of the VAE the clips were encoded with
    dtype: torch.dtype
    method: MethodConfig
    caption_dropout: float
    accelerator: Accelerator


def train_step(ctx: StepContext, mode: TrainingMode, state: TrainState) -> dict[str, float]:
    """One optimizer step in one hybrid-mask mode; returns the loss terms as floats."""
    method, generator = ctx.method, state.data_generator
    batch = _draw_batch(ctx.dataset, ctx.caption_dropout, generator, ctx.accelerator.device)
    activate_adapters(ctx.transformer, mode.adapters)

    # Flow matching on the cached VAE posterior: z_sigma = (1 - sigma) z0 + sigma noise, target z0 - noise.
    mean, logvar = batch["latent_mean"], batch["latent_logvar"]
    latents = ctx.spec.normalize_latents(ctx.vae_config, mean + (0.5 * logvar).exp() * _randn_like(mean, generator))
    noise = _randn_like(latents, generator)
    sigmas = torch.rand(latents.shape[0], generator=generator).to(latents.device)
    pred, target = ctx.spec.training_forward(
        ctx.model, latents, noise, sigmas, batch["prompt_embeds"], batch["prompt_mask"], ctx.dtype
    )

    loss_mask = select_loss_mask(batch["subject_masks"], mode.loss_mask)
    loss_rec = hybrid_mask_loss(pred, target, loss_mask, method.lambda_mask)
    loss_rcl = state.contrastive(pred, generator) if state.contrastive else None
    loss = loss_rec if loss_rcl is None else loss_rec + method.lambda_contrastive * loss_rcl

    ctx.accelerator.backward(loss)
    ctx.optimizer.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    if state.contrastive:
        state.contrastive.update_banks(pred)
    terms = {"loss": loss.item(), "loss_rec": loss_rec.item()}
    if loss_rcl is not None:
        terms["loss_rcl"] = loss_rcl.item()
    return terms


def _randn_like(tensor: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # Drawn on the CPU so a seed gives the same numbers on every device.
    return torch.randn(tensor.shape, generator=generator).to(tensor.device, tensor.dtype)


def _draw_batch(dataset: PreparedDataset, caption_dropout: float, generator, device) -> dict[str, torch.Tensor]:
    """One clip (batch of 1, as the method trains), with its caption replaced by the empty one at the dropout rate."""
    record = dataset.records[int(torch.randint(len(dataset.records), (1,), generator=generator))]
    batch = {key: value[None].to(device) for key, value in record.items()}
    if float(torch.rand((), generator=generator)) < caption_dropout:
        batch["prompt_embeds"] = dataset.empty_prompt["prompt_embeds"][None].to(device)
        batch["prompt_mask"] = dataset.empty_prompt["prompt_mask"][None].to(device)
    return batch


def _contrastive_loss(run: RunConfig) -> RelationalContrastiveLoss:
    m = run.method
    return RelationalContrastiveLoss(
        num_positives=m.num_positives,
        num_negatives=m.num_negatives,
        positive_bank_size=m.positive_bank_size,
        negative_bank_size=m.negative_bank_size,
        temperature=m.temperature,
    )


def _adapter_weights(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {path: p.detach().cpu().clone() for path, p in transformer.named_parameters() if "lora_" in path}


def _save(out, run, transformer, optimizer, lr_schedule, state: TrainState, accelerator) -> None:
    staging = ckpt.staging_dir(out, state.step)
    ckpt.write_part(
        staging,
        f"rank{accelerator.process_index}",
        {
            "data_generator": state.data_generator.get_state(),
            "contrastive": state.contrastive.state_dict() if state.contrastive else None,
        },
    )
    if accelerator.is_main_process:
        ckpt.write_part(
            staging,
            "state",
            {
                "step": state.step,
                "adapters": _adapter_weights(transformer),
                "optimizer": optimizer.state_dict(),
                "lr_schedule": lr_schedule.state_dict(),
                "mode_generator": state.mode_generator.get_state(),
                "config": run.model_dump(mode="json"),
            },
        )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        ckpt.publish(out, state.step, run.train.keep_checkpoints)
    accelerator.wait_for_everyone()


def _restore(checkpoint: Path, transformer, optimizer, lr_schedule, state: TrainState, rank: int) -> None:
    shared = ckpt.read_part(checkpoint, "state")
    own = ckpt.read_part(checkpoint, f"rank{rank}") or ckpt.read_part(checkpoint, "rank0")
    parameters = dict(transformer.named_parameters())
    with torch.no_grad():
        for path, value in shared["adapters"].items():
            parameters[path].copy_(value)
    optimizer.load_state_dict(shared["optimizer"])
    lr_schedule.load_state_dict(shared["lr_schedule"])
    state.step = shared["step"]
    state.mode_generator.set_state(shared["mode_generator"])
    state.data_generator.set_state(own["data_generator"])
    if state.contrastive and own["contrastive"]:
        state.contrastive.load_state_dict(own["contrastive"])
    logger.info("resumed from %s at step %d", checkpoint, state.step)


def _render_sample(run: RunConfig, loaded: LoadedModel, dataset: PreparedDataset, path: Path) -> None:
    """Render a short sample with the adapters kept for inference, then hand the transformer back to training."""
    from dreamrelation.config import GenerateConfig
    from dreamrelation.data.video import write_video
    from dreamrelation.generate import render

    activate_adapters(loaded.pipe.transformer, exported_adapters(run.method))
    shape = dataset.shape
    config = GenerateConfig(
        prompt=run.train.sample_prompt or dataset.captions[0],
        num_frames=shape.num_frames,
        height=shape.height,
        width=shape.width,
    )
    write_video(path, render(loaded, config), fps=loaded.defaults.fps)
