"""Training jobs on a Ray cluster, through Ray's Jobs API (README, "A Ray cluster").

Each start of a training job is one Ray job. Its entrypoint is the worker command (executors.worker_command,
under `accelerate launch` for several GPUs) with stdout and stderr appended to the job folder's worker.log,
and it asks Ray for the job's GPUs (entrypoint_num_gpus) and one CPU: Ray picks the node and sets
CUDA_VISIBLE_DEVICES there, and the worker reports what it got through the job folder (jobs/folder.py), so
the job folder, which sits in the data home, must be at the same path on every node: `check_home` proves it
at app start.

Addresses. `--cluster` takes the dashboard's address, http://HOST:8265 (or https://), which the Jobs API
talks to; a Ray Client address, ray://HOST[:PORT], is taken to mean the dashboard on the same host at its
default port, http://HOST:8265 (Ray's own client would connect to the Ray Client server and start a driver in
this process only to ask for the dashboard's address). A dashboard on another port: give its http:// address.
The address given here is the one used: RAY_ADDRESS and RAY_API_SERVER_ADDRESS, which Ray's client would
otherwise let override it, are ignored while connecting (the app's --cluster already defaults to RAY_ADDRESS).

Ray job ids. A job that starts again (retried after its worker died, resumed after a failure or a cancel)
needs a new Ray job, and Ray takes a submission id once (and advises against reusing the id of a deleted job):
the Ray job of a job's latest start is `dreamrelation-ID-STARTED`, STARTED being the table's `started` in
milliseconds. So a restarted app finds the Ray jobs of its running jobs from the table alone.

The Python on the nodes. The entrypoint runs `python` from the node's PATH, as Ray runs entrypoints; set
DREAMRELATION_RAY_PYTHON (in the app's environment) to another command or path, e.g. /opt/venv/bin/python.
It needs this package (and Ray, for the home check) installed on every node.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from dreamrelation.jobs.executors import Executor, ExecutorError, worker_command
from dreamrelation.jobs.folder import one_line
from dreamrelation.jobs.store import Job

logger = logging.getLogger(__name__)

PYTHON_ENV = "DREAMRELATION_RAY_PYTHON"  # the Python command on the nodes (default: `python` on their PATH)
DASHBOARD_PORT = 8265  # Ray's default dashboard port: where a ray://HOST address is sent
REQUEST_TIMEOUT_S = 10.0  # per request to the dashboard: a cluster gone quiet must not hold up the scheduler
STOP_WAIT_S = 30.0  # how long `stop` waits for a stopped Ray job to end (Ray kills it after 3 s of SIGTERM)
CHECK_TIMEOUT_S = 90.0  # how long the home check may take, from its submission to its report
# A worker that exited by itself wrote its outcome first; a shared file system may show that file on the app's
# machine a little later (NFS caches directory lookups for up to a minute): wait this long before calling the
# job's worker dead.
OUTCOME_GRACE_S = 60.0
_WORKER_EXIT_CODES = (0, 1)  # the worker's own exits (done, failed), after it wrote outcome.json
_ADDRESS_VARIABLES = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")  # what Ray's client would take over ours
_environ_lock = threading.Lock()


def dashboard_url(address: str) -> str:
    """The dashboard URL the Jobs API talks to for a cluster `address`: http(s)://HOST:PORT as given,
    ray://HOST[:PORT] as http://HOST:8265. Raises ExecutorError (one line) for anything else."""
    address = address.strip()
    parts = urlsplit(address)
    host = parts.hostname
    if parts.scheme in ("http", "https") and host:
        return address.rstrip("/")
    if parts.scheme == "ray" and host:
        return f"http://{f'[{host}]' if ':' in host else host}:{DASHBOARD_PORT}"
    raise ExecutorError(
        f"a Ray cluster address is its dashboard's, http://HOST:{DASHBOARD_PORT}, or ray://HOST:10001 "
        f"(README, 'A Ray cluster'); got {address!r}"
    )


def submission_id(job: Job) -> str:
    """The id of the Ray job of `job`'s latest start (see the module's doc): from the table alone."""
    started = round(job.started * 1000) if job.started is not None else 0
    return f"dreamrelation-{job.id}-{started}"


def entrypoint(python: str, job: Job) -> str:
    """The shell command of `job`'s Ray job: its worker on `job.gpus` GPUs, output appended to worker.log."""
    command = worker_command(python, job.job_dir, job.gpus)
    return f"{shlex.join(command)} >> {shlex.quote(str(job.log_path))} 2>&1"


