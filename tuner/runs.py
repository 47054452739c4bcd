"""Runs: start, stop, resume and list them; one training thread per process.

The UI reads a `RunState` snapshot (copied under a lock) on a timer; the run
itself lives on the server, so a page reload, or another browser, shows it.
What a run folder holds, and how it is read, is tuner.records.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import copy
import gc
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from tuner import records, zerogpu
from tuner.paths import atomic_write_text
from tuner.config import TrainConfig
from tuner.train import RunControl, train


class RunBusy(RuntimeError):
    pass


@dataclass
class RunState:
    """What the UI shows of the current run; written by the training thread."""

    run_id: str = ""
    status: str = "idle"  # idle, starting, running, then one of records.ENDED
    message: str = ""
    step: int = 0
    max_steps: int = 0
    started: float = 0.0
    ended: float = 0.0
    rows: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    validation: bool = False  # whether a validation-loss curve is coming
    # a resumed run: the time its earlier segments trained, and how long a step took in them
    earlier_seconds: float = 0.0
    earlier_step_seconds: float | None = None
    # the step this process's training loop began at (a resumed run's checkpoint), and when
    first_step: int = 0
    first_step_at: float = 0.0

    def tokens_per_second(self) -> float | None:
        speeds = [r["tokens_per_second"] for r in self.rows[-5:] if "tokens_per_second" in r]
        return sum(speeds) / len(speeds) if speeds else None

    def step_seconds(self, now: float) -> float | None:
        """How long a step takes: measured over this process's steps once it has done one,
        else as the run's earlier segments measured it; None before anything is measured."""
        if self.first_step_at and self.step > self.first_step:
            return (now - self.first_step_at) / (self.step - self.first_step)
        if self.earlier_step_seconds:
            return self.earlier_step_seconds
        if not self.first_step and self.step and self.started:  # no loop start heard: since Start
            return (now - self.started) / self.step
        return None

    def progress_line(self, now: float | None = None) -> str:
        if self.status == "idle":
            return "No run yet."
        now = now or time.time()
        elapsed = (self.ended or now) - self.started if self.started else 0.0
        text = f"Run {self.run_id}: {self.status}"
        if self.max_steps:
            text += f" · step {self.step}/{self.max_steps}"
        text += f" · elapsed {clock(self.earlier_seconds + elapsed)}"
        per_step = self.step_seconds(now) if self.status == "running" and self.max_steps else None
        if per_step is not None:
            text += f" · remaining ~{clock(per_step * max(0, self.max_steps - self.step))}"
        speed = self.tokens_per_second()
        if speed and self.status == "running":
            text += f" · {speed:.0f} tokens/s"
        if self.message:
            text += f" · {self.message}"
        return text


TRAIN_NICENESS = 19  # where SCHED_IDLE is refused


def yield_to_server() -> None:
    """Give this thread the CPU only when nothing else of the machine wants it (Linux:
    SCHED_IDLE, per thread; the thread pool torch starts from it inherits it; else the
    lowest niceness). Training inside the web server then takes the cores only while
    requests do not need them: 25 raters pressing Submit together keep quick answers on
    two cores, and an idle server loses the training nothing."""
    tid = threading.get_native_id()
    try:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        return
    except (AttributeError, OSError):  # not Linux, or not permitted
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, tid, TRAIN_NICENESS)
    except (AttributeError, OSError):  # train at normal priority
        pass


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def run_to_end(config: TrainConfig, run_dir: Path, control: RunControl, models_dir: Path,
               resume: bool = False) -> dict:
    """Run the recipe and write the final run.json, whatever happens; returns the record."""
    if resume:
        records.close_interrupted_segment(run_dir)
    record = records.read_record(run_dir)
    record.update(status="running", segment=records.open_segment(run_dir, resume), **records.owner())
    records.write_record(run_dir, record)
    try:
        summary = train(config, run_dir, control, models_dir=models_dir, resume=resume)
        status, message = summary["status"], summary.get("message", "")
    except Exception as exc:  # the app must outlive any training error
        status, summary, message = "failed", {}, explain(exc)
        atomic_write_text(records.error_file(run_dir), traceback.format_exc())
    finally:
        gc.collect()
    summary = records.finish_segment(record, summary, run_dir, status)
    record.update(status=status, summary=summary, message=message, ended_at=records.timestamp())
    try:
        records.write_record(run_dir, record)
    except OSError as exc:  # a full disk: the UI still hears how the run ended
        record["message"] = " ".join(filter(None, [message, str(exc)]))
    return record


