"""Training jobs on a Ray cluster (jobs/ray_executor.py): the address rule and one-line errors without a cluster;
then a real local Ray head (two fake GPUs, so entrypoint_num_gpus and CUDA_VISIBLE_DEVICES are exercised)
driven through a live `python app.py --cluster ADDRESS`: jobs train to done on the shared home, a cancel stops
the Ray job, a restarted app adopts a running one, and a home the cluster cannot see is refused at start."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from app_server import REPO, free_port, start_app, stop_app
from helpers import wait_for
from dreamrelation.config import DataConfig, RunConfig, StudioConfig, TrainConfig
from dreamrelation.jobs import RUNNING, ExecutorError, JobStore, make_executor
from dreamrelation.jobs.ray_executor import dashboard_url, entrypoint, submission_id

TIMEOUT_S = 240  # a worker imports torch and trains on a shared, busy CPU
QUICK = dict(preset="quick", sample_every=0)  # /start_training's settings left out keep the preset's


# Without a cluster.


@pytest.mark.parametrize("address, url", [
    ("http://head:8265", "http://head:8265"),
    (" https://ray.example.com/ ", "https://ray.example.com"),
    ("ray://head:10001", "http://head:8265"),
    ("ray://10.0.0.5", "http://10.0.0.5:8265"),
    ("ray://[fd00::5]:10001", "http://[fd00::5]:8265"),
])
def test_a_cluster_address_maps_to_its_dashboard(address, url):
    assert dashboard_url(address) == url


@pytest.mark.parametrize("address", ["head:8265", "auto", "ray://", "tcp://head:6379"])
def test_an_address_that_is_no_dashboard_is_refused_in_one_line(address):
    with pytest.raises(ExecutorError, match=r"^a Ray cluster address is its dashboard's, http://HOST:8265") as error:
        dashboard_url(address)
    assert "\n" not in str(error.value)


def test_a_cluster_out_of_reach_is_refused_in_one_line_at_once(monkeypatch):
    pytest.importorskip("ray.job_submission")
    # Ray's client would take these over the address it is given: the app's --cluster must win.
    monkeypatch.setenv("RAY_ADDRESS", "ray://nowhere.invalid:10001")
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://nowhere.invalid:8265")
    cases = [(f"http://127.0.0.1:{free_port()}", "")]
    with contextlib.closing(socket.socket()) as probe:
        if probe.connect_ex(("127.0.0.1", 8265)) != 0:  # ray://HOST goes to port 8265, which must be closed here
            cases.append((f"ray://127.0.0.1:{free_port()}", ", its dashboard http://127.0.0.1:8265"))
    for address, named in cases:
        started = time.monotonic()
        with pytest.raises(ExecutorError) as error:
            make_executor(StudioConfig(cluster=address))
        assert time.monotonic() - started < 10
        assert str(error.value).startswith(f"cannot reach the Ray cluster at {address}{named} (no answer); check")
        assert "\n" not in str(error.value)
    assert os.environ["RAY_ADDRESS"] == "ray://nowhere.invalid:10001"  # put back


def test_a_start_is_a_ray_job_of_its_own_with_the_worker_logging_into_the_job_folder(tmp_path, model_config):
    store = JobStore(tmp_path / "a home")
    run = RunConfig(model=model_config, data=DataConfig(data_dir=tmp_path), train=TrainConfig(output_dir=tmp_path))
    job = store.create("alice", "hugging", run, gpus=2)
    first = store.update(job.id, state="preparing", started=1700000000.1234)
    assert submission_id(first) == f"dreamrelation-{job.id}-1700000000123"
    assert submission_id(store.load(job.id)) == submission_id(first)  # from the table alone
    again = store.update(job.id, started=1700000100.5)  # retried or resumed: a new Ray job
    assert submission_id(again) != submission_id(first)

    words = shlex.split(entrypoint("/opt/venv/bin/python", again))
    assert words[-3:] == [">>", str(job.log_path), "2>&1"] and " " in str(job.log_path)
    assert words[:3] == ["/opt/venv/bin/python", "-u", "-m"] and "accelerate.commands.launch" in words
    assert words[words.index("--num_processes") + 1] == "2"
    assert words[-7:-3] == ["-m", "dreamrelation.jobs.worker", "--job-dir", str(job.job_dir)]


# A live local Ray head.


class RayHead:
    """`ray start --head --block` on 127.0.0.1 with free ports, its session files under a short temp dir (Ray's
    socket paths must stay short), and the nodes' `python` this interpreter importing this checkout."""

    def __init__(self, log: Path):
        self.temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
        ports = {option: free_port() for option in (
            "port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port", "node-manager-port",
            "object-manager-port")}
        self.url = f"http://127.0.0.1:{ports['dashboard-port']}"
        command = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                   "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1", "--num-cpus", "4",
                   "--num-gpus", "2", "--disable-usage-stats", "--include-log-monitor", "false",
                   "--temp-dir", str(self.temp)]
        for option, port in ports.items():
            command += [f"--{option}", str(port)]
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               "PYTHONPATH": str(REPO)}
        for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
            env.pop(name, None)
        self.log = log
        self.process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=open(log, "w"),
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def wait_until_up(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.url}/api/version", timeout=2):
                    return
            time.sleep(0.5)
        raise RuntimeError("the Ray head did not start in 120 s")

    def processes(self) -> list[psutil.Process]:
        """This head's processes: `ray start`'s descendants and its session's (Ray's workers and the job
        entrypoints run in sessions of their own, but below `ray start`)."""
        found = {}
        with contextlib.suppress(psutil.Error):
            for process in [psutil.Process(self.process.pid), *psutil.Process(self.process.pid).children(True)]:
                found[process.pid] = process
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if os.getsid(process.pid) == self.process.pid or str(self.temp) in " ".join(process.cmdline()):
                    found.setdefault(process.pid, process)
        return [process for process in found.values() if process.is_running()]

    def stop(self) -> list[str]:
        """Stop this head alone (`ray stop` would stop every Ray on the machine): SIGTERM to `ray start`, which
        shuts its node down, then SIGKILL to anything of it left. Returns what was still running after that."""
        before = self.processes()
        self.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)
        for process in before + self.processes():
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(before, timeout=10)
        left = [f"{process.pid} {process.name()}" for process in self.processes() if process.status() != "zombie"]
        if not left:
            shutil.rmtree(self.temp, ignore_errors=True)
        return left


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    pytest.importorskip("ray.job_submission")
    head = RayHead(tmp_path_factory.mktemp("ray") / "ray-start.log")
    try:
        head.wait_until_up()
        yield head
    finally:
        left = head.stop()
        assert left == [], f"Ray processes left running: {left}"


