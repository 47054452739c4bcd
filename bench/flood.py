"""The owner's action while strangers flood the public server (issue 26's floods).

    python bench/flood.py [--seconds 15] [--flooders 4]

Starts the real app (`python app.py`) on a free loopback port over a fresh data root, with an
owner password, as on a public Space. The owner signs in and calls a studio handler through
Gradio's queue (the "Signed-in browsers" Show button: one SQLite read and the queue's round
trip) again and again, first with nothing else going on, then while `--flooders` processes
(at the lowest CPU priority: an attacker's CPU is not the server's) send, as fast as one
connection each allows, one kind of flood at a time:
- queue: POST /gradio_api/queue/join and /rate/gradio_api/queue/join with a new random
  session_hash each (the flood that used to stop the owner's queue);
- call: POST /gradio_api/call/<api_name> of the studio's handlers;
- ratings: POST /tuner/rate/submit from one address;
- bodies: POST /gradio_api/cancel with a 1 MB body (refused at the cap).
Reports the owner's p50/p95 in each case, the flood's requests per second and the answers it
got, and whether the owner's calls all completed. Loopback only; bounded by --seconds.
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from gradio_http import call, page_headers, sign_in  # noqa: E402

from rating_load import free_port, percentile, seed_evaluation, stop_app, wait_for  # noqa: E402
from tuner import tiny  # noqa: E402

PASSWORD = "bench-owner-password"
KINDS = ("queue", "call", "ratings", "bodies")


def flooder(url: str, kind: str, seconds: float, eval_id: int, out) -> None:
    import httpx

    os.nice(19)
    counts: collections.Counter = collections.Counter()
    end = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=30) as http:
        if kind == "ratings":
            http.post("/tuner/rate/join", json={"evaluation": eval_id, "name": f"flood-{uuid.uuid4().hex[:6]}",
                                                "code": ""})
        big = b"x" * (1 << 20)
        while time.monotonic() < end:
            try:
                if kind == "queue":
                    for target in ("/gradio_api/queue/join", "/rate/gradio_api/queue/join"):
                        answer = http.post(target, json={"data": [], "fn_index": 0, "session_hash": uuid.uuid4().hex,
                                                         "event_data": None, "trigger_id": None})
                        counts[answer.status_code] += 1
                elif kind == "call":
                    answer = http.post("/gradio_api/call/owner_sessions", json={"data": []})
                    counts[answer.status_code] += 1
                elif kind == "ratings":
                    answer = http.post("/tuner/rate/submit", json={"evaluation": eval_id, "assignment": 1, "a": 3,
                                                                   "b": 3})
                    counts[answer.status_code] += 1
                else:
                    answer = http.post("/gradio_api/cancel", content=big, headers={"content-type": "application/json"})
                    counts[answer.status_code] += 1
            except httpx.HTTPError as exc:
                counts[type(exc).__name__] += 1
    out.put(dict(counts))


def owner_latencies(url: str, owner: dict, fn_index: int, seconds: float) -> tuple[list[float], int]:
    """The owner's handler, called back to back for `seconds`: (latencies in ms, failures)."""
    import httpx

    ms, failed = [], 0
    end = time.monotonic() + seconds
    with httpx.Client(base_url=url, cookies=owner, headers=page_headers(owner), timeout=60) as http:
        while time.monotonic() < end:
            began = time.perf_counter()
            result = call(url, fn_index, [], client=http)
            ms.append((time.perf_counter() - began) * 1000)
            failed += not result["success"]
            time.sleep(0.05)  # a person's clicks, not a loop
    return sorted(ms), failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="per measurement")
    parser.add_argument("--flooders", type=int, default=4, help="processes flooding at once")
    args = parser.parse_args()
    import httpx

    with tempfile.TemporaryDirectory(prefix="tuner-flood-") as tmp:
        tmp = Path(tmp)
        model = tiny.build_tiny_llama(tmp / "tiny-llama", tiny.smollm2_tokenizer(tmp / "tokenizer"))
        home = tmp / "home"
        eval_id = seed_evaluation(home, model, 8)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "TUNER_HOME": str(home), "TUNER_MODEL": str(model), "GRADIO_SERVER_PORT": str(port),
               "GRADIO_SERVER_NAME": "127.0.0.1", "TUNER_OWNER_PASSWORD": PASSWORD, "GRADIO_ANALYTICS_ENABLED": "False"}
        for name in ("TUNER_OWNER", "SPACE_ID", "TUNER_TRUSTED_PROXIES"):
            env.pop(name, None)
        log = open(tmp / "app.log", "w")
        proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        results = {}
        try:
            wait_for(url, proc)
            owner = sign_in(url, PASSWORD)
            cfg = httpx.get(f"{url}/config", cookies=owner, timeout=30).json()
            fn_index = next(d["id"] for d in cfg["dependencies"] if d.get("api_name") == "owner_sessions")
            owner_latencies(url, owner, fn_index, 2)  # warm up
            quiet, failed = owner_latencies(url, owner, fn_index, args.seconds)
            results["none"] = {"p50_ms": percentile(quiet, 0.5), "p95_ms": percentile(quiet, 0.95),
                               "owner_calls": len(quiet), "owner_failed": failed}
            ctx = multiprocessing.get_context("fork")
            for kind in KINDS:
                out = ctx.Queue()
                procs = [ctx.Process(target=flooder, args=(url, kind, args.seconds + 2, eval_id, out))
                         for _ in range(args.flooders)]
                for p in procs:
                    p.start()
                time.sleep(1)  # the flood under way
                ms, failed = owner_latencies(url, owner, fn_index, args.seconds)
                answers: collections.Counter = collections.Counter()
                for _ in procs:
                    answers.update(out.get(timeout=120))
                for p in procs:
                    p.join(timeout=30)
                results[kind] = {"p50_ms": percentile(ms, 0.5), "p95_ms": percentile(ms, 0.95), "owner_calls": len(ms),
                                 "owner_failed": failed, "flood_per_s": round(sum(answers.values()) / (args.seconds + 2)),
                                 "flood_answers": {str(k): v for k, v in answers.most_common()}}
            alive = proc.poll() is None
        finally:
            stop_app(proc, log)
    base = results["none"]["p50_ms"]
    for kind, r in results.items():
        flood = "" if kind == "none" else (f" · flood {r['flood_per_s']}/s answered {r['flood_answers']} · "
                                           f"{r['p50_ms'] / base:.2f}× the quiet p50")
        print(f"{kind:8s} owner p50 {r['p50_ms']:.1f} ms · p95 {r['p95_ms']:.1f} ms · {r['owner_calls']} calls, "
              f"{r['owner_failed']} failed{flood}")
    print(json.dumps({"bench": "flood", "date": date.today().isoformat(),
                      "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                      "flooders": args.flooders, "seconds": args.seconds, "server_alive": alive,
                      **{k: {kk: (round(v, 1) if isinstance(v, float) else v) for kk, v in r.items()}
                         for k, r in results.items()}}))


if __name__ == "__main__":
    main()
