"""Gradio callbacks: turn component values into Studio calls and results into component values.

No ML here. Every callback resolves the caller (owner) from the request, every value a caller sends goes
through the library's pydantic configs, every error a user can fix reaches them as a one-line gr.Error
(gradio_client raises it as AppError with the same message) and is logged as one line, and every file goes
out as a copy in gradio's cache (`served`): the data folder itself is never served by path.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import time
import typing
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
from gradio import processing_utils, utils
from pydantic import ValidationError

from dreamrelation.config import GenerateConfig, MaskCorrection, MasksConfig, describe_validation_error
from dreamrelation.jobs import CPU_SLOT
from dreamrelation.studio import Studio
from dreamrelation.studio.datasets import DatasetReport
from dreamrelation.studio.service import BASE_MODEL
from dreamrelation.studio.training import EDITABLE, preset_values

SETTING_NAMES = list(EDITABLE)
DEFAULT_PRESET = "quick"  # the app's: a job of minutes on the CPU toy model (the CLI's is the paper's)
# The choices of the page's radios, by the value each sends: what the callbacks accept, and all they accept.
ENGINES = {name: name for name in typing.get_args(MasksConfig.model_fields["engine"].annotation)}
SUBJECTS = {f"subject {n}": n for n in typing.get_args(MaskCorrection.model_fields["subject"].annotation)}
CLICK_LABELS = {1: "on the subject", 0: "not the subject"}  # a clicked point's label (MaskCorrection.points)
log = logging.getLogger("dreamrelation.app")

try:  # On a ZeroGPU Space a GPU is attached only for the duration of a call decorated with spaces.GPU.
    from spaces import GPU as on_zero_gpu
except ImportError:
    def on_zero_gpu(fn):
        return fn


def identity_of(request: gr.Request | None) -> str:
    """The logged-in user, else the browser/client session: what scopes every dataset, job and file."""
    if request is None:
        raise gr.Error("no session: call this through the app or gradio_client", print_exception=False)
    return f"user:{request.username}" if request.username else f"session:{request.session_hash}"


def _message(error: Exception) -> str:
    if isinstance(error, ValidationError):
        return describe_validation_error(error)
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def user_errors(fn):
    """Decorator: a ValueError/OSError/RuntimeError in a callback becomes a one-line gr.Error, logged as one
    line (a user's mistake is not a crash: no traceback in the app's log)."""

    def refuse(error: Exception):
        message = _message(error)
        log.info("refused %s: %s", fn.__name__, message)
        return gr.Error(message, print_exception=False)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, OSError, RuntimeError) as error:
            raise refuse(error) from None

    @functools.wraps(fn)
    def generator_wrapper(*args, **kwargs):
        try:
            yield from fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, OSError, RuntimeError) as error:
            raise refuse(error) from None

    return generator_wrapper if inspect.isgeneratorfunction(fn) else wrapper


def choice(field: str, value, choices: dict):
    """What a radio's `value` stands for in `choices` (the values it sends -> what they mean to the library);
    for any other value a ValueError naming the values (the page's radios pass every value on, for this line)."""
    try:
        return choices[value]
    except (KeyError, TypeError):  # TypeError: a list or an object, which no radio sends
        allowed = ", ".join(repr(key) for key in choices)
        raise ValueError(f"{field}: must be one of {allowed}, got {value!r}") from None


def served(path: Path) -> str:
    """A copy of one of the owner's files in gradio's cache (content-hashed, salted folder), which is what
    gradio hands out for any output; app.py blocks the data folder itself from ever being served."""
    return processing_utils.save_file_to_cache(path, cache_dir=utils.get_upload_folder())


def _when(seconds: float) -> str:
    """'14:05' today, else '3 Dec 14:05': what tells one of a user's jobs or relations from another of that name."""
    moment = time.localtime(seconds)
    today = time.localtime()
    same_day = (moment.tm_year, moment.tm_yday) == (today.tm_year, today.tm_yday)
    return time.strftime("%H:%M" if same_day else "%-d %b %H:%M", moment)


def _gpus(count: int, devices) -> str:
    """'GPU 0' / 'GPUs 0, 1' once placed (none: 'the CPU'), else how many it asks for."""
    if devices:
        named = [device for device in devices if device != CPU_SLOT]
        return f"GPU{'s' if len(named) > 1 else ''} {', '.join(named)}" if named else "the CPU"
    return f"{count} GPU{'s' if count > 1 else ''}"


def _whole(value, name: str, default: int) -> int:
    """A whole number from a form or API value (None or blank: `default`); ValueError in one line otherwise."""
    if value in (None, ""):
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if isinstance(value, bool) or number is None or not number.is_integer():
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(number)


def _paths(files) -> list[Path]:
    if not files:
        return []
    files = files if isinstance(files, list) else [files]
    return [Path(f if isinstance(f, str) else f.name) for f in files]


def report_outputs(report: DatasetReport):
    """(dataset id, summary markdown, overlay gallery items, video names) of a dataset report."""
    lines = [f"**{report.relation}**: {len(report.videos)} video(s)"]
    engines = {v.engine for v in report.videos if v.engine}
    notices = {v.notice for v in report.videos if v.notice}
    if engines:
        lines.append(f"Masks made with: {', '.join(sorted(engines))}.")
    lines += [f"> {notice}" for notice in sorted(notices)]
    if report.videos:
        lines.append("✅ masks ready · ⚠️ masks made, but check the warning · ❌ no masks: left out of training")
    for video in report.videos:
        subjects = f"subjects {' and '.join(video.subjects)}" if video.subjects else "no two subjects in its caption"
        status = f"❌ {video.error}" if video.error else ("⚠️ " + "; ".join(video.flags) if video.flags else "✅ ok")
        lines.append(f"- `{video.name}` ({subjects}): {status}")
    lines += [f"- rejected: {line}" for line in report.rejected]
    if not report.ready:
        lines.append("No video has masks: training needs at least one.")
    gallery = [(served(v.overlay), f"{v.name}: {v.caption}") for v in report.videos if v.overlay is not None]
    names = [v.name for v in report.videos if v.error is None]
    return report.dataset_id, "\n".join(lines), gallery, gr.update(choices=names, value=names[0] if names else None)


def build_callbacks(studio: Studio):
    """The app's callbacks bound to one Studio, as a namespace of functions (names = API names)."""

    def owner_of(request: gr.Request | None) -> str:
        return studio.owner_key(identity_of(request))

    @user_errors
    def create_masks(videos: list[str], captions: str, relation: str, subjects: str | None = None, engine: str = "auto",
                     request: gr.Request = None, progress=gr.Progress()):
        """Upload relation videos (1-30) with captions (one per line, or one for all) and make subject masks.
        Returns the dataset id, a summary, the mask overlays and the video names."""
        engine = choice("engine", engine, ENGINES)
        report = studio.create_dataset(owner_of(request), relation or "", _paths(videos), captions or "",
                                       subjects or None, engine, progress)
        return report_outputs(report)

    @user_errors
    def load_example(example: str, request: gr.Request = None):
        """Start from a bundled example relation dataset (videos, captions, ground-truth masks)."""
        return report_outputs(studio.load_example(owner_of(request), example))

    @user_errors
    def correct_masks(dataset_id: str, video: str, frame: float = 0, subject: str = "subject 1", points: str = "[]",
                      request: gr.Request = None, progress=gr.Progress()):
        """Correct one subject ('subject 1' or 'subject 2') on a frame with points as JSON [[x, y, label], ...]
        (label 1 on it, 0 not); re-propagates that video's masks."""
        correction = MaskCorrection.model_validate(
            {"frame": frame, "subject": choice("subject", subject, SUBJECTS), "points": points}
        )
        report = studio.correct_masks(owner_of(request), dataset_id, video, correction, progress)
        return report_outputs(report)

    @user_errors
    def start_training(dataset_id: str, preset: str = DEFAULT_PRESET, steps: int | None = None,
                       learning_rate: float | None = None, seed: int | None = None, sample_every: int | None = None,
                       rank: int | None = None, lambda_mask: float | None = None,
                       lambda_contrastive: float | None = None, num_frames: int | None = None,
                       height: int | None = None, width: int | None = None, experts: str | None = None,
                       gpus: int | None = None, request: gr.Request = None):
        """Queue a training job on a dataset with a preset ('quick' or 'paper'); any setting left out (None)
        keeps the preset's, clip sizes left out (or 0) the model's; `experts` ('high', 'low', 'both') is for
        two-expert models; `gpus` (default 1) how many GPUs the job trains on. Returns the job id."""
        values = dict(steps=steps, learning_rate=learning_rate, seed=seed, sample_every=sample_every, rank=rank,
                      lambda_mask=lambda_mask, lambda_contrastive=lambda_contrastive, num_frames=num_frames,
                      height=height, width=width, experts=experts)
        settings = {name: None if values[name] in ("", None) else values[name] for name in SETTING_NAMES}
        for name in ("num_frames", "height", "width"):  # a blank browser field arrives as 0: the model's default
            settings[name] = settings[name] or None
        return studio.start_training(owner_of(request), dataset_id, preset, settings, _whole(gpus, "gpus", 1)).id

    @user_errors
    def job_status(job_id: str, request: gr.Request):
        """Stream the job's status (JSON) until it has finished: state, step, steps, ETA, losses, log tail."""
        owner = owner_of(request)
        if not job_id:
            raise ValueError("no job id: start a training job first")
        for status in studio.follow_job(owner, str(job_id).strip()):
            yield status.to_public_dict()

    @user_errors
    def cancel_job(job_id: str, request: gr.Request):
        """Cancel a queued or running job; returns its state."""
        return studio.cancel_job(owner_of(request), str(job_id).strip()).state

    @user_errors
    def resume_job(job_id: str, request: gr.Request):
        """Resume a failed or cancelled job from its newest checkpoint; returns its state."""
        return studio.resume_job(owner_of(request), str(job_id).strip()).state

    @user_errors
    def delete_job(job_id: str, request: gr.Request):
        """Delete a finished (done, failed or cancelled) job with its run, its relation LoRA and the videos
        generated with it, to free room; returns 'deleted'."""
        studio.delete_job(owner_of(request), str(job_id or "").strip())
        return "deleted"

    @user_errors
    def delete_dataset(dataset_id: str, request: gr.Request):
        """Delete one of your datasets (videos, masks, cached latents); relations trained on it stay. Returns
        'deleted'."""
        studio.delete_dataset(owner_of(request), str(dataset_id or "").strip())
        return "deleted"

    @user_errors
    def list_relations(request: gr.Request):
        """Your trained relations: [{job_id, relation, steps, ...}]."""
        return [r.to_public_dict() for r in studio.list_relations(owner_of(request))]

    @user_errors
    @on_zero_gpu
    def generate(relation_id: str | None = None, prompt: str | None = None, negative_prompt: str = "", seed: int = 0,
                 steps: int | None = None, guidance_scale: float | None = None, num_frames: int | None = None,
                 lora_scale: float = 1.0, compare: bool = False, request: gr.Request = None):
        """Generate a video of a trained relation (its job id; left out or 'base': the base model alone);
        steps, guidance_scale and num_frames left out (num_frames 0 too) are the model's. With `compare`, the same
        request is also rendered by the base model alone. Returns the mp4: with `compare`, both side by side
        (base left, relation right, labelled)."""
        request_config = GenerateConfig.model_validate(dict(
            prompt=prompt or "", negative_prompt=negative_prompt or "", seed=seed, steps=steps,
            guidance_scale=guidance_scale, num_frames=num_frames or None, lora_scale=lora_scale,
            compare=bool(compare),
        ))
        record = studio.generate(owner_of(request), str(relation_id or BASE_MODEL).strip(), request_config)
        return served(record.comparison or record.video)

    @user_errors
    def download_relation(relation_id: str, request: gr.Request = None):
        """The relation's LoRA (diffusers .safetensors), its training settings (config.yaml) and, for a model
        family ComfyUI loads, the LoRA in ComfyUI's format."""
        return [served(p) for p in studio.relation_files(owner_of(request), str(relation_id).strip())]

    @user_errors
    def publish_relation(relation_id: str, repo_id: str, token: str, private: bool = False,
                         request: gr.Request = None):
        """Publish one of your trained relations (its job id) to the Hugging Face Hub as the model repo
        `repo_id` (user/name, created when missing; `private` for a private one) with your write `token`, which
        serves this request only and is never stored or logged. Returns the repo's URL."""
        return studio.publish_relation(owner_of(request), str(relation_id or "").strip(), repo_id or "", token,
                                       bool(private))

    # UI-only helpers (not part of the API).
    @user_errors
    def refresh_job(job_id: str, request: gr.Request):
        if not job_id:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        status = studio.job_status(owner_of(request), job_id)
        queue = f", position {status.queue_position} in the queue" if status.queue_position else ""
        eta = f", about {int(status.eta_s)} s left" if status.eta_s else ""
        error = f"\n\n**Error:** {status.error}" if status.error else ""
        summary = (f"**{status.relation}** — {status.state}{queue}: step {status.step}/{status.steps}{eta}; "
                   f"{_gpus(status.gpus, status.devices)}; {status.memory_note}{error}")
        rows = [{"step": s, "value": v, "term": term} for term, points in status.loss_history.items() for s, v in points]
        import pandas as pd

        plot = pd.DataFrame(rows or [{"step": 0, "value": 0.0, "term": "loss"}])
        sample = served(status.sample_video) if status.sample_video else None
        return summary, status.fraction, plot, sample, "\n".join(status.log_tail)

    @user_errors
    def relation_choices(request: gr.Request):
        relations = studio.list_relations(owner_of(request))
        choices = [(f"{r.relation} — {r.steps} steps, {_when(r.created)}", r.job_id) for r in relations]
        choices += [("base model (no relation)", BASE_MODEL)]
        return gr.update(choices=choices, value=choices[0][1])

    @user_errors
    def relation_gallery(relation_id: str, request: gr.Request):
        records = studio.gallery(owner_of(request), relation_id or BASE_MODEL)
        return [(served(r.video), f"{r.settings['prompt']} (seed {r.settings['seed']})") for r in records]

    @user_errors
    def dataset_choices(request: gr.Request):
        """The owner's datasets by name (values: their ids), newest first; the pick stays where it is, or takes
        the newest when there is none."""
        reports = studio.list_datasets(owner_of(request))
        choices = [(f"{r.relation} — {len(r.videos)} video(s), {'ready' if r.ready else 'no masks'}", r.dataset_id)
                   for r in reports]
        return gr.update(choices=choices, value=choices[0][1] if choices else None)

    def example_preview(example: str):
        """A copy of the first video of a bundled example (None for an unknown name)."""
        path = studio.example_preview(example)
        return served(path) if path is not None else None

    @user_errors
    def my_jobs(request: gr.Request):
        # What does not change while a job runs: its state, GPUs and queue place are in the summary below.
        jobs = studio.list_jobs(owner_of(request))
        return gr.update(choices=[(f"{j.relation} — {j.gpus} GPU{'s' if j.gpus > 1 else ''}, submitted "
                                   f"{_when(j.created)}", j.id) for j in jobs])

    def preset_form(preset: str):
        values = preset_values(preset)
        return [values[name] for name in SETTING_NAMES]

    @user_errors
    def add_point(points: str, label: int, event: gr.SelectData):
        """Append the clicked pixel (x, y) with the label picked to the points list (JSON)."""
        label = choice("label (1 on the subject, 0 not)", label, {value: value for value in CLICK_LABELS})
        try:
            listed = json.loads(points or "[]")
        except json.JSONDecodeError:
            listed = None
        if not isinstance(listed, list):
            raise ValueError(f"points: write the points as [[x, y, label], ...], got {points!r}")
        x, y = event.index
        return json.dumps(listed + [[x, y, label]])

    @user_errors
    def show_frame(dataset_id: str, video: str, frame: float, request: gr.Request):
        if not dataset_id or not video:
            return None
        return studio.overlay_frame(owner_of(request), dataset_id, video, int(frame))

    return SimpleNamespace(**{f.__name__: f for f in (
        create_masks, load_example, correct_masks, start_training, job_status, cancel_job, resume_job, delete_job,
        delete_dataset,
        list_relations, generate, download_relation, refresh_job, relation_choices, relation_gallery, my_jobs,
        preset_form, show_frame, add_point, dataset_choices, example_preview, publish_relation,
    )})
