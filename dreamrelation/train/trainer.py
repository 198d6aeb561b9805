"""The DreamRelation training run: named phases, then one readable step function.

    prepare model -> prepare data (encode once, cached) -> prepare_training (adapters, optimizer, resume)
    -> the loop (advance, checkpoint; callbacks hear each event) -> export

accelerate handles devices, mixed precision and multi-process data parallelism (`accelerate launch`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.utils.torch_utils import randn_tensor

from dreamrelation.config import MethodConfig, RunConfig, TrainConfig
from dreamrelation.data.cache import PreparedDataset, prepare_dataset
from dreamrelation.data.dataset import scan_dataset
from dreamrelation.export import export_lora
from dreamrelation.method.adapters import (
    PRIOR,
    TrainingMode,
    activate_adapters,
    adapter_parameter_count,
    add_adapters,
    draw_mode,
    exported_adapters,
    prior_mode,
    training_modes,
)
from dreamrelation.method.losses import RelationalContrastiveLoss, reconstruction_loss
from dreamrelation.models import LoadedModel, ModelSource, load_model
from dreamrelation.models import memory
from dreamrelation.models.base import Expert, ModelSpecification
from dreamrelation.outputs import RunDir
from dreamrelation.runtime import resolve_device
from dreamrelation.train import checkpoint as ckpt
from dreamrelation.train.callbacks import EvalReport, ProgressBar, StepReport, TrainerCallback, TrainResult
from dreamrelation.train.evaluation import draw_eval_points, evaluation_loss
from dreamrelation.train.noise_levels import into_range, sample_sigmas
from dreamrelation.train.planning import plan_training
from dreamrelation.train.progress import ProgressRecorder

logger = logging.getLogger(__name__)


@dataclass
class TrainState:
    """What a step reads and changes besides the model: saved whole in every checkpoint."""

    step: int
    data_generator: torch.Generator  # per process: clip choice, noise, sigma, caption dropout, bank draws
    mode_generator: torch.Generator  # same on every process, so all ranks train the same mode and expert each step
    contrastive: RelationalContrastiveLoss | None


def warmup_steps(train: TrainConfig) -> int:
    """The configured warm-up, scaled down to at most 10% of a short run."""
    return min(train.warmup_steps, train.steps // 10)


def make_accelerator(device: str) -> Accelerator:
    """The accelerator of a run on `device` (a ModelConfig.device; or the devices `accelerate launch` hands out)."""
    return Accelerator(
        mixed_precision="no",  # the base is loaded in its compute dtype; adapters stay fp32 (peft casts inputs)
        cpu=resolve_device(device).type == "cpu",  # also makes `accelerate launch` use gloo on CPU
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def train(
    run: RunConfig,
    loaded: LoadedModel | None = None,
    show_progress: bool = True,
    callbacks: Sequence[TrainerCallback] = (),
    source: ModelSource | None = None,
) -> TrainResult:
    """Train a relation LoRA as `run` says; returns where it went. Resumes when `run.train.resume` is set.

    `source` is the model as a job pinned it (resolved and memory-planned when it was queued; None: planned
    here). `loaded` lets a caller reuse a pipeline already in memory (it is modified: adapters are added). The
    run folder's progress log is always kept; `callbacks` hear the same events after it (main process only).
    """
    out = RunDir(run.train.output_dir)
    accelerator = make_accelerator(run.model.device)
    main = accelerator.is_main_process
    # Phase 0: the dataset folder is checked before anything heavy loads.
    samples = scan_dataset(run.data.data_dir, run.data.masks_dir)

    # Phase 1: model, stored as the memory plan says; only the trained experts, and the encoders only if a
    # sample needs the whole pipeline (prepare_dataset loads them if the cache lacks a clip).
    if loaded is None:
        model_config = run.model.model_copy(update={"device": str(accelerator.device)})
        source = plan_training(run.model_copy(update={"model": model_config}), source)
        memory.check_plan_fits(source.memory, accelerator.device)
        loaded = load_model(model_config, source.memory, training=True, source=source,
                            experts=source.spec.trained_experts(run.train.experts), encoders=run.train.sample_every > 0)
    logger.info("%s", loaded.memory.reason)
    spec, pipe = loaded.spec, loaded.pipe
    experts = spec.trained_experts(run.train.experts)

    # Phase 2: data, encoded once (the main process fills the cache, the others read it).
    with accelerator.main_process_first():
        dataset = prepare_dataset(loaded, samples, run.data, run.model.cache_dir, show_progress and main)
        prior = (prepare_dataset(loaded, scan_dataset(run.train.prior_dir, with_masks=False), run.data,
                                 run.model.cache_dir, show_progress and main) if run.train.prior_dir else None)
    if run.train.sample_every == 0:
        for component in spec.offload_after_encoding(pipe):
            if component is not None:
                component.to("cpu")

    # Phase 3: adapters, optimizer and state, fresh or resumed.
    training = prepare_training(
        run.train, run.method, spec=spec, transformers={e.component: getattr(pipe, e.component) for e in experts},
        vae_config=spec.vae_config, dtype=loaded.dtype, dataset=dataset, accelerator=accelerator,
        offload=loaded.memory.preset == "offload", prior=prior,
    )
    if training.resumed_from is None and main:
        out.root.mkdir(parents=True, exist_ok=True)
        out.config.write_text(run.to_yaml())
    events: list[TrainerCallback] = []
    if main:
        events.append(ProgressRecorder(out.progress, run.train.log_every))
        events += [ProgressBar()] if show_progress else []
        events += [_SampleRenderer(run, loaded, dataset, out)] if run.train.sample_every > 0 else []
        events += callbacks
    _emit(events, "on_prepared", run, training.state.step, len(dataset.records))
    eval_points = draw_eval_points(training.ctx, run.train.eval_points, run.train.seed) if run.train.eval_every else []

    # Phase 4: the loop.
    state, losses = training.state, []
    while state.step < run.train.steps:
        started = time.perf_counter()
        mode, terms = advance(training)
        losses.append(terms["loss"])
        lr = training.lr_schedule.get_last_lr()[0]
        seconds = round(time.perf_counter() - started, 4)
        _emit(events, "on_step", StepReport(state.step, run.train.steps, mode.name, terms, lr, seconds))
        if eval_points and (state.step % run.train.eval_every == 0 or state.step == run.train.steps):
            started = time.perf_counter()
            scores = evaluation_loss(training.ctx, eval_points, training.modes[0])  # the relation mode
            _emit(events, "on_evaluation", EvalReport(state.step, scores, round(time.perf_counter() - started, 4)))
        if state.step % run.train.checkpoint_every == 0 or state.step == run.train.steps:
            _emit(events, "on_checkpoint", state.step, ckpt.save(out, run, training))

    # Phase 5: export (main process): one LoRA file per trained expert.
    transformers = training.ctx.transformers
    lora_path = (export_lora(type(pipe), transformers, run, out.root, dataset.captions, spec.lora_load_kwargs)
                 if main else out.lora_file(next(iter(transformers))))
    accelerator.wait_for_everyone()
    for transformer in transformers.values():
        activate_adapters(transformer, exported_adapters(run.method))
    result = TrainResult(out.root, lora_path, state.step, losses, dataset.encoded)
    _emit(events, "on_done", result)
    return result


def _emit(callbacks: Sequence[TrainerCallback], event: str, *args) -> None:
    for callback in callbacks:
        getattr(callback, event)(*args)


@dataclass
class Training:
    """What the loop needs, from `prepare_training`."""

    ctx: StepContext
    state: TrainState
    lr_schedule: torch.optim.lr_scheduler.LRScheduler
    modes: list[TrainingMode]
    resumed_from: Path | None  # the checkpoint it continues, or None for a fresh run


def prepare_training(
    train: TrainConfig,
    method: MethodConfig,
    *,
    spec: ModelSpecification,
    transformers: dict[str, torch.nn.Module],
    vae_config: object,
    dtype: torch.dtype,
    dataset: PreparedDataset,
    accelerator: Accelerator,
    offload: bool = False,
    prior: PreparedDataset | None = None,
) -> Training:
    """Add the method's adapters to each trained expert of `transformers` ({pipeline component: transformer},
    frozen otherwise), build AdamW and the warm-up + cosine schedule, hand them to `accelerator`, and restore the
    newest checkpoint of `train.output_dir` when `train.resume` is set. `vae_config` holds the latent statistics
    the cached clips were encoded with; `dtype` is the base's compute dtype; `offload` (the memory preset)
    offloads the frozen layers once the adapters exist. Returns the step context, the state, the schedule and
    the modes to draw from. `prior`: the prepared prior-preservation clips, None without.
    """
    set_seed(train.seed)  # the adapters' Kaiming init draws from the global generator
    for transformer in transformers.values():
        transformer.requires_grad_(False)
        add_adapters(transformer, spec, method)
        if train.gradient_checkpointing or offload:  # offload frees a block's weights only when recomputed
            transformer.enable_gradient_checkpointing()
        if offload:
            memory.offload_frozen_weights(transformer, accelerator.device)
    trainable = [p for transformer in transformers.values() for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=train.learning_rate, weight_decay=train.weight_decay)
    lr_schedule = get_cosine_schedule_with_warmup(optimizer, warmup_steps(train), train.steps)
    # An offloaded transformer places itself; accelerate would try to move it whole.
    *models, optimizer = accelerator.prepare(*transformers.values(), optimizer,
                                             device_placement=[not offload] * len(transformers) + [True])
    rcl = method.contrastive and method.mode == "dreamrelation"
    state = TrainState(
        step=0,
        data_generator=torch.Generator().manual_seed(train.seed + accelerator.process_index),
        mode_generator=torch.Generator().manual_seed(train.seed),
        contrastive=RelationalContrastiveLoss.from_config(method) if rcl else None,
    )
    ctx = StepContext(
        spec=spec,
        models=dict(zip(transformers, models)),
        transformers=transformers,
        experts=tuple(expert for expert in spec.experts if expert.component in transformers),
        optimizer=optimizer,
        dataset=dataset,
        prior=prior,
        vae_config=vae_config,
        dtype=dtype,
        method=method,
        train=train,
        accelerator=accelerator,
    )
    latest = ckpt.latest_checkpoint(train.output_dir) if train.resume else None
    training = Training(ctx, state, lr_schedule, training_modes(method), latest)
    if latest is not None:
        ckpt.restore(latest, training)
    return training


def advance(training: Training) -> tuple[TrainingMode, dict[str, float]]:
    """One iteration of the loop: draw this step's mode, run the step, move the schedule and the step count.

    Returns the mode and the step's loss terms.
    """
    state, ctx = training.state, training.ctx
    if ctx.prior is not None and float(torch.rand((), generator=state.mode_generator)) < ctx.train.prior_share:
        mode = prior_mode(ctx.method)
    else:
        mode = draw_mode(training.modes, ctx.method, state.mode_generator)
    terms = train_step(ctx, mode, state)
    training.lr_schedule.step()
    state.step += 1
    return mode, terms


@dataclass
class StepContext:
    """What every step uses and no step changes (besides the weights the optimizer updates)."""

    spec: ModelSpecification
    models: dict[str, torch.nn.Module]  # per trained expert, what the forward calls (DDP under `accelerate launch`)
    transformers: dict[str, torch.nn.Module]  # the unwrapped peft models, whose active adapters each mode switches
    experts: tuple[Expert, ...]  # the trained experts, high noise first
    optimizer: torch.optim.Optimizer
    dataset: PreparedDataset
    prior: PreparedDataset | None  # prior-preservation clips (train.prior_dir), None without
    vae_config: object  # latent statistics of the VAE the clips were encoded with
    dtype: torch.dtype
    method: MethodConfig
    train: TrainConfig  # caption dropout, gradient clipping, noise-level sampling
    accelerator: Accelerator


def train_step(ctx: StepContext, mode: TrainingMode, state: TrainState) -> dict[str, float]:
    """One optimizer step in one hybrid-mask mode (or the prior mode, on a prior clip); returns the loss terms as
    floats."""
    method, generator = ctx.method, state.data_generator
    prior_step = mode.name == PRIOR
    dataset = ctx.prior if prior_step else ctx.dataset
    batch = _draw_batch(dataset, ctx.train.caption_dropout, generator, ctx.accelerator.device)
    expert = _draw_expert(ctx.experts, state.mode_generator)
    activate_adapters(ctx.transformers[expert.component], mode.adapters)

    # Flow matching on the cached VAE posterior: z_sigma = (1 - sigma) z0 + sigma noise, target z0 - noise.
    # Noise is drawn from the CPU generator (randn_tensor then moves it) so a seed gives the same numbers anywhere.
    mean, logvar = batch["latent_mean"], batch["latent_logvar"]
    posterior = randn_tensor(mean.shape, generator, mean.device, mean.dtype)
    latents = ctx.spec.normalize_latents(ctx.vae_config, mean + (0.5 * logvar).exp() * posterior)
    noise = randn_tensor(latents.shape, generator, latents.device, latents.dtype)
    sigmas = sample_sigmas(ctx.train, latents.shape[0], generator)
    sigmas = into_range(sigmas, expert.sigma_low, expert.sigma_high).to(latents.device)
    model = ctx.models[expert.component]
    pred, target = ctx.spec.training_forward(
        model, latents, noise, sigmas, batch["prompt_embeds"], batch["prompt_mask"], ctx.dtype
    )

    loss_rec = reconstruction_loss(pred, target, batch["subject_masks"], mode.loss_mask, method)
    contrastive = state.contrastive if not prior_step else None  # its banks hold the exemplars' relation only
    loss_rcl = contrastive(pred, generator) if contrastive else None
    loss = loss_rec if loss_rcl is None else loss_rec + method.lambda_contrastive * loss_rcl

    ctx.accelerator.backward(loss)
    if ctx.train.max_grad_norm is not None:
        ctx.accelerator.clip_grad_norm_(model.parameters(), ctx.train.max_grad_norm)
    ctx.optimizer.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    if contrastive:
        contrastive.update_banks(pred)
    terms = {"loss": loss.item(), "loss_rec": loss_rec.item()}
    if loss_rcl is not None:
        terms["loss_rcl"] = loss_rcl.item()
    return terms


def _draw_batch(dataset: PreparedDataset, caption_dropout: float, generator, device) -> dict[str, torch.Tensor]:
    """One clip (batch of 1, as the method trains), with its caption replaced by the empty one at the dropout rate."""
    record = dataset.records[int(torch.randint(len(dataset.records), (1,), generator=generator))]
    batch = {key: value[None].to(device) for key, value in record.items()}
    if float(torch.rand((), generator=generator)) < caption_dropout:
        batch["prompt_embeds"] = dataset.empty_prompt["prompt_embeds"][None].to(device)
        batch["prompt_mask"] = dataset.empty_prompt["prompt_mask"][None].to(device)
    return batch


def _draw_expert(experts: tuple[Expert, ...], generator: torch.Generator) -> Expert:
    """The expert a step trains: the only one, or one of several with the probability of its share of the noise
    levels (what a uniform σ over all of them would give). Drawn from the generator every rank shares, so all
    ranks run the same expert (DDP reduces each expert's gradients only where it ran)."""
    if len(experts) == 1:
        return experts[0]
    widths = torch.tensor([expert.sigma_high - expert.sigma_low for expert in experts])
    return experts[int(torch.multinomial(widths, 1, generator=generator))]


class _SampleRenderer(TrainerCallback):
    """Renders a sample video every `sample_every` steps with the adapters kept for inference."""

    def __init__(self, run: RunConfig, loaded: LoadedModel, dataset: PreparedDataset, out: RunDir):
        self.run, self.loaded, self.dataset, self.out = run, loaded, dataset, out

    def on_step(self, report: StepReport) -> None:
        if report.step % self.run.train.sample_every == 0:
            self.render(self.out.sample(report.step))

    def render(self, path: Path) -> None:
        """Write one sample to `path`; the next step switches the transformer back to its training adapters."""
        from dreamrelation.config import GenerateConfig
        from dreamrelation.data.video import write_video
        from dreamrelation.generate import render

        for expert in self.loaded.spec.trained_experts(self.run.train.experts):
            activate_adapters(getattr(self.loaded.pipe, expert.component), exported_adapters(self.run.method))
        shape = self.dataset.shape
        config = GenerateConfig(
            prompt=self.run.train.sample_prompt or self.dataset.captions[0],
            num_frames=shape.num_frames,
            height=shape.height,
            width=shape.width,
        )
        write_video(path, render(self.loaded, config), fps=self.loaded.defaults.fps)
