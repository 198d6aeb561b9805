"""The app against a hostile client and against bad input, on a live `python app.py`.

One server (tiny-random model, a fresh data directory) serves the module. A full flow (upload, masks,
training, generation, download) fills the data folder first; then every file there is requested by path,
owner keys and folder names found on disk are tried as session hashes, another owner's upload is named in a
file input, and a corpus of bad inputs goes through the API, each of which must get one clear line, leave
no traceback in the app's log and change nothing in the data folder.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from dreamrelation.data.video import write_video
from dreamrelation.toyworld.dataset import write_relation_dataset
from dreamrelation.toyworld.world import sample_scenes
from app_server import free_port, start_app, stop_app

pytestmark = pytest.mark.slow  # a live server (see make test-fast)

CAPTION = "A red circle orbits a blue square."
PROMPT_ARGS = dict(prompt=CAPTION, negative_prompt="", seed=0, steps=2, guidance_scale=6.0, num_frames=7,
                   lora_scale=1.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory, cache_dir):
    """(url, home, log path) of a live app."""
    home = tmp_path_factory.mktemp("home")
    log = home.parent / "security-app.log"
    port = free_port()
    process = start_app(home, cache_dir, port, log)
    yield f"http://127.0.0.1:{port}/", home, log
    stop_app(process)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("uploads")
    write_relation_dataset(root, sample_scenes(2, seed=3, relations=("orbits",)), 13, 64, 64)
    return sorted(root.glob("*.mp4"))


def _client(url, session_hash: str | None = None):
    from gradio_client import Client

    client = Client(url, verbose=False)
    if session_hash is not None:
        client.session_hash = session_hash
    return client


@pytest.fixture(scope="module")
def flow(server, videos):
    """A full flow by one client: (client, dataset id, job id)."""
    from gradio_client import handle_file

    url, _, _ = server
    client = _client(url)
    captions = "\n".join(v.with_suffix(".txt").read_text().strip() for v in videos)
    dataset_id, _, _, _ = client.predict([handle_file(str(v)) for v in videos], captions, "orbits", "", "basic",
                                         api_name="/create_masks")
    job_id = client.predict(dataset_id=dataset_id, preset="quick", steps=4, sample_every=2, rank=4,
                            api_name="/start_training")
    updates = list(client.submit(job_id, api_name="/job_status"))
    assert updates[-1]["state"] == "done", updates[-1]
    client.predict(job_id, **PROMPT_ARGS, api_name="/generate")
    client.predict(job_id, api_name="/download_relation")
    return client, dataset_id, job_id


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_no_file_of_the_data_folder_is_served_by_path(server, flow):
    url, home, _ = server
    files = [p for p in home.rglob("*") if p.is_file()]
    kinds = {p.name for p in files}
    assert {"jobs.sqlite3", "worker.log", "relation_lora.safetensors", "config.yaml", "0000.mp4",
            "owner-key"} <= kinds, kinds
    assert any(p.suffix == ".mp4" and "datasets" in p.parts for p in files)  # the uploads
    for path in files:
        text = str(path)
        variants = [text, urllib.parse.quote(text), urllib.parse.quote(text, safe=""),
                    urllib.parse.quote(urllib.parse.quote(text, safe=""), safe=""),
                    f"{home}/./{path.relative_to(home)}", f"{home}/../{home.name}/{path.relative_to(home)}"]
        for variant in variants:
            for route in ("gradio_api/file=", "file="):
                assert _status(f"{url}{route}{variant}") in (403, 404), (route, variant)


def test_nothing_on_disk_lets_another_client_act_as_the_owner(server, flow):
    url, home, _ = server
    owner, _, job_id = flow
    with sqlite3.connect(home / "jobs.sqlite3") as db:
        stored = [row[0] for row in db.execute("SELECT owner FROM jobs")]
    leaks = set(stored) | {p.name for p in (home / "owners").iterdir()}
    leaks |= {f"session:{value}" for value in leaks}
    for leaked in leaks:
        from gradio_client.exceptions import AppError

        stranger = _client(url, session_hash=leaked)
        assert stranger.predict(api_name="/list_relations") == []
        for api_name in ("/job_status", "/cancel_job", "/resume_job", "/download_relation"):
            with pytest.raises(AppError, match="not found"):
                stranger.predict(job_id, api_name=api_name)
    assert owner.predict(api_name="/list_relations")[0]["job_id"] == job_id


def test_no_answer_names_a_file_on_the_server(server, flow):
    """The job's status and the relations list are the owner's, the paths of its files are the server's layout
    (owner folders are named by owner key): the API answers by job id."""
    _, home, _ = server
    client, _, job_id = flow
    updates = list(client.submit(job_id, api_name="/job_status"))
    relations = client.predict(api_name="/list_relations")
    assert updates[-1]["state"] == "done" and relations[0]["job_id"] == job_id
    answers = json.dumps([updates, relations])
    for folder in {str(home), str(home.resolve())}:
        assert folder not in answers, answers
    assert "lora_path" not in answers and "sample_video" not in answers


def test_the_database_holds_no_session_hash_or_user_name(server, flow):
    _, home, _ = server
    owner, _, _ = flow
    raw = b"".join(p.read_bytes() for p in home.glob("jobs.sqlite3*"))
    assert owner.session_hash.encode() not in raw
    assert b"session:" not in raw and b"user:" not in raw
    with sqlite3.connect(home / "jobs.sqlite3") as db:
        for (stored,) in db.execute("SELECT owner FROM jobs"):
            assert len(stored) == 32 and set(stored) <= set("0123456789abcdef")
    secret = home / "secret" / "owner-key"
    assert secret.stat().st_mode & 0o777 == 0o600 and secret.parent.stat().st_mode & 0o777 == 0o700


def _raw_call(url: str, api_name: str, data: list, session_hash: str) -> str:
    """POST a call by hand (as a hostile client would, no gradio_client upload) and return its event stream."""
    request = urllib.request.Request(
        f"{url}gradio_api/call/{api_name}", data=json.dumps({"data": data, "session_hash": session_hash}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        event_id = json.load(response)["event_id"]
    with urllib.request.urlopen(f"{url}gradio_api/call/{api_name}/{event_id}", timeout=120) as response:
        return response.read().decode()


def test_a_file_input_naming_another_owners_upload_is_refused(server, flow):
    url, home, _ = server
    upload = next(p for p in (home / "owners").rglob("*.mp4") if "masks" not in p.parts)
    before = _trees(home)
    file_data = {"path": str(upload), "meta": {"_type": "gradio.FileData"}, "orig_name": upload.name}
    stream = _raw_call(url, "create_masks", [[file_data], CAPTION, "orbits", "", "basic"], "a-stranger")
    assert "event: error" in stream and "event: complete" not in stream
    assert _trees(home) == before


def test_the_exported_lora_is_world_readable(server, flow):
    _, home, _ = server
    _, _, job_id = flow
    lora = home / "jobs" / job_id / "output" / "relation_lora.safetensors"
    assert lora.stat().st_mode & 0o777 == 0o644
    card = (lora.parent / "README.md").read_text()
    assert 'from_pretrained("<the folder of the base model this was trained on (tiny-random)>")' in card
    assert "base_model:" not in card


def test_view_api_names_every_parameter(server):
    url, _, _ = server
    endpoints = _client(url).view_api(print_info=False, return_format="dict")["named_endpoints"]
    expected = {
        "/start_training": ["dataset_id", "preset", "steps", "learning_rate", "seed", "sample_every", "rank",
                            "lambda_mask", "lambda_contrastive", "num_frames", "height", "width", "experts", "gpus"],
        "/generate": ["relation_id", "prompt", "negative_prompt", "seed", "steps", "guidance_scale", "num_frames",
                      "lora_scale", "compare"],
        "/create_masks": ["videos", "captions", "relation", "subjects", "engine"],
        "/correct_masks": ["dataset_id", "video", "frame", "subject", "points"],
    }
    for api_name, names in expected.items():
        parameters = endpoints[api_name]["parameters"]
        assert [p["parameter_name"] for p in parameters] == names, api_name
    training = {p["parameter_name"]: p for p in endpoints["/start_training"]["parameters"]}
    assert training["num_frames"]["parameter_has_default"] and training["num_frames"]["parameter_default"] is None


# --- the bad-input corpus ---------------------------------------------------------------------------------


def _write_frames(path: Path, count: int, side: int) -> Path:
    return write_video(path, np.full((count, side, side, 3), 90, np.uint8), fps=8)


def _audio_only(folder: Path) -> Path:
    import subprocess

    import imageio_ffmpeg

    target = folder / "sound.m4a"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i",
                    "anullsrc=r=8000:cl=mono", "-t", "0.2", str(target)], check=True)
    return target.rename(folder / "sound.mp4")


def _text_file(folder: Path) -> Path:
    (folder / "notes.mp4").write_text("not a video\n")
    return folder / "notes.mp4"


def _empty_file(folder: Path) -> Path:
    (folder / "empty.mp4").touch()
    return folder / "empty.mp4"


UPLOADS = {
    "text named .mp4": (_text_file, "not a readable video"),
    "empty file": (_empty_file, "file is empty"),
    "1-frame video": (lambda d: _write_frames(d / "still.mp4", 1, 64),
                      "still.mp4: video is a still image (1 frame); 13 frames at 24 fps need a clip at least 0.54 s"),
    "no video stream": (_audio_only, "no video stream"),
    "4000x4000 frame": (lambda d: _write_frames(d / "huge.mp4", 2, 4000), "over the limit"),
}


def _trees(home: Path) -> list[str]:
    """Every path under the data folder but the job table's own files (SQLite opens and closes its WAL files)
    and generations (a test's earlier calls may add one)."""
    return sorted(str(p.relative_to(home)) for p in home.rglob("*")
                  if "jobs.sqlite3" not in p.name and "generations" not in p.parts)


def _one_line_refusal(client, log: Path, api_name: str, args: tuple, kwargs: dict, message: str) -> None:
    from gradio_client.exceptions import AppError

    log_before = log.read_text()
    with pytest.raises(AppError) as caught:
        client.predict(*args, **kwargs, api_name=api_name)
    text = str(caught.value)
    assert message in text and "\n" not in text.strip() and "Traceback" not in text, text
    added = log.read_text()[len(log_before):]
    assert "Traceback" not in added, added


def test_bad_uploads_get_one_line_and_change_nothing(server, flow, tmp_path, videos):
    from gradio_client import handle_file

    url, home, log = server
    client = _client(url)
    for name, (make, message) in UPLOADS.items():
        upload = make(tmp_path)
        before = _trees(home)
        _one_line_refusal(client, log, "/create_masks", ([handle_file(str(upload))], CAPTION, "orbits", "", "basic"),
                          {}, message)
        assert _trees(home) == before, name
    for captions, relation, message in (
        ("", "orbits", "caption"),
        (CAPTION + "\n" + CAPTION, "orbits", "2 captions for 1 videos"),
        (CAPTION, "   ", "name the relation"),
    ):
        before = _trees(home)
        _one_line_refusal(client, log, "/create_masks", ([handle_file(str(videos[0]))], captions, relation, "",
                                                         "basic"), {}, message)
        assert _trees(home) == before, captions
    # A caption naming one subject: the dataset is made, its report says on one line why the video has no
    # masks, and training on it is refused in one line, before any job exists.
    dataset_id, summary, overlays, _ = client.predict([handle_file(str(videos[0]))], "A red circle moves.", "orbits",
                                                      "", "basic", api_name="/create_masks")
    assert overlays == [] and "No video has masks" in summary
    name = videos[0].stem
    assert (f"- `{name}` (no two subjects in its caption): ❌ caption names one subject; name both, e.g. 'A dog is "
            "chasing a cat.' or pass --subjects dog,cat") in summary.splitlines()
    before = _trees(home)
    _one_line_refusal(client, log, "/start_training", (dataset_id,), {"steps": 1},
                      f"dataset {dataset_id} has no video with masks yet: fix or replace its videos")
    assert _trees(home) == before


def _private_call(url: str, elem_id: str, data: list, event_data: dict) -> dict:
    """Call by hand the page's private event that takes the component `elem_id` (no API name: the browser calls it
    by its index, and so can a hostile client); returns the queue's closing message."""
    with urllib.request.urlopen(f"{url}config", timeout=30) as response:
        config = json.load(response)
    component = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id)
    event = next(d for d in config["dependencies"] if component in d["inputs"])
    session = uuid.uuid4().hex
    body = {"data": data, "event_data": event_data, "fn_index": event["id"], "trigger_id": event["targets"][0][0],
            "session_hash": session}
    request = urllib.request.Request(f"{url}gradio_api/queue/join", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=60).close()
    with urllib.request.urlopen(f"{url}gradio_api/queue/data?session_hash={session}", timeout=120) as response:
        for line in response:
            message = json.loads(line[5:]) if line.startswith(b"data:") else {}
            if message.get("msg") == "process_completed":
                return message
    raise AssertionError("the queue closed without answering")


