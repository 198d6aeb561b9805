"""The `dreamrelation` command line end to end, its errors, and multi-process training with accelerate."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dreamrelation.config import MethodConfig
from dreamrelation.data.video import probe_video, read_frames

from helpers import exported_run, write_hub_cache, write_two_subject_dataset

REPO = Path(__file__).resolve().parents[1]


def run_cli(args, cache_dir, *, module="dreamrelation.cli", launcher=(), timeout=600, env=None):
    env = {**os.environ, "DREAMRELATION_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO),
           **(env or {})}
    command = [*launcher, "-m", module, *args] if launcher else [sys.executable, "-m", module, *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_two_subject_dataset(tmp_path_factory.mktemp("cli-data"), num_videos=2, num_frames=13)


def test_train_then_generate_writes_the_requested_video(data_dir, cache_dir, tmp_path):
    out = tmp_path / "run"
    trained = run_cli(
        ["train", "--data", str(data_dir), "--output", str(out), "--steps", "3", "--frames", "13",
         "--height", "32", "--width", "32", "--device", "cpu"],
        cache_dir,
    )
    assert trained.returncode == 0, trained.stderr
    assert (out / "relation_lora.safetensors").exists()
    video = tmp_path / "bear and raccoon.mp4"
    generated = run_cli(
        ["generate", "--lora", str(out), "--prompt", "A bear is approaching a raccoon.", "--output", str(video),
         "--frames", "13", "--height", "48", "--width", "64", "--steps", "2", "--device", "cpu"],
        cache_dir,
    )
    assert generated.returncode == 0, generated.stderr
    info = probe_video(video)
    assert (info.num_frames, info.height, info.width) == (13, 48, 64)


def test_a_yaml_config_is_read_and_flags_override_it(data_dir, cache_dir, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {{name: tiny-random, device: cpu}}\ndata: {{data_dir: '{data_dir}', num_frames: 13, height: 32, width: 32}}\n"
        f"train: {{output_dir: '{tmp_path / 'out'}', steps: 50}}\nmethod: {{rank: 4}}\n"
    )
    result = run_cli(["train", "--config", str(config), "--steps", "2"], cache_dir)
    assert result.returncode == 0, result.stderr
    assert "trained 2 steps" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--data", "{missing}"], "dataset folder not found"),
        (["train", "--data", "{nocaption}"], "caption"),
        (["train", "--data", "{data}", "--frames", "12"], "6k+1"),
        (["train", "--data", "{data}", "--steps", "0"], "steps"),
        (["train", "--data", "{data}", "--model", "no-such-model"], "unknown model"),
        (["generate", "--prompt", " ", "--output", "{out}/x.mp4"], "prompt is empty"),
        (["generate", "--prompt", "A dog.", "--lora", "{missing}", "--output", "{out}/x.mp4"], "no relation LoRA"),
        (["train", "--data", "{data}", "--seed", "-1"], "train.seed: must be from 0 to 4294967295, got -1"),
        (["train", "--data", "{data}", "--steps", "abc"], "argument --steps: invalid int value: 'abc'"),
        (["train", "--data", "{data}", "--relation-share", "1.5"], "method.relation_share"),
        (["train", "--data", "{data}", "--dropout-subject-weight", "-1"], "method.dropout_subject_weight"),
        (["train", "--data", "{data}", "--sigma-sampling", "cosine"], "argument --sigma-sampling: invalid choice"),
        (["train", "--data", "{data}", "--steps", str(10**9)], "train.steps: must be from 1 to 100000"),
        (["generate", "--prompt", "A dog.", "--seed", str(2**70), "--output", "{out}/x.mp4"], "seed: must be from 0"),
        (["generate", "--prompt", "A dog.", "--frames", "601", "--output", "{out}/x.mp4", "--device", "cpu",
          "--model", "tiny-random"], "num_frames: at most 163 for this model, got 601"),
        (["train", "--data", "{small_masks}", "--frames", "13", "--device", "cpu", "--output", "{out}/run"],
         "masks are 24x16 but the video is 32x32; export the masks at the video's size"),
        (["train", "--data", "{noisy_masks}", "--frames", "13", "--device", "cpu", "--output", "{out}/run"],
         "subject colours"),
        (["train", "--data", "{long_caption}", "--frames", "13", "--device", "cpu", "--output", "{out}/run"],
         "caption is 2802 tokens long and the model reads at most 32; shorten it"),
        (["ingest", "{latin1}", "--data", "{out}/new"], "clip00.txt: caption is not UTF-8 text; save it as UTF-8"),
        (["ingest", "{video}", "--data", "{video}"], "is a file, not a dataset folder"),
        (["generate", "--prompt", "A dog.", "--lora", "someone/missing", "--output", "{out}/x.mp4"],
         "relation someone/missing could not be fetched from the Hub or its cache (LocalEntryNotFoundError)"),
        (["push", "{missing}", "--repo", "someone/approaching"], "no relation LoRA in"),
        (["push", "{data}", "--repo", "not a repo"], "not a Hub repo id: write user/name"),
        (["train", "--data", "{one_subject}", "--frames", "13", "--device", "cpu", "--output", "{out}/run"],
         "one_subject/clip00.txt: caption names one subject; name both subjects in it, e.g. 'A dog is chasing a cat.'"),
        (["masks", "--data", "{one_frame}", "--engine", "basic"],
         "dreamrelation: clip00: the video has 1 frame; a relation clip needs at least 2 (and training takes the "
         "model's num_frames): use a video, not a still image"),
    ],
    ids=["missing-folder", "missing-caption", "frames", "steps", "model", "empty-prompt", "missing-lora",
         "negative-seed", "non-numeric-steps", "relation-share", "dropout-subject-weight", "sigma-sampling",
         "huge-steps", "huge-seed", "too-many-frames", "mask-size",
         "mask-colours", "long-caption", "latin1-caption", "data-is-a-file", "missing-hub-lora", "push-no-run",
         "push-bad-repo", "one-subject-caption", "one-frame-video"],
)
def test_bad_input_gets_one_clear_line_and_exit_code_2(data_dir, cache_dir, tmp_path, args, message):
    values = {"missing": tmp_path / "missing", "data": data_dir, "out": tmp_path}
    for name in ("nocaption", "small_masks", "noisy_masks", "long_caption", "latin1", "one_subject"):
        values[name] = write_two_subject_dataset(tmp_path / name, num_videos=1, num_frames=13)
    values["one_frame"] = write_two_subject_dataset(tmp_path / "one_frame", num_videos=1, num_frames=1)
    shutil.rmtree(values["one_frame"] / "masks")  # a still image, captioned, to make masks for
    (values["one_subject"] / "clip00.txt").write_text("A red square moves.\n")
    next(values["nocaption"].glob("*.txt")).unlink()
    for png in values["small_masks"].glob("masks/*/*.png"):
        Image.open(png).resize((24, 16), Image.NEAREST).save(png)
    for png in values["noisy_masks"].glob("masks/*/*.png"):  # a soft brush: no flat subject colour left
        noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(np.maximum(np.asarray(Image.open(png).convert("RGB")), noise)).save(png)
    # Two subjects (else the caption check before the model loads answers first), 2801 one-token words + EOS.
    next(values["long_caption"].glob("*.txt")).write_text("red " * 2797 + "square on a square")
    next(values["latin1"].glob("*.txt")).write_bytes("Un carré rouge approche un carré vert.".encode("latin-1"))
    values["latin1"], values["video"] = next(values["latin1"].glob("*.mp4")), next(data_dir.glob("*.mp4"))
    result = run_cli([a.format(**values) for a in args], cache_dir)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip() and "%|" not in line]) == 1, result.stderr
    assert not (tmp_path / "x.mp4").exists() and not (tmp_path / "new").exists()


def test_generate_takes_a_published_relation_by_its_hub_id_from_the_cache_offline(tiny, model_config, cache_dir,
                                                                                  tmp_path):
    run = tmp_path / "run"
    lora = exported_run(tiny, model_config, MethodConfig(rank=4), run)
    hub_cache = tmp_path / "hf-cache"
    write_hub_cache(hub_cache, "someone/approaching", {lora.name: lora, "config.yaml": run / "config.yaml"})
    request = ["--prompt", "A bear is approaching a raccoon.", "--frames", "13", "--height", "32", "--width", "32",
               "--steps", "2", "--device", "cpu", "--model", "tiny-random"]
    videos = {}
    for name, lora_argument in (("hub", "someone/approaching"), ("local", str(run))):
        videos[name] = tmp_path / f"{name}.mp4"
        result = run_cli(["generate", "--lora", lora_argument, "--output", str(videos[name]), *request], cache_dir,
                         env={"HF_HUB_CACHE": str(hub_cache)})
        assert result.returncode == 0, result.stderr
    frames = {name: read_frames(path, list(range(13))) for name, path in videos.items()}
    assert np.array_equal(frames["hub"], frames["local"])  # the same LoRA, loaded from the cached snapshot


def test_push_offline_fails_in_one_line_that_never_shows_the_token(tiny, model_config, cache_dir, tmp_path):
    token = "hf_SECRETtoken123"
    exported_run(tiny, model_config, MethodConfig(rank=4), tmp_path / "run")
    result = run_cli(["push", str(tmp_path / "run"), "--repo", "someone/approaching", "--private"], cache_dir,
                     env={"HF_TOKEN": token})
    assert result.returncode == 2
    assert result.stderr.strip() == ("dreamrelation: error: could not publish to the Hub (OfflineModeIsEnabled): "
                                     "check the token and the repo name")
    assert token not in result.stdout + result.stderr


def test_help_documents_every_option():
    result = subprocess.run([sys.executable, "-m", "dreamrelation.cli", "train", "--help"], capture_output=True,
                            text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0
    for flag in ("--no-mask-loss", "--no-contrastive", "--no-subject-adapters", "--method", "--resume", "--masks",
                 "--relation-share", "--subject-dropout", "--dropout-subject-weight", "--sigma-sampling",
                 "--sigma-shift", "--sigma-logit-mean"):
        assert flag in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-random", "tiny-random-wan"])
def test_accelerate_launch_two_processes_trains_identical_adapters(data_dir, cache_dir, tmp_path, model):
    # `--multi_gpu` selects torchrun; on a machine without GPUs the processes talk over gloo on the CPU
    # (accelerate's `--cpu` alone would start a single process).
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    env_script = str(REPO / "tests" / "distributed_train.py")
    result = subprocess.run(
        [*launcher, env_script, str(data_dir), str(tmp_path), str(cache_dir), model],
        capture_output=True, text=True, timeout=600, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = load_file(tmp_path / "adapters-rank0.safetensors")
    rank1 = load_file(tmp_path / "adapters-rank1.safetensors")
    assert rank0.keys() == rank1.keys() and len(rank0) > 0
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert any(rank0[k].abs().sum() > 0 for k in rank0 if "lora_B" in k)
    assert (tmp_path / "relation_lora.safetensors").exists()


@pytest.mark.parametrize("model", [[], ["--model", "tiny-random-wan22"]], ids=["default", "wan22"])
def test_raw_videos_to_trained_lora_through_ingest_masks_and_train(cache_dir, tmp_path, model):
    """A dataset prepared only by the CLI (ingest, then basic masks) trains; on a two-expert model both experts
    train and generate."""
    from dreamrelation.data.video import write_video
    from dreamrelation.toyworld.render import render_scene
    from dreamrelation.toyworld.world import Scene, Subject

    uploads = tmp_path / "uploads"
    for i, name in enumerate(["my clip (1).mp4", "Überraschung.mov"]):
        scene = Scene(Subject("circle", "red", "large"), Subject("square", "blue", "large"), "approaches", seed=i)
        frames, _ = render_scene(scene, 20, 80, 96)
        write_video(uploads / name, frames, fps=30)
    data = tmp_path / "data"
    ingested = run_cli(
        ["ingest", str(uploads / "my clip (1).mp4"), str(uploads / "Überraschung.mov"), "--data", str(data),
         "--caption", "A red circle approaches a blue square.", "--frames", "13", "--height", "64",
         "--width", "64", "--fps", "30", *model],
        cache_dir,
    )
    assert ingested.returncode == 0, ingested.stderr
    masked = run_cli(["masks", "--data", str(data), "--engine", "basic"], cache_dir)
    assert masked.returncode == 0, masked.stderr
    assert "masks written for 2 of 2" in masked.stdout
    assert "100%" in masked.stderr  # the progress bar
    trained = run_cli(
        ["train", "--data", str(data), "--output", str(tmp_path / "run"), "--steps", "2", "--frames", "13",
         "--height", "64", "--width", "64", "--device", "cpu", *model, *(["--experts", "both"] if model else [])],
        cache_dir,
    )
    assert trained.returncode == 0, trained.stderr
    assert (tmp_path / "run" / "relation_lora.safetensors").exists()
    assert (tmp_path / "run" / "relation_lora_transformer_2.safetensors").exists() == bool(model)
    if model:
        generated = run_cli(["generate", "--lora", str(tmp_path / "run"), "--prompt", "A red circle approaches a "
                             "blue square.", "--output", str(tmp_path / "run" / "out.mp4"), "--steps", "2", *model],
                            cache_dir)
        assert generated.returncode == 0, generated.stderr
        assert "13 frames, 64x64" in generated.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run", "uploads"]  # nothing written elsewhere


def test_masks_command_reports_a_caption_with_one_subject(cache_dir, tmp_path):
    data = write_two_subject_dataset(tmp_path / "data", num_videos=2, num_frames=13, height=32, width=32)
    (data / "clip00.txt").write_text("Two people high-five.")
    result = run_cli(["masks", "--data", str(data), "--engine", "basic"], cache_dir)
    assert result.returncode == 2
    assert "clip00" in result.stderr and "one subject" in result.stderr and "Traceback" not in result.stderr
    assert "masks written for 1 of 2" in result.stdout
