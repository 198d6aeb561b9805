"""The live-app helpers' clean-up stops exactly the workers the job table records, by pid."""

import signal
import subprocess
import sys

from app_server import stop_workers

from dreamrelation.config import DataConfig, RunConfig, TrainConfig
from dreamrelation.jobs import JobStore
from dreamrelation.jobs.executors import WORKER_MODULE


def _fake_worker(job_dir) -> subprocess.Popen:
    """A sleeping process in a group of its own whose command line is that of the worker of the job in `job_dir`."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "-m", WORKER_MODULE, "--job-dir",
                             str(job_dir)], start_new_session=True)


def test_stop_workers_stops_the_recorded_workers_and_nothing_else(tmp_path, model_config):
    store = JobStore(tmp_path / "home")
    run = RunConfig(model=model_config, data=DataConfig(data_dir=tmp_path), train=TrainConfig(output_dir=tmp_path))
    running, reused, finished = (store.create("owner", "orbits", run) for _ in range(3))
    worker = _fake_worker(running.job_dir)
    stranger = _fake_worker(tmp_path / "another-job")  # the pid of `reused`'s worker, since taken by another process
    old_worker = _fake_worker(finished.job_dir)
    store.update(running.id, state="training", pid=worker.pid)
    store.update(reused.id, state="training", pid=stranger.pid)
    store.update(finished.id, state="done", pid=old_worker.pid)
    try:
        stop_workers(store.home)
        assert worker.wait(timeout=10) == -signal.SIGTERM
        assert stranger.poll() is None and old_worker.poll() is None
    finally:
        for process in (worker, stranger, old_worker):
            process.kill()
            process.wait()
