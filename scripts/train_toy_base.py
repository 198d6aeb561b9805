"""Train the embedded Shapes World base model (a genuine diffusers MochiPipeline) from scratch.

Phases, each resumable from WORK_DIR (rerun the same command after an interruption):
  1. clips      render Shapes World videos of the trained (not held-out) relations with captions;
  2. vae        train the tiny AutoencoderKLMochi on short windows and crops (Mochi's 8x space / 6x causal time), then set
                its latents_mean / latents_std from its own latents; with --reuse-vae FOLDER, take instead the VAE
                (weights, latents_mean / latents_std) of a saved pipeline and train none (for frames that look
                the same: shapes, colours and frame size unchanged);
  3. text       with --text-pretrain-steps N > 0, pretrain the T5 on text alone over the whole caption grammar so
                each token's output carries its role (dreamrelation.toyworld.text_pretraining), then freeze it;
  4. latents    encode every clip (VAE mean) and caption (the frozen T5 over the word-level vocabulary: random
                unless phase 3 ran);
  5. transformer  train the MochiTransformer3DModel with the flow-matching objective of training (the same
                `training_forward` the relation trainer uses), batched attention, caption dropout for CFG,
                without the clips of world.HELD_OUT_COLOUR_PAIRS (kept unseen for the quality bar); with
                --train-text-encoder the T5 trains with it, encoding the captions at every step;
                With --reuse-transformer FOLDER, phases 3 and 5 take FOLDER's T5 and transformer instead;
                with --init-from FOLDER, phases 2 and 5 start from FOLDER's weights (its T5 kept, no phase 3);
  6. decoder    fine-tune the VAE's decoder alone (encoder frozen, so the latents, their statistics and the
                transformer trained on them stay valid) to decode the clips' latents back to their frames, L1 on
                random crops: sharper edges and cleaner colours than the MSE-trained decoder;
  7. save       `MochiPipeline.save_pretrained(OUTPUT)`, loadable with `from_pretrained` like a Hub model.

    PYTHONPATH=. python scripts/train_toy_base.py --output assets/models/toy           # the real run
    PYTHONPATH=. python scripts/train_toy_base.py --quick --output /tmp/toy --work-dir /tmp/toy-work
    PYTHONPATH=. python scripts/train_toy_base.py --reuse-transformer assets/models/toy   # decoder phase only
Losses go to WORK_DIR/loss.jsonl ({"phase", "step", "loss", "time"} lines); a tqdm bar shows each phase.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from dreamrelation.models.mochi import use_batched_attention
from dreamrelation.models.base import ClipShape, GenerationDefaults, write_clip_defaults
from dreamrelation.models.mochi import MochiSpecification
from dreamrelation.models.tiny_random import build_tiny_pipeline
from dreamrelation.toyworld.captions import caption, prompt_subjects
from dreamrelation.toyworld.render import BACKGROUND_GREY, render_scene
from dreamrelation.toyworld.text_pretraining import PRETRAIN_STEPS, pretrain_text_encoder
from dreamrelation.toyworld.world import TRAINED_RELATIONS, is_held_out_pair, sample_scenes
from dreamrelation.train.noise_levels import shift_sigmas
from dreamrelation.train.progress import ProgressLog

VAE_WINDOW = 7  # frames per VAE training window: one causal first frame + one group of 6
MAX_GRAD_NORM = 1.0
WARMUP_STEPS = 200  # transformer steps of linear learning-rate warm-up
TOY_FPS = 24  # the frame rate of Shapes World datasets (dreamrelation.toyworld.dataset)
SHIPPED_MODEL = Path("assets/models/toy")
DECODER_STEPS = 800


def _folder_or_none(value: str) -> Path | None:
    """argparse type of --reuse-vae and --reuse-transformer: a folder, or None for 'none'."""
    return None if value.lower() == "none" else Path(value)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=SHIPPED_MODEL, help="Where the pipeline is saved.")
    parser.add_argument("--work-dir", type=Path, default=Path(".toy_work"), help="Resumable intermediate files.")
    parser.add_argument("--device", default="cpu", help="'cpu' or 'cuda'.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the data and the weights.")
    parser.add_argument("--clips", type=int, default=1200, help="Training clips rendered.")
    parser.add_argument("--frames", type=int, default=25, help="Frames per clip (6k+1).")
    parser.add_argument("--size", type=int, default=96, help="Frame side in pixels (multiple of 16).")
    parser.add_argument("--model-size", default="toy", help="Preset of dreamrelation.models.tiny_random.SIZES.")
    parser.add_argument("--vae-steps", type=int, default=2500, help="VAE optimizer steps.")
    parser.add_argument("--vae-lr", type=float, default=5e-4, help="VAE learning rate.")
    parser.add_argument("--vae-batch", type=int, default=4, help="VAE windows per step.")
    parser.add_argument("--vae-crop", type=int, default=64, help="Side of the random square crops the VAE trains "
                        "on (multiple of 8; a convolutional VAE generalises to the full frame; 64 px costs a "
                        "third of 96 px).")
    parser.add_argument("--reuse-vae", type=_folder_or_none, default=SHIPPED_MODEL, metavar="FOLDER|none",
                        help="A saved pipeline folder whose VAE (weights and latents_mean / latents_std) is taken as "
                             "it is, for frames that look the same (shapes, colours and frame size unchanged); 'none' "
                             "trains a VAE (phase 2). Default: the shipped model's VAE, which the shipped transformer "
                             "was trained on.")
    parser.add_argument("--reuse-transformer", type=_folder_or_none, default=None, metavar="FOLDER|none",
                        help="A saved pipeline folder whose T5 and transformer are taken instead of phases 3 and 5 "
                             "(they must have been trained on this VAE's latents), e.g. to fine-tune only the "
                             "decoder of a trained model. Default: none (train them).")
    parser.add_argument("--init-from", type=_folder_or_none, default=None, metavar="FOLDER|none",
                        help="Start from a saved pipeline's weights instead of random ones: phase 2 fine-tunes its VAE "
                             "(with --reuse-vae none; new latent statistics) and phase 5 continues from its transformer, "
                             "its T5 kept (no phase 3). For new latents of the same world, e.g. a VAE that keeps apart "
                             "colours the old one mixed. Default: none.")
    parser.add_argument("--vae-subject-weight", type=float, default=1.0,
                        help="Weight of the subjects' pixels (those far from the clip's background grey) in the VAE's "
                             "reconstruction loss, against 1 for the background's.")
    parser.add_argument("--transformer-subject-weight", type=float, default=1.0,
                        help="Weight of the latent cells a subject touches (its pixels far from the background grey, "
                             "pooled to the latent grid as the relation trainer pools masks) in the transformer's "
                             "flow-matching loss, against 1 for the background's.")
    parser.add_argument("--transformer-steps", type=int, default=6000, help="Transformer optimizer steps.")
    parser.add_argument("--decoder-steps", type=int, default=DECODER_STEPS,
                        help="Phase 6: steps of decoder-only fine-tuning (0: keep the decoder as it is).")
    parser.add_argument("--decoder-lr", type=float, default=2e-4, help="Decoder fine-tuning learning rate (cosine "
                        "decay to a tenth).")
    parser.add_argument("--decoder-batch", type=int, default=4, help="Clips per decoder step.")
    parser.add_argument("--decoder-crop", type=int, default=48, help="Side in pixels (multiple of 8) of the random "
                        "square crop each decoder step decodes, all frames of the clip.")
    parser.add_argument("--batch", type=int, default=16, help="Clips per transformer step.")
    parser.add_argument("--lr", type=float, default=3e-4,
                        help="Peak learning rate of the transformer (and T5 when trained); cosine decay to a tenth.")
    parser.add_argument("--sigma-shift", type=float, default=1.0,
                        help="Push training noise levels towards noise: "
                             "uniform σ -> shift·σ / (1 + (shift - 1)·σ).")
    parser.add_argument("--text-pretrain-steps", type=int, default=PRETRAIN_STEPS,
                        help="Steps of text-only T5 pretraining on the caption grammar before the latents (0: keep the "
                             "random T5).")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the transformer's training forward (same losses, faster steps after a "
                             "minute or two of compiling).")
    parser.add_argument("--train-text-encoder", action="store_true",
                        help="Train the T5 with the transformer (else it stays frozen and the cached encodings serve).")
    parser.add_argument("--checkpoint-every", type=int, default=250, help="Steps between phase checkpoints.")
    parser.add_argument("--quick", action="store_true", help="A seconds-long run of every phase (for tests).")
    args = parser.parse_args(argv)
    if args.quick:
        args.clips, args.frames, args.size, args.model_size = 6, 7, 32, "tiny"
        args.vae_steps, args.vae_batch, args.transformer_steps, args.batch, args.checkpoint_every = 2, 2, 3, 2, 2
        args.decoder_steps, args.decoder_batch, args.decoder_crop = 2, 2, 16
        args.text_pretrain_steps = min(args.text_pretrain_steps, 3)
        if args.reuse_vae == SHIPPED_MODEL:  # its latent statistics are the shipped clips', not 32 px ones
            args.reuse_vae = None
    if args.init_from and not (args.init_from / "model_index.json").is_file():
        parser.error(f"--init-from {args.init_from}: no saved pipeline there (it holds no model_index.json)")
    if args.init_from and (args.reuse_vae or args.reuse_transformer):
        parser.error("--init-from trains from a model's weights: give it with --reuse-vae none and no --reuse-transformer")
    return args


def render_clips(args) -> tuple[np.ndarray, list[str]]:
    """Phase 1: uint8 clips (N, F, H, W, 3) and their captions, cached in WORK_DIR/clips.npz."""
    path = args.work_dir / "clips.npz"
    if path.exists():
        data = np.load(path)
        return data["clips"], json.loads(str(data["captions"]))
    scenes = sample_scenes(args.clips, seed=args.seed, relations=TRAINED_RELATIONS)
    clips = np.stack([render_scene(s, args.frames, args.size, args.size)[0] for s in tqdm(scenes, desc="clips")])
    captions = [caption(s) for s in scenes]
    np.savez(path, clips=clips, captions=json.dumps(captions))
    return clips, captions


def to_video_tensor(clips: np.ndarray, device) -> torch.Tensor:
    """uint8 (B, F, H, W, 3) -> float (B, 3, F, H, W) in [-1, 1]."""
    return torch.from_numpy(clips).to(device).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def resumable_loop(name: str, module, optimizer, steps: int, args, step_fn, log: ProgressLog, schedule=None) -> None:
    """Run `step_fn(step) -> loss tensor` for `steps` optimizer steps, stepping the learning-rate `schedule` (when
    given) after each; checkpoints model, optimizer, schedule and torch's RNG to WORK_DIR/NAME.pt."""
    checkpoint = args.work_dir / f"{name}.pt"
    start = 0
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if schedule is not None:
            schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"])
        start = state["step"]
    bar = tqdm(total=steps, initial=start, desc=name)
    for step in range(start, steps):
        loss = step_fn(step)
        loss.backward()
        # Clipped, and skipped when not finite: a crop of plain background gives GroupNorm a zero variance,
        # whose gradient overflows now and then (unclipped, the VAE's loss stayed at the mean-image level).
        grad_norm = torch.nn.utils.clip_grad_norm_(module.parameters(), MAX_GRAD_NORM)
        if torch.isfinite(grad_norm):
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if schedule is not None:
            schedule.step()
        log.write(phase=name, step=step + 1, loss=loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == steps:
            state = {"model": module.state_dict(), "optimizer": optimizer.state_dict(),
                     "schedule": schedule.state_dict() if schedule is not None else None,
                     "rng": torch.get_rng_state(), "step": step + 1}
            torch.save(state, checkpoint.with_suffix(".tmp"))
            checkpoint.with_suffix(".tmp").replace(checkpoint)
    bar.close()


def train_vae(vae, clips: np.ndarray, args, log: ProgressLog) -> None:
    """Phase 2: reconstruction (MSE) + a light KL on random VAE_WINDOW-frame windows; then latent statistics."""
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(args.seed)
    crop = min(args.vae_crop, args.size)

    def step(_):
        picks = torch.randint(len(clips), (args.vae_batch,), generator=generator).tolist()
        start = int(torch.randint(clips.shape[1] - VAE_WINDOW + 1, (1,), generator=generator))
        top, left = (int(torch.randint(side - crop + 1, (1,), generator=generator)) for side in clips.shape[2:4])
        window = clips[picks, start : start + VAE_WINDOW, top : top + crop, left : left + crop]
        video = to_video_tensor(window, args.device)
        posterior = vae.encode(video).latent_dist
        reconstruction = vae.decode(posterior.sample(generator=None)).sample
        # Subjects are about a tenth of the pixels but carry every colour the judges read: under a plain MSE the
        # shipped VAE encoded cyan nearly as blue (docs/toy-model.md).
        weight = 1 + (args.vae_subject_weight - 1) * subject_pixels(video)
        mse = (weight * (reconstruction - video) ** 2).sum() / (weight.sum() * video.shape[1])
        return mse + 1e-6 * posterior.kl().mean()

    resumable_loop("vae", vae, optimizer, args.vae_steps, args, step, log)
    vae.eval()


def subject_pixels(video: torch.Tensor) -> torch.Tensor:
    """float (B, 1, F, H, W): 1 where a pixel of `video` (float (B, 3, F, H, W) in [-1, 1]) is far from the
    background (the render's grey, its texture included: 40 levels or more in a channel), else 0."""
    grey = BACKGROUND_GREY / 127.5 - 1.0
    return ((video - grey).abs().amax(dim=1, keepdim=True) > 40 / 127.5).float()


# VAE config entries that are statistics of its latents, not its architecture.
VAE_STATISTICS = ("latents_mean", "latents_std", "scaling_factor")


def load_vae(vae, folder: Path) -> None:
    """Load FOLDER/vae's weights and latent statistics into `vae`, which must have its architecture."""
    from diffusers import AutoencoderKLMochi

    source = AutoencoderKLMochi.from_pretrained(folder, subfolder="vae")

    def architecture(config) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()
                if not k.startswith("_") and k not in VAE_STATISTICS}

    if architecture(source.config) != architecture(vae.config):
        raise ValueError(f"{folder}: its VAE's architecture differs from --model-size's")
    vae.load_state_dict(source.state_dict())
    vae.register_to_config(**{k: source.config[k] for k in VAE_STATISTICS})


