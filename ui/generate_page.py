"""The generation page: base model + relation LoRA folder + prompt -> video."""

from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr
from pydantic import ValidationError

from dreamrelation.api import default_model_name, generate_video


def _generate(model: str, lora: str, prompt: str, seed: float, steps: float, frames: float, size: str):
    """Gradio callback: returns the path of the written mp4, or raises gr.Error with a short message."""
    height, width = (int(v) for v in size.split("x"))
    output = Path(tempfile.mkdtemp(prefix="dreamrelation-")) / "video.mp4"
    try:
        return str(generate_video(model, lora.strip() or None, prompt, int(seed), int(steps), int(frames),
                                  height, width, output))
    except ValidationError as error:
        raise gr.Error("; ".join(e["msg"].removeprefix("Value error, ") for e in error.errors())) from None
    except (ValueError, RuntimeError, OSError) as error:
        raise gr.Error(str(error)) from None


def build_demo(default_model: str | None = None) -> gr.Blocks:
    """The Blocks app; `default_model` pre-fills the model box."""
    with gr.Blocks(title="DreamRelation Studio") as demo:
        gr.Markdown(
            "# DreamRelation Studio\nGenerate a relation taught by a relation LoRA (train one with "
            "`dreamrelation train`). Upload, masks and in-app training are coming next."
        )
        with gr.Row():
            model = gr.Textbox(default_model or default_model_name(), label="Base model", elem_id="model")
            lora = gr.Textbox("", label="Relation LoRA folder (empty: base model only)", elem_id="lora")
        prompt = gr.Textbox("A bear is shaking hands with a raccoon.", label="Prompt", elem_id="prompt")
        with gr.Row():
            seed = gr.Number(0, label="Seed", precision=0)
            steps = gr.Slider(2, 64, value=16, step=1, label="Steps")
            frames = gr.Slider(7, 61, value=13, step=6, label="Frames")
            size = gr.Dropdown(["64x64", "128x128", "480x848"], value="64x64", label="Size (HxW)")
        button = gr.Button("Generate", variant="primary", elem_id="generate")
        video = gr.Video(label="Result", elem_id="video")
        button.click(_generate, [model, lora, prompt, seed, steps, frames, size], video, api_name="generate")
    return demo
