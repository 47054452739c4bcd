"""Runs: start, stop, resume and list them; one training thread per process.

The UI reads a `RunState` snapshot (copied under a lock) on a timer; the run
itself lives on the server, so a page reload, or another browser, shows it.
"""

from __future__ import annotations

import atexit
import copy
import gc
import json
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tuner import data as tdata
from tuner.config import TrainConfig
from tuner.paths import atomic_write_json, inside, safe_name
from tuner.train import RunControl, last_complete_checkpoint, read_metrics, train

FINISHED = ("completed", "stopped")  # runs whose adapter can be compared
ENDED = FINISHED + ("failed", "diverged", "interrupted")


class RunBusy(RuntimeError):
    pass


@dataclass
class RunState:
    """What the UI shows of the current run; written by the training thread."""

    run_id: str = ""
    status: str = "idle"  # idle, starting, running, then one of ENDED
    message: str = ""
    step: int = 0
    max_steps: int = 0
    started: float = 0.0
    ended: float = 0.0
    rows: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    validation: bool = False  # whether a validation-loss curve is coming

    def tokens_per_second(self) -> float | None:
        speeds = [r["tokens_per_second"] for r in self.rows[-5:] if "tokens_per_second" in r]
        return sum(speeds) / len(speeds) if speeds else None

    def progress_line(self, now: float | None = None) -> str:
        if self.status == "idle":
            return "No run yet."
        now = now or time.time()
        elapsed = (self.ended or now) - self.started if self.started else 0.0
        text = f"Run {self.run_id}: {self.status}"
        if self.max_steps:
            text += f" · step {self.step}/{self.max_steps}"
        text += f" · elapsed {clock(elapsed)}"
        if self.status == "running" and self.step and self.max_steps:
            remaining = elapsed / self.step * (self.max_steps - self.step)
            text += f" · remaining ~{clock(remaining)}"
        speed = self.tokens_per_second()
        if speed and self.status == "running":
            text += f" · {speed:.0f} tokens/s"
        if self.message:
            text += f" · {self.message}"
        return text


TRAIN_NICENESS = 10


def yield_to_server() -> None:
    """Lower this thread's CPU priority (Linux: niceness is per thread, and the
    thread pool torch starts from it inherits it). Training inside the web
    server then takes the cores only while requests do not need them: raters
    keep quick answers on two cores, and training loses little when idle."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), TRAIN_NICENESS)
    except (AttributeError, OSError):  # not Linux, or not permitted: train at normal priority
        pass


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def new_run_id(config: TrainConfig) -> str:
    """<UTC time>-<the run's name, else its dataset's>-<4 random hex digits>."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    name = tdata.slug(config.run_name) if config.run_name.strip() else ""
    name = name or (tdata.slug(Path(config.dataset).stem) if config.dataset else "") or "run"
    return f"{stamp}-{name[:40]}-{os.urandom(2).hex()}"


def run_label(record: dict) -> str:
    """What tables, charts and exports call a run: the owner's name for it, else its id."""
    return ((record.get("config") or {}).get("run_name") or "").strip() or record["run_id"]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def process_started(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc), or None
    if it is gone, a zombie, or there is no /proc. With the pid it names one
    process, however often pids are reused."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]  # state; starttime (field 22)


def still_running(record: dict) -> bool:
    """Whether the process that wrote `record` as running is alive (a CLI run
    beside the app, say); False once it died, whatever pid took its place."""
    started, pid = record.get("pid_started"), record.get("pid")
    if not started or not isinstance(pid, int) or pid == os.getpid():  # this process: its manager knows
        return False
    return process_started(pid) == started


def start_record(run_dir: Path, run_id: str, config: TrainConfig) -> dict:
    record = {"run_id": run_id, "config": config.to_dict(), "status": "running", "started_at": _now(),
              "pid": os.getpid(), "pid_started": process_started(os.getpid())}
    atomic_write_json(run_dir / "run.json", record)
    return record


