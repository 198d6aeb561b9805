"""The training loop: learning, exact resume, the latent cache, progress records, events, samples."""

import math

import av
import pytest
import torch
from safetensors.torch import load_file

from dreamrelation.config import DataConfig, MethodConfig, RunConfig, TrainConfig
from dreamrelation.data.cache import prepare_dataset
from dreamrelation.data.dataset import scan_dataset
from dreamrelation.models import load_model
from dreamrelation.outputs import RunDir
from dreamrelation.train import checkpoint as ckpt
from dreamrelation.train.callbacks import TrainerCallback
from dreamrelation.train.progress import read_progress
from dreamrelation.train.trainer import TrainState, make_accelerator, prepare_training, train, train_step

from helpers import write_two_subject_dataset

CLIP = dict(num_frames=13, height=32, width=32)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return write_two_subject_dataset(tmp_path_factory.mktemp("data"), num_videos=2, **CLIP)


def run_config(model_config, data_dir, out, **train):
    return RunConfig(
        model=model_config,
        data=DataConfig(data_dir=data_dir, **CLIP),
        train=TrainConfig(output_dir=out, **train),
    )


@pytest.mark.parametrize("name", ["tiny-random-small", "tiny-random-wan"])
def test_one_clip_is_overfit_by_the_real_training_step(model_config, tmp_path, name):
    """The classic sanity check: the same clip, noise and sigma every step; the loss must fall by half.

    Mochi's 'small' random model: the 0.06M one is too narrow to fit a clip through LoRAs at all."""
    model_config = model_config.model_copy(update={"name": name})
    data_dir = write_two_subject_dataset(tmp_path / "one", num_videos=1, **CLIP)
    # No warm-up: the schedule's first learning rate is then the configured one.
    training, _ = prepared(model_config, data_dir, tmp_path, learning_rate=3e-3, warmup_steps=0, caption_dropout=0.0)
    relation = training.modes[0]
    losses = []
    for _ in range(40):
        state = TrainState(0, torch.Generator().manual_seed(0), torch.Generator().manual_seed(0), None)
        losses.append(train_step(training.ctx, relation, state)["loss_rec"])
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def test_the_evaluation_loss_falls_on_a_model_that_overfits_one_clip(model_config, tmp_path):
    """The real run (random σ and noise each step) on one clip: the fixed-point evaluation loss falls.

    Every step is a relation step (relation_share 1), the mode the evaluation scores: with the subject modes mixed
    in, the fall per 50 steps (~0.005) was within what another CPU's rounding moves it (a rise in CI)."""
    model_config = model_config.model_copy(update={"name": "tiny-random-small"})
    data_dir = write_two_subject_dataset(tmp_path / "one", num_videos=1, **CLIP)
    run = run_config(model_config, data_dir, tmp_path / "run", steps=300, eval_every=100, learning_rate=1e-2,
                     warmup_steps=0, caption_dropout=0.0)
    run = run.model_copy(update={"method": MethodConfig(relation_share=1.0)})
    train(run, show_progress=False)
    evaluations = [r for r in read_progress(tmp_path / "run" / "progress.jsonl") if r.get("event") == "eval"]
    assert [r["step"] for r in evaluations] == [100, 200, 300]
    scores = [r["losses"]["eval"] for r in evaluations]
    # Each step draws its own noise and σ, so the fit is slow (5-8 % from step 100 to 300 over seeds 0-5), but
    # steady: the fixed points see every bit of it (falls of ≥ 0.02 per 100 steps), where the training loss
    # swings by 2x from step to step.
    assert all(later < earlier for earlier, later in zip(scores, scores[1:])), scores
    assert scores[-1] < 0.96 * scores[0], scores


def test_scoring_the_evaluation_loss_leaves_training_as_it_was(model_config, dataset_dir, tmp_path):
    """Its points come from a generator of their own and it runs without gradients: the adapters are bit-for-bit
    those of a run without it."""
    with_eval = run_config(model_config, dataset_dir, tmp_path / "with", steps=4, eval_every=1)
    without = run_config(model_config, dataset_dir, tmp_path / "without", steps=4, eval_every=0)
    train(with_eval, show_progress=False)
    train(without, show_progress=False)
    a, b = final_adapters(tmp_path / "with"), final_adapters(tmp_path / "without")
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    assert not any(r.get("event") == "eval" for r in read_progress(tmp_path / "without" / "progress.jsonl"))


