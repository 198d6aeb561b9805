"""Sharing one studio: GPU slots between training and generation, per-owner limits, owners taking turns, and
deleting to free room (the last three against a live app, as two users of a public one would)."""

from __future__ import annotations

import time

import pytest

from dreamrelation.config import GenerateConfig, ModelConfig, StudioConfig
from dreamrelation.studio import Studio, StudioError
from app_server import free_port, start_app, stop_app, stop_workers

QUICK = dict(steps=2, learning_rate=1e-3, seed=0, sample_every=0, rank=4, lambda_mask=50.0,
             lambda_contrastive=0.01, num_frames=None, height=None, width=None, experts=None)


def test_generation_takes_a_free_gpu_slot_and_is_refused_while_every_slot_trains(tmp_path, cache_dir):
    studio = Studio(tmp_path / "home", ModelConfig(name="tiny-random", cache_dir=cache_dir), start_scheduler=False,
                    settings=StudioConfig(gpus="0,1"))
    owner = studio.owner_key("session:a")
    dataset = studio.load_example(owner, "orbits")
    store = studio.workspace.store
    jobs = [studio.start_training(owner, dataset.dataset_id, "quick", {"steps": 2}) for _ in range(2)]
    assert studio.max_gpus_per_job == 2 and "2 GPU(s) on this machine (0, 1)" in studio.describe()
    store.update(jobs[0].id, state="training", devices=["0"])
    with studio.scheduler.lend_slot() as slot:
        assert slot == "1"  # what generation would run on now
    store.update(jobs[1].id, state="training", devices=["1"])
    with pytest.raises(StudioError, match="^every GPU is training a relation; generate once a job finishes"):
        studio.generate(owner, "base", GenerateConfig(prompt="A red circle orbits a blue square."))
    with pytest.raises(StudioError, match=r"^a job may ask for 1 to 2 GPU\(s\) here \(2 GPU\(s\) on this machine .*\), got 3$"):
        studio.start_training(owner, dataset.dataset_id, "quick", {"steps": 2}, gpus=3)


@pytest.fixture(scope="module")
def shared_app(tmp_path_factory, cache_dir):
    """(url, home, log) of a live app that lets each owner have 3 jobs queued or training."""
    home = tmp_path_factory.mktemp("home")
    port, log = free_port(), home.parent / "shared-app.log"
    server = start_app(home, cache_dir, port, log, extra_args=("--max-jobs-per-owner", "3"))
    yield f"http://127.0.0.1:{port}/", home, log
    stop_app(server)
    stop_workers(home)


def _client(url):
    from gradio_client import Client

    return Client(url, verbose=False)


def _refused(client, log, api_name, *args) -> str:
    """The one-line refusal of a call (asserting one line, no traceback in it or in the server log)."""
    from gradio_client.exceptions import AppError

    before = log.read_text()
    with pytest.raises(AppError) as caught:
        client.predict(*args, api_name=api_name)
    text = str(caught.value).strip()
    assert "\n" not in text and "Traceback" not in text and "Traceback" not in log.read_text()[len(before):], text
    return text


def _status(home, job_id) -> dict:
    """The job's status now, as /job_status reports it to its owner (which streams until the job ends)."""
    from dreamrelation.jobs import JobStore, job_status

    store = JobStore(home)
    return job_status(store, job_id, store.load(job_id).owner).to_dict()


@pytest.mark.slow
def test_owners_take_turns_and_each_owner_has_a_job_limit(shared_app):
    from dreamrelation.jobs import JobStore

    url, home, log = shared_app
    alice, bob = _client(url), _client(url)
    dataset = alice.predict("orbits", api_name="/load_example")[0]
    first = alice.predict(dataset, "quick", *{**QUICK, "steps": 100}.values(), 1, api_name="/start_training")
    second, third = (alice.predict(dataset, "quick", *QUICK.values(), 1, api_name="/start_training")
                     for _ in range(2))
    refusal = _refused(alice, log, "/start_training", dataset, "quick", *QUICK.values(), 1)
    assert refusal == ("you have 3 jobs queued or training, the most one person may have here (3); wait for one "
                       "to finish or cancel one")
    assert _refused(alice, log, "/start_training", dataset, "quick", *QUICK.values(), 2) == (
        "a job may ask for 1 to 1 GPU(s) here (one job at a time on this machine's CPU), got 2")

    # Bob comes while Alice's first job trains: his first job goes before her second and third.
    bobs_dataset = bob.predict("orbits", api_name="/load_example")[0]
    mine = bob.predict(bobs_dataset, "quick", *QUICK.values(), 1, api_name="/start_training")
    store = JobStore(home)
    assert store.load(first).state in ("preparing", "training"), "Alice's first job ended before Bob came"
    assert [_status(home, job)["queue_position"] for job in (mine, second, third)] == [1, 2, 3]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and store.load(mine).state != "done":
        time.sleep(0.5)
    jobs = {name: store.load(job_id) for name, job_id in
            (("first", first), ("second", second), ("third", third), ("bob", mine))}
    assert jobs["bob"].state == "done", (jobs["bob"], log.read_text()[-2000:])
    assert jobs["first"].started < jobs["bob"].started
    for later in ("second", "third"):  # not started yet, or started after Bob's
        assert jobs[later].started is None or jobs[later].started > jobs["bob"].started
    assert (_status(home, mine)["devices"], _status(home, mine)["gpus"]) == (["cpu"], 1)

    # Cancelling hers makes room for another; a finished job can be deleted, a queued or training one cannot.
    for job_id in (second, third):
        alice.predict(job_id, api_name="/cancel_job")
    fourth = alice.predict(dataset, "quick", *QUICK.values(), 1, api_name="/start_training")
    assert _refused(alice, log, "/delete_job", fourth).endswith("; cancel it before deleting it")
    assert alice.predict(second, api_name="/delete_job") == "deleted"
    assert "not found" in _refused(bob, log, "/delete_job", third)  # not his
    assert not (home / "jobs" / second).exists()


@pytest.mark.slow
def test_an_owner_over_the_disk_limit_is_refused_until_they_delete(shared_app):
    url, home, log = shared_app
    carol, dave = _client(url), _client(url)
    owners_before = set((home / "owners").iterdir())
    dataset = carol.predict("orbits", api_name="/load_example")[0]
    (carol_dir,) = set((home / "owners").iterdir()) - owners_before
    big = carol_dir / "datasets" / dataset / "big.bin"
    with open(big, "wb") as handle:  # 21 GB as the file system reports sizes, without writing them
        handle.truncate(21 * 10**9)
    refusal = _refused(carol, log, "/start_training", dataset, "quick", *QUICK.values(), 1)
    assert refusal.startswith("your datasets and training runs use 21.") and refusal.endswith(
        "of the 20 GB one person may use here; delete a dataset or a relation you no longer need to free room")
    assert _refused(carol, log, "/load_example", "orbits").startswith("your datasets and training runs use 21.")
    daves = dave.predict("orbits", api_name="/load_example")[0]  # another owner is not held back
    assert "not found" in _refused(dave, log, "/delete_dataset", dataset)  # not his to delete
    assert "not found" in _refused(carol, log, "/delete_dataset", "../" + daves)
    assert big.exists() and any((home / "owners").glob(f"*/datasets/{daves}"))
    assert carol.predict(dataset, api_name="/delete_dataset") == "deleted"
    assert not big.exists()
    assert carol.predict("orbits", api_name="/load_example")[0]