def ray_client(head: RayHead):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(head.url)


def holding_python(path: Path, hold: Path) -> Path:
    """Write a `python` at `path` for the nodes: this interpreter, after waiting while the file `hold` exists when
    it runs a job's worker (--job-dir)."""
    path.write_text(
        "#!/bin/sh\n"
        f'case " $* " in *" --job-dir "*) while [ -e "{hold}" ]; do sleep 0.2; done ;; esac\n'
        f'exec "{sys.executable}" "$@"\n'
    )
    path.chmod(0o755)
    return path


def wait_until(condition, what: str):
    return wait_for(condition, what, TIMEOUT_S, poll_s=0.1)


class LiveApp:
    """`python app.py --cluster URL` on a home, which a test may kill and start again. Its nodes' Python
    ($DREAMRELATION_RAY_PYTHON) is this interpreter behind a script that holds workers back while the file
    `hold` exists."""

    def __init__(self, home: Path, cache_dir: Path, cluster: str):
        self.home, self.cache_dir, self.cluster = home, cache_dir, cluster
        self.server, self.starts = None, 0
        self.store = JobStore(home)
        self.hold = home.parent / "hold-workers"
        self.python = holding_python(home.parent / "python", self.hold)

    def start(self) -> None:
        self.starts += 1
        self.port = free_port()
        self.log = self.home.parent / f"app-{self.starts}.log"
        self.server = start_app(self.home, self.cache_dir, self.port, self.log, ("--cluster", self.cluster),
                                {"DREAMRELATION_RAY_PYTHON": str(self.python)})

    def stop(self) -> None:
        if self.server is not None:
            stop_app(self.server)
            self.server = None

    def client(self):
        from gradio_client import Client

        return Client(f"http://127.0.0.1:{self.port}/", verbose=False)

    def wait_for(self, job_id: str, condition, what: str):
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            job = self.store.load(job_id)
            if condition(job):
                return job
            time.sleep(0.25)
        log = job.log_path.read_text() if job.log_path.exists() else "(no worker.log)"
        raise AssertionError(f"timed out waiting for job {job_id} to be {what}; it is {job.state}:\n{log[-3000:]}")