def prepared(model_config, data_dir, out, **train_settings):
    """prepare_training on a freshly loaded tiny model; returns (Training, its first mode: relation)."""
    tiny = load_model(model_config)
    run = run_config(model_config, data_dir, out, **train_settings)
    dataset = prepare_dataset(tiny, scan_dataset(data_dir), run.data, model_config.cache_dir, show_progress=False)
    training = prepare_training(
        run.train, run.method, spec=tiny.spec, transformers={"transformer": tiny.pipe.transformer}, vae_config=tiny.spec.vae_config,
        dtype=tiny.dtype, dataset=dataset, accelerator=make_accelerator("cpu"),
    )
    return training, training.modes[0]


def gradient_norm_at_the_optimizer_step(model_config, dataset_dir, tmp_path, max_grad_norm):
    """The adapters' total gradient norm as AdamW sees it in one relation-mode step."""
    training, relation = prepared(model_config, dataset_dir, tmp_path, max_grad_norm=max_grad_norm)
    norms = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

    training.ctx.optimizer.optimizer.register_step_pre_hook(record)  # the AdamW inside accelerate's wrapper
    train_step(training.ctx, relation, training.state)
    return norms[0]


def test_max_grad_norm_clips_the_total_gradient_norm_and_none_leaves_it(model_config, dataset_dir, tmp_path):
    unclipped = gradient_norm_at_the_optimizer_step(model_config, dataset_dir, tmp_path / "a", None)
    assert unclipped > 1e-2  # so a limit of 1e-3 must act
    clipped = gradient_norm_at_the_optimizer_step(model_config, dataset_dir, tmp_path / "b", 1e-3)
    # torch's clip_grad_norm_ scales by max / (norm + 1e-6).
    assert math.isclose(clipped, 1e-3 * unclipped / (unclipped + 1e-6), rel_tol=1e-4)


def final_adapters(out):
    """{expert/adapter name/weight key: tensor} of the newest checkpoint."""
    experts = torch.load(ckpt.latest_checkpoint(out) / "state.pt", weights_only=False)["adapters"]
    return {f"{expert}/{name}/{key}": value for expert, adapters in experts.items()
            for name, weights in adapters.items() for key, value in weights.items()}


def test_training_2n_steps_equals_n_steps_then_resume_then_n_steps(model_config, dataset_dir, tmp_path):
    straight = run_config(model_config, dataset_dir, tmp_path / "straight", steps=8, checkpoint_every=4)
    train(straight, show_progress=False)

    interrupted = run_config(model_config, dataset_dir, tmp_path / "resumed", steps=8, checkpoint_every=4)
    train(interrupted, show_progress=False)
    # Make it as if the run had died after step 4: only the step-4 checkpoint remains.
    for checkpoint in ckpt.list_checkpoints(tmp_path / "resumed")[1:]:
        __import__("shutil").rmtree(checkpoint)
    assert ckpt.latest_checkpoint(tmp_path / "resumed").name == "step-0000004"
    resumed = interrupted.model_copy(update={"train": interrupted.train.model_copy(update={"resume": True})})
    result = train(resumed, show_progress=False)
    assert result.steps == 8 and len(result.losses) == 4

    a, b = final_adapters(tmp_path / "straight"), final_adapters(tmp_path / "resumed")
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert any(a[k].abs().sum() > 0 for k in a if "lora_B" in k)  # training did move the adapters
    exported_a = load_file(tmp_path / "straight" / "relation_lora.safetensors")
    exported_b = load_file(tmp_path / "resumed" / "relation_lora.safetensors")
    assert all(torch.equal(exported_a[k], exported_b[k]) for k in exported_a)


def test_checkpoints_are_pruned_and_hold_everything_to_continue(model_config, dataset_dir, tmp_path):
    run = run_config(model_config, dataset_dir, tmp_path, steps=6, checkpoint_every=2, keep_checkpoints=2)
    train(run, show_progress=False)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-0000004", "step-0000006"]
    assert not list(RunDir(tmp_path).checkpoints.glob(".*"))  # no staging folder left behind
    state = ckpt.read_part(ckpt.latest_checkpoint(tmp_path), "state")
    assert {"step", "adapters", "optimizer", "lr_schedule", "mode_generator", "config"} <= state.keys()
    own = ckpt.read_part(ckpt.latest_checkpoint(tmp_path), "rank0")
    assert own["data_generator"] is not None and len(own["contrastive"]["positive_bank"]) > 0