def run_to_end(config: TrainConfig, run_dir: Path, control: RunControl, models_dir: Path,
               resume: bool = False) -> dict:
    """Run the recipe and write the final run.json, whatever happens; returns the record."""
    record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    record.update(status="running", pid=os.getpid(), pid_started=process_started(os.getpid()))
    atomic_write_json(run_dir / "run.json", record)
    try:
        summary = train(config, run_dir, control, models_dir=models_dir, resume=resume)
        status, message = summary["status"], summary.get("message", "")
    except Exception as exc:  # the app must outlive any training error
        status, summary, message = "failed", {}, explain(exc)
        (run_dir / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
    finally:
        gc.collect()
    record.update(status=status, summary=summary, message=message, ended_at=_now())
    try:
        atomic_write_json(run_dir / "run.json", record)
    except OSError as exc:  # a full disk: the UI still hears how the run ended
        record["message"] = " ".join(filter(None, [message, str(exc)]))
    return record


def explain(exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    lowered = str(exc).lower()
    # CUDA says "out of memory"; the CPU allocator says "can't allocate memory"
    if isinstance(exc, MemoryError) or "out of memory" in lowered or "allocate memory" in lowered:
        if "smaller batch" not in text:
            text += " — try a smaller batch size or max sequence length."
    return text


def check_run_id(run_id) -> str:
    """`run_id` if it can name a run folder (runs/<id>/), else a ValueError: a run
    id picked in the UI or sent by a script is never a path ("../x", "/etc", "a\\b")."""
    if not isinstance(run_id, str) or safe_name(run_id, "run id") != run_id:
        raise ValueError(f"{str(run_id)[:80]!r} is not a run id (runs are named like 20260101-120000-faq-1a2b)")
    return run_id


def stopped_at(run_dir: Path) -> dict:
    """Where a run that did not finish got to: its last logged step, and the step of its
    last complete checkpoint (what Resume continues from), None when there is none."""
    step = None
    try:
        for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
            try:
                step = json.loads(line).get("step", step)
            except (ValueError, AttributeError):
                continue
    except OSError:
        pass
    checkpoint = last_complete_checkpoint(run_dir)
    return {"step": step, "checkpoint": int(checkpoint.name.split("-")[1]) if checkpoint else None}


def resume_hint(where: dict) -> str:
    """One line for a run that stopped early (`where`: its stopped_at): where, and what Resume will do."""
    step = f"at step {where['step']}" if where.get("step") is not None else "before its first step"
    if where.get("checkpoint") is not None:
        return (f"stopped {step}; its last checkpoint is step {where['checkpoint']}: pick it under Runs and press "
                "Resume to continue from there.")
    return f"stopped {step} with no complete checkpoint to resume from: start it again instead."


def list_runs(runs_dir: Path) -> list[dict]:
    """Every run's run.json, newest first. A run's id is its folder's name; a
    folder that is a symlink out of `runs_dir`, or whose name could not be a run
    id, is not a run."""
    runs = []
    for path in sorted(Path(runs_dir).glob("*/run.json"), reverse=True):
        try:
            check_run_id(path.parent.name)
            folder = inside(runs_dir, path.parent.name)
            record = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):  # json.JSONDecodeError is a ValueError
            continue
        if not isinstance(record, dict):
            continue
        record["run_id"] = path.parent.name  # a copied folder is its own run, not a second "orig"
        record["path"] = str(folder)
        runs.append(record)
    return runs


class RunManager:
    """Starts, stops, resumes and reports on the one training run this process allows."""

    def __init__(self, runs_dir: Path, models_dir: Path):
        self.runs_dir = Path(runs_dir)
        self.models_dir = Path(models_dir)
        self._lock = threading.Lock()
        self._state = RunState()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # a run still training when the process exits (Ctrl-C, a test's end) would be
        # killed inside torch, which aborts the process: stop it at a step boundary
        # instead, so it is saved as stopped and can be resumed
        atexit.register(self._stop_at_exit)

    def _stop_at_exit(self, timeout: float = 120.0) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._stop.set()
            thread.join(timeout)

    # --- the UI's side -------------------------------------------------------------
    def snapshot(self) -> RunState:
        with self._lock:
            return copy.deepcopy(self._state)

    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, config: TrainConfig) -> str:
        if not config.dataset or not Path(config.dataset).is_file():
            raise ValueError(f"Dataset file not found: {config.dataset or '(none chosen)'}")
        with self._lock:
            self._refuse_if_busy()
            run_id = new_run_id(config)
            run_dir = inside(self.runs_dir, check_run_id(run_id))
            run_dir.mkdir(parents=True)
            start_record(run_dir, run_id, config)
            self._launch(config, run_id, resume=False, rows=[])
        return run_id

    def resume(self, run_id: str) -> str:
        """Continue an interrupted or stopped run from its last complete checkpoint."""
        run = self.get(run_id)
        if run is None:
            raise ValueError(f"No run named {run_id!r}.")
        if run["status"] not in ("interrupted", "stopped", "failed"):
            raise ValueError(f"Run {run_id} is {run['status']}; only interrupted, stopped or failed runs resume.")
        run_dir = Path(run["path"])
        checkpoint = last_complete_checkpoint(run_dir)
        if checkpoint is None:
            raise ValueError(f"Run {run_id} has no complete checkpoint to resume from.")
        config = TrainConfig.from_dict(run["config"])
        step = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
        rows = [r for r in read_metrics(run_dir) if r["step"] <= step]
        with self._lock:
            self._refuse_if_busy()
            self._launch(config, run_id, resume=True, rows=rows)
        return run_id

    def stop(self) -> bool:
        if not self.busy():
            return False
        self._stop.set()
        self._update(message="stopping after this step")
        return True

    def wait(self, timeout: float | None = None) -> RunState:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.snapshot()

    def runs(self) -> list[dict]:
        """Every run on disk, newest first; one left 'running' by a process that
        died is reported as interrupted (one another live process is training,
        such as `python -m tuner train`, stays running: resuming it would put two
        trainers on one folder)."""
        live = self.snapshot().run_id if self.busy() else None
        records = list_runs(self.runs_dir)
        for record in records:
            if record.get("status") in ("running", "starting") and record["run_id"] != live \
                    and not still_running(record):
                record["status"] = "interrupted"
        return records

    def idle_line(self) -> str:
        """The progress line when nothing trains in this process: a hint to resume the
        newest run if a restart (or a kill) interrupted it, else "No run yet."."""
        records = self.runs()
        if records and records[0].get("status") == "interrupted":
            where = stopped_at(Path(records[0]["path"]))
            return f"Run {records[0]['run_id']} was interrupted: {resume_hint(where)}"
        return "No run yet." if not records else f"No run in progress · last run {records[0]['run_id']}: " \
            f"{records[0].get('status', '')}"

    def get(self, run_id: str) -> dict | None:
        """The run named `run_id`, None if there is none; a ValueError for an id
        that could not be one (a path, a NUL byte…)."""
        check_run_id(run_id)
        return next((r for r in self.runs() if r["run_id"] == run_id), None)

    # --- the training thread's side -----------------------------------------------------
    def _refuse_if_busy(self) -> None:
        if self.busy():
            raise RunBusy(f"Run {self._state.run_id} is still {self._state.status}: "
                          "stop it or wait for it to finish before starting another.")

    def _launch(self, config: TrainConfig, run_id: str, resume: bool, rows: list[dict]) -> None:
        self._state = RunState(run_id=run_id, status="starting", started=time.time(),
                               message="resuming from checkpoint" if resume else "loading model and data",
                               rows=rows, validation=config.validation_fraction > 0)
        self._stop.clear()
        control = RunControl(stop=self._stop, update=self._update, append=self._append)
        self._thread = threading.Thread(target=self._run, args=(config, run_id, control, resume),
                                        name=f"train-{run_id}", daemon=True)
        self._thread.start()

    def _update(self, **changes) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self._state, key, value)

    def _append(self, row: dict) -> None:
        with self._lock:
            self._state.rows.append(row)

    def _run(self, config: TrainConfig, run_id: str, control: RunControl, resume: bool) -> None:
        yield_to_server()
        record = run_to_end(config, inside(self.runs_dir, run_id), control, self.models_dir, resume=resume)
        self._update(status=record["status"], message=record.get("message", ""),
                     summary=record.get("summary", {}), ended=time.time())