@pytest.fixture(scope="module")
def app(ray_head, tmp_path_factory, cache_dir):
    live = LiveApp(tmp_path_factory.mktemp("shared") / "home", cache_dir, ray_head.url)
    live.start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def dataset(app):
    """(client, dataset id) of the bundled orbits example in a session of the live app."""
    client = app.client()
    return client, client.predict("orbits", api_name="/load_example")[0]


@pytest.mark.slow
def test_jobs_train_to_done_on_the_cluster_with_the_gpus_ray_gave_them(ray_head, app, dataset):
    client, dataset_id = dataset
    jobs = [client.predict(dataset_id=dataset_id, steps=3, api_name="/start_training", **QUICK) for _ in range(2)]
    ray = ray_client(ray_head)
    seen = []
    for job_id in jobs:
        updates = list(client.submit(job_id, api_name="/job_status"))
        status = updates[-1]
        job = app.store.load(job_id)
        log = job.log_path.read_text()
        assert (status["state"], status["step"], job.attempts, job.error) == ("done", 3, 0, None), log
        assert "lora_path" not in status  # the API answers by job id, never with a server path
        assert (job.output_dir / "relation_lora.safetensors").is_file() and job.output_dir.is_relative_to(app.home)
        info = ray.get_job_info(submission_id(job))
        assert (info.status, info.entrypoint) == ("SUCCEEDED", entrypoint(str(app.python), job))
        assert info.metadata["dreamrelation_job"] == job_id
        assert status["devices"] in (["0"], ["1"]) and list(job.devices) == status["devices"]
        assert f"GPUs {status['devices'][0]} (CUDA_VISIBLE_DEVICES)" in log and f"job {job_id}: done" in log
        seen.append(status["devices"][0])
    # They trained side by side: the second went to Ray once the first had its GPU, and got the other one.
    assert sorted(seen) == ["0", "1"]
    assert app.store.in_states(RUNNING) == []


@pytest.mark.slow
def test_a_cancel_stops_the_ray_job(ray_head, app, dataset):
    client, dataset_id = dataset
    job_id = client.predict(dataset_id=dataset_id, steps=100_000, api_name="/start_training", **QUICK)
    training = app.wait_for(job_id, lambda job: job.state == "training", "training")
    ray_id = submission_id(training)
    assert ray_client(ray_head).get_job_status(ray_id) == "RUNNING"
    assert client.predict(job_id, api_name="/cancel_job") == "cancelled"  # returns once the Ray job has ended
    assert ray_client(ray_head).get_job_status(ray_id) == "STOPPED"
    assert app.store.load(job_id).state == "cancelled"
    workers = [process for process in psutil.process_iter(["cmdline"])
               if str(training.job_dir) in " ".join(process.info["cmdline"] or [])]
    assert workers == []
    time.sleep(1.5)  # a few scheduler passes: nothing starts it again
    assert app.store.load(job_id).state == "cancelled"
    assert ray_client(ray_head).get_job_status(ray_id) == "STOPPED"


@pytest.mark.slow
def test_a_restarted_app_adopts_a_running_ray_job_which_then_finishes(ray_head, app, dataset):
    client, dataset_id = dataset
    app.hold.touch()  # the job's worker waits on its node until the app has restarted
    try:
        job_id = client.predict(dataset_id=dataset_id, steps=3, api_name="/start_training", **QUICK)
        started = app.wait_for(job_id, lambda job: job.started is not None, "started")
        ray_id = submission_id(started)
        deadline = time.monotonic() + TIMEOUT_S
        while ray_client(ray_head).get_job_status(ray_id) != "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.25)
        app.stop()  # the app goes away; its Ray job runs on
        app.start()
        time.sleep(2)  # a few scheduler passes of the new app
        adopted = app.store.load(job_id)
        assert (adopted.state, adopted.attempts, adopted.started) == ("preparing", 0, started.started)
        assert ray_client(ray_head).get_job_status(ray_id) == "RUNNING"
    finally:
        app.hold.unlink(missing_ok=True)
    done = app.wait_for(job_id, lambda job: job.state not in RUNNING, "done")
    assert (done.state, done.attempts, done.started) == ("done", 0, started.started), done.log_path.read_text()
    assert done.devices in (("0",), ("1",))  # what the worker reported, noticed by the new app
    assert ray_client(ray_head).get_job_status(ray_id) == "SUCCEEDED"
    ours = [job for job in ray_client(ray_head).list_jobs() if (job.metadata or {}).get("dreamrelation_job") == job_id]
    assert len(ours) == 1  # the one Ray job, not a second start
    assert (done.output_dir / "relation_lora.safetensors").is_file()
    assert "stopped unexpectedly" not in done.log_path.read_text()


