"""Publishing a relation to the Hub and fetching one back, with the Hub replaced at its boundary: the exact files
and card a push uploads, its one-line refusals (never quoting the token), a Hub id resolved offline from the
hub client's cache, and the app's use of both."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, constants, scan_cache_dir
from huggingface_hub.hf_api import RepoUrl
from safetensors.torch import save_file

from dreamrelation import hub
from dreamrelation.config import DataConfig, GenerateConfig, ModelConfig, RunConfig, TrainConfig
from dreamrelation.export import model_card
from dreamrelation.generate import resolve_lora_files
from dreamrelation.models import resolve_folder
from dreamrelation.outputs import RunDir
from dreamrelation.studio import Studio
from dreamrelation.studio.workspace import StudioError

from helpers import write_hub_cache

TOKEN = "hf_SECRETtoken123"
CAPTION = 'A red "square" is approaching a green square.'
BASE = "tiny-org/two-experts"  # a Hub id the cached tiny two-expert pipeline is laid out under
REPO = "someone/approaching"


class FakeHub:
    """The two HfApi calls a push makes: records their arguments and the files of the folder it uploads (or
    raises `error` from create_repo, as the Hub would)."""

    def __init__(self, error: Exception | None = None):
        self.calls, self.staged, self.error = [], {}, error

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        if self.error is not None:
            raise self.error
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        folder = Path(kwargs["folder_path"])
        self.staged = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, cache_dir) -> Path:
    """An HF_HUB_CACHE holding the tiny two-expert pipeline as the Hub model BASE."""
    folder = resolve_folder(ModelConfig(name="tiny-random-wan22", cache_dir=cache_dir))
    cache = tmp_path_factory.mktemp("hf-cache")
    write_hub_cache(cache, BASE, {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()})
    return cache


@pytest.fixture()
def offline_hub(hub_cache, monkeypatch) -> Path:
    """The hub client reading `hub_cache`, offline (conftest sets HF_HUB_OFFLINE before it is imported, and
    this holds even if it was imported earlier)."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub_cache