def reuse_vae(vae, folder: Path) -> None:
    """Phase 2 with --reuse-vae: FOLDER's VAE as it is, in eval mode."""
    load_vae(vae, folder)
    vae.eval()
    print(f"reused the VAE of {folder} (no VAE training)")


def load_text_and_transformer(pipe, folder: Path) -> None:
    """Load FOLDER's T5 and transformer weights into `pipe`, both in eval mode."""
    from diffusers import MochiTransformer3DModel
    from transformers import T5EncoderModel

    pipe.transformer.load_state_dict(MochiTransformer3DModel.from_pretrained(folder, subfolder="transformer").state_dict())
    pipe.text_encoder.load_state_dict(T5EncoderModel.from_pretrained(folder, subfolder="text_encoder").state_dict())
    pipe.transformer.eval()
    pipe.text_encoder.eval()


def reuse_transformer(pipe, folder: Path) -> None:
    """Phases 3 and 5 with --reuse-transformer: FOLDER's T5 and transformer as they are."""
    load_text_and_transformer(pipe, folder)
    print(f"reused the T5 and transformer of {folder} (no text pretraining, no transformer training)")


def pretrain_text(pipe, args, log: ProgressLog) -> None:
    """Phase 3: text-only role pretraining of the T5, saved to (and on reruns loaded from) WORK_DIR/text_encoder."""
    from transformers import T5EncoderModel

    path = args.work_dir / "text_encoder"
    if not path.exists():
        metrics = pretrain_text_encoder(pipe.text_encoder, pipe.tokenizer, args.text_pretrain_steps, args.seed,
                                        log=lambda step, loss: log.write(phase="text", step=step, loss=loss))
        print(f"text encoder pretrained: {metrics}")
        # Saved under a temporary name and renamed, so an interrupted save is not mistaken for a finished phase.
        staging = path.with_suffix(".tmp")
        pipe.text_encoder.save_pretrained(staging)
        staging.replace(path)
    pipe.text_encoder.load_state_dict(T5EncoderModel.from_pretrained(path).state_dict())
    # Eval mode on a rerun too (the built T5 is in training mode), so resumed runs encode captions alike.
    pipe.text_encoder.eval()