class RayRefused(RuntimeError):
    """The dashboard answered a request with an error (`status`: its HTTP status)."""

    def __init__(self, status: int, text: str):
        self.status = status
        super().__init__(f"{status}: {_last_line(text)}")


class RayExecutor(Executor):
    """A Ray job per training job on the cluster at `address` (see the module's doc), which Ray places; jobs
    may ask for up to `max_gpus_per_job` GPUs. `python`: the nodes' Python command (default
    $DREAMRELATION_RAY_PYTHON, else `python`). Raises ExecutorError (one line) when the cluster is out of reach
    or Ray is not installed."""

    name = "ray"

    def __init__(self, address: str, max_gpus_per_job: int, python: str | None = None,
                 timeout_s: float = REQUEST_TIMEOUT_S):
        self.address = address.strip()
        self.url = dashboard_url(self.address)
        self.python = python or os.environ.get(PYTHON_ENV) or "python"
        self._max_gpus = max_gpus_per_job
        self._ended: dict[str, float] = {}  # Ray jobs seen ended without an outcome file: since when (monotonic)
        self._client = _connect(self.address, self.url, timeout_s)

    @property
    def max_gpus(self) -> int:
        return self._max_gpus

    def describe(self) -> str:
        return f"jobs run on the Ray cluster at {self.address}, up to {self._max_gpus} GPU(s) each"

    def place(self, job: Job, running: list[Job], held: Iterable[str]) -> list[str] | None:
        """[] (Ray places the job) unless one of our jobs still waits in Ray for its resources (PENDING), then
        None: the job waits in the app's queue instead of Ray's. Ray starts pending jobs in no order of ours, so
        handing it one job at a time keeps the app's order (owners take turns, jobs start strictly in queue
        order) for who gets the cluster's next free GPUs."""
        for other in running:
            # A worker that reported itself prepared (training) runs; only a preparing one may still be pending.
            if other.state == "preparing" and (info := self._info(other)) is not None and info.status == "PENDING":
                return None
        return []

    def start(self, job: Job, devices: list[str]) -> int | None:
        """Submit `job`'s Ray job; returns None (its process is on a node). OSError when Ray refuses it;
        ExecutorError when the cluster is out of reach (the job is retried once it is back)."""
        ray_id = submission_id(job)
        try:
            self._client.submit_job(
                entrypoint=entrypoint(self.python, job), submission_id=ray_id, entrypoint_num_gpus=job.gpus,
                entrypoint_num_cpus=1, metadata={"dreamrelation_job": job.id, "job_dir": str(job.job_dir)},
            )
        except RayRefused as error:
            if "already exists" in str(error):  # this very start was submitted already (a lost answer)
                return None
            raise OSError(f"the Ray cluster at {self.address} refused the job: {error}") from None
        except Exception as error:
            raise self._unreachable(error) from None
        logger.info("job %s: Ray job %s submitted to %s", job.id, ray_id, self.address)
        return None

    def running(self, job: Job) -> bool:
        """Whether `job`'s Ray job is PENDING or RUNNING; a Ray job the cluster does not know is not running.
        When it ended without the worker's outcome in the job folder, Ray's reason goes to worker.log."""
        info = self._info(job)
        if info is None:
            return False
        ray_id = submission_id(job)
        if not info.status.is_terminal():
            return True
        if job.folder.outcome() is not None:
            self._ended.pop(ray_id, None)
            return False
        if info.status != "STOPPED" and info.driver_exit_code in _WORKER_EXIT_CODES:
            first_seen = self._ended.setdefault(ray_id, time.monotonic())
            if time.monotonic() - first_seen < OUTCOME_GRACE_S:
                return True  # the worker wrote its outcome; the shared storage has yet to show it here
        self._ended.pop(ray_id, None)
        job.folder.note(f"the Ray job {ray_id} ended {info.status}: {one_line(info.message or '')}")
        return False

    def stop(self, job: Job) -> None:
        """Stop `job`'s Ray job and return once Ray says it has ended (Ray sends its processes SIGTERM, then
        SIGKILL after 3 s), or, for a Ray job still waiting for resources (PENDING), once Ray has taken the stop:
        Ray ends such a job the moment it gets its resources, before its worker has done anything. Gives up
        after STOP_WAIT_S with a note in worker.log."""
        ray_id = submission_id(job)
        deadline = time.monotonic() + STOP_WAIT_S
        taken = False
        while True:
            if not taken:  # False while Ray has no supervisor for it yet, or no longer one
                try:
                    taken = self._client.stop_job(ray_id)
                except RayRefused as error:
                    if error.status == 404:
                        return
                    raise ExecutorError(f"the Ray cluster at {self.address} did not stop {ray_id}: {error}") from None
                except Exception as error:
                    raise self._unreachable(error) from None
            info = self._info(job)
            if info is None or info.status.is_terminal():
                return
            if taken and info.status == "PENDING":
                job.folder.note(f"the Ray job {ray_id} was waiting for resources; Ray ends it when it gets them")
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        job.folder.note(f"the Ray job {ray_id} was asked to stop but has not ended after {STOP_WAIT_S:.0f} s")
        logger.warning("job %s: Ray job %s has not ended %.0f s after a stop", job.id, ray_id, STOP_WAIT_S)

    def check_home(self, home: Path) -> None:
        """Prove that every alive node of the cluster sees `home` at the same path, and may write there: a
        marker file with a random token is written here, and a small Ray job (no CPU reserved, so a busy
        cluster runs it too) reads it back and writes a file beside it on each node, with a Ray task pinned
        there. Raises ExecutorError (one line) when a node does not, or when the check does not report within
        CHECK_TIMEOUT_S."""
        home = Path(home)
        token = secrets.token_hex(8)
        marker = home / f".ray-check-{token}"
        ray_id = f"dreamrelation-check-{token}"
        marker.write_text(token, encoding="utf-8")
        try:
            report = self._run_check(ray_id, [self.python, "-c", _PROBE, str(marker), token])
        finally:
            marker.unlink(missing_ok=True)
        unseen = [f"on {node['host']} ({node['address']}) {' and '.join(node['problems'])}" for node in report
                  if node["problems"]]
        if unseen:
            raise ExecutorError(
                f"the Ray cluster at {self.address} cannot see the data home {home} ({'; '.join(unseen)}); put the "
                "home on storage every node mounts at the same path, writable by Ray's user (README, 'A Ray cluster')"
            )
        logger.info("the %d node(s) of the Ray cluster at %s see the data home %s", len(report), self.address, home)

    def _run_check(self, ray_id: str, command: list[str]) -> list[dict]:
        """Run the home check as Ray job `ray_id` and return its report (a dict per node); deletes the job."""
        try:
            self._client.submit_job(entrypoint=shlex.join(command), submission_id=ray_id, entrypoint_num_cpus=0)
        except RayRefused as error:
            raise ExecutorError(f"the Ray cluster at {self.address} refused the data home check: {error}") from None
        except Exception as error:
            raise self._unreachable(error) from None
        try:
            deadline = time.monotonic() + CHECK_TIMEOUT_S
            while not (info := self._info_of(ray_id)).status.is_terminal():
                if time.monotonic() > deadline:
                    self._client.stop_job(ray_id)
                    raise ExecutorError(
                        f"the Ray cluster at {self.address} did not run the data home check within "
                        f"{CHECK_TIMEOUT_S:.0f} s (Ray job {ray_id}, {info.status}): are its nodes up and is its "
                        "head node's Ray working? (`ray status`, `ray job logs`)"
                    )
                time.sleep(0.25)
            logs = self._client.get_job_logs(ray_id)
        except ExecutorError:
            raise
        except Exception as error:
            raise self._unreachable(error) from None
        finally:
            self._forget(ray_id)
        for line in logs.splitlines():
            if line.startswith(_REPORT):
                return json.loads(line[len(_REPORT):])
        raise ExecutorError(
            f"the data home check on the Ray cluster at {self.address} failed ({info.status}: "
            f"{_last_line(logs) or one_line(info.message or '')}); the nodes' Python, {self.python!r} "
            f"(${PYTHON_ENV}), needs Ray and this package (README, 'A Ray cluster')"
        )

    def _forget(self, ray_id: str) -> None:
        """Delete the finished Ray job `ray_id` (the check's: nothing worth keeping), leaving it when it cannot."""
        deadline = time.monotonic() + STOP_WAIT_S
        try:
            while not self._info_of(ray_id).status.is_terminal() and time.monotonic() < deadline:
                time.sleep(0.2)
            self._client.delete_job(ray_id)
        except Exception as error:  # noqa: BLE001 - a leftover check job in Ray's list does no harm
            logger.debug("left the Ray job %s: %s", ray_id, error)

    def _info(self, job: Job):
        """The JobDetails of `job`'s Ray job, or None when the cluster does not know it."""
        try:
            return self._info_of(submission_id(job))
        except RayRefused as error:
            if error.status == 404:
                return None
            raise ExecutorError(f"the Ray cluster at {self.address} did not tell job {job.id}'s state: {error}") \
                from None

    def _info_of(self, ray_id: str):
        try:
            return self._client.get_job_info(ray_id)
        except RayRefused:
            raise
        except Exception as error:
            raise self._unreachable(error) from None

    def _unreachable(self, error: BaseException) -> ExecutorError:
        return ExecutorError(f"the Ray cluster at {self.address} is out of reach: {one_line(str(error))}")