@pytest.mark.slow
def test_a_job_waits_in_the_apps_queue_while_ray_holds_one_of_ours_pending(ray_head, tmp_path, model_config):
    from dreamrelation.jobs import JobScheduler
    from dreamrelation.jobs.ray_executor import RayExecutor

    hold = tmp_path / "hold-workers"
    hold.touch()  # the workers wait on their node: Ray holds their GPUs, and nothing trains
    store = JobStore(tmp_path / "home")
    executor = RayExecutor(ray_head.url, 2, python=str(holding_python(tmp_path / "python", hold)))
    scheduler = JobScheduler(store, executor, poll_s=0.1)
    ray = ray_client(ray_head)

    def ray_status(job):
        job = store.load(job.id)
        with contextlib.suppress(RuntimeError):  # not submitted yet
            return job.started is not None and ray.get_job_status(submission_id(job))

    run = RunConfig(model=model_config, data=DataConfig(data_dir=tmp_path), train=TrainConfig(output_dir=tmp_path))
    scheduler.start()
    try:
        both = scheduler.submit("alice", "hugging", run, gpus=2)  # the cluster's two GPUs
        wait_until(lambda: ray_status(both) == "RUNNING", "the two-GPU job to run")
        pending = scheduler.submit("bob", "hugging", run, gpus=1)
        wait_until(lambda: ray_status(pending) == "PENDING", "the next job to wait in Ray for a GPU")
        waiting = scheduler.submit("carol", "hugging", run, gpus=1)
        time.sleep(1.5)  # many scheduler passes
        assert (store.load(waiting.id).state, store.queue_position(waiting.id)) == ("queued", 1)
        assert ray_status(pending) == "PENDING"

        # A cancel of a job Ray holds pending returns at once: Ray ends it as soon as it gets its GPU.
        asked = time.monotonic()
        assert scheduler.cancel(pending.id, "bob").state == "cancelled"
        assert time.monotonic() - asked < 10 and ray_status(pending) == "PENDING"
        wait_until(lambda: ray_status(waiting) == "PENDING", "the queued job to go to Ray in its turn")
        scheduler.cancel(both.id, "alice")
        wait_until(lambda: ray_status(waiting) == "RUNNING", "the queued job to get a GPU")
        wait_until(lambda: ray_status(pending) == "STOPPED", "Ray to end the cancelled pending job")
        scheduler.cancel(waiting.id, "carol")
        assert [ray_status(job) for job in (both, pending, waiting)] == ["STOPPED"] * 3
        assert pending.folder.prepared() is None and "training on" not in pending.log_path.read_text()
        assert store.in_states(RUNNING) == []
    finally:
        scheduler.stop()
        hold.unlink()


@pytest.mark.slow
def test_a_home_the_cluster_cannot_see_is_refused_at_start_in_one_line(ray_head, tmp_path, cache_dir):
    # On one machine, a home the cluster cannot see: the app runs in a mount namespace of its own, with an
    # empty tmpfs over its home folder, so that what it writes there is not where Ray's processes look.
    home = tmp_path / "home"
    home.mkdir()
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", 'mount -t tmpfs none "$0"',
                            str(home)], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private mount namespace here (unshare -m, mount): {probe.stderr.strip()}")
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(free_port()),
           "DREAMRELATION_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    script = 'mount -t tmpfs none "$0" && exec "$1" app.py --model tiny-random --home "$0" --cluster "$2"'
    result = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(home),
                             sys.executable, ray_head.url], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=180)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output, output
    named = [line for line in output.splitlines() if str(home) in line]
    assert named == [
        f"app.py: the Ray cluster at {ray_head.url} cannot see the data home {home} (on {named[0].split('(on ')[1]}"
    ], output
    assert "the marker file the app wrote is missing" in named[0]
    assert named[0].endswith("; put the home on storage every node mounts at the same path, writable by Ray's "
                             "user (README, 'A Ray cluster')")
    assert list(home.iterdir()) == []  # the node's probe file is gone, and the app's marker was never here
