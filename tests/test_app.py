"""The placeholder app builds and its generate callback works through the library."""

import gradio as gr
import pytest

from ui.generate_page import _generate, build_demo


def test_demo_builds_with_a_named_generate_endpoint():
    demo = build_demo("tiny-random")
    assert any(dep.api_name == "generate" for dep in demo.fns.values())


def test_generate_callback_writes_a_video_and_reports_bad_input(cache_dir, monkeypatch):
    monkeypatch.setenv("DREAMRELATION_CACHE", str(cache_dir))
    path = _generate("tiny-random", "", "A dog is chasing a cat.", 0, 2, 7, "64x64")
    assert path.endswith(".mp4")
    with pytest.raises(gr.Error, match="prompt is empty"):
        _generate("tiny-random", "", "  ", 0, 2, 7, "64x64")
    with pytest.raises(gr.Error, match="no relation LoRA"):
        _generate("tiny-random", "/no/such/lora", "A dog.", 0, 2, 7, "64x64")
