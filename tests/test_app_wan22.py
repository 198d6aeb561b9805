"""The app on a two-expert Wan 2.2 model (tiny-random-wan22), through gradio_client: the page names the model and
its experts, a relation trains on both experts and generates."""

import json
import urllib.request
from pathlib import Path

import pytest

from dreamrelation.data.video import probe_video
from dreamrelation.toyworld.dataset import write_relation_dataset
from dreamrelation.toyworld.world import sample_scenes
from dreamrelation.outputs import EXPERT_LORA_FILENAMES

from app_server import free_port, start_app, stop_app, stop_workers

pytestmark = pytest.mark.slow  # a live server (see make test-fast)

SETTINGS = dict(steps=3, learning_rate=1e-3, seed=0, sample_every=0, rank=4, lambda_mask=50.0,
                lambda_contrastive=0.01, num_frames=None, height=None, width=None, experts="both")


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, cache_dir):
    home = tmp_path_factory.mktemp("home")
    port = free_port()
    server = start_app(home, cache_dir, port, home.parent / "app.log", ["--model", "tiny-random-wan22"])
    yield f"http://127.0.0.1:{port}/", home
    stop_app(server)
    stop_workers(home)


def test_the_page_names_the_model_and_its_experts_and_a_relation_trains_both(app_server, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    url, _ = app_server
    with urllib.request.urlopen(url + "config", timeout=10) as response:
        page = json.dumps(json.load(response))
    assert "tiny-random-wan22" in page and "two experts" in page and "high-noise expert" in page
    assert "Experts to train" in page

    # 21 frames at 24 fps: long enough for the 13 frames at 16 fps the model trains on
    write_relation_dataset(tmp_path, sample_scenes(2, seed=3, relations=("orbits",)), 21, 64, 64)
    videos = sorted(tmp_path.glob("*.mp4"))
    captions = "\n".join(v.with_suffix(".txt").read_text().strip() for v in videos)
    client = Client(url, verbose=False)
    dataset_id, _, _, _ = client.predict([handle_file(str(v)) for v in videos], captions, "orbits", "", "basic",
                                         api_name="/create_masks")
    job_id = client.predict(dataset_id, "quick", *SETTINGS.values(), api_name="/start_training")
    updates = list(client.submit(job_id, api_name="/job_status"))
    assert updates[-1]["state"] == "done", updates[-1]

    files = client.predict(job_id, api_name="/download_relation")
    loras = list(EXPERT_LORA_FILENAMES.values())  # a file per expert, each also in ComfyUI's format
    twins = [name.replace(".safetensors", "_comfyui.safetensors") for name in loras]
    assert sorted(Path(f).name for f in files) == sorted([*loras, "config.yaml", *twins])
    video = client.predict(job_id, "A red circle orbits a blue square.", "", 0, 2, 5.0, 13, 1.0, api_name="/generate")
    info = probe_video(Path(video["video"] if isinstance(video, dict) else video))
    assert (info.num_frames, info.width, info.height) == (13, 64, 64)

    with pytest.raises(AppError, match=r"^train.experts: Input should be 'high', 'low' or 'both', got 'middle'$"):
        client.predict(dataset_id, "quick", *{**SETTINGS, "experts": "middle"}.values(), api_name="/start_training")
