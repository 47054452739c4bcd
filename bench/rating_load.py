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
import os
import platform
import random
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ratings.store import Store  # noqa: E402
from tuner import tiny  # noqa: E402
from tuner.paths import Layout  # noqa: E402
from tuner.ui.train import FIELDS  # noqa: E402

PASSWORD = "bench-owner-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The app's handlers over plain HTTP, as the page (or any script) calls them.

def call(url: str, fn_index: int, data: list, cookies: dict | None = None, session_hash: str | None = None,
         client=None) -> dict:
    """Join the queue for one event and wait for its end, on `client` (a connection
    kept open, as a browser keeps one) or a new one. {"success", "data", "error"}."""
    with _client(url, cookies, client) as http:
        session_hash = session_hash or uuid.uuid4().hex[:11]
        joined = http.post("/gradio_api/queue/join", json={
            "data": data, "fn_index": fn_index, "session_hash": session_hash, "event_data": None,
            "trigger_id": None})
        if joined.status_code != 200:
            return {"success": False, "data": None, "error": f"HTTP {joined.status_code}: {joined.text[:300]}"}
        with http.stream("GET", "/gradio_api/queue/data", params={"session_hash": session_hash}) as stream:
            for line in stream.iter_lines():
                message = json.loads(line[5:]) if line.startswith("data:") else {}
                if message.get("msg") == "process_completed":
                    output = message.get("output") or {}
                    return {"success": bool(message.get("success")), "data": output.get("data"),
                            "error": output.get("error")}
    return {"success": False, "data": None, "error": "the stream ended without a result"}


def call_as_page(cfg: dict, url: str, fn_index: int, data: list, session_hash: str | None = None,
                 client=None) -> dict:
    """As the page sends it: through the queue, or for a queue=False event one POST to /gradio_api/run/."""
    dependency = next(d for d in cfg["dependencies"] if d["id"] == fn_index)
    if dependency.get("queue") is not False:
        return call(url, fn_index, data, session_hash=session_hash, client=client)
    body = {"data": data, "fn_index": fn_index, "session_hash": session_hash or uuid.uuid4().hex[:11],
            "event_data": None, "trigger_id": None}
    with _client(url, None, client) as http:
        answer = http.post(f"/gradio_api/run/{dependency['api_name']}", json=body)
    if answer.status_code != 200:
        return {"success": False, "data": None, "error": f"HTTP {answer.status_code}: {answer.text[:300]}"}
    return {"success": True, "data": answer.json().get("data"), "error": None}


def _client(url: str, cookies: dict | None, client):
    import httpx

    if client is not None:
        return contextlib.nullcontext(client)
    return httpx.Client(base_url=url, cookies=cookies or {}, timeout=60.0)


def config(url: str) -> dict:
    import httpx

    return httpx.get(f"{url}/config", timeout=30).json()


def default_inputs(cfg: dict, fn_index: int) -> list:
    """The values the page itself would send: each input component's initial value."""
    values = {c["id"]: c.get("props", {}).get("value") for c in cfg["components"]}
    return [values.get(i) for i in cfg["dependencies"][fn_index]["inputs"]]


def seed_evaluation(home: Path, model: Path, n_prompts: int) -> int:
    store = Store(Layout(home).ratings_db)
    prompts = [{"text": f"Write a polite note number {i}.", "task": ""} for i in range(n_prompts)]
    variants = [{"name": "base", "label": "Base", "kind": "base"}, {"name": "lora", "label": "LoRA", "kind": "lora"}]
    eval_id = store.create_evaluation("load test", str(model), prompts, variants)
    ids = [v["id"] for v in store.variants(eval_id)]
    for p in store.prompts(eval_id):
        for vid in ids:
            store.add_reply(p["id"], vid, f"Reply {vid} to prompt {p['position']}: " + "words " * 40, {})
    store.open_for_rating(eval_id)
    return eval_id