ENGINE_CHOICES = "engine: must be one of 'auto', 'sam2', 'basic', got "
SUBJECT_CHOICES = "subject: must be one of 'subject 1', 'subject 2', got "
LABEL_CHOICES = "label (1 on the subject, 0 not): must be one of 1, 0, got "


def test_a_value_outside_a_radios_choices_gets_one_line_naming_them(server, flow, videos):
    from gradio_client import handle_file

    url, home, log = server
    owner, dataset_id, _ = flow
    video = next((home / "owners").glob(f"*/datasets/{dataset_id}/*.mp4")).stem
    before = _trees(home)
    # The mask engine (the Data tab), through gradio_client.
    for value, shown in (("sam3", "'sam3'"), ("", "''"), (3, "3"), (["basic"], "['basic']"), (None, "None")):
        _one_line_refusal(owner, log, "/create_masks", ([handle_file(str(videos[0]))], CAPTION, "orbits", "", value),
                          {}, ENGINE_CHOICES + shown)
    # ... and by hand: the refusal is the whole error event.
    log_before = log.read_text()
    stream = _raw_call(url, "create_masks", [None, CAPTION, "orbits", "", "SAM2"], "a-stranger")
    assert "event: error" in stream and "event: complete" not in stream, stream
    [data] = [line.removeprefix("data: ") for line in stream.splitlines() if line.startswith("data: ")]
    assert json.loads(data)["error"] == ENGINE_CHOICES + "'SAM2'", stream
    assert "Traceback" not in log.read_text()[len(log_before):]
    # The subject a correction is for.
    for value, shown in (("subject 3", "'subject 3'"), (1, "1"), ("Subject 1", "'Subject 1'"), (None, "None")):
        _one_line_refusal(owner, log, "/correct_masks", (dataset_id, video),
                          {"frame": 0, "subject": value, "points": "[[3, 4, 1]]"}, SUBJECT_CHOICES + shown)
    # The label a click adds: a private event (no API name), called by its index as the browser does.
    click = {"index": [3, 4], "value": None, "selected": True}
    for value, shown in ((2, "2"), ("1", "'1'"), ("on the subject", "'on the subject'"), (None, "None")):
        log_before = log.read_text()
        answer = _private_call(url, "correct-label", ["[]", value], click)
        assert answer["success"] is False and answer["output"]["error"] == LABEL_CHOICES + shown, answer
        assert "Traceback" not in log.read_text()[len(log_before):]
    answer = _private_call(url, "correct-label", ["[[1, 2, 1]]", 0], click)  # a click the page sends
    assert answer["success"] is True and answer["output"]["data"] == ["[[1, 2, 1], [3, 4, 0]]"], answer
    assert _trees(home) == before


