"""Benchmark (issues #5, #23): latency of the app's read endpoints under many clients, with and without
training, and the scheduler's overhead per job start.

Starts `python app.py` (tiny-random model, a temporary data directory, a login so that every client is the
same user and sees the same jobs, and --jobs GPU slots named 0..N-1: on a machine without GPUs, fake ids, so
that N local jobs train at once on the CPU), trains one short job, then has the clients (Gradio's HTTP API
from one asyncio process, a login each) call `/job_status` (of the finished job) and `/list_relations` in
turn, one call every --interval seconds each (as a page polls its job; 0 for back-to-back calls), for D
seconds: once with the machine idle, once while --jobs long training jobs saturate the CPU. Prints p50/p95/max
latency and the error count per endpoint and phase (goal: p95 < 250 ms while 2 jobs train), then per job
start: the time from submission to the worker's start (the scheduler's poll included) and the time the
executor took to start it (from the app's log).

    PYTHONPATH=. python benchmarks/app_latency.py                  # 20 clients, 60 s per phase, 2 jobs
    PYTHONPATH=. python benchmarks/app_latency.py --clients 5 --seconds 10 --jobs 1
"""

from __future__ import annotations

import argparse
import random
import re
import secrets
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the live-server launcher the app tests use

from app_server import free_port, start_app, stop_app  # noqa: E402

AUTH = ("bench", "bench-password")
SETTINGS = dict(steps=4, learning_rate=1e-3, seed=0, sample_every=0, rank=4, lambda_mask=50.0,
                lambda_contrastive=0.01, num_frames=None, height=None, width=None)


def client(url: str):
    from gradio_client import Client

    return Client(url, auth=AUTH, verbose=False)


def train_job(url: str, uploads: list[Path], steps: int, wait: bool) -> str:
    """Create a dataset from `uploads` and start a job of `steps` steps (waiting for it when `wait`); its id."""
    from gradio_client import handle_file

    c = client(url)
    captions = "\n".join(p.with_suffix(".txt").read_text().strip() for p in uploads)
    dataset_id, *_ = c.predict([handle_file(str(p)) for p in uploads], captions, "orbits", "", "basic",
                               api_name="/create_masks")
    job_id = c.predict(dataset_id, "quick", *{**SETTINGS, "steps": steps}.values(), api_name="/start_training")
    if wait:
        c.predict(job_id, api_name="/job_status")
    return job_id


def wait_until_training(url: str, job_id: str) -> None:
    """Follow /job_status until the job is in its training loop (then stop following)."""
    follow = client(url).submit(job_id, api_name="/job_status")
    for status in follow:
        if status["state"] == "training" and status["step"] > 0:
            break
    follow.cancel()


def poll(url: str, job_id: str, seconds: float, clients: int, interval: float = 0.0) -> dict[str, dict]:
    """`clients` clients, each logged in with its own session, alternate /job_status and /list_relations for
    `seconds`, waiting `interval` seconds between calls (0: back to back, the heaviest load).

    The clients speak Gradio's documented HTTP API (a POST to /gradio_api/call/NAME, then its event stream: the
    queue and the function a page's call goes through) from one asyncio process, because the load generator
    shares the server's cores: twenty gradio_client processes spend about 40 ms of CPU per call, several times
    the server's, and measured their own load, not the app's.

    Returns {endpoint: {"latencies": [s, ...], "errors": [message, ...]}}.
    """
    import asyncio

    import httpx

    results: dict[str, dict] = defaultdict(lambda: {"latencies": [], "errors": []})

    async def call(session: httpx.AsyncClient, page: str, api_name: str, args: tuple) -> None:
        route = f"/gradio_api/call{api_name}"
        started = time.perf_counter()
        try:
            posted = await session.post(route, json={"data": list(args), "session_hash": page})
            posted.raise_for_status()
            stream = (await session.get(f"{route}/{posted.json()['event_id']}")).text
            if "event: complete" not in stream:
                raise RuntimeError(stream.strip()[-300:])
            results[api_name]["latencies"].append(time.perf_counter() - started)
        except Exception as error:  # every failure counts, whatever its kind
            results[api_name]["errors"].append(f"{type(error).__name__}: {error}")

    async def one_client(session: httpx.AsyncClient, end: float) -> None:
        # One Gradio session per client, as a page keeps one from its load on (without one, every call would be a
        # new session, whose state Gradio builds from the whole app's config: 10 ms of the server's CPU).
        page = secrets.token_hex(8)
        # Pages poll out of step with each other, not in bursts: each begins at a random point of its first interval.
        await asyncio.sleep(random.uniform(0.0, interval))
        calls = (("/job_status", (job_id,)), ("/list_relations", ()))
        turn = 0
        while time.monotonic() < end:
            await call(session, page, *calls[turn % 2])
            turn += 1
            await asyncio.sleep(interval)

    async def run_all() -> None:
        sessions = [httpx.AsyncClient(base_url=url, timeout=60.0) for _ in range(clients)]
        for session in sessions:
            (await session.post("/login", data=dict(zip(("username", "password"), AUTH)))).raise_for_status()
        end = time.monotonic() + seconds
        await asyncio.gather(*(one_client(session, end) for session in sessions))
        for session in sessions:
            await session.aclose()

    asyncio.run(run_all())
    return dict(results)