_REPORT = "DREAMRELATION-HOME-CHECK "
# The home check's program, run by the nodes' Python as a Ray job's entrypoint (argv: the marker, the token):
# a task pinned to each alive node reads the marker and writes a file beside it; prints one report line.
_PROBE = r"""
import json, os, socket, sys
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

marker, token = sys.argv[1], sys.argv[2]

@ray.remote(num_cpus=0)
def look(index):
    problems = []
    try:
        with open(marker, encoding="utf-8") as file:
            if file.read() != token:
                problems.append("another file at the marker's path")
    except FileNotFoundError:
        problems.append("the marker file the app wrote is missing")
    except OSError as error:
        problems.append("the marker file is unreadable (" + type(error).__name__ + ")")
    probe = marker + "." + str(index)
    try:
        with open(probe, "w", encoding="utf-8") as file:
            file.write(token)
        os.remove(probe)
    except OSError as error:
        problems.append("cannot write there (" + type(error).__name__ + ")")
    return {"host": socket.gethostname(), "problems": problems}

ray.init(logging_level="ERROR", log_to_driver=False)
nodes = [node for node in ray.nodes() if node["Alive"]]
tasks = [look.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(index)
         for index, node in enumerate(nodes)]
report = [dict(result, address=node["NodeManagerAddress"]) for node, result in zip(nodes, ray.get(tasks))]
print("DREAMRELATION-HOME-CHECK " + json.dumps(report), flush=True)
"""