def run_in_gpu_worker(config: TrainConfig, run_dir: Path, control: RunControl, models_dir: Path,
                      resume: bool, seconds: int, runner=None) -> dict:
    """run_to_end in a ZeroGPU worker process (tuner.zerogpu), holding the lent GPU for at
    most `seconds`. The worker trains and writes the run folder; this process relays its
    metrics rows to `control` as they land and passes a Stop on through the stop file.
    `runner`: None for ZeroGPU's (decorated at import); zerogpu.in_forked_process does the same
    without a GPU."""
    stop_file = zerogpu.StopFile(run_dir)
    stop_file.clear()
    if resume:  # the rows after the checkpoint go now, as the worker will drop them (the chart has the rest)
        records.close_interrupted_segment(run_dir)  # from those rows: how far a killed worker got
        checkpoint = records.last_complete_checkpoint(run_dir)
        if checkpoint is not None:
            records.truncate_metrics(run_dir, records.checkpoint_step(checkpoint))
    relay = zerogpu.MetricsRelay(run_dir, control.append, control.update, control.stop).start()
    control.update(message=f"waiting for a ZeroGPU GPU (asked for {seconds} s)")
    try:
        # one decorated function for every run (ZeroGPU keys its workers by it); the
        # seconds asked travel as an argument, read by the duration function
        step = runner(_worker_run, _worker_seconds) if runner is not None else _GPU_RUN
        return step(config.to_dict(), str(run_dir), str(models_dir), resume, seconds)
    except Exception as exc:  # refused (the visitor's quota), cut off at its duration, or the worker died
        record = records.read_record(run_dir)
        record.update(status="failed", message=f"ZeroGPU: {explain(exc)}", ended_at=records.timestamp())
        with contextlib.suppress(OSError):
            records.write_record(run_dir, record)
        return record
    finally:
        relay.close()
        stop_file.clear()


def _worker_seconds(_config, _run_dir, _models_dir, _resume, seconds: int) -> int:
    return seconds


def _worker_run(config: dict, run_dir: str, models_dir: str, resume: bool, _seconds: int = 0) -> dict:
    """In the worker: the run, stopped by its stop file; its rows reach the app through metrics.jsonl."""
    control = RunControl(stop=zerogpu.StopFile(Path(run_dir)))
    return run_to_end(TrainConfig.from_dict(config), Path(run_dir), control, Path(models_dir), resume=resume)


# decorated at import, before the app launches (ZeroGPU looks for its functions at start-up)
_GPU_RUN = zerogpu.on_gpu(_worker_run, _worker_seconds)