def summary_rows(phase: str, results: dict[str, dict]) -> list[str]:
    rows = []
    for api_name, result in sorted(results.items()):
        latencies = sorted(result["latencies"]) or [float("nan")]
        p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
        rows.append(f"| {phase} | {api_name} | {len(result['latencies'])} | {len(result['errors'])} | "
                    f"{statistics.median(latencies) * 1000:.0f} | {p95 * 1000:.0f} | {latencies[-1] * 1000:.0f} |")
    return rows


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20, help="Concurrent clients (each a page polling its job).")
    parser.add_argument("--seconds", type=float, default=60.0, help="Polling time per phase.")
    parser.add_argument("--interval", type=float, default=1.0, help="Seconds each client waits between calls "
                        "(a page polling its job); 0: back to back.")
    parser.add_argument("--jobs", type=int, default=2, help="Long jobs training at once during the second phase.")
    args = parser.parse_args(argv)
    from dreamrelation.toyworld.dataset import write_relation_dataset
    from dreamrelation.toyworld.world import sample_scenes

    work = Path(tempfile.mkdtemp(prefix="app-latency-"))
    uploads = sorted(write_relation_dataset(work / "uploads", sample_scenes(2, seed=3, relations=("orbits",)),
                                            13, 64, 64).glob("*.mp4"))
    port = free_port()
    slots = ",".join(str(slot) for slot in range(args.jobs))
    server = start_app(work / "home", work / "cache", port, work / "app.log",
                       extra_args=["--auth", ":".join(AUTH), "--gpus", slots, "--max-jobs-per-owner", "100"])
    url = f"http://127.0.0.1:{port}/"
    try:
        finished = train_job(url, uploads, 4, wait=True)
        rows = summary_rows("idle", poll(url, finished, args.seconds, args.clients, args.interval))
        running = [train_job(url, uploads, 100_000, wait=False) for _ in range(args.jobs)]
        for job_id in running:
            wait_until_training(url, job_id)
        rows += summary_rows(f"{args.jobs} training", poll(url, finished, args.seconds, args.clients, args.interval))
        for job_id in running:
            client(url).predict(job_id, api_name="/cancel_job")
    finally:
        stop_app(server)
    print(f"\n{args.clients} clients, one call every {args.interval:g} s each, {args.seconds:.0f} s per phase, "
          f"tiny-random model, {work}\n")
    print("| phase | endpoint | calls | errors | p50 ms | p95 ms | max ms |\n|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\n| job | GPU slots | submitted to started ms | executor start ms |\n|---|---|---|---|")
    print("\n".join(start_rows(work / "home", work / "app.log")))


def start_rows(home: Path, log: Path) -> list[str]:
    """One row per job: its slots, the time from submission to its worker's start (the scheduler's poll and
    claim included) and the executor's own start time (the app log's "started on ... in S s")."""
    from dreamrelation.jobs import JobStore

    executor_s = dict(re.findall(r"job (\w+): started on .* in ([0-9.]+) s", log.read_text()))
    rows = []
    for job in sorted(JobStore(home).in_states(("done", "cancelled", "failed")), key=lambda job: job.created):
        rows.append(f"| {job.id} | {', '.join(job.devices)} | {(job.started - job.created) * 1000:.0f} | "
                    f"{float(executor_s.get(job.id, 'nan')) * 1000:.1f} |")
    return rows


if __name__ == "__main__":
    main()
