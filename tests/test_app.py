"""The app through its public API: a live `python app.py` server driven by gradio_client, as a user's script would.

One server (tiny-random model, a fresh data directory) serves every test of this module; each test opens
its own clients, i.e. its own sessions.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from dreamrelation.data.video import probe_video
from dreamrelation.toyworld.dataset import write_relation_dataset
from dreamrelation.toyworld.world import sample_scenes
from app_server import free_port, start_app, stop_app, stop_workers
from helpers import load_script

pytestmark = pytest.mark.slow  # a live server (see make test-fast)

SETTINGS = dict(steps=4, learning_rate=1e-3, seed=0, sample_every=0, rank=4, lambda_mask=50.0,
                lambda_contrastive=0.01, num_frames=None, height=None, width=None)


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, cache_dir):
    """(url, home) of a live app."""
    home = tmp_path_factory.mktemp("home")
    port = free_port()
    server = start_app(home, cache_dir, port, home.parent / "app.log")
    yield f"http://127.0.0.1:{port}/", home
    stop_app(server)
    stop_workers(home)


@pytest.fixture(scope="module")
def relation_videos(tmp_path_factory) -> list[Path]:
    """Two Shapes World videos of 'orbits' (13 frames at 64x64, the tiny model's clip) with captions beside."""
    root = tmp_path_factory.mktemp("uploads")
    write_relation_dataset(root, sample_scenes(2, seed=3, relations=("orbits",)), 13, 64, 64)
    return sorted(root.glob("*.mp4"))


def _client(url):
    from gradio_client import Client

    return Client(url, verbose=False)


def _captions(videos):
    return "\n".join(v.with_suffix(".txt").read_text().strip() for v in videos)


def _train_steps(client, videos, steps: int) -> str:
    """Upload `videos`, make basic masks and start a job of `steps` steps; returns its id."""
    from gradio_client import handle_file

    dataset_id, summary, overlays, _ = client.predict(
        [handle_file(str(v)) for v in videos], _captions(videos), "orbits", "", "basic", api_name="/create_masks"
    )
    assert "basic" in summary and len(overlays) == len(videos)
    return client.predict(dataset_id, "quick", *{**SETTINGS, "steps": steps}.values(), api_name="/start_training")


def _train(client, videos) -> str:
    return _train_steps(client, videos, SETTINGS["steps"])


def _follow(client, job_id) -> list[dict]:
    job = client.submit(job_id, api_name="/job_status")
    updates = list(job)
    assert job.status().success is not False
    return updates


def test_upload_masks_train_follow_generate(app_server, relation_videos):
    url, _ = app_server
    client = _client(url)
    job_id = _train(client, relation_videos)
    updates = _follow(client, job_id)
    assert updates[-1]["state"] == "done" and updates[-1]["step"] == SETTINGS["steps"]
    # The evaluation loss of the last step (train/evaluation.py), also in the plot's history.
    assert updates[-1]["eval_losses"].keys() == {"eval", "eval_inside", "eval_outside"}
    assert [step for step, _ in updates[-1]["loss_history"]["eval"]] == [SETTINGS["steps"]]
    relations = client.predict(api_name="/list_relations")
    assert [r["job_id"] for r in relations] == [job_id]

    video = client.predict(job_id, "A red circle orbits a blue square.", "", 0, 2, 6.0, 7, 1.0, api_name="/generate")
    path = video["video"] if isinstance(video, dict) else video
    info = probe_video(Path(path))
    assert (info.num_frames, info.width, info.height) == (7, 64, 64)
    compared = client.predict(job_id, "A red circle orbits a blue square.", "", 0, 2, 6.0, 7, 1.0, True,
                              api_name="/generate")
    info = probe_video(Path(compared["video"] if isinstance(compared, dict) else compared))
    assert (info.num_frames, info.width, info.height) == (7, 128, 64 + 12)  # base | relation, under their labels
    lora, settings = client.predict(job_id, api_name="/download_relation")
    assert Path(lora).name == "relation_lora.safetensors" and Path(settings).name == "config.yaml"


def test_another_session_cannot_see_or_touch_a_job(app_server, relation_videos):
    from gradio_client.exceptions import AppError

    url, _ = app_server
    owner, stranger = _client(url), _client(url)
    job_id = _train(owner, relation_videos)
    _follow(owner, job_id)
    assert stranger.predict(api_name="/list_relations") == []
    for api_name, args in (("/job_status", (job_id,)), ("/cancel_job", (job_id,)), ("/resume_job", (job_id,)),
                           ("/download_relation", (job_id,))):
        with pytest.raises(AppError, match="not found"):
            stranger.predict(*args, api_name=api_name)
    with pytest.raises(AppError, match="not found"):
        stranger.predict(job_id, "A red circle orbits a blue square.", "", 0, 2, 6.0, 7, 1.0, api_name="/generate")
    assert owner.predict(job_id, api_name="/job_status")["state"] == "done"


def _tree(home: Path) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file() and "jobs.sqlite3" not in p.name)


