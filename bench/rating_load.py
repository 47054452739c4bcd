"""Rating latency with 25 raters at once while the app trains (issue 7).

    python bench/rating_load.py [--raters 25] [--pairs 8]

Starts the real app (`python app.py`) on a free loopback port over a fresh data
root, with the tiny test model (random weights, SmolLM2 tokenizer) and an owner
password, as on a public Space. The owner signs in and starts a training run
through the Train tab's own handler, so training runs inside the server process,
as it does for a user. Then the raters (one thread and one session each) join an
evaluation and submit their pairs at a person's pace: all submit their first
rating at the same instant, then read for about --think seconds between
submissions. Reports the p50/p95/max latency of a rating submission (HTTP round trip: queue join to
result), the ratings acknowledged, and what the SQLite file holds afterwards.
Loopback only, bounded: raters × pairs submissions. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import queue
import random
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "tests"))

from gradio_http import call, default_inputs, page_headers, sign_in  # noqa: E402
from helpers import open_evaluation  # noqa: E402

from ratings.store import Store  # noqa: E402
from tuner import models, tiny  # noqa: E402
from tuner.paths import Layout, data_root  # noqa: E402
from tuner.ui.dataset import DEFAULT_DATASET  # noqa: E402
from tuner.ui.train import FIELDS  # noqa: E402

PASSWORD = "bench-owner-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The app's handlers over plain HTTP, as the page (or any script) calls them: the
# tests' own client (tests/gradio_http.py), so the benchmark and the tests send the same requests.


def seed_evaluation(home: Path, model: Path, n_prompts: int) -> int:
    """An evaluation of `n_prompts` pairs open for rating in `home` (the tests' open_evaluation)."""
    prompts = [{"text": f"Write a polite note number {i}.", "task": ""} for i in range(n_prompts)]
    variants = [{"name": "base", "label": "Base", "kind": "base"}, {"name": "lora", "label": "LoRA", "kind": "lora"}]
    return open_evaluation(Store(Layout(home).ratings_db), "load test", model, prompts, variants,
                           reply="Reply {variant} to prompt {position}: " + "words " * 40, reply_settings={})


def wait_for(url: str, proc: subprocess.Popen, limit: float = 120.0) -> None:
    import httpx

    deadline = time.time() + limit
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the app exited early with code {proc.returncode}")
        try:
            if httpx.get(url + "/tuner/sign-in", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the app did not answer on {url} within {limit:.0f} s")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, all its threads together."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_app(proc: subprocess.Popen, log) -> None:
    """End the app started for a benchmark (and close its log)."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, int(round(q * len(values) + 0.5)) - 1))]


def logged_steps(home: Path) -> int:
    """Optimizer steps the run has logged so far (one metrics row a step)."""
    files = list((home / "runs").glob("*/metrics.jsonl"))
    return sum(1 for line in files[0].read_text().splitlines() if '"loss"' in line) if files else 0


def by_api(cfg: dict, name: str) -> int:
    return next(d["id"] for d in cfg["dependencies"] if d.get("api_name") == name)


def start_training(url: str, cfg: dict, model: Path) -> str:
    """Sign in as the owner and press Start on the Train tab, as the page would."""
    owner = sign_in(url, PASSWORD)  # the page's sign-in route: the owner's cookies
    session = "owner-session"
    start = by_api(cfg, "on_start")
    values = default_inputs(cfg, start)  # as the page sends them: model, dataset, run name, …, then FIELDS
    values[0], values[1] = str(model), DEFAULT_DATASET  # the label the page's picker shows for the starter set
    settings = len(values) - len(FIELDS)  # the training settings are the last inputs, in FIELDS order
    values[settings + FIELDS.index("max_steps")] = 100_000  # keeps training for the whole test
    values[settings + FIELDS.index("save_steps")] = 100_000
    started = call(url, start, values, cookies=owner, session_hash=session)
    if not started["success"] or "Started run" not in str(started["data"]):
        raise SystemExit(f"could not start training: {started}")
    return started["data"][0]


def stop_training(url: str, cfg: dict) -> None:
    owner = sign_in(url, PASSWORD)
    call(url, by_api(cfg, "on_stop"), [], cookies=owner)


def studio_config(url: str) -> dict:
    """The studio's config, which only the owner may read."""
    import httpx

    owner = sign_in(url, PASSWORD)
    return httpx.get(f"{url}/config", cookies=owner, headers=page_headers(owner), timeout=30).json()


def rater(url: str, eval_id: int, name: str, pairs: int, think: float, out, barrier) -> None:
    """One rater, in a process of its own (25 raters are 25 browsers: threads of one
    Python process would queue their HTTP work behind its one GIL). Puts what it
    measured on `out`: ("latency", k, s), ("cpu", s), ("ack", …) and ("error", text).
    At the lowest CPU priority: raters' browsers run on their own machines, not on the
    server's two cores (the client's CPU per submission is reported)."""
    import httpx

    os.nice(19)

    # one connection kept open for the whole visit, as a browser keeps its own (and its rater cookie)
    # each rater from their own address, as a Space's proxy reports it (SPACE_ID is set below)
    address = f"10.0.{int(name[-2:]) // 200}.{int(name[-2:]) % 200 + 1}"
    with httpx.Client(base_url=url, timeout=60, headers={"X-Forwarded-For": address}) as client:
        client.get("/tuner/rate/evaluations")
        joined = client.post("/tuner/rate/join", json={"evaluation": eval_id, "name": name, "code": ""})
        if joined.status_code != 200 or "pair 1 of" not in joined.text:
            out.put(("error", f"{name}: join: {joined.status_code} {joined.text[:200]}"))
            barrier.abort()
            return
        pair = joined.json()["assignment"]
        out.put(("joined",))
        rng = random.Random(name)
        barrier.wait()  # everyone submits their first rating at the same instant
        for k in range(pairs):
            if k:  # then reads the next pair for a while, as a person would
                time.sleep(rng.uniform(0.5, 1.5) * think)
            a, b = rng.randint(1, 5), rng.randint(1, 5)
            began, cpu = time.perf_counter(), time.thread_time()
            result = client.post("/tuner/rate/submit", json={"evaluation": eval_id, "assignment": pair, "a": a, "b": b,
                                                             "preference": None, "comment": ""})
            out.put(("latency", k, time.perf_counter() - began))
            out.put(("cpu", time.thread_time() - cpu))
            if result.status_code == 200 and result.json()["reveal"].startswith("Saved"):
                out.put(("ack", name, a, b))
            else:
                out.put(("error", f"{name}: submit: {result.status_code} {result.text[:200]}"))
            pair = client.post("/tuner/rate/next", json={"evaluation": eval_id}).json().get("assignment")


def join_cpu(url: str, eval_id: int, pid: int, n: int = 25) -> float:
    """Server CPU (all its threads) per rater joining: the raters' page and its list of
    evaluations, then Start rating, for `n` new raters one after another, before training starts."""
    import httpx

    before = cpu_seconds(pid)
    for i in range(n):
        with httpx.Client(base_url=url, timeout=60, headers={"X-Forwarded-For": f"10.9.0.{i + 1}"}) as client:
            client.get("/rate/").raise_for_status()
            client.get("/rate/config").raise_for_status()
            client.get("/tuner/rate/evaluations").raise_for_status()
            answer = client.post("/tuner/rate/join", json={"evaluation": eval_id, "name": f"joiner{i:02d}", "code": ""})
            if answer.status_code != 200:
                raise SystemExit(f"join failed: {answer.status_code} {answer.text[:300]}")
    return 1000 * (cpu_seconds(pid) - before) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raters", type=int, default=25)
    parser.add_argument("--pairs", type=int, default=8, help="submissions per rater (within the rate limit)")
    parser.add_argument("--think", type=float, default=2.0,
                        help="mean seconds a rater reads between submissions (the first ones are simultaneous)")
    parser.add_argument("--no-training", action="store_true", help="measure without a run in the background")
    parser.add_argument("--train-model", choices=["tiny", "bundled"], default="tiny",
                        help="what trains meanwhile: the tiny test model (many short steps, mostly Python: the "
                             "hardest case for the server's threads) or the bundled SmolLM2-135M a user trains")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tuner-rating-load-") as tmp:
        tmp = Path(tmp)
        model = tiny.build_tiny_llama(tmp / "tiny-llama", tiny.smollm2_tokenizer(tmp / "tokenizer"))
        trained = model
        if args.train_model == "bundled":  # converted once into the usual model cache, outside the timing
            trained = models.resolve(models.BUNDLED, Layout(data_root()).models).location
        home = tmp / "home"
        eval_id = seed_evaluation(home, model, args.pairs)
        join_eval = seed_evaluation(home, model, args.pairs)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "TUNER_HOME": str(home), "TUNER_MODEL": str(model), "GRADIO_SERVER_PORT": str(port),
               "GRADIO_SERVER_NAME": "127.0.0.1", "TUNER_OWNER_PASSWORD": PASSWORD,
               "GRADIO_ANALYTICS_ENABLED": "False",
               # as on a Space: the proxy's X-Forwarded-For names each rater's address (the limits are per address)
               "SPACE_ID": "bench/rating-load"}
        env.pop("TUNER_OWNER", None)
        log = open(tmp / "app.log", "w")
        proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            wait_for(url, proc)
            cfg = studio_config(url)
            join_ms = join_cpu(url, join_eval, proc.pid)
            training = "no"
            if not args.no_training:
                print(start_training(url, cfg, trained), flush=True)
                deadline = time.time() + 120
                while logged_steps(home) == 0 and time.time() < deadline:
                    time.sleep(0.5)  # until the first optimizer step: training is really running
                training = "yes" if logged_steps(home) else "did not start"
            steps_before = logged_steps(home)
            ctx = multiprocessing.get_context("fork")  # cheap: the raters use no torch
            out, barrier = ctx.Queue(), ctx.Barrier(args.raters)
            procs = [ctx.Process(target=rater, args=(url, eval_id, f"rater{i:02d}", args.pairs, args.think,
                                                     out, barrier)) for i in range(args.raters)]
            server_cpu = cpu_seconds(proc.pid)
            began = time.perf_counter()
            for p in procs:
                p.start()
            results, rating_cpu = [], None
            while any(p.is_alive() for p in procs) or not out.empty():
                with contextlib.suppress(queue.Empty):
                    results.append(out.get(timeout=0.2))
                    if rating_cpu is None and sum(r[0] == "joined" for r in results) == args.raters:
                        rating_cpu = cpu_seconds(proc.pid)  # all have joined: from here on, rating only
            for p in procs:
                p.join(timeout=60)
            wall = time.perf_counter() - began
            server_cpu, rating_cpu = cpu_seconds(proc.pid) - server_cpu, cpu_seconds(proc.pid) - (rating_cpu or 0)
            latencies = [(r[1], r[2]) for r in results if r[0] == "latency"]
            client_cpu = [r[1] for r in results if r[0] == "cpu"]
            acks = [r[1:] for r in results if r[0] == "ack"]
            errors = [r[1] for r in results if r[0] == "error"]
            steps = None
            if not args.no_training:
                steps = logged_steps(home) - steps_before
                stop_training(url, cfg)
        finally:
            stop_app(proc, log)
        with sqlite3.connect(home / "ratings.db") as conn:
            stored = conn.execute("SELECT COUNT(*) FROM assignments WHERE rater LIKE 'rater%' "
                                  "AND rated_at IS NOT NULL").fetchone()[0]
            rows = conn.execute("SELECT COUNT(*) FROM ratings WHERE rater LIKE 'rater%'").fetchone()[0]
            check = conn.execute("PRAGMA integrity_check").fetchone()[0]

    ms = sorted(x * 1000 for _k, x in latencies)
    burst = sorted(x * 1000 for k, x in latencies if k == 0)
    p50, p95 = percentile(ms, 0.5), percentile(ms, 0.95)
    print(f"{args.raters} raters × {args.pairs} submissions, training in the server: {training}"
          + (f" ({steps} optimizer steps logged meanwhile)" if steps is not None else ""))
    print(f"submission latency: p50 {p50:.0f} ms · p95 {p95:.0f} ms · max {ms[-1] if ms else float('nan'):.0f} ms"
          f" · wall {wall:.1f} s")
    print(f"the first, simultaneous submissions of all {len(burst)} raters: p50 {percentile(burst, 0.5):.0f} ms"
          f" · p95 {percentile(burst, 0.95):.0f} ms")
    print(f"CPU: the rater's client {1000 * sum(client_cpu) / max(1, len(client_cpu)):.1f} ms a submission;"
          f" the server, all its threads: {server_cpu:.1f} s in all, {rating_cpu:.1f} s once all had joined ="
          f" {1000 * rating_cpu / max(1, len(acks)):.1f} ms a submission with its Next pair"
          + (" (the training's share included)" if training == "yes" else ""))
    print(f"a rater joining (the raters' page, its config, the list, Start rating): {join_ms:.1f} ms of server CPU")
    print(f"acknowledged {len(acks)} · stored {stored} (ratings rows {rows}, 2 a pair) · integrity {check}"
          f" · errors {len(errors)}")
    for line in errors[:5]:
        print("  ", line[:300])
    print(json.dumps({
        "bench": "rating_load", "date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "raters": args.raters, "pairs_each": args.pairs, "training": training == "yes",
        "train_steps_during": steps, "train_model": None if args.no_training else args.train_model, "think_s": args.think, "p50_ms": round(p50, 1), "p95_ms": round(p95, 1),
        "burst_p50_ms": round(percentile(burst, 0.5), 1), "burst_p95_ms": round(percentile(burst, 0.95), 1),
        "max_ms": round(ms[-1], 1) if ms else None, "acknowledged": len(acks), "stored": stored,
        "ratings_rows": rows, "integrity": check, "errors": len(errors), "wall_s": round(wall, 1),
        "client_cpu_ms": round(1000 * sum(client_cpu) / max(1, len(client_cpu)), 2),
        "server_cpu_s": round(server_cpu, 2), "server_cpu_rating_ms": round(1000 * rating_cpu / max(1, len(acks)), 2),
        "join_server_cpu_ms": round(join_ms, 1)}))


if __name__ == "__main__":
    main()