def make_run(root: Path, cache_dir: Path, experts=("transformer", "transformer_2"), samples=(2, 4)) -> RunDir:
    """A finished run folder as training leaves it on BASE: a LoRA file per expert, config.yaml, its card,
    checkpoints, progress log, samples and a ComfyUI twin."""
    run = RunDir(root)
    config = RunConfig(model=ModelConfig(name=BASE, cache_dir=cache_dir), data=DataConfig(data_dir=root / "data"),
                       train=TrainConfig(output_dir=root, steps=4, experts="both"))
    root.mkdir(parents=True)
    run.config.write_text(config.to_yaml())
    for number, component in enumerate(experts):
        save_file({"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.full((2, 4), float(number))},
                  run.lora_file(component))
    run.model_card.write_text(model_card(config, "APipeline", [CAPTION]))
    (run.checkpoints / "step-4").mkdir(parents=True)
    (run.checkpoints / "step-4" / "adapters.safetensors").write_bytes(b"checkpoint")
    run.progress.write_text('{"step": 4}\n')
    for step in samples:
        run.samples.mkdir(exist_ok=True)
        run.sample(step).write_bytes(f"video of step {step}".encode())
    (root / "relation_lora_comfyui.safetensors").write_bytes(b"twin")
    return run


def _snippet_calls(card: str) -> list[ast.Call]:
    """The calls of the card's Python snippet (which must parse)."""
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    return [node for node in ast.walk(ast.parse(snippet)) if isinstance(node, ast.Call)]


def test_a_push_uploads_the_loras_config_card_and_newest_sample_and_nothing_else(offline_hub, cache_dir, tmp_path):
    run = make_run(tmp_path / "run", cache_dir)
    api = FakeHub()
    url = hub.push_relation(run.root, f" {REPO} ", token=TOKEN, private=True, api=api)

    assert url == f"https://huggingface.co/{REPO}"
    assert api.calls[0] == ("create_repo", REPO, {"private": True, "exist_ok": True, "repo_type": "model"})
    upload = api.calls[1][1]
    assert (api.calls[1][0], upload["repo_id"], upload["repo_type"]) == ("upload_folder", REPO, "model")
    assert not Path(upload["folder_path"]).exists()  # the staging folder is gone
    assert set(api.staged) == {"relation_lora.safetensors", "relation_lora_transformer_2.safetensors", "config.yaml",
                               "README.md", "samples/step-0000004.mp4"}
    for name in ("relation_lora.safetensors", "relation_lora_transformer_2.safetensors", "config.yaml",
                 "samples/step-0000004.mp4"):
        assert api.staged[name] == (run.root / name).read_bytes(), name

    card = api.staged["README.md"].decode()
    data = ModelCard(card).data
    assert data.base_model == BASE and data.instance_prompt == CAPTION
    assert data.widget == [{"text": CAPTION, "output": {"url": "samples/step-0000004.mp4"}}]
    assert {"lora", "text-to-video", "dreamrelation"} <= set(data.tags) and data.library_name == "diffusers"
    assert f"**{CAPTION}**" in card
    calls = _snippet_calls(card)
    assert [c.args[0].value for c in calls if getattr(c.func, "attr", None) == "from_pretrained"] == [BASE]
    loads = [c for c in calls if getattr(c.func, "attr", None) == "load_lora_weights"]
    assert [c.args[0].value for c in loads] == [REPO, REPO]
    assert [{k.arg: k.value.value for k in c.keywords} for c in loads] == [
        {"weight_name": "relation_lora.safetensors"},
        {"weight_name": "relation_lora_transformer_2.safetensors", "load_into_transformer_2": True},
    ]
    assert [c.args[0].value for c in calls if getattr(c.func, "id", None) == "pipe"] == [CAPTION]


def test_a_run_without_samples_publishes_no_widget(offline_hub, cache_dir, tmp_path):
    run = make_run(tmp_path / "run", cache_dir, experts=("transformer",), samples=())
    api = FakeHub()
    hub.push_relation(run.root, REPO, api=api)
    assert set(api.staged) == {"relation_lora.safetensors", "config.yaml", "README.md"}
    card = api.staged["README.md"].decode()
    assert ModelCard(card).data.get("widget") is None and "widget" not in card
    assert api.calls[0][2]["private"] is False


@pytest.mark.parametrize("repo_id", ["approaching", "someone/approach ing", "a/b/c", "someone/../x", "some--one/x",
                                     "someone/", "", "   ", None, TOKEN])
def test_a_bad_repo_id_is_refused_in_one_line_before_the_hub_is_called(offline_hub, cache_dir, tmp_path, repo_id):
    run = make_run(tmp_path / "run", cache_dir)
    api = FakeHub()
    with pytest.raises(hub.HubError, match="not a Hub repo id: write user/name") as caught:
        hub.push_relation(run.root, repo_id, token=TOKEN, api=api)
    assert "\n" not in str(caught.value) and TOKEN not in str(caught.value)
    assert api.calls == []


def test_a_folder_that_is_no_finished_run_is_refused(offline_hub, cache_dir, tmp_path):
    api = FakeHub()
    with pytest.raises(hub.HubError, match="no relation LoRA in"):
        hub.push_relation(tmp_path, REPO, api=api)
    run = make_run(tmp_path / "run", cache_dir)
    run.model_card.write_text("---\nlicense: mit\n---\nA card from before publishing.\n")
    with pytest.raises(hub.HubError, match="names no trigger caption"):
        hub.push_relation(run.root, REPO, api=api)
    assert api.calls == []


@pytest.mark.parametrize("error", [ConnectionError(f"401: bad token {TOKEN}"), RuntimeError(f"Bearer {TOKEN}")],
                         ids=["network", "auth"])
def test_a_failing_hub_is_one_line_without_the_token(offline_hub, cache_dir, tmp_path, error):
    run = make_run(tmp_path / "run", cache_dir)
    with pytest.raises(hub.HubError) as caught:
        hub.push_relation(run.root, REPO, token=TOKEN, api=FakeHub(error))
    assert str(caught.value) == (f"could not publish to the Hub ({type(error).__name__}): check the token and the "
                                 "repo name")
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_the_real_client_offline_fails_in_one_line(offline_hub, cache_dir, tmp_path):
    run = make_run(tmp_path / "run", cache_dir)
    with pytest.raises(hub.HubError) as caught:
        hub.push_relation(run.root, REPO, token=TOKEN)
    assert str(caught.value).startswith("could not publish to the Hub (OfflineModeIsEnabled)")


def test_a_hub_id_is_fetched_from_the_cache_offline_and_a_local_path_wins(offline_hub, cache_dir, tmp_path,
                                                                          monkeypatch):
    run = make_run(tmp_path / "run", cache_dir)
    names = ["relation_lora.safetensors", "relation_lora_transformer_2.safetensors", "config.yaml"]
    snapshot = write_hub_cache(offline_hub, REPO, {name: run.root / name for name in names})
    assert REPO in {repo.repo_id for repo in scan_cache_dir(offline_hub).repos}  # laid out as the client lays it out

    assert hub.relation_folder(REPO) == snapshot
    assert {c: p.read_bytes() for c, p in resolve_lora_files(snapshot).items()} == {
        c: p.read_bytes() for c, p in run.lora_files().items()}
    monkeypatch.chdir(tmp_path)
    (tmp_path / REPO).mkdir(parents=True)
    assert hub.relation_folder(REPO) == Path(REPO)  # an existing folder of that name is a path

    with pytest.raises(hub.HubError, match=r"relation someone/missing could not be fetched .*\(LocalEntryNotFound"):
        hub.fetch_relation("someone/missing")
    write_hub_cache(offline_hub, "someone/settings-only", {"config.yaml": run.config})
    with pytest.raises(hub.HubError, match="holds no relation LoRA"):
        hub.fetch_relation("someone/settings-only")
    with pytest.raises(hub.HubError, match="not a Hub repo id"):
        hub.fetch_relation("../../etc")


def test_the_app_fetches_hub_relations_without_its_login_and_publishes_only_with_the_callers_token(
        offline_hub, cache_dir, tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", cache_dir)
    snapshot = write_hub_cache(offline_hub, REPO, {"relation_lora.safetensors": run.lora})
    studio = Studio(tmp_path / "home", ModelConfig(name="tiny-random", cache_dir=cache_dir), start_scheduler=False)
    owner = studio.owner_key("session:abc")
    downloads, renders = [], []
    real_download = hub.snapshot_download
    monkeypatch.setattr(hub, "snapshot_download", lambda *a, **kw: downloads.append(kw) or real_download(*a, **kw))
    monkeypatch.setattr(studio.generator, "generate", lambda *args: renders.append(args))

    studio.generate(owner, REPO, GenerateConfig(prompt=CAPTION))
    lora, _, folder, relation, _device = renders[0]
    assert lora == snapshot and relation == {"relation_id": REPO, "relation": REPO}
    assert folder == studio.workspace.owner_dir(owner) / "generations" / "hub--someone--approaching"
    assert downloads[0]["token"] is False  # a private repo the server's own login opens stays closed
    assert studio.gallery(owner, REPO) == []
    with pytest.raises(hub.HubError, match="not a Hub repo id"):
        studio.gallery(owner, "someone/../../x")

    for token in ("", "   ", None):
        with pytest.raises(StudioError, match="paste a Hugging Face token"):
            studio.publish_relation(owner, "abc123", REPO, token)
    with pytest.raises(StudioError, match="not found among your trained relations"):
        studio.publish_relation(owner, "abc123", REPO, TOKEN)
