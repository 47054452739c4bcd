"""Seconds from launching the app to its first page served, on a cold and a warm model cache.

    python bench/start_time.py [--timeout 300] [--keep]

Launches `python app.py` as a subprocess on a free local port (GRADIO_SERVER_PORT)
with TUNER_HOME pointing to a fresh temporary data root, and polls
http://127.0.0.1:PORT/ until it answers 200 with a body that looks like the
Gradio page. Cold: the fresh root has no model cache, so the bundled GGUF is
converted first. Warm: a second launch on the same root (the converted folder
is there). The server is stopped with SIGINT (Ctrl-C: Gradio closes itself),
SIGKILL only if it has not exited 15 s later. Prints the figures and ends with
one JSON line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def looks_like_gradio(body: str) -> bool:
    return "<html" in body.lower() and ("gradio" in body.lower() or "__gradio" in body)


def launch(home: Path, timeout: float) -> dict:
    port = free_port()
    env = dict(os.environ, TUNER_HOME=str(home), GRADIO_SERVER_PORT=str(port),
               GRADIO_SERVER_NAME="127.0.0.1", GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    log = tempfile.TemporaryFile(mode="w+")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    served = None
    try:
        while time.perf_counter() - start < timeout:
            if proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    body = response.read().decode("utf-8", "replace")
                    if response.status == 200 and looks_like_gradio(body):
                        served = time.perf_counter() - start
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.05)
    finally:
        stopped = stop(proc)
    log.seek(0)
    output = log.read()
    if served is None:
        sys.exit(f"no page served within {timeout} s (exit code {proc.returncode}); the app said:\n{output[-3000:]}")
    ready = [line for line in output.splitlines() if "Ready in" in line]
    return {"seconds": served, "stopped_cleanly": stopped, "app_says": ready[-1] if ready else ""}


def stop(proc: subprocess.Popen) -> bool:
    """Ctrl-C, as a person would; True when the server exited on it by itself."""
    if proc.poll() is not None:
        return True
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(15)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--keep", action="store_true", help="keep the temporary data root")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="tuner-start-"))
    try:
        cold = launch(home, args.timeout)
        print(f"cold (fresh data root, GGUF converted): {cold['seconds']:.1f} s to the first page; "
              f"app: {cold['app_says']!r}", flush=True)
        warm = launch(home, args.timeout)
        print(f"warm (same root, model cached):         {warm['seconds']:.1f} s to the first page; "
              f"app: {warm['app_says']!r}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    print(json.dumps({"benchmark": "start_time", "cold_s": round(cold["seconds"], 2), "warm_s": round(warm["seconds"], 2),
                      "stopped_cleanly": cold["stopped_cleanly"] and warm["stopped_cleanly"],
                      "date": datetime.date.today().isoformat(),
                      "machine": f"{os.cpu_count()} cores", "load_avg_1m_at_end": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