def test_bad_input_gets_a_clear_message_and_changes_nothing(app_server, relation_videos, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    url, home = app_server
    client = _client(url)
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("this is text, not a video")
    many = []
    for index in range(31):
        many.append(tmp_path / f"clip {index} é.mp4")
        shutil.copy(relation_videos[0], many[-1])
    before = _tree(home)
    cases = [
        ("/create_masks", ([handle_file(str(not_a_video))], "A red circle orbits a blue square.", "orbits", "", "basic"),
         "no usable video"),
        ("/create_masks", ([handle_file(str(p)) for p in many], "A red circle orbits a blue square.", "orbits", "",
                           "basic"), "at most 30"),
        ("/create_masks", ([handle_file(str(relation_videos[0]))], "", "orbits", "", "basic"), "caption"),
        ("/generate", ("base", "   ", "", 0, 2, 6.0, 7, 1.0), "prompt is empty"),
        ("/job_status", ("no-such-job",), "not found"),
        ("/cancel_job", ("no-such-job",), "not found"),
        ("/start_training", ("no-such-dataset", "quick", *SETTINGS.values()), "not found"),
    ]
    for api_name, args, message in cases:
        with pytest.raises(AppError, match=message):
            client.predict(*args, api_name=api_name)
    assert _tree(home) == before

    job_id = _train(client, relation_videos)
    _follow(client, job_id)
    with pytest.raises(AppError, match="already finished"):
        client.predict(job_id, api_name="/cancel_job")
    assert client.predict(job_id, api_name="/job_status")["state"] == "done"


def test_twenty_clients_poll_for_a_minute_while_training_without_an_error(tmp_path, cache_dir, relation_videos):
    bench = load_script("benchmarks/app_latency.py")
    port = free_port()
    server = start_app(tmp_path / "home", cache_dir, port, tmp_path / "app.log", ["--auth", ":".join(bench.AUTH)])
    url = f"http://127.0.0.1:{port}/"
    try:
        finished = bench.train_job(url, relation_videos, 4, wait=True)
        running = bench.train_job(url, relation_videos, 100_000, wait=False)
        bench.wait_until_training(url, running)
        results = bench.poll(url, finished, seconds=60, clients=20)
        assert bench.client(url).predict(running, api_name="/cancel_job") == "cancelled"
    finally:
        stop_app(server)
        stop_workers(tmp_path / "home")
    assert set(results) == {"/job_status", "/list_relations"}
    for result in results.values():
        assert result["errors"] == [] and len(result["latencies"]) > 20


def test_a_worker_killed_mid_training_resumes_after_an_app_restart(tmp_path, cache_dir, relation_videos):
    import signal

    from dreamrelation.jobs import JobStore
    from dreamrelation.train.progress import read_progress

    home, port = tmp_path / "home", free_port()
    url = f"http://127.0.0.1:{port}/"
    server = start_app(home, cache_dir, port, tmp_path / "app-1.log")
    try:
        client = _client(url)
        job_id = _train_steps(client, relation_videos, steps=400)  # the quick preset checkpoints every 25 steps
        follow = client.submit(job_id, api_name="/job_status")
        for status in follow:
            if status["step"] > 30:
                break
        follow.cancel()
        store = JobStore(home)
        os.kill(store.load(job_id).pid, signal.SIGKILL)
    finally:
        stop_app(server)
    server = start_app(home, cache_dir, port, tmp_path / "app-2.log")
    try:
        # A new session cannot see the job; the store says what happened to it.
        deadline = time.monotonic() + 300
        while store.load(job_id).state not in ("done", "failed", "cancelled") and time.monotonic() < deadline:
            time.sleep(1)
        assert store.load(job_id).state == "done"
        starts = [r["step"] for r in read_progress(store.load(job_id).output_dir / "progress.jsonl") if r.get("event") == "start"]
        assert starts[0] == 0 and starts[-1] >= 25
        assert store.in_states(("queued", "preparing", "training")) == []
    finally:
        stop_app(server)
        stop_workers(home)


def test_mcp_flag_serves_the_named_endpoints_as_tools(tmp_path, cache_dir):
    import json
    import urllib.request

    port = free_port()
    server = start_app(tmp_path / "home", cache_dir, port, tmp_path / "app.log", ["--mcp"])
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/gradio_api/mcp/schema", timeout=30) as response:
            tools = {tool["name"] for tool in json.load(response)}
    finally:
        stop_app(server)
    assert {"create_masks", "start_training", "job_status", "cancel_job", "list_relations", "generate"} <= tools
