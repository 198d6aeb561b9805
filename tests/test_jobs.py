"""Background training jobs: the job table, real worker processes, cancel, and recovery after an app restart."""

import contextlib
import json
import os
import signal
import sqlite3
import sys
import threading
import time

import psutil
import pytest

from dreamrelation.config import DataConfig, RunConfig, TrainConfig
from dreamrelation.jobs import (
    CPU_SLOT,
    RUNNING,
    LocalExecutor,
    JobError,
    JobNotFound,
    JobScheduler,
    JobStore,
    job_status,
    list_relations,
)
from dreamrelation.jobs.folder import MAX_LINE_CHARS, one_line
from dreamrelation.train.checkpoint import latest_checkpoint
from dreamrelation.train.progress import ProgressLog, read_progress

import helpers
from helpers import write_two_subject_dataset

CLIP = dict(num_frames=13, height=32, width=32)
TIMEOUT_S = 180  # generous: a worker imports torch and trains on a shared, busy CPU


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return write_two_subject_dataset(tmp_path_factory.mktemp("data"), num_videos=2, **CLIP)


@pytest.fixture()
def make_run(model_config, dataset_dir, tmp_path):
    """Build a tiny-model RunConfig with the given train settings (the store replaces its output_dir)."""

    def make(data_dir=dataset_dir, **train):
        data = DataConfig(data_dir=data_dir, **CLIP)
        return RunConfig(model=model_config, data=data, train=TrainConfig(output_dir=tmp_path, **train))

    return make


@pytest.fixture()
def store(tmp_path):
    return JobStore(tmp_path / "home")


@pytest.fixture()
def schedulers(store):
    """Start schedulers on `store`; afterwards stop them and kill every process group a test left running."""
    me = psutil.Process()
    before = {child.pid for child in me.children()}
    started = []

    def start(slots=(CPU_SLOT,), **options):
        scheduler = JobScheduler(store, LocalExecutor(list(slots), **options), poll_s=0.1)
        scheduler.start()
        started.append(scheduler)
        return scheduler

    yield start
    for scheduler in started:
        scheduler.stop()
    leftovers = [child for child in me.children() if child.pid not in before]
    for child in leftovers:  # workers lead their own process groups
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
    psutil.wait_procs(leftovers, timeout=10)


def wait_for(condition, what: str):
    """Poll `condition` until it returns something true, which is returned; fail after TIMEOUT_S."""
    return helpers.wait_for(condition, what, TIMEOUT_S)


def wait_for_state(store, job, state):
    try:
        return wait_for(lambda: (found := store.load(job.id)).state == state and found, f"job {job.id} {state}")
    except AssertionError as error:
        log = job.log_path.read_text() if job.log_path.exists() else "(no log)"
        raise AssertionError(f"{error}; it is {store.load(job.id).state}; worker.log:\n{log}") from None


def group_members(group: int) -> list[int]:
    """Live processes of a process group, found independently of the scheduler's own bookkeeping."""
    members = []
    for process in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(process.pid) == group and process.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(process.pid)
    return members


# The job table.


def test_store_creates_lists_and_updates_jobs(store, make_run):
    run = make_run(steps=3)
    first = store.create("alice", "  shaking hands ", run)
    assert (first.state, first.relation, first.pid, first.error, first.attempts) == (
        "queued", "shaking hands", None, None, 0
    )
    assert first.output_dir == store.home / "jobs" / first.id / "output"
    assert first.run.train.output_dir == first.output_dir and first.run.train.steps == 3
    assert first.log_path == store.home / "jobs" / first.id / "worker.log"
    second = store.create("alice", "hugging", run)
    assert [job.id for job in store.list("alice")] == [second.id, first.id]  # newest first

    done = store.update(first.id, state="done", finished=123.0)
    assert (done.state, done.finished) == ("done", 123.0) and store.get(first.id, "alice") == done
    assert [job.id for job in store.list("alice", states=["done"])] == [first.id]
    # Compare-and-set: nothing changes when the state is not the expected one.
    assert store.update(first.id, only_from=["queued"], state="failed") is None
    assert store.get(first.id, "alice").state == "done"

    with pytest.raises(JobError, match="name"):
        store.create("alice", "   ", run)
    with pytest.raises(ValueError, match="unknown state"):
        store.update(first.id, state="paused")
    with pytest.raises(JobNotFound):
        store.update("0badc0de", state="done")


