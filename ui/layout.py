"""The app's page: 1 Data & masks → 2 Train → 3 Generate, wired to ui.callbacks. Layout only.

Every component an automated browser test needs has an elem_id; every API endpoint has an api_name and a
docstring (shown on the app's API page). UI-only events are private (not in the API).
"""

from __future__ import annotations

import typing

import gradio as gr

from dreamrelation.config import TrainConfig
from dreamrelation.studio import Studio
from dreamrelation.studio.datasets import MAX_VIDEOS, list_examples
from dreamrelation.presets import TRAINING_PRESETS, preset_help
from dreamrelation.studio.training import preset_values
from ui.callbacks import CLICK_LABELS, DEFAULT_PRESET, ENGINES, SETTING_NAMES, SUBJECTS, build_callbacks

VIDEO_TYPES = [".mp4", ".mov", ".webm", ".mkv", ".avi", ".gif"]
PRIVATE = {"api_visibility": "private"}
# Reads of the job table and files: never queued behind masks or generation (a status stream lasts a whole job).
LIGHT = {"concurrency_limit": None, "show_progress": "hidden"}


def _value(value, label: str, **kwargs) -> gr.Number:
    """A number field whose value reaches the callback as sent, for the library's configs to check: a field
    with gradio's own bounds or rounding would refuse bad values with a traceback in the app's log."""
    return gr.Number(value, label=label, precision=None, **kwargs)


def _radio(choices, **kwargs) -> gr.Radio:
    """A radio whose value reaches the callback as sent, for the callback to check against the same choices
    (ui.callbacks.choice): gradio's own check would refuse a value outside them with a traceback in the app's log.

    Set on the instance (a subclass of a gradio component makes gradio write a .pyi stub beside this file), so
    keep it an input only: gradio rebuilds a component an event updates from its class."""
    radio = gr.Radio(choices, **kwargs)
    radio.preprocess = lambda payload: payload
    return radio


def _settings_form(defaults: dict, experts: tuple) -> list[gr.components.Component]:
    """The training settings, in SETTING_NAMES order (blank clip sizes = the model's); the expert choice shows
    only for a model with several `experts` (models.base.Expert)."""
    with gr.Row():
        steps = _value(defaults["steps"], "Steps", elem_id="steps")
        learning_rate = _value(defaults["learning_rate"], "Learning rate", elem_id="learning-rate")
        seed = _value(defaults["seed"], "Seed", elem_id="train-seed")
        sample_every = _value(defaults["sample_every"], "Sample every N steps (0: off)")
        rank = _value(defaults["rank"], "LoRA rank", elem_id="rank")
    with gr.Row():
        lambda_mask = _value(defaults["lambda_mask"], "λ_m (hybrid mask weight)", elem_id="lambda-mask")
        lambda_contrastive = _value(defaults["lambda_contrastive"], "λ_1 (contrastive weight)")
        num_frames = _value(None, "Frames (0: model's)")
        height = _value(None, "Height (0: model's)")
        width = _value(None, "Width (0: model's)")
    # Any value reaches the library, which answers a bad one in a line (gradio's own check would log a traceback).
    trained_experts = gr.Dropdown(
        list(typing.get_args(TrainConfig.model_fields["experts"].annotation)), value=defaults["experts"], label="Experts to train", allow_custom_value=True,
        info=TrainConfig.model_fields["experts"].description, visible=len(experts) > 1, elem_id="experts",
    )
    by_name = dict(steps=steps, learning_rate=learning_rate, seed=seed, sample_every=sample_every, rank=rank,
                   lambda_mask=lambda_mask, lambda_contrastive=lambda_contrastive, num_frames=num_frames,
                   height=height, width=width, experts=trained_experts)
    return [by_name[name] for name in SETTING_NAMES]


