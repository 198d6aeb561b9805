"""A live `python app.py` for tests: started on a free port with its own data directory, stopped by group,
and its jobs' workers stopped by the pids their job rows record."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(home: Path, cache_dir: Path, port: int, log: Path, extra_args=(), extra_env=None) -> subprocess.Popen:
    """`python app.py` on the tiny model (plus `extra_args`, and `extra_env` in its environment), serving on
    127.0.0.1:port; returns once it answers."""
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "DREAMRELATION_HOME": str(home), "DREAMRELATION_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1",
           "GRADIO_ANALYTICS_ENABLED": "False", **(extra_env or {})}
    server = subprocess.Popen([sys.executable, "app.py", "--model", "tiny-random", *extra_args], cwd=REPO, env=env,
                              stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"app exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("app did not start in 120 s")


def stop_app(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGKILL)
    server.wait()


def stop_workers(home: Path) -> None:
    """Stop the workers of `home`'s running jobs, each by the pid its job row holds (they run in process groups
    of their own, so stopping the app leaves them running); a pid no longer running that job's worker is left
    alone. Call it after stop_app, so that no scheduler starts another worker meanwhile."""
    from dreamrelation.jobs.executors import runs_worker_of, stop_group
    from dreamrelation.jobs.store import RUNNING, JobStore

    for job in JobStore(home).in_states(RUNNING):
        if job.pid is not None and runs_worker_of(job.pid, job.job_dir):
            stop_group(job.pid, None)