def test_a_second_run_encodes_nothing_and_changed_settings_encode_again(model_config, dataset_dir, tmp_path):
    # A cache of its own: the session's may already hold these clips from an earlier test.
    model_config = model_config.model_copy(update={"cache_dir": tmp_path / "cache"})
    first = train(run_config(model_config, dataset_dir, tmp_path / "a", steps=1), show_progress=False)
    assert first.encoded_clips == 2  # both videos of the dataset
    second = train(run_config(model_config, dataset_dir, tmp_path / "b", steps=1), show_progress=False)
    assert second.encoded_clips == 0
    other = run_config(model_config, dataset_dir, tmp_path / "c", steps=1)
    other = other.model_copy(update={"data": DataConfig(data_dir=dataset_dir, num_frames=7, height=32, width=32)})
    assert train(other, show_progress=False).encoded_clips == 2


def test_progress_records_every_step_and_the_end(model_config, dataset_dir, tmp_path):
    run = run_config(model_config, dataset_dir, tmp_path, steps=5, checkpoint_every=100)
    train(run, show_progress=False)
    records = read_progress(tmp_path / "progress.jsonl")
    steps = [r for r in records if "losses" in r and "event" not in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5]
    evaluations = [r for r in records if r.get("event") == "eval"]
    assert [r["step"] for r in evaluations] == [5]  # eval_every 50: only the last step
    assert evaluations[0]["losses"].keys() == {"eval", "eval_inside", "eval_outside"}
    assert {"losses", "lr", "sec_per_step", "eta_s", "mode", "steps", "time"} == steps[0].keys() - {"step"}
    assert steps[0]["losses"].keys() == {"loss", "loss_rec"}  # no contrastive term while the bank is empty
    assert all(r["losses"].keys() == {"loss", "loss_rec", "loss_rcl"} for r in steps[1:])  # filled after step 1
    # The total is the reconstruction plus λ_1 = 0.01 times the contrastive term (docs/method.md §3).
    assert all(
        math.isclose(r["losses"]["loss"], r["losses"]["loss_rec"] + 0.01 * r["losses"]["loss_rcl"], rel_tol=1e-5)
        for r in steps[1:]
    )
    assert records[0]["event"] == "start" and records[-1]["event"] == "done"
    assert (tmp_path / "relation_lora.safetensors").exists() and (tmp_path / "config.yaml").exists()
    assert ckpt.latest_checkpoint(tmp_path).name == "step-0000005"  # the last step is always saved


class EventLog(TrainerCallback):
    """Records each event with the step it names."""

    def __init__(self):
        self.events = []

    def on_prepared(self, run, step, clips):
        self.events.append(("prepared", step, clips))

    def on_step(self, report):
        self.events.append(("step", report.step, report.mode))

    def on_evaluation(self, report):
        self.events.append(("evaluation", report.step, sorted(report.losses)))

    def on_checkpoint(self, step, path):
        self.events.append(("checkpoint", step, path.name))

    def on_done(self, result):
        self.events.append(("done", result.steps, result.lora_path.name))


def test_callbacks_hear_the_events_in_order_and_a_resume_starts_at_its_checkpoint(model_config, dataset_dir, tmp_path):
    log = EventLog()
    run = run_config(model_config, dataset_dir, tmp_path, steps=3, checkpoint_every=2, eval_every=2)
    train(run, show_progress=False, callbacks=[log])
    modes = [event[2] for event in log.events if event[0] == "step"]
    terms = ["eval", "eval_inside", "eval_outside"]
    assert log.events == [
        ("prepared", 0, 2),  # two clips
        ("step", 1, modes[0]),
        ("step", 2, modes[1]),
        ("evaluation", 2, terms),
        ("checkpoint", 2, "step-0000002"),
        ("step", 3, modes[2]),
        ("evaluation", 3, terms),  # the last step always gets one
        ("checkpoint", 3, "step-0000003"),  # the last step always gets one
        ("done", 3, "relation_lora.safetensors"),
    ]
    resumed = EventLog()
    longer = run.model_copy(update={"train": run.train.model_copy(update={"steps": 4, "resume": True})})
    train(longer, show_progress=False, callbacks=[resumed])
    assert [event[:2] for event in resumed.events] == [
        ("prepared", 3), ("step", 4), ("evaluation", 4), ("checkpoint", 4), ("done", 4)]