def build_demo(studio: Studio) -> gr.Blocks:
    """The Blocks app over a Studio."""
    cb = build_callbacks(studio)
    with gr.Blocks(title="DreamRelation Studio") as demo:
        gr.Markdown("# DreamRelation Studio\nTeach a video model a relation from a few videos, then generate it "
                    "with new subjects.")
        gr.Markdown(studio.describe(), elem_id="model-info")
        if warning := studio.storage_warning():
            gr.Markdown(f"⚠️ {warning}", elem_id="storage-warning")
        examples = list_examples()

        with gr.Tab("1. Data & masks", elem_id="tab-data"):
            with gr.Row():
                with gr.Column():
                    gr.Markdown("**Start from an example** (videos, captions and masks of a relation the toy "
                                "model learns), or upload your own videos of one relation below.")
                    example = gr.Dropdown(examples, value=examples[0] if examples else None, label="Example",
                                          elem_id="example")
                    example_preview = gr.Video(cb.example_preview(examples[0]) if examples else None,
                                               label="One of its videos", height=200, interactive=False,
                                               elem_id="example-preview")
                    use_example = gr.Button("Load this example", variant="primary", elem_id="load-example")
                    gr.Markdown("**Or upload your videos**")
                    videos = gr.File(label=f"Relation videos (1–{MAX_VIDEOS})", file_count="multiple",
                                     file_types=VIDEO_TYPES, elem_id="videos")
                    relation = gr.Textbox(label="Relation name", placeholder="shaking hands", elem_id="relation")
                    captions = gr.Textbox(label="Captions: one per video (one per line) or one for all", lines=3,
                                          placeholder="A person is shaking hands with a person.", elem_id="captions")
                    subjects = gr.Textbox(label="Subjects (optional, e.g. 'dog, cat'; default: from captions)",
                                          elem_id="subjects")
                    engine = _radio(list(ENGINES), value="auto", label="Mask engine", elem_id="engine")
                    make_masks = gr.Button("Upload and make masks", variant="primary", elem_id="make-masks")
                with gr.Column():
                    summary = gr.Markdown(elem_id="masks-summary")
                    overlays = gr.Gallery(label="Masks (subject 1 red, subject 2 green)", columns=3, height=320,
                                          elem_id="overlays")
            with gr.Accordion("Correct a subject's mask", open=False):
                with gr.Row():
                    video_name = gr.Dropdown([], label="Video", elem_id="correct-video")
                    frame = _value(0, "Frame", elem_id="correct-frame")
                    subject = _radio(list(SUBJECTS), value="subject 1", label="Subject", elem_id="correct-subject")
                    label = _radio([(name, value) for value, name in CLICK_LABELS.items()], value=1, label="Click adds",
                                   elem_id="correct-label")
                frame_image = gr.Image(label="Click the frame to add points", interactive=False,
                                       elem_id="correct-image")
                points = gr.Textbox("[]", label="Points [[x, y, label], ...]", elem_id="correct-points")
                repropagate = gr.Button("Re-propagate with these points", elem_id="repropagate")

        with gr.Tab("2. Train", elem_id="tab-train"):
            if refusal := studio.training_refusal():
                gr.Markdown(f"⚠️ Here {refusal}.", elem_id="training-refusal")
            # A dropdown that passes any value on: build_run names the presets (a Radio refuses others itself,
            # logging a traceback for a caller's typo).
            # Picked by name; the value (what the API takes and returns) is the dataset's id.
            with gr.Row():
                dataset_id = gr.Dropdown([], label="Dataset to train on", allow_custom_value=True,
                                         elem_id="dataset-pick", scale=4,
                                         info="The dataset you made or loaded last, or any other of yours.")
                delete_dataset = gr.Button("Delete this dataset", size="sm", elem_id="delete-dataset", scale=1)
            preset = gr.Dropdown(list(TRAINING_PRESETS), value=DEFAULT_PRESET, label="Preset", info=preset_help(),
                                 allow_custom_value=True, elem_id="preset")
            form = _settings_form(preset_values(DEFAULT_PRESET), studio.spec.experts)
            gpus = _value(1, "GPUs", visible=studio.max_gpus_per_job > 1, elem_id="gpus",
                          info=f"How many GPUs the job trains on (1 to {studio.max_gpus_per_job}; data-parallel); "
                          "it starts when that many are free.")
            with gr.Row():
                start = gr.Button("Start training", variant="primary", elem_id="start-training")
                # Picked by name; the value (what the API takes and returns) is the job's id.
                job_id = gr.Dropdown([], label="Job", allow_custom_value=True, elem_id="my-jobs",
                                     info="The job this tab follows: the one you started last, or any other of yours.")
                cancel = gr.Button("Cancel", variant="stop", elem_id="cancel-job")
                resume = gr.Button("Resume", elem_id="resume-job")
                delete_job = gr.Button("Delete", elem_id="delete-job")
            job_state = gr.Textbox(visible=False)  # what cancel/resume answer through the API; the summary shows it
            status_request = gr.Button(visible=False)  # the named /job_status endpoint (a stream, not for the page)
            job_summary = gr.Markdown(elem_id="job-summary")
            progress_bar = gr.Slider(0, 1, value=0, label="Progress", interactive=False, elem_id="job-progress")
            loss_plot = gr.LinePlot(x="step", y="value", color="term", label="Loss terms: training (each step) and "
                                    "eval (fixed clips, noise and σ, every 50 steps; inside/outside the masks)",
                                    elem_id="loss-plot")
            sample_video = gr.Video(label="Latest sample", height=240, elem_id="sample-video")
            log_tail = gr.Textbox(label="Log", lines=8, max_lines=8, interactive=False, elem_id="job-log")
            timer = gr.Timer(1.0)

        with gr.Tab("3. Generate", elem_id="tab-generate"):
            with gr.Row():
                relation_pick = gr.Dropdown([], label="Relation", elem_id="relation-pick", allow_custom_value=True)
                refresh = gr.Button("Refresh relations", elem_id="refresh-relations")
            prompt = gr.Textbox(label="Prompt", placeholder="A red circle orbits a blue square.", elem_id="prompt")
            negative = gr.Textbox("", label="Negative prompt", elem_id="negative-prompt")
            with gr.Row():
                seed = _value(0, "Seed", elem_id="gen-seed")
                steps = _value(studio.generation_defaults.steps, "Steps", elem_id="gen-steps")
                guidance = _value(studio.generation_defaults.guidance_scale, "Guidance (CFG)", elem_id="gen-cfg",
                                  info="How closely to follow the prompt (classifier-free guidance).")
                group = studio.spec.frame_group
                frames = _value(studio.clip_defaults.num_frames, "Frames", elem_id="gen-frames",
                                info=f"{group}k+1 (e.g. {2 * group + 1}, {4 * group + 1}): the model's video encoder "
                                f"packs frames in groups of {group} after the first.")
                lora_scale = _value(1.0, "Relation strength", elem_id="lora-scale",
                                    info="The relation LoRA's scale: 0 is the base model, 1 as trained.")
                compare = gr.Checkbox(False, label="Compare with the base model", elem_id="compare",
                                      info="Also render the same prompt and seed without the relation: the base on "
                                      "the left, the relation on the right.")
            go = gr.Button("Generate", variant="primary", elem_id="generate")
            result = gr.Video(label="Result", height=320, elem_id="result-video")
            history = gr.Gallery(label="Earlier generations of this relation", columns=4, height=280, elem_id="gallery")
            download = gr.Button("Download the relation LoRA and settings", elem_id="download")
            files = gr.File(label="Downloads", file_count="multiple", elem_id="downloads")
            with gr.Accordion("Publish to the Hub, or generate with a relation from it", open=False):
                with gr.Row():
                    hub_repo = gr.Textbox(label="Hub repo id (user/name)", elem_id="hub-repo")
                    hub_token = gr.Textbox(label="Hugging Face write token (for this request only, never stored)",
                                           type="password", elem_id="hub-token")
                    hub_private = gr.Checkbox(False, label="Private repo", elem_id="hub-private")
                publish = gr.Button("Publish the relation to the Hub", elem_id="publish")
                published = gr.Textbox(label="Published", interactive=False, elem_id="published")
                with gr.Row():
                    hub_relation = gr.Textbox(label="A relation from the Hub (user/name)", elem_id="hub-relation")
                    use_hub = gr.Button("Generate with it (sets the relation above)", elem_id="use-hub-relation")

        # Data & masks.
        mask_outputs = [dataset_id, summary, overlays, video_name]
        make_masks.click(cb.create_masks, [videos, captions, relation, subjects, engine], mask_outputs,
                         api_name="create_masks").then(cb.dataset_choices, None, dataset_id, **PRIVATE)
        use_example.click(cb.load_example, [example], mask_outputs, api_name="load_example").then(
            cb.dataset_choices, None, dataset_id, **PRIVATE)
        example.change(cb.example_preview, example, example_preview, **PRIVATE)
        demo.load(cb.dataset_choices, None, dataset_id, **PRIVATE)
        repropagate.click(cb.correct_masks, [dataset_id, video_name, frame, subject, points], mask_outputs,
                          api_name="correct_masks").then(lambda: "[]", None, points, **PRIVATE)
        for trigger in (video_name.change, frame.change, overlays.change):
            trigger(cb.show_frame, [dataset_id, video_name, frame], frame_image, **PRIVATE)
        frame_image.select(cb.add_point, [points, label], points, **PRIVATE)

        # Training.
        preset.change(cb.preset_form, preset, form, **PRIVATE)
        start.click(cb.start_training, [dataset_id, preset, *form, gpus], job_id, api_name="start_training").then(
            cb.my_jobs, None, job_id, **PRIVATE)
        delete_dataset.click(cb.delete_dataset, dataset_id, job_state, api_name="delete_dataset", **LIGHT).then(
            cb.dataset_choices, None, dataset_id, **PRIVATE)
        status_api = gr.JSON(visible=False)
        status_request.click(cb.job_status, job_id, status_api, api_name="job_status", **LIGHT)
        for action, name in ((cancel, "cancel_job"), (resume, "resume_job"), (delete_job, "delete_job")):
            action.click(getattr(cb, name), job_id, job_state, api_name=name, **LIGHT).then(
                cb.my_jobs, None, job_id, **PRIVATE)
        timer.tick(cb.refresh_job, job_id, [job_summary, progress_bar, loss_plot, sample_video, log_tail], **PRIVATE,
                   **LIGHT)
        demo.load(cb.my_jobs, None, job_id, **PRIVATE)

        # Generation.
        relations_api = gr.JSON(visible=False)
        refresh.click(cb.list_relations, None, relations_api, api_name="list_relations", **LIGHT)
        gr.on([refresh.click, demo.load], cb.relation_choices, None, relation_pick, **PRIVATE)
        go.click(cb.generate, [relation_pick, prompt, negative, seed, steps, guidance, frames, lora_scale, compare], result,
                 api_name="generate", concurrency_limit=1).then(cb.relation_gallery, relation_pick, history, **PRIVATE)
        relation_pick.change(cb.relation_gallery, relation_pick, history, **PRIVATE)
        download.click(cb.download_relation, relation_pick, files, api_name="download_relation")

        # The Hub: the token field is emptied after each publish, whatever its outcome.
        publish.click(cb.publish_relation, [relation_pick, hub_repo, hub_token, hub_private], published,
                      api_name="publish_relation").then(lambda: "", None, hub_token, **PRIVATE)
        use_hub.click(lambda repo_id: (repo_id or "").strip(), hub_relation, relation_pick, **PRIVATE)
    return demo