def test_odd_names_stay_inside_the_dataset(server, flow, tmp_path, videos):
    from gradio_client import handle_file

    url, home, _ = server
    odd = tmp_path / "..é 视频 clip.mp4"
    odd.write_bytes(videos[0].read_bytes())
    dataset_id, _, _, names = _client(url).predict([handle_file(str(odd))], CAPTION, "../../etc/passwd", "", "basic",
                                                   api_name="/create_masks")
    assert dataset_id.startswith("etc-passwd-")
    folder = next((home / "owners").glob(f"*/datasets/{dataset_id}"))
    assert all(p.resolve().is_relative_to(folder) for p in folder.rglob("*"))


def test_bad_settings_get_one_line_naming_the_field_and_change_nothing(server, flow):
    url, home, log = server
    owner, dataset_id, job_id = flow
    video = next((home / "owners").glob(f"*/datasets/{dataset_id}/*.mp4")).stem
    cases = [
        ("/start_training", (dataset_id,), {"seed": -1}, "train.seed: must be from 0 to 4294967295, got -1"),
        ("/start_training", (dataset_id,), {"steps": 10**9}, "train.steps: must be from 1 to 100000"),
        ("/start_training", (dataset_id,), {"steps": "abc"}, "train.steps: Input should be a valid integer"),
        ("/start_training", (dataset_id,), {"learning_rate": "fast"}, "learning_rate"),
        ("/start_training", (dataset_id,), {"num_frames": 12}, "6k+1"),
        ("/start_training", (dataset_id, "turbo"), {}, "unknown preset"),
        ("/generate", (job_id,), {**PROMPT_ARGS, "seed": 2**70}, "seed: must be from 0 to 4294967295"),
        ("/generate", (job_id,), {**PROMPT_ARGS, "num_frames": 601}, "num_frames: at most 163"),
        ("/generate", (job_id,), {**PROMPT_ARGS, "steps": "many"}, "steps: Input should be a valid integer"),
        ("/generate", (job_id,), {**PROMPT_ARGS, "guidance_scale": -2}, "guidance_scale: must be from 0 to 50"),
        ("/generate", (job_id,), {**PROMPT_ARGS, "prompt": "red " * 2800}, "prompt is 2801 tokens long"),
        ("/generate", ("../../jobs",), PROMPT_ARGS, "not a Hub repo id"),
        ("/correct_masks", (dataset_id, video), {"frame": 0, "points": "[[3, 4]]"}, "points: write the points"),
        ("/correct_masks", (dataset_id, video), {"frame": 0, "points": "oops"}, "points: write the points"),
        ("/correct_masks", (dataset_id, video), {"frame": 999, "points": "[[3, 4, 1]]"}, "frame: the video has"),
        ("/correct_masks", (dataset_id, video), {"frame": "x", "points": "[[3, 4, 1]]"}, "frame: Input should"),
        ("/job_status", (["not", "an", "id"],), {}, "not found"),
    ]
    before = _trees(home)
    for api_name, args, kwargs, message in cases:
        _one_line_refusal(owner, log, api_name, args, kwargs, message)
    assert _trees(home) == before
    assert owner.predict(api_name="/list_relations")[0]["job_id"] == job_id


def test_a_logged_in_users_name_is_not_stored_either(tmp_path, cache_dir):
    from gradio_client import Client

    home, port = tmp_path / "home", free_port()
    process = start_app(home, cache_dir, port, tmp_path / "app.log", ["--auth", "zoë-admin:s3cret"])
    try:
        client = Client(f"http://127.0.0.1:{port}/", auth=("zoë-admin", "s3cret"), verbose=False)
        dataset_id, _, _, _ = client.predict("orbits", api_name="/load_example")
        job_id = client.predict(dataset_id=dataset_id, steps=1, api_name="/start_training")
        list(client.submit(job_id, api_name="/job_status"))
    finally:
        stop_app(process)
    raw = b"".join(p.read_bytes() for p in home.glob("jobs.sqlite3*"))
    assert "zoë-admin".encode() not in raw and b"user:" not in raw
    assert not [p for p in home.rglob("*") if "zo" in p.name]