def test_samples_are_rendered_every_n_steps(model_config, dataset_dir, tmp_path):
    run = run_config(model_config, dataset_dir, tmp_path, steps=2, sample_every=2)
    train(run, show_progress=False)
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step-0000002.mp4"]
    with av.open(str(tmp_path / "samples" / "step-0000002.mp4")) as container:  # decodable, at the clip's shape
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(frames) == CLIP["num_frames"]
    assert frames[0].shape == (CLIP["height"], CLIP["width"], 3)


def test_ablation_switches_train_the_right_adapters(model_config, dataset_dir, tmp_path):
    method = MethodConfig(mode="direct-lora")
    run = run_config(model_config, dataset_dir, tmp_path, steps=2).model_copy(update={"method": method})
    train(run, show_progress=False)
    keys = load_file(tmp_path / "relation_lora.safetensors").keys()
    assert any(".to_v." in k for k in keys)  # direct LoRA covers q, k, v and out
    no_subjects = MethodConfig(subject_adapters=False, contrastive=False, mask_loss=False)
    run = run_config(model_config, dataset_dir, tmp_path / "b", steps=2).model_copy(update={"method": no_subjects})
    train(run, show_progress=False)
    modes = {r["mode"] for r in read_progress(tmp_path / "b" / "progress.jsonl") if "mode" in r}
    assert modes == {"relation"}


def test_bf16_base_trains_with_fp32_adapters(model_config, dataset_dir, tmp_path):
    """The GPU set-up (bf16 base, fp32 adapters), run on the CPU."""
    bf16 = model_config.model_copy(update={"dtype": "bfloat16"})
    loaded = load_model(bf16)
    run = run_config(bf16, dataset_dir, tmp_path, steps=3)
    result = train(run, loaded=loaded, show_progress=False)
    transformer = loaded.pipe.transformer
    assert all(p.dtype == torch.float32 for n, p in transformer.named_parameters() if "lora_" in n)
    assert transformer.transformer_blocks[0].attn1.to_q.base_layer.weight.dtype == torch.bfloat16
    assert all(torch.isfinite(torch.tensor(loss)) for loss in result.losses)


def _prior_folder(dataset_dir, folder):
    """A prior-preservation folder: the dataset's videos and captions, without masks (as the base's own clips)."""
    import shutil

    folder.mkdir()
    for path in dataset_dir.iterdir():
        if path.is_file() and path.suffix in (".mp4", ".txt"):
            shutil.copy(path, folder / path.name)
    return folder


def test_a_prior_step_trains_only_the_kept_adapters_on_a_prior_clip(model_config, dataset_dir, tmp_path):
    from dreamrelation.method.adapters import prior_mode

    prior_dir = _prior_folder(dataset_dir, tmp_path / "prior")
    assert [s.mask_dir for s in scan_dataset(prior_dir, with_masks=False)] == [None, None]
    with pytest.raises(Exception, match="masks folder not found"):
        scan_dataset(prior_dir)
    training, _ = prepared(model_config, dataset_dir, tmp_path / "run", warmup_steps=0)
    tiny_prior = prepare_dataset(load_model(model_config), scan_dataset(prior_dir, with_masks=False),
                                 DataConfig(data_dir=prior_dir, **CLIP), model_config.cache_dir, show_progress=False)
    assert all(not record["subject_masks"].any() for record in tiny_prior.records)
    training.ctx.prior = tiny_prior
    transformer = training.ctx.transformers["transformer"]
    before = {name: p.detach().clone() for name, p in transformer.named_parameters() if "lora_" in name}
    terms = train_step(training.ctx, prior_mode(training.ctx.method), training.state)
    assert terms.keys() == {"loss", "loss_rec"} and terms["loss"] == terms["loss_rec"]  # plain loss, no contrastive
    changed = {name.split(".lora_")[1].split(".")[1] for name, p in transformer.named_parameters()
               if "lora_" in name and not torch.equal(p, before[name])}
    assert changed == {"relation", "ffn"}  # what generation keeps; the subject adapters stay as they were


def test_prior_preservation_mixes_prior_steps_into_a_run(model_config, dataset_dir, tmp_path):
    prior_dir = _prior_folder(dataset_dir, tmp_path / "prior")
    run = run_config(model_config, dataset_dir, tmp_path / "run", steps=12, checkpoint_every=100, prior_dir=prior_dir,
                     prior_share=0.5)
    train(run, show_progress=False)
    modes = [r["mode"] for r in read_progress(tmp_path / "run" / "progress.jsonl") if "mode" in r]
    assert 2 <= modes.count("prior") <= 10 and {"relation", "subject1", "subject2"} & set(modes)