@torch.no_grad()
def encode_latents(pipe, clips: np.ndarray, captions: list[str], args) -> dict[str, torch.Tensor]:
    """Phase 4: VAE means of every clip, the VAE's latent statistics, and the caption encodings (cached)."""
    path = args.work_dir / "latents.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    spec = MochiSpecification()
    means = torch.cat([
        pipe.vae.encode(to_video_tensor(clips[i : i + 4], args.device)).latent_dist.mean.cpu()
        for i in tqdm(range(0, len(clips), 4), desc="latents")
    ])
    if args.reuse_vae:  # the reused VAE keeps its own statistics
        latents_mean, latents_std = torch.tensor(pipe.vae.config.latents_mean), torch.tensor(pipe.vae.config.latents_std)
    else:
        latents_mean = means.mean(dim=(0, 2, 3, 4))
        latents_std = means.std(dim=(0, 2, 3, 4)).clamp_min(1e-3)
    pipe.vae.register_to_config(latents_mean=latents_mean.tolist(), latents_std=latents_std.tolist(), scaling_factor=1.0)
    embeds, masks = zip(*(spec.encode_prompts(pipe, captions[i : i + 64]) for i in range(0, len(captions), 64)))
    empty_embeds, empty_mask = spec.encode_prompts(pipe, [""])
    record = {
        "means": means,  # what the decoder reads (phase 6)
        "latents": spec.normalize_latents(pipe.vae.config, means),
        "embeds": torch.cat(embeds).cpu(),
        "masks": torch.cat(masks).cpu(),
        "empty_embeds": empty_embeds.cpu(),
        "empty_mask": empty_mask.cpu(),
        "latents_mean": latents_mean.tolist(),
        "latents_std": latents_std.tolist(),
    }
    torch.save(record, path)
    return record