def wait_for(url: str, proc: subprocess.Popen, limit: float = 120.0) -> None:
    import httpx

    deadline = time.time() + limit
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the app exited early with code {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the app did not answer on {url} within {limit:.0f} s")


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
    sign_in = call(url, by_api(cfg, "owner_sign_in"), [PASSWORD])
    owner = {"tuner_owner": sign_in["data"][0]}
    session = "owner-session"
    # the page's load events: the dataset list as it is now
    refresh = next(d["id"] for d in cfg["dependencies"]
                   if d.get("api_name") == "refresh" and "load" in str(d.get("targets")))
    listed = call(url, refresh, [None], cookies=owner, session_hash=session)
    choices = [c[1] if isinstance(c, list) else c for c in listed["data"][0]["choices"]]
    polite = next(c for c in choices if "polite" in str(c))
    start = by_api(cfg, "on_start")
    values = default_inputs(cfg, start)
    values[0], values[1] = str(model), polite  # on_start's inputs: model, dataset, run name, then FIELDS
    values[3 + FIELDS.index("max_steps")] = 100_000  # keeps training for the whole test
    values[3 + FIELDS.index("save_steps")] = 100_000
    started = call(url, start, values, cookies=owner, session_hash=session)
    if not started["success"] or "Started run" not in str(started["data"]):
        raise SystemExit(f"could not start training: {started}")
    return started["data"][0]


def stop_training(url: str, cfg: dict) -> None:
    sign_in = call(url, by_api(cfg, "owner_sign_in"), [PASSWORD])
    call(url, by_api(cfg, "on_stop"), [], cookies={"tuner_owner": sign_in["data"][0]})


def rater(url: str, cfg: dict, eval_id: int, name: str, pairs: int, think: float, latencies: list, acks: list,
          errors: list, barrier: threading.Barrier) -> None:
    import httpx

    session = f"rater-{name}"
    # one connection kept open for the whole visit, as a browser keeps its own
    with httpx.Client(base_url=url, timeout=60) as client:
        call_as_page(cfg, url, by_api(cfg, "rater_refresh"), [], session_hash=session, client=client)
        joined = call_as_page(cfg, url, by_api(cfg, "rater_join"), [eval_id, name, "", {}], session_hash=session,
                              client=client)
        if not joined["success"] or "pair 1 of" not in str(joined["data"]):
            errors.append(f"{name}: join: {joined}")
            barrier.abort()
            return
        submit, next_pair = by_api(cfg, "rater_submit"), by_api(cfg, "rater_next")
        rng = random.Random(name)
        barrier.wait()  # everyone submits their first rating at the same instant
        for k in range(pairs):
            if k:  # then reads the next pair for a while, as a person would
                time.sleep(rng.uniform(0.5, 1.5) * think)
            a, b = rng.randint(1, 5), rng.randint(1, 5)
            began = time.perf_counter()
            result = call_as_page(cfg, url, submit, [None, None, None, a, b, None, "", None, None, None, None, None,
                                                     None], session_hash=session, client=client)
            latencies.append((k, time.perf_counter() - began))
            if result["success"] and str(result["data"][0]).startswith("Saved"):
                acks.append((name, a, b))
            else:
                errors.append(f"{name}: submit: {result}")
            call_as_page(cfg, url, next_pair, [None, None], session_hash=session, client=client)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raters", type=int, default=25)
    parser.add_argument("--pairs", type=int, default=8, help="submissions per rater (within the rate limit)")
    parser.add_argument("--think", type=float, default=2.0,
                        help="mean seconds a rater reads between submissions (the first ones are simultaneous)")
    parser.add_argument("--no-training", action="store_true", help="measure without a run in the background")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tuner-rating-load-") as tmp:
        tmp = Path(tmp)
        model = tiny.build_tiny_llama(tmp / "tiny-llama", tiny.smollm2_tokenizer(tmp / "tokenizer"))
        home = tmp / "home"
        eval_id = seed_evaluation(home, model, args.pairs)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "TUNER_HOME": str(home), "TUNER_MODEL": str(model), "GRADIO_SERVER_PORT": str(port),
               "GRADIO_SERVER_NAME": "127.0.0.1", "TUNER_OWNER_PASSWORD": PASSWORD,
               "GRADIO_ANALYTICS_ENABLED": "False"}
        env.pop("TUNER_OWNER", None)
        log = open(tmp / "app.log", "w")
        proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            wait_for(url, proc)
            cfg = config(url)
            training = "no"
            if not args.no_training:
                print(start_training(url, cfg, model), flush=True)
                deadline = time.time() + 120
                while logged_steps(home) == 0 and time.time() < deadline:
                    time.sleep(0.5)  # until the first optimizer step: training is really running
                training = "yes" if logged_steps(home) else "did not start"
            steps_before = logged_steps(home)
            latencies, acks, errors = [], [], []
            barrier = threading.Barrier(args.raters)
            threads = [threading.Thread(target=rater, args=(url, cfg, eval_id, f"rater{i:02d}", args.pairs,
                                                            args.think, latencies, acks, errors, barrier))
                       for i in range(args.raters)]
            began = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=600)
            wall = time.perf_counter() - began
            steps = None
            if not args.no_training:
                steps = logged_steps(home) - steps_before
                stop_training(url, cfg)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
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
    print(f"acknowledged {len(acks)} · stored {stored} (ratings rows {rows}, 2 a pair) · integrity {check}"
          f" · errors {len(errors)}")
    for line in errors[:5]:
        print("  ", line[:300])
    print(json.dumps({
        "bench": "rating_load", "date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "raters": args.raters, "pairs_each": args.pairs, "training": training == "yes",
        "train_steps_during": steps, "think_s": args.think, "p50_ms": round(p50, 1), "p95_ms": round(p95, 1),
        "burst_p50_ms": round(percentile(burst, 0.5), 1), "burst_p95_ms": round(percentile(burst, 0.95), 1),
        "max_ms": round(ms[-1], 1) if ms else None, "acknowledged": len(acks), "stored": stored,
        "ratings_rows": rows, "integrity": check, "errors": len(errors), "wall_s": round(wall, 1)}))


if __name__ == "__main__":
    main()