def test_owners_see_only_their_own_jobs(store, make_run):
    job = store.create("alice", "hugging", make_run())
    with pytest.raises(JobNotFound) as someone_elses:
        store.get(job.id, "bob")
    with pytest.raises(JobNotFound) as unknown:
        store.get("0badc0de", "bob")
    assert str(someone_elses.value) == str(unknown.value).replace("0badc0de", job.id)
    assert store.list("bob") == []
    with pytest.raises(JobNotFound):
        job_status(store, job.id, "bob")
    assert list_relations(store, "bob") == []


def test_the_queue_is_first_in_first_out(store, make_run):
    jobs = [store.create("alice" if i % 2 else "bob", f"relation {i}", make_run()) for i in range(3)]
    assert [store.queue_position(job.id) for job in jobs] == [1, 2, 3]
    assert store.next_queued() == jobs[0]
    store.update(jobs[0].id, state="preparing")
    assert [store.queue_position(job.id) for job in jobs] == [None, 1, 2]
    assert store.next_queued() == jobs[1]
    assert job_status(store, jobs[2].id, "bob").queue_position == 2


def test_the_database_is_in_wal_mode_and_takes_writers_from_many_threads(store, make_run):
    with contextlib.closing(sqlite3.connect(store.path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    run, errors = make_run(), []

    def create_some():
        try:
            for _ in range(10):
                store.update(store.create("alice", "r", run).id, state="cancelled")
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=create_some) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(store.list("alice", states=["cancelled"])) == 40


# Scheduling decisions without processes.


def test_reconcile_requeues_a_job_whose_worker_is_gone_and_fails_it_on_the_third_death(store, make_run):
    scheduler = JobScheduler(store, LocalExecutor([CPU_SLOT]))  # not started: reconcile is called by hand
    job = store.create("alice", "hugging", make_run())
    # A pid that is alive but is no worker of this job (as when a pid is reused after a reboot).
    store.update(job.id, state="training", pid=os.getpid())
    assert [j.id for j in scheduler.reconcile()] == [job.id]
    requeued = store.get(job.id, "alice")
    assert (requeued.state, requeued.attempts, requeued.pid, requeued.error) == ("queued", 1, None, None)
    assert "queued again to continue from the start (try 2 of 3)" in job.log_path.read_text()

    store.update(job.id, state="preparing", pid=None, attempts=2)
    scheduler.reconcile()
    failed = store.get(job.id, "alice")
    assert (failed.state, failed.attempts) == ("failed", 3) and "3 times" in failed.error
    assert store.in_states(RUNNING) == [] and scheduler.reconcile() == []


def test_resume_requeues_a_failed_job_only_when_it_has_a_checkpoint(store, make_run):
    scheduler = JobScheduler(store, LocalExecutor([CPU_SLOT]))
    job = store.create("alice", "hugging", make_run())
    with pytest.raises(JobError, match="is queued; only a failed or cancelled job"):
        scheduler.resume(job.id, "alice")
    store.update(job.id, state="failed", error="boom", attempts=3, finished=1.0)
    with pytest.raises(JobError, match="no checkpoint"):
        scheduler.resume(job.id, "alice")
    (job.output_dir / "checkpoints" / "step-0000002").mkdir(parents=True)
    (job.output_dir / "checkpoints" / "step-0000002" / "state.pt").write_bytes(b"")
    with pytest.raises(JobNotFound):
        scheduler.resume(job.id, "bob")
    resumed = scheduler.resume(job.id, "alice")
    assert (resumed.state, resumed.error, resumed.attempts, resumed.finished) == ("queued", None, 0, None)


def test_status_follows_progress_through_a_resume_with_samples_and_log(store, make_run):
    job = store.create("alice", "hugging", make_run(steps=4))
    store.update(job.id, state="training")
    progress = ProgressLog(job.output_dir / "progress.jsonl")
    progress.write(event="start", step=0, steps=4, clips=2)
    for step in (1, 2, 3):
        losses = {"loss": float(step), "loss_rec": float(step)}
        progress.write(step=step, steps=4, mode="relation", losses=losses, lr=1e-4, sec_per_step=0.1, eta_s=9.0)
    progress.write(event="start", step=2, steps=4, clips=2)  # resumed from the step-2 checkpoint: step 3 again
    losses = {"loss": 5.0, "loss_rec": 4.0, "loss_rcl": 100.0}
    progress.write(step=3, steps=4, mode="relation", losses=losses, lr=1e-4, sec_per_step=0.1, eta_s=0.5)
    for step in (2, 3):
        (job.output_dir / "samples").mkdir(exist_ok=True)
        (job.output_dir / "samples" / f"step-{step:07d}.mp4").write_bytes(b"")
    job.log_path.write_text("".join(f"line {i}\n" for i in range(30)))

    status = job_status(store, job.id, "alice")
    assert (status.state, status.relation, status.queue_position) == ("training", "hugging", None)
    assert (status.step, status.steps, status.fraction, status.eta_s) == (3, 4, 0.75, 0.5)
    assert status.losses == {"loss": 5.0, "loss_rec": 4.0, "loss_rcl": 100.0}
    assert status.loss_history == {
        "loss": [(1, 1.0), (2, 2.0), (3, 5.0)],
        "loss_rec": [(1, 1.0), (2, 2.0), (3, 4.0)],
        "loss_rcl": [(3, 100.0)],
    }
    assert status.sample_video == job.output_dir / "samples" / "step-0000003.mp4"
    assert status.lora_path is None and status.log_tail == [f"line {i}" for i in range(10, 30)]
    as_json = json.loads(json.dumps(status.to_dict()))
    assert as_json["loss_history"]["loss_rcl"] == [[3, 100.0]] and as_json["sample_video"].endswith(".mp4")


# Real worker processes.


def test_a_job_trains_to_done_in_a_worker_process(store, schedulers, make_run):
    scheduler = schedulers()
    job = scheduler.submit("alice", "approaching", make_run(steps=4, checkpoint_every=2))
    done = wait_for_state(store, job, "done")
    assert done.pid is None and done.error is None and done.finished >= done.started >= done.created

    status = job_status(store, job.id, "alice")
    assert (status.state, status.step, status.steps, status.fraction) == ("done", 4, 4, 1.0)
    assert status.lora_path == job.output_dir / "relation_lora.safetensors" and status.lora_path.exists()
    assert [step for step, _ in status.loss_history["loss"]] == [1, 2, 3, 4]
    assert {"loss", "loss_rec"} <= status.losses.keys() and "loss_rcl" in status.loss_history
    assert any(f"job {job.id}: done" in line for line in status.log_tail)
    assert json.loads(json.dumps(status.to_dict()))["lora_path"] == str(status.lora_path)

    relations = list_relations(store, "alice")
    assert [(r.job_id, r.relation, r.lora_path, r.steps) for r in relations] == [
        (job.id, "approaching", status.lora_path, 4)
    ]
    assert store.in_states(RUNNING) == []
    with pytest.raises(JobError, match=rf"job {job.id} has already finished \(done\); nothing to cancel"):
        scheduler.cancel(job.id, "alice")
    assert store.get(job.id, "alice") == done


def test_an_error_line_is_one_line_within_the_limit():
    assert one_line("no GPU\n  free:\t0 MiB ") == "no GPU free: 0 MiB"
    long = one_line("x " * MAX_LINE_CHARS)
    assert len(long) == MAX_LINE_CHARS and long == "x " * (MAX_LINE_CHARS // 2 - 1) + "x…"
    assert one_line("y" * MAX_LINE_CHARS) == "y" * MAX_LINE_CHARS


def test_a_training_error_fails_the_job_with_one_line_also_in_the_log(store, schedulers, make_run, tmp_path):
    scheduler = schedulers()
    job = scheduler.submit("alice", "approaching", make_run(data_dir=tmp_path / "missing", steps=2))
    failed = wait_for_state(store, job, "failed")
    assert "dataset folder not found" in failed.error and "\n" not in failed.error
    log = job.log_path.read_text()
    assert "dataset folder not found" in log and "Traceback" not in log  # the user's error needs no traceback
    assert list_relations(store, "alice") == []


def test_an_unexpected_error_fails_the_job_in_one_line_and_logs_its_traceback(store, make_run, monkeypatch, capsys):
    from dreamrelation.jobs import worker

    def broken(*args, **kwargs):
        raise RuntimeError("cuDNN exploded\nsecond line")

    monkeypatch.setattr(worker, "train", broken)
    job = store.create("alice", "approaching", make_run(steps=2))
    job.folder.write_spec(job.settings, job.source)
    assert worker.run_job(job.folder) == 1
    assert job.folder.outcome() == {"state": "failed", "error": "cuDNN exploded second line"}
    assert "Traceback" in capsys.readouterr().err  # the worker's stderr is its log


def test_cancel_stops_the_whole_process_group_of_a_running_job(store, schedulers, make_run, tmp_path):
    # A "python" that leaves a helper process in the worker's group, as a data loader or encoder would.
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nsleep 600 &\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    scheduler = schedulers(python=str(python))
    job = scheduler.submit("alice", "approaching", make_run(steps=100_000, checkpoint_every=100_000))
    waiting = scheduler.submit("bob", "hugging", make_run())
    training = wait_for_state(store, job, "training")
    assert store.in_states(RUNNING) == [training]
    assert job_status(store, waiting.id, "bob").queue_position == 1  # one training job at a time
    assert len(group_members(training.pid)) == 2  # the worker and its helper
    with pytest.raises(JobNotFound):
        scheduler.cancel(waiting.id, "alice")
    assert scheduler.cancel(waiting.id, "bob").state == "cancelled"  # a queued job just leaves the queue
    assert store.queue_position(waiting.id) is None and not waiting.job_dir.exists()

    cancelled = scheduler.cancel(job.id, "alice")
    assert (cancelled.state, cancelled.pid) == ("cancelled", None)
    assert group_members(training.pid) == []
    with pytest.raises(JobError, match=r"has already finished \(cancelled\); nothing to cancel"):
        scheduler.cancel(job.id, "alice")
    assert store.get(job.id, "alice") == cancelled
    with pytest.raises(JobNotFound):
        scheduler.cancel("0badc0de", "alice")
    assert not waiting.job_dir.exists()  # it never started
    with pytest.raises(JobError, match="no checkpoint"):
        scheduler.resume(job.id, "alice")


def test_a_killed_worker_is_resumed_from_its_checkpoint_after_an_app_restart(store, schedulers, make_run):
    first = schedulers()
    job = first.submit("alice", "approaching", make_run(steps=40, checkpoint_every=2))
    progress = job.output_dir / "progress.jsonl"

    def past_a_checkpoint():
        steps = [record["step"] for record in read_progress(progress) if "losses" in record]
        checkpoint = latest_checkpoint(job.output_dir)
        past = checkpoint is not None and steps[-1] > int(checkpoint.name.split("-")[1])
        return past and store.load(job.id).state == "training"  # noted before the first step

    wait_for(past_a_checkpoint, "a step past a checkpoint")
    first.stop()  # the app goes away; its worker trains on
    running = store.get(job.id, "alice")
    assert running.state == "training"
    assert JobScheduler(store, LocalExecutor([CPU_SLOT])).reconcile() == []  # a new app adopts a live worker
    assert store.get(job.id, "alice") == running

    os.killpg(running.pid, signal.SIGKILL)  # then the worker dies too (out of memory, a reboot)
    wait_for(lambda: not group_members(running.pid), "the worker to be gone")
    schedulers()  # the app starts again
    done = wait_for_state(store, job, "done")

    starts = [record for record in read_progress(progress) if record.get("event") == "start"]
    assert len(starts) == 2 and starts[1]["step"] > 0
    assert done.attempts == 1 and (job.output_dir / "relation_lora.safetensors").exists()
    assert store.in_states(RUNNING) == []
    status = job_status(store, job.id, "alice")
    assert [step for step, _ in status.loss_history["loss"]] == list(range(1, 41))  # the redone steps once
    assert any("queued again to continue from step-" in line for line in status.log_tail)


# GPU slots (fake GPU ids on a CPU machine: the workers train on the CPU and report the ids they were given).


def test_owners_take_turns_in_the_queue(store, make_run):
    alice = [store.create("alice", f"a{i}", make_run()) for i in range(4)]
    bob = store.create("bob", "b", make_run())
    store.update(alice[0].id, state="training")
    # Alice trains one job already: Bob's first job goes before her second; then one each in turn.
    assert [job.id for job in store.queue()] == [bob.id, alice[1].id, alice[2].id, alice[3].id]
    carol = store.create("carol", "c", make_run())
    assert [job.id for job in store.queue()] == [bob.id, carol.id, alice[1].id, alice[2].id, alice[3].id]
    assert store.queue_position(carol.id) == 2 and store.next_queued() == bob


def test_slots_place_jobs_on_free_gpus_and_the_head_of_the_queue_is_never_passed(store, make_run):
    executor = LocalExecutor(["0", "1", "2"])
    scheduler = JobScheduler(store, executor)
    one = store.create("alice", "a", make_run())
    store.update(one.id, state="training", devices=["1"])
    running = store.in_states(RUNNING)
    big, small = store.create("bob", "b", make_run(), gpus=3), store.create("bob", "c", make_run())
    assert executor.place(store.load(small.id), running, held=()) == ["0"]
    assert executor.place(store.load(big.id), running, held=()) is None
    assert executor.free_slots(running, held=("2",)) == ["0"]
    scheduler._start_queued()  # the 3-GPU job heads the queue and waits; the 1-GPU job behind it waits too
    assert [job.state for job in (store.load(big.id), store.load(small.id))] == ["queued", "queued"]
    with pytest.raises(JobError, match=r"a job may ask for 1 to 3 GPU\(s\) here"):
        scheduler.submit("bob", "d", make_run(), gpus=4)

    with scheduler.lend_slot() as first, scheduler.lend_slot() as second, scheduler.lend_slot() as none_left:
        assert (first, second, none_left) == ("0", "2", None)  # "1" trains
        assert executor.place(store.load(small.id), running, scheduler._lent) is None
    with scheduler.lend_slot() as again:
        assert again == "0"
    cpu = JobScheduler(store, LocalExecutor([CPU_SLOT]))
    with cpu.lend_slot() as slot:  # the CPU slot is never lent: generation runs beside training there
        assert slot is None and cpu.executor.place(store.load(small.id), [], cpu._lent) == [CPU_SLOT]


def _reported(job) -> dict:
    """What the worker of `job` saw (prepared.json: host, the CUDA_VISIBLE_DEVICES ids, processes)."""
    return wait_for(job.folder.prepared, f"job {job.id} to report its devices")


def _step_times(job) -> list[float]:
    return [record["time"] for record in read_progress(job.output_dir / "progress.jsonl") if "losses" in record]


def _training_intervals_overlap(first, second) -> bool:
    a, b = _step_times(first), _step_times(second)
    return bool(a and b) and a[0] < b[-1] and b[0] < a[-1]


def test_two_slots_train_two_jobs_at_once_and_a_two_gpu_job_waits_for_both(store, schedulers, make_run):
    scheduler = schedulers(slots=("0", "1"))
    endless = dict(steps=100_000, checkpoint_every=100_000, eval_every=0)
    first = scheduler.submit("alice", "a", make_run(**endless))
    second = scheduler.submit("bob", "b", make_run(**endless))
    first, second = (wait_for_state(store, job, "training") for job in (first, second))
    assert {first.devices, second.devices} == {("0",), ("1",)}
    assert [_reported(job)["devices"] for job in (first, second)] == [list(first.devices), list(second.devices)]
    # Both are endless: run one after the other, the second would never step, and this wait would time out.
    wait_for(lambda: _training_intervals_overlap(first, second), "overlapping steps of both jobs")

    # A job asking for both GPUs waits at the head, and the 1-GPU job behind it waits too.
    pair = scheduler.submit("carol", "pair", make_run(steps=3, eval_every=0), gpus=2)
    after = scheduler.submit("carol", "after", make_run(steps=2, eval_every=0))

    scheduler.stop()  # the app goes away; both workers train on; a new app adopts both
    restarted = schedulers(slots=("0", "1"))
    assert restarted.reconcile() == []
    assert [store.load(job.id) for job in (first, second)] == [first, second]

    assert restarted.cancel(first.id, "alice").state == "cancelled"
    assert group_members(first.pid) == [] and store.load(second.id).state == "training"
    assert psutil.pid_exists(second.pid)
    time.sleep(1.0)  # several scheduler passes with GPU 0 free
    assert [store.load(job.id).state for job in (pair, after)] == ["queued", "queued"]
    assert job_status(store, pair.id, "carol").queue_position == 1

    restarted.cancel(second.id, "bob")
    done = wait_for_state(store, pair, "done")
    assert done.devices == ("0", "1")
    assert _reported(pair) | {"host": None, "time": None} == {"host": None, "time": None, "devices": ["0", "1"],
                                                              "processes": 2}
    wait_for_state(store, after, "done")
