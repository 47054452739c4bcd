"""ZeroGPU (tuner.zerogpu): the rules, and the path across the process boundary.

No ZeroGPU here: the `spaces` package is not installed and no GPU is lent. What a
ZeroGPU call does to the code — a forked worker, arguments and result pickled,
nothing in memory coming back, a time limit — is done for real by
zerogpu.in_forked_process, on the tiny model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tuner import zerogpu
from tuner.config import TrainConfig
from tuner.runs import RunManager

from helpers import chat, write_jsonl


def test_zerogpu_is_on_only_with_the_platform_flag_and_its_package():
    assert not zerogpu.enabled({})
    assert not zerogpu.enabled({"SPACES_ZERO_GPU": "false"})
    # the flag without the platform's `spaces` package (this machine): off, the CPU path runs
    assert not zerogpu.enabled({"SPACES_ZERO_GPU": "true"})
    fn = lambda: 1  # noqa: E731
    assert zerogpu.on_gpu(fn, 60) is fn  # off ZeroGPU, nothing is wrapped and nothing imported


def test_the_duration_asked_is_the_estimate_with_a_margin_within_the_cap():
    assert zerogpu.duration_for(5) == zerogpu.MIN_SECONDS
    assert zerogpu.duration_for(100) == 150
    assert zerogpu.duration_for(101) == 160  # rounded up to 10 s
    assert zerogpu.duration_for(10_000) == zerogpu.DEFAULT_MAX_SECONDS
    assert zerogpu.duration_for(100, {"TUNER_ZEROGPU_MAX_S": "120"}) == 120
    assert zerogpu.too_long(100) is None
    message = zerogpu.too_long(600, {"TUNER_ZEROGPU_MAX_S": "120"})
    assert "~10.0 min" in message and "120 s" in message and "python -m tuner train" in message
    for bad in ("ten", "5"):
        with pytest.raises(ValueError, match="TUNER_ZEROGPU_MAX_S"):
            zerogpu.max_seconds({"TUNER_ZEROGPU_MAX_S": bad})
    assert zerogpu.generation_seconds(20, 128) < zerogpu.generation_seconds(40, 128)


def test_a_forked_call_returns_its_value_raises_its_error_and_is_cut_off_at_its_duration():
    assert zerogpu.in_forked_process(lambda a, b=0: a + b, 10)(2, b=3) == 5
    with pytest.raises(ZeroDivisionError):
        zerogpu.in_forked_process(lambda: 1 / 0, 10)()
    with pytest.raises(TimeoutError, match="past its 1 s"):
        zerogpu.in_forked_process(lambda: time.sleep(30), 1)()
    with pytest.raises(Exception, match="pickle|lambda"):  # what cannot cross does not start
        zerogpu.in_forked_process(lambda f: f(), 10)(lambda: 1)
    import os

    with pytest.raises(RuntimeError, match="ended without an answer \\(exit code 3\\)"):
        zerogpu.in_forked_process(lambda: os._exit(3), 10)()  # a worker that dies says so
    seen = []
    zerogpu.in_forked_process(seen.append, 10)(1)
    assert seen == []  # what the worker changes in memory stays there


@pytest.mark.slow
def test_a_run_in_a_worker_process_reports_its_rows_and_stops_through_its_folder(tiny_llama, home, tmp_path):
    dataset = write_jsonl(tmp_path / "d.jsonl", [chat(f"Question {i}?", f"Answer {i}.") for i in range(8)])
    manager = RunManager(home.runs, home.models, worker_runner=zerogpu.in_forked_process)
    run_id = manager.start(TrainConfig(base_model=str(tiny_llama), dataset=str(dataset), max_steps=400,
                                       per_device_train_batch_size=1, save_steps=1000), gpu_seconds=300)
    deadline = time.time() + 120
    while manager.snapshot().step < 3 and time.time() < deadline:
        time.sleep(0.1)
    live = manager.snapshot()
    assert live.step >= 3 and live.rows  # the worker's metrics rows, relayed from metrics.jsonl
    assert manager.stop()
    state = manager.wait(timeout=120)
    run_dir = home.runs / run_id
    assert state.status == "stopped", state.message
    assert state.summary["global_step"] < 400
    assert (run_dir / "adapter" / "adapter_config.json").is_file()  # written by the worker
    assert not (run_dir / zerogpu.STOP_FILE).exists()  # cleared after the run
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in state.rows if "loss" in r] == [r["step"] for r in logged if "loss" in r]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "stopped"


@pytest.mark.slow
def test_a_worker_cut_off_at_its_duration_leaves_a_failed_run_that_says_why(tiny_llama, home, tmp_path):
    dataset = write_jsonl(tmp_path / "d.jsonl", [chat(f"Question {i}?", f"Answer {i}.") for i in range(8)])
    manager = RunManager(home.runs, home.models, worker_runner=zerogpu.in_forked_process)
    run_id = manager.start(TrainConfig(base_model=str(tiny_llama), dataset=str(dataset), max_steps=100_000,
                                       per_device_train_batch_size=1, save_steps=100_000), gpu_seconds=4)
    state = manager.wait(timeout=120)
    assert state.status == "failed" and "ZeroGPU" in state.message and "past its 4 s" in state.message
    record = json.loads((Path(home.runs) / run_id / "run.json").read_text())
    assert record["status"] == "failed" and "past its 4 s" in record["message"]
    assert not manager.busy()


# Run in a fresh Python process: forking a process that has run a whole test suite (its server,
# SQLite and thread-pool threads) can copy a lock some other thread held, and the child then
# hangs; a ZeroGPU Space forks from its app's process as the script below does from its own.
WORKER_SCRIPT = """
import json, sys, threading
from pathlib import Path
from tuner import generate as tgen, zerogpu

