"""Benchmark: the app's example flow, run as a new user runs it, and judged.

Starts `python app.py` on a model (default: the embedded toy model) with a fresh data directory, then through
gradio_client: loads the bundled example "orbits" (12 exemplars of squares orbiting squares: red, blue, yellow and
green, toyworld.examples), trains it with the "quick" preset, waits for the job, and generates one video per prompt
naming subjects the exemplars never showed (cyan and magenta circles and triangles). Each video is judged by Shapes World's judges: the relation with roles, and the prompted
colours. Prints a table and the wall times (quick-preset training, total).

    PYTHONPATH=. .venv/bin/python benchmarks/demo_flow.py
    PYTHONPATH=. .venv/bin/python benchmarks/demo_flow.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Unseen subjects: the colours (cyan, magenta) and shapes (circle, triangle) no bundled exemplar shows.
PROMPTS = (
    "A cyan circle orbits a magenta triangle.",
    "A magenta triangle orbits a cyan circle.",
    "A magenta circle orbits a cyan triangle.",
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="toy", help="The app's base model (default: the embedded toy model).")
    parser.add_argument("--example", default="orbits", help="The bundled example to train.")
    parser.add_argument("--prompts", nargs="+", default=list(PROMPTS), help="Prompts to generate and judge.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="Generation seeds per prompt.")
    return parser.parse_args(argv)


def start_app(home: Path, model: str) -> tuple[subprocess.Popen, str]:
    """`python app.py --model MODEL` on a free local port with data in `home`; returns (process, url) once it answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "DREAMRELATION_HOME": str(home), "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([sys.executable, "app.py", "--model", model], cwd=REPO, env=env,
                              stdout=open(home / "app.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"demo_flow.py: the app exited: {(home / 'app.log').read_text()[-500:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return server, url
        except OSError:
            time.sleep(0.5)
    os.killpg(server.pid, signal.SIGKILL)
    sys.exit("demo_flow.py: the app did not answer within 180 s")


def judge(video: str, prompt: str) -> dict:
    """The judges' verdict on a generated mp4: the relation seen, whether roles match, whether colours are right."""
    from dreamrelation.data.video import probe_video, read_frames
    from dreamrelation.toyworld.captions import parse_caption, prompt_subjects
    from dreamrelation.toyworld.judges import judge_appearance, judge_relation

    frames = read_frames(Path(video), list(range(probe_video(Path(video)).num_frames)))
    first, second = prompt_subjects(prompt)
    verdict = judge_relation(frames, first, second)
    colours = bool(judge_appearance(frames, (first, second))["colour_ok"])
    wanted = parse_caption(prompt)[1]
    return {"seen": verdict.relation, "relation": verdict.relation == wanted and verdict.roles_match,
            "colours": colours}


def main(argv=None) -> None:
    from gradio_client import Client

    args = parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="demo-flow-") as folder:
        home = Path(folder)
        server, url = start_app(home, args.model)
        try:
            client = Client(url, verbose=False)
            dataset_id = client.predict(args.example, api_name="/load_example")[0]
            training_started = time.perf_counter()
            job_id = client.predict(dataset_id=dataset_id, preset="quick", api_name="/start_training")
            final = list(client.submit(job_id, api_name="/job_status"))[-1]
            training_s = time.perf_counter() - training_started
            if final["state"] != "done":
                sys.exit(f"demo_flow.py: the quick job ended {final['state']}: {final.get('error')}")
            rows = []
            for prompt in args.prompts:
                for seed in args.seeds:
                    begun = time.perf_counter()
                    video = client.predict(relation_id=job_id, prompt=prompt, seed=seed, api_name="/generate")
                    rows.append((prompt, seed, judge(video, prompt), time.perf_counter() - begun))
        finally:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    print(f"\nmodel {args.model}: example {args.example!r}, quick preset ({final['steps']} steps, "
          f"{training_s:.0f} s of training), {len(args.seeds)} seed(s) per prompt\n")
    print("| prompt | seed | relation judged | relation with roles | prompted colours | both | generation s |")
    print("|---|---|---|---|---|---|---|")
    for prompt, seed, verdict, seconds in rows:
        both = verdict["relation"] and verdict["colours"]
        print(f"| {prompt} | {seed} | {verdict['seen']} | {verdict['relation']} | {verdict['colours']} | {both} | "
              f"{seconds:.0f} |")
    shown = sum(verdict["relation"] and verdict["colours"] for _, _, verdict, _ in rows)
    print(f"\n{shown} of {len(rows)} generations show the relation with the prompted colours; total wall time "
          f"{time.perf_counter() - started:.0f} s (quick-preset training {training_s:.0f} s).")


if __name__ == "__main__":
    main()