@torch.no_grad()
def latent_subject_cells(clips: np.ndarray, picks: np.ndarray, spec: MochiSpecification) -> torch.Tensor:
    """uint8 clips (N, F, H, W, 3) and K indices -> float (K, 1, F', H/s, W/s): the latent cells any subject pixel
    of those clips falls in (subject_pixels pooled as the relation trainer pools its masks:
    ModelSpecification.masks_to_latent_grid)."""
    cells = [spec.masks_to_latent_grid(subject_pixels(to_video_tensor(clips[picks[i : i + 32]], "cpu"))[:, 0])
             for i in range(0, len(picks), 32)]
    return torch.cat(cells)[:, None]


def train_transformer(
    pipe, clips: np.ndarray, data: dict[str, torch.Tensor], captions: list[str], args, log: ProgressLog
) -> None:
    """Phase 5: flow matching on the cached latents, 10% empty captions (for classifier-free guidance), the
    subjects' latent cells weighted --transformer-subject-weight."""
    spec = MochiSpecification()
    transformer = pipe.transformer
    use_batched_attention(transformer)
    forward = torch.compile(transformer) if args.compile else transformer
    trained = transformer
    if args.train_text_encoder:
        trained = torch.nn.ModuleDict({"transformer": transformer, "text_encoder": pipe.text_encoder})
    trained.train()
    optimizer = torch.optim.AdamW(trained.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=WARMUP_STEPS, num_training_steps=args.transformer_steps, min_lr_rate=0.1
    )
    generator = torch.Generator().manual_seed(args.seed + 1)
    # Clips of the held-out colour pairs stay out of training (the quality bar's unseen subject pairs).
    seen = torch.tensor([not is_held_out_pair(a.colour, b.colour) for a, b in map(prompt_subjects, captions)])
    latents, embeds, masks = data["latents"][seen], data["embeds"][seen], data["masks"][seen]
    seen_captions = [c for c, keep in zip(captions, seen.tolist()) if keep]
    # (N, 1, F', H', W'): 1 + (w - 1) on the latent cells a subject touches; None at weight 1 (the plain MSE, with
    # no pass over the clips).
    weights = None
    if args.transformer_subject_weight != 1:
        cells = latent_subject_cells(clips, np.flatnonzero(seen.numpy()), spec)
        weights = 1 + (args.transformer_subject_weight - 1) * cells

    def encode(picks: torch.Tensor, drop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if args.train_text_encoder:
            prompts = ["" if d else seen_captions[p] for p, d in zip(picks.tolist(), drop.tolist())]
            encoded = pipe.encode_prompt(prompts, do_classifier_free_guidance=False,
                                         max_sequence_length=spec.max_text_length(pipe), device=args.device)
            return encoded[0], encoded[1]
        text = torch.where(drop[:, None, None], data["empty_embeds"], embeds[picks])
        return text, torch.where(drop[:, None], data["empty_mask"], masks[picks])

    def step(_):
        picks = torch.randint(len(latents), (args.batch,), generator=generator)
        drop = torch.rand(args.batch, generator=generator) < 0.1
        text, text_mask = encode(picks, drop)
        z0 = latents[picks]
        noise = torch.randn(z0.shape, generator=generator)
        sigmas = shift_sigmas(torch.rand(args.batch, generator=generator), args.sigma_shift)
        pred, target = spec.training_forward(
            forward, z0.to(args.device), noise.to(args.device), sigmas.to(args.device),
            text.to(args.device), text_mask.to(args.device), torch.float32,
        )
        if weights is None:
            return ((pred - target) ** 2).mean()
        # Subjects are about a tenth of the cells but carry every colour and shape the judges read.
        weight = weights[picks].to(args.device)
        return (weight * (pred - target) ** 2).sum() / (weight.sum() * pred.shape[1])

    resumable_loop("transformer", trained, optimizer, args.transformer_steps, args, step, log, schedule)
    trained.eval()


def finetune_decoder(pipe, clips: np.ndarray, data: dict[str, torch.Tensor], args, log: ProgressLog) -> None:
    """Phase 6: L1 between the decoded crop of a clip's cached VAE means and the same crop of its frames; only
    the decoder's weights change, so the encoder's latents (and everything trained on them) stay valid."""
    vae = pipe.vae
    vae.requires_grad_(False)
    vae.decoder.requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.decoder.parameters(), lr=args.decoder_lr, weight_decay=0.0)
    schedule = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=0, num_training_steps=args.decoder_steps, min_lr_rate=0.1
    )
    means, scale = data["means"], pipe.vae_spatial_scale_factor
    generator = torch.Generator().manual_seed(args.seed + 2)
    crop = min(args.decoder_crop, args.size) // scale  # the crop's side in latent cells

    def step(_):
        picks = torch.randint(len(clips), (args.decoder_batch,), generator=generator)
        top, left = (int(torch.randint(side - crop + 1, (1,), generator=generator)) for side in means.shape[3:5])
        latents = means[picks, :, :, top : top + crop, left : left + crop].to(args.device)
        window = clips[picks.numpy(), :, top * scale : (top + crop) * scale, left * scale : (left + crop) * scale]
        return (vae.decode(latents).sample - to_video_tensor(window, args.device)).abs().mean()

    vae.decoder.train()
    resumable_loop("decoder", vae.decoder, optimizer, args.decoder_steps, args, step, log, schedule)
    vae.eval()
    vae.requires_grad_(False)