model, models = sys.argv[1], Path(sys.argv[2])
settings = tgen.GenSettings(max_new_tokens=6)
conversations = [[{"role": "user", "content": f"Say {w}."}] for w in ("hello", "thanks")]
here = []
# in-process replies from a thread of its own: the thread that forks the worker must have run no
# torch work (a forked child hangs in the OpenMP pool of the thread it was forked from); on ZeroGPU
# no torch work runs in the app's process at all
local = threading.Thread(target=lambda: here.append(tgen.Generator(models, precision="fp32")
                                                    .generate_all(model, conversations, settings, [None])))
local.start()
local.join()
key = (str(models), "fp32")  # the app's Generator's settings: the worker makes its own
step = zerogpu.in_forked_process(tgen._in_worker, tgen._worker_duration)
there = []
handler = threading.Thread(target=lambda: there.append(step(  # as a Gradio handler's thread calls it
    key, "_generate_all", (model, conversations, settings, [None], None), len(conversations),
    settings.max_new_tokens)))
handler.start()
handler.join()
print(json.dumps({"here": [r.text for r in here[0][0]], "there": [r.text for r in there[0][0]],
                  "loaded_here": key in tgen._WORKER_GENERATORS, "decorated": tgen._GPU_STEP is not tgen._in_worker}))
"""


def test_generation_in_a_worker_process_gives_the_replies_of_this_one(tiny_llama, tmp_path):
    import os
    import subprocess
    import sys

    from tuner import generate as tgen

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", WORKER_SCRIPT, str(tiny_llama), str(tmp_path / "models")], cwd=root,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["there"] == seen["here"] and len(seen["here"]) == 2
    assert not seen["loaded_here"]  # the model was loaded in the worker, not in the process that asked
    assert not seen["decorated"]  # off ZeroGPU nothing is decorated
    assert tgen._worker_duration(0, "", (), 2, 6) == zerogpu.duration_for(zerogpu.generation_seconds(2, 6))


def test_the_relay_hands_on_each_new_row_once_across_a_resumed_runs_rewrite(tmp_path):
    import threading

    from tuner import records

    def row(step, **extra):
        return {"step": step, "loss": 1.0 / step, **extra}

    for step in (1, 2, 3):  # rows a resumed run already shows (its chart was given them)
        records.append_metrics(tmp_path, row(step))
    got, stop = [], threading.Event()
    relay = zerogpu.MetricsRelay(tmp_path, got.append, lambda **_: None, stop, every=0.05)
    relay.read()
    assert got == []  # what was in the file before is not handed on again
    records.append_metrics(tmp_path, row(4))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # a row still being written
    relay.read()
    assert [r["step"] for r in got] == [4]
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('ss": 0.2}\n')
    relay.read()
    assert [r["step"] for r in got] == [4, 5]
    records.truncate_metrics(tmp_path, 2)  # the worker resumes from its step-2 checkpoint: a new file
    records.append_metrics(tmp_path, row(3))
    records.append_metrics(tmp_path, row(6))
    relay.read()
    assert [r["step"] for r in got] == [4, 5, 6]  # the kept rows and the steps seen are not repeated
    stop.set()
    relay.start()
    deadline = time.time() + 5
    while not (tmp_path / zerogpu.STOP_FILE).exists() and time.time() < deadline:
        time.sleep(0.05)
    relay.close()
    assert zerogpu.StopFile(tmp_path).is_set()  # a Stop in the app reaches the worker's folder


def test_a_bad_cap_is_refused_before_a_run_folder_is_made(tiny_llama, home, tmp_path, monkeypatch):
    dataset = write_jsonl(tmp_path / "d.jsonl", [chat("Question?", "Answer.")])
    manager = RunManager(home.runs, home.models, worker_runner=zerogpu.in_forked_process)
    monkeypatch.setenv("TUNER_ZEROGPU_MAX_S", "soon")
    with pytest.raises(ValueError, match="TUNER_ZEROGPU_MAX_S must be a whole number"):
        manager.start(TrainConfig(base_model=str(tiny_llama), dataset=str(dataset), max_steps=1))
    assert not manager.busy() and manager.runs() == []  # nothing started, nothing left behind
