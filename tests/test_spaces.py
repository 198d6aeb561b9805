"""Spaces: a data folder on the Space's own disk is flagged once on the page; ZeroGPU refuses training in one
line and says so on the train tab."""

import json
import urllib.request

import pytest

from dreamrelation.studio.workspace import lost_on_restart

from app_server import free_port, start_app, stop_app, stop_workers

MOUNTS = ["/", "/proc", "/data", "/dev/shm"]


def test_a_home_on_the_spaces_own_disk_is_lost_on_restart_and_one_on_a_mount_is_not(monkeypatch, tmp_path):
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert not lost_on_restart(tmp_path / "home", MOUNTS)  # not a Space: nothing to say
    monkeypatch.setenv("SPACE_ID", "someone/dreamrelation")
    assert lost_on_restart(tmp_path / "home", MOUNTS)
    assert not lost_on_restart("/data/dreamrelation", MOUNTS)  # the bucket volume the README mounts
    assert not lost_on_restart("/data", MOUNTS)
    assert lost_on_restart("/database", MOUNTS)  # a prefix of a path is not its mount


@pytest.mark.slow
def test_the_page_warns_once_and_zero_gpu_refuses_training_in_one_line(tmp_path, cache_dir):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    home, port = tmp_path / "home", free_port()
    env = {"SPACE_ID": "someone/dreamrelation", "SPACES_ZERO_GPU": "true"}
    server = start_app(home, cache_dir, port, tmp_path / "app.log", extra_env=env)
    try:
        url = f"http://127.0.0.1:{port}/"
        with urllib.request.urlopen(url + "config", timeout=10) as response:
            page = json.dumps(json.load(response), ensure_ascii=False)
        assert page.count("a restart loses every job, dataset and relation") == 1
        assert "training needs dedicated GPU hardware" in page
        client = Client(url, verbose=False)
        dataset_id = client.predict("orbits", api_name="/load_example")[0]
        with pytest.raises(AppError, match=r"^training needs dedicated GPU hardware: ZeroGPU lends a GPU per call"):
            client.predict(dataset_id, "quick", api_name="/start_training")
        assert not (home / "jobs").exists() or not any((home / "jobs").iterdir())
    finally:
        stop_app(server)
        stop_workers(home)