def main(argv=None) -> None:
    args = parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    log = ProgressLog(args.work_dir / "loss.jsonl")
    torch.manual_seed(args.seed)
    pipe = build_tiny_pipeline(seed=args.seed, size=args.model_size).to(args.device)
    clips, captions = render_clips(args)
    if args.init_from:
        load_vae(pipe.vae, args.init_from)
        load_text_and_transformer(pipe, args.init_from)
    if args.reuse_vae:
        reuse_vae(pipe.vae, args.reuse_vae)
    else:
        train_vae(pipe.vae, clips, args, log)
    if args.reuse_transformer:
        reuse_transformer(pipe, args.reuse_transformer)
    elif args.text_pretrain_steps and not args.init_from:
        pretrain_text(pipe, args, log)
    pipe.text_encoder.requires_grad_(args.train_text_encoder and not args.reuse_transformer)
    data = encode_latents(pipe, clips, captions, args)
    pipe.vae.register_to_config(latents_mean=data["latents_mean"], latents_std=data["latents_std"], scaling_factor=1.0)
    if not args.reuse_transformer:
        train_transformer(pipe, clips, data, captions, args, log)
    if args.decoder_steps:
        finetune_decoder(pipe, clips, data, args, log)
    pipe.to("cpu").save_pretrained(args.output)
    # Served at 30 steps (seconds a video on a CPU) and CFG 3: higher guidance over-saturates the prompted colours
    # into their neighbours (a cyan subject drawn partly blue; docs/toy-model.md, "Guidance").
    write_clip_defaults(args.output, ClipShape(num_frames=args.frames, height=args.size, width=args.size, fps=TOY_FPS),
                        GenerationDefaults(steps=30, guidance_scale=3.0))
    print(f"saved the toy MochiPipeline to {args.output}")


if __name__ == "__main__":
    main()