def explain(exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    lowered = str(exc).lower()
    # CUDA says "out of memory"; the CPU allocator says "can't allocate memory"
    if isinstance(exc, MemoryError) or "out of memory" in lowered or "allocate memory" in lowered:
        if "smaller batch" not in text:
            text += " — try a smaller batch size or max sequence length."
    return text


def resume_hint(where: dict) -> str:
    """One line for a run that stopped early (`where`: its stopped_at): where, and what Resume will do."""
    step = f"at step {where['step']}" if where.get("step") is not None else "before its first step"
    if where.get("checkpoint") is not None:
        return (f"stopped {step}; its last checkpoint is step {where['checkpoint']}: pick it under Runs and press "
                "Resume to continue from there.")
    return f"stopped {step} with no complete checkpoint to resume from: start it again instead."


class RunManager:
    """Starts, stops, resumes and reports on the one training run this process allows."""

    def __init__(self, runs_dir: Path, models_dir: Path, worker_runner=None):
        """worker_runner: run each training in a worker process through it (on ZeroGPU
        zerogpu.on_gpu is used without asking; zerogpu.in_forked_process tries that path anywhere)."""
        self.worker_runner = worker_runner
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

    def start(self, config: TrainConfig, gpu_seconds: int | None = None) -> str:
        """Start a run in a thread of this process; on ZeroGPU (tuner.zerogpu) in the lent GPU's
        worker, for at most `gpu_seconds` (default: the longest call allowed)."""
        if not config.dataset or not Path(config.dataset).is_file():
            raise ValueError(f"Dataset file not found: {config.dataset or '(none chosen)'}")
        gpu_seconds = self._worker_seconds(gpu_seconds)
        with self._lock:
            self._refuse_if_busy()
            run_id = records.new_run_id(config)
            run_dir = records.run_folder(self.runs_dir, run_id)
            run_dir.mkdir(parents=True)
            records.start_record(run_dir, run_id, config)
            self._launch(config, run_id, resume=False, rows=[], gpu_seconds=gpu_seconds)
        return run_id

    def resume(self, run_id: str) -> str:
        """Continue an interrupted or stopped run from its last complete checkpoint."""
        run = self.get(run_id)
        if run is None:
            raise ValueError(f"No run named {run_id!r}.")
        if run["status"] not in records.RESUMABLE:
            raise ValueError(f"Run {run_id} is {run['status']}; only interrupted, stopped or failed runs resume.")
        run_dir = Path(run["path"])
        checkpoint = records.last_complete_checkpoint(run_dir)
        if checkpoint is None:
            raise ValueError(f"Run {run_id} has no complete checkpoint to resume from.")
        config = TrainConfig.from_dict(run["config"])
        step = records.checkpoint_step(checkpoint)
        rows = [r for r in records.read_metrics(run_dir) if r["step"] <= step]
        gpu_seconds = self._worker_seconds(None)  # a resumed run asks for the longest call
        with self._lock:
            self._refuse_if_busy()
            records.close_interrupted_segment(run_dir)
            earlier = records.earlier_segments(records.read_record(run_dir))
            # the line counts the earlier segments' time, and until this process has timed a step
            # its remaining time goes by theirs
            self._launch(config, run_id, resume=True, rows=rows, gpu_seconds=gpu_seconds,
                         earlier_seconds=sum(s.get("train_runtime") or 0.0 for s in earlier),
                         earlier_step_seconds=records.seconds_per_step(earlier), first_step=step, step=step)
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
        runs = records.list_runs(self.runs_dir)
        for record in runs:
            if record.get("status") in ("running", "starting") and record["run_id"] != live \
                    and not records.still_running(record):
                record["status"] = "interrupted"
        return runs

    def idle_line(self) -> str:
        """The progress line when nothing trains in this process: a hint to resume the
        newest run if a restart (or a kill) interrupted it, else "No run yet."."""
        runs = self.runs()
        if runs and runs[0].get("status") == "interrupted":
            where = records.stopped_at(Path(runs[0]["path"]))
            return f"Run {runs[0]['run_id']} was interrupted: {resume_hint(where)}"
        return "No run yet." if not runs else f"No run in progress · last run {runs[0]['run_id']}: " \
            f"{runs[0].get('status', '')}"

    def get(self, run_id: str) -> dict | None:
        """The run named `run_id`, None if there is none; a ValueError for an id
        that could not be one (a path, a NUL byte…)."""
        records.check_run_id(run_id)
        return next((r for r in self.runs() if r["run_id"] == run_id), None)

    def _worker_seconds(self, asked: int | None) -> int | None:
        """The seconds a run in a worker asks for (default: the longest call allowed), checked
        before anything is written, so a bad TUNER_ZEROGPU_MAX_S is the caller's ValueError;
        None for a run in this process."""
        if self.worker_runner is None and not zerogpu.enabled():
            return None
        return asked if asked is not None else zerogpu.max_seconds()

    # --- the training thread's side -----------------------------------------------------
    def _refuse_if_busy(self) -> None:
        if self.busy():
            raise RunBusy(f"Run {self._state.run_id} is still {self._state.status}: "
                          "stop it or wait for it to finish before starting another.")

    def _launch(self, config: TrainConfig, run_id: str, resume: bool, rows: list[dict],
                gpu_seconds: int | None = None, **state) -> None:
        self._state = RunState(run_id=run_id, status="starting", started=time.time(),
                               message="resuming from checkpoint" if resume else "loading model and data",
                               rows=rows, validation=config.validation_fraction > 0, **state)
        self._stop.clear()
        control = RunControl(stop=self._stop, update=self._update, append=self._append)
        # in a copy of the caller's context: on ZeroGPU the visitor's request (whose quota pays
        # for the GPU) is read from it
        self._thread = threading.Thread(target=contextvars.copy_context().run,
                                        args=(self._run, config, run_id, control, resume, gpu_seconds),
                                        name=f"train-{run_id}", daemon=True)
        self._thread.start()

    def _update(self, **changes) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self._state, key, value)

    def _append(self, row: dict) -> None:
        with self._lock:
            self._state.rows.append(row)

    def _run(self, config: TrainConfig, run_id: str, control: RunControl, resume: bool,
             gpu_seconds: int | None = None) -> None:
        run_dir = records.run_folder(self.runs_dir, run_id)
        if self.worker_runner is not None or zerogpu.enabled():
            # (at normal priority: a worker forked from a SCHED_IDLE thread could never leave it)
            record = run_in_gpu_worker(config, run_dir, control, self.models_dir, resume, gpu_seconds,
                                       self.worker_runner)
        else:
            yield_to_server()
            record = run_to_end(config, run_dir, control, self.models_dir, resume=resume)
        self._update(status=record["status"], message=record.get("message", ""),
                     summary=record.get("summary", {}), ended=time.time())