def _connect(address: str, url: str, timeout_s: float):
    """A Jobs API client of the dashboard at `url` whose requests time out after `timeout_s`; ExecutorError when
    Ray is missing or the dashboard does not answer."""
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError:
        raise ExecutorError(
            "--cluster needs Ray on this machine: pip install -e '.[cluster]' (the pinned ray[default]; "
            "README, 'A Ray cluster')"
        ) from None

    class Client(JobSubmissionClient):
        # Ray 2.58's SubmissionClient sends every request through _do_request (without a timeout) and reports
        # an error answer through _raise_error: here with a timeout, and as RayRefused with the HTTP status.
        def _do_request(self, method, endpoint, **kwargs):
            kwargs.setdefault("timeout", timeout_s)
            return super()._do_request(method, endpoint, **kwargs)

        def _raise_error(self, response):
            raise RayRefused(response.status_code, response.text)

    via = "" if url == address else f", its dashboard {url}"
    try:
        with _address_from_us():
            return Client(url)
    except Exception as error:
        # Ray turns a refused or timed-out connection into a ConnectionError that only repeats the address.
        reason = "no answer" if isinstance(error, ConnectionError) else one_line(str(error))
        raise ExecutorError(
            f"cannot reach the Ray cluster at {address}{via} ({reason}); check that the cluster is "
            f"up and that this machine reaches its dashboard (port {DASHBOARD_PORT} by default; README, "
            "'A Ray cluster')"
        ) from None


@contextmanager
def _address_from_us() -> Iterator[None]:
    """Hide RAY_ADDRESS and RAY_API_SERVER_ADDRESS from Ray's client while it is made: it would take them over
    the address it is given (once made, it keeps its own)."""
    with _environ_lock:
        saved = {name: os.environ.pop(name) for name in _ADDRESS_VARIABLES if name in os.environ}
        try:
            yield
        finally:
            os.environ.update(saved)


def _last_line(text: str) -> str:
    """The last line of `text` that says something (Ray's error answers end with a traceback's last line)."""
    lines = [line.strip() for line in text.splitlines() if line.strip().strip(".")]
    return one_line(lines[-1]) if lines else ""
