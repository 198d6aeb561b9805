"""The Hub from the app, on a live `python app.py` whose Hub is unreachable (HF_HUB_OFFLINE=1) and whose own login
(HF_TOKEN) must never serve a visitor: a publish fails or is refused in one line, after which the token the
caller sent is nowhere (the data folder, the app's log, the workers' logs); a relation laid out in the hub
client's cache generates by its Hub id."""

from __future__ import annotations

import shutil

import pytest

from app_server import free_port, start_app, stop_app
from helpers import write_hub_cache

pytestmark = pytest.mark.slow  # a live server (see make test-fast)

TOKEN = "hf_SECRETtoken123"
SERVER_TOKEN = "hf_SERVERtoken456"  # the app's own login, as a Space secret would set it
PROMPT_ARGS = dict(prompt="A red circle orbits a blue square.", negative_prompt="", seed=0, steps=2,
                   guidance_scale=6.0, num_frames=7, lora_scale=1.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory, cache_dir):
    """(url, home, log path, the app's hub cache) of a live app with a login of its own."""
    home, hub_cache = tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("hf-cache")
    log = home.parent / "hub-app.log"
    port = free_port()
    with pytest.MonkeyPatch.context() as env:  # start_app passes this process' environment on
        env.setenv("HF_TOKEN", SERVER_TOKEN)
        env.setenv("HF_HUB_CACHE", str(hub_cache))
        process = start_app(home, cache_dir, port, log)
    yield f"http://127.0.0.1:{port}/", home, log, hub_cache
    stop_app(process)


def _client(url):
    from gradio_client import Client

    return Client(url, verbose=False)


@pytest.fixture(scope="module")
def relation(server):
    """(client, job id) of a 2-step relation trained through the API."""
    client = _client(server[0])
    dataset_id, _, _, _ = client.predict("orbits", api_name="/load_example")
    job_id = client.predict(dataset_id=dataset_id, steps=2, api_name="/start_training")
    assert list(client.submit(job_id, api_name="/job_status"))[-1]["state"] == "done"
    return client, job_id


def _refused(client, log, api_name: str, args: tuple, message: str) -> str:
    """The one-line message of a refused call (which must contain `message`); no traceback reaches the log."""
    from gradio_client.exceptions import AppError

    before = log.read_text()
    with pytest.raises(AppError) as caught:
        client.predict(*args, api_name=api_name)
    text = str(caught.value)
    assert message in text and "\n" not in text.strip(), text
    assert "Traceback" not in log.read_text()[len(before):]
    return text


def test_a_publish_fails_in_one_line_and_leaves_the_token_nowhere(server, relation):
    url, home, log, _ = server
    owner, job_id = relation
    cases = [
        (owner, (job_id, "someone/orbits", TOKEN, True),
         "could not publish to the Hub (OfflineModeIsEnabled): check the token and the repo name"),
        (owner, (job_id, "not a repo", TOKEN, False), "not a Hub repo id: write user/name"),
        (owner, (job_id, TOKEN, TOKEN, False), "not a Hub repo id"),  # the token pasted in the wrong field too
        (owner, (job_id, "someone/orbits", "", False), "paste a Hugging Face token"),  # never the app's own login
        (_client(url), (job_id, "someone/orbits", TOKEN, False), "not found among your trained relations"),
    ]
    for client, args, message in cases:
        assert TOKEN not in _refused(client, log, "/publish_relation", args, message)
    text = log.read_text()
    assert "refused publish_relation: could not publish to the Hub (OfflineModeIsEnabled)" in text  # logged, ...
    assert TOKEN not in text and SERVER_TOKEN not in text  # ... without the token
    files = [p for p in home.rglob("*") if p.is_file()]
    assert any(p.name == "worker.log" for p in files)
    for path in files:
        data = path.read_bytes()
        assert TOKEN.encode() not in data and SERVER_TOKEN.encode() not in data, path


def test_a_relation_from_the_hub_generates_by_its_id(server, relation):
    _, home, log, hub_cache = server
    client, job_id = relation
    output = home / "jobs" / job_id / "output"
    write_hub_cache(hub_cache, "someone/orbits", {name: output / name for name in ("relation_lora.safetensors",
                                                                                  "config.yaml")})
    video = client.predict("someone/orbits", *PROMPT_ARGS.values(), api_name="/generate")
    saved = list(home.glob("owners/*/generations/hub--someone--orbits/0000.mp4"))
    assert len(saved) == 1 and saved[0].read_bytes() == open(video, "rb").read()
    _refused(client, log, "/generate", ("someone/missing", *PROMPT_ARGS.values()),
             "relation someone/missing could not be fetched from the Hub or its cache (LocalEntryNotFoundError)")
    shutil.rmtree(hub_cache / "models--someone--orbits" / "refs")  # a snapshot the client no longer finds
    _refused(client, log, "/generate", ("someone/orbits", *PROMPT_ARGS.values()), "could not be fetched")


def test_the_publish_endpoint_names_its_parameters(server):
    endpoints = _client(server[0]).view_api(print_info=False, return_format="dict")["named_endpoints"]
    parameters = endpoints["/publish_relation"]["parameters"]
    assert [p["parameter_name"] for p in parameters] == ["relation_id", "repo_id", "token", "private"]
