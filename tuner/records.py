"""Run records: what a run folder, `<data root>/runs/<id>/`, holds and how it is read.

Standard library only (no torch), so the export, the CLI and the UI can read runs
without loading the training stack. A run folder holds:

    run.json       the config, and at the end a summary (status, times, losses)
    metrics.jsonl  one JSON object per log event: step, epoch, loss or eval_loss,
                   learning_rate, tokens_per_second
    checkpoints/   Trainer checkpoints (at most save_total_limit), for resume
    adapter/       the peft adapter, written atomically
    test.jsonl, validation.jsonl   the held-out rows, exactly as split
    error.txt      the traceback of a run that failed

A record, as `list_runs` gives it, is run.json plus `run_id` (the folder's name)
and `path` (the folder).

A run stopped (or cut off) and resumed trains in segments, one per process that
trained it: run.json's `segments` keeps each one's figures (start and end, steps,
epochs, time, tokens), its `segment` the one training now, and the summary's
`train_runtime` and `train_tokens` are the sums over all of them.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from tuner import data as tdata
from tuner.paths import atomic_write_json, atomic_write_text, inside, replace_folder, safe_name

if TYPE_CHECKING:
    from tuner.config import TrainConfig

FINISHED = ("completed", "stopped")  # runs whose adapter can be compared and exported
ENDED = FINISHED + ("failed", "diverged", "interrupted")
HELD_OUT = ("validation", "test")  # <name>.jsonl: the exact rows this run never trained on
RESUMABLE = ("interrupted", "stopped", "failed")
CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")  # what resume needs


# --- ids and names -------------------------------------------------------------------
def new_run_id(config: TrainConfig) -> str:
    """<UTC time>-<the run's name, else its dataset's>-<4 random hex digits>."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    name = tdata.slug(config.run_name) if config.run_name.strip() else ""
    name = name or (tdata.slug(Path(config.dataset).stem) if config.dataset else "") or "run"
    return f"{stamp}-{name[:40]}-{os.urandom(2).hex()}"


def check_run_id(run_id) -> str:
    """`run_id` if it can name a run folder (runs/<id>/), else a ValueError: a run
    id picked in the UI or sent by a script is never a path ("../x", "/etc", "a\\b")."""
    if not isinstance(run_id, str) or safe_name(run_id, "run id") != run_id:
        raise ValueError(f"{str(run_id)[:80]!r} is not a run id (runs are named like 20260101-120000-faq-1a2b)")
    return run_id


def run_folder(runs_dir: Path, run_id: str) -> Path:
    """runs_dir/<run_id>, resolved; a ValueError for an id that is not one, or a
    folder that is a symlink out of `runs_dir`."""
    return inside(runs_dir, check_run_id(run_id))


def run_label(record: dict) -> str:
    """What tables, charts and exports call a run: the owner's name for it, else its id."""
    return ((record.get("config") or {}).get("run_name") or "").strip() or record["run_id"]


# --- run.json ----------------------------------------------------------------------------
def timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def process_started(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc), or None
    if it is gone, a zombie, or there is no /proc. With the pid it names one
    process, however often pids are reused."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]  # state; starttime (field 22)


def owner() -> dict:
    """The fields that name this process as the one training a run (see still_running)."""
    return {"pid": os.getpid(), "pid_started": process_started(os.getpid())}


def still_running(record: dict) -> bool:
    """Whether the process that wrote `record` as running is alive (a CLI run
    beside the app, say); False once it died, whatever pid took its place."""
    started, pid = record.get("pid_started"), record.get("pid")
    if not started or not isinstance(pid, int) or pid == os.getpid():  # this process: its manager knows
        return False
    return process_started(pid) == started


def record_file(run_dir: Path) -> Path:
    return Path(run_dir) / "run.json"


def read_record(run_dir: Path) -> dict:
    """The folder's run.json; an OSError when it cannot be read, a ValueError when
    it is not a JSON object."""
    record = json.loads(record_file(run_dir).read_text(encoding="utf-8"))
    if not isinstance(record, dict):
        raise ValueError(f"{record_file(run_dir)} does not hold a JSON object")
    return record


def write_record(run_dir: Path, record: dict) -> None:
    atomic_write_json(record_file(run_dir), record)


def error_file(run_dir: Path) -> Path:
    return Path(run_dir) / "error.txt"


def start_record(run_dir: Path, run_id: str, config: TrainConfig) -> dict:
    record = {"run_id": run_id, "config": config.to_dict(), "status": "running", "started_at": timestamp(),
              **owner()}
    write_record(run_dir, record)
    return record


def list_runs(runs_dir: Path) -> list[dict]:
    """Every run's record, newest first. A run's id is its folder's name; a
    folder that is a symlink out of `runs_dir`, or whose name could not be a run
    id, is not a run."""
    runs = []
    for path in sorted(Path(runs_dir).glob("*/run.json"), reverse=True):
        try:
            folder = run_folder(runs_dir, path.parent.name)
            record = read_record(folder)
        except (OSError, ValueError):  # json.JSONDecodeError is a ValueError
            continue
        record["run_id"] = path.parent.name  # a copied folder is its own run, not a second "orig"
        record["path"] = str(folder)
        runs.append(record)
    return runs


# --- the adapter, and what "finished" means ------------------------------------------------
def adapter_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "adapter"


def has_adapter(run_dir: Path) -> bool:
    """Whether the run saved an adapter (adapter/ is renamed in whole, config and all)."""
    return (adapter_dir(run_dir) / "adapter_config.json").is_file()


def adapter_config(run_dir: Path) -> dict:
    return json.loads((adapter_dir(run_dir) / "adapter_config.json").read_text(encoding="utf-8"))


def is_finished(record: dict) -> bool:
    """Whether a run (a record with its `path`) finished with an adapter to compare or export."""
    return record.get("status") in FINISHED and has_adapter(record["path"])


def write_adapter(run_dir: Path, save: Callable[[Path], None]) -> None:
    """adapter/ as `save(folder)` writes it, built aside and then put in place, so a
    reader sees an adapter whole or none."""
    tmp = Path(run_dir) / ".adapter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save(tmp)
    replace_folder(tmp, adapter_dir(run_dir))


# --- metrics.jsonl -------------------------------------------------------------------------
def metrics_file(run_dir: Path) -> Path:
    return Path(run_dir) / "metrics.jsonl"


def read_metrics(run_dir: Path) -> list[dict]:
    path = metrics_file(run_dir)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a killed process
    return rows


def append_metrics(run_dir: Path, row: dict) -> None:
    with open(metrics_file(run_dir), "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop rows logged after the checkpoint a resumed run restarts from."""
    if metrics_file(run_dir).is_file():
        kept = [row for row in read_metrics(run_dir) if row["step"] <= step]
        atomic_write_text(metrics_file(run_dir), "".join(json.dumps(row) + "\n" for row in kept))


# --- checkpoints -----------------------------------------------------------------------------
def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def last_complete_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that has everything resume needs (a killed process
    can leave a half-written one behind)."""
    found = []
    for path in checkpoints_dir(run_dir).glob("checkpoint-*"):
        if all((path / n).is_file() for n in CHECKPOINT_FILES) and any(path.glob("adapter_model.*")):
            try:
                found.append((int(path.name.split("-")[1]), path))
            except ValueError:
                continue
    return max(found)[1] if found else None


def checkpoint_step(checkpoint: Path) -> int:
    """The step a checkpoint was saved at: where a resumed run continues from."""
    return json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))["global_step"]


def checkpoint_epoch(checkpoint: Path) -> float:
    """The epoch (a fraction past the whole ones done) a checkpoint was saved at."""
    return float(json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8")).get("epoch") or 0)


def stopped_at(run_dir: Path) -> dict:
    """Where a run that did not finish got to: its last logged step, and the step of its
    last complete checkpoint (what Resume continues from), None when there is none."""
    step = None
    for row in read_metrics(run_dir):
        if isinstance(row, dict):
            step = row.get("step", step)
    checkpoint = last_complete_checkpoint(run_dir)
    try:
        resumes_at = checkpoint_step(checkpoint) if checkpoint else None
    except (OSError, ValueError, KeyError):  # a state file cut short: nothing to resume from
        resumes_at = None
    return {"step": step, "checkpoint": resumes_at}


# --- held-out rows -----------------------------------------------------------------------------
def held_out_file(run_dir: Path, name: str) -> Path:
    """`validation.jsonl` or `test.jsonl` (a name in HELD_OUT)."""
    return Path(run_dir) / f"{name}.jsonl"


def write_held_out(run_dir: Path, parts: dict[str, list[dict]]) -> None:
    """The run's validation and test rows as `validation.jsonl` and `test.jsonl`, so
    any tool (Compare, `python -m tuner generate --prompts RUN/test.jsonl`, another
    evaluator) sees exactly the rows this run held out. Main process only."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    for name in HELD_OUT:
        atomic_write_text(held_out_file(run_dir, name), tdata.to_jsonl(parts[name]))


# --- segments: one per process that trained the run ---------------------------------------------
def open_segment(run_dir: Path, resume: bool) -> dict:
    """The segment a process begins: when, and the step and epoch it starts from (a resumed
    run's last complete checkpoint's, else 0)."""
    step, epoch = 0, 0.0
    checkpoint = last_complete_checkpoint(run_dir) if resume else None
    if checkpoint is not None:
        try:
            step, epoch = checkpoint_step(checkpoint), checkpoint_epoch(checkpoint)
        except (OSError, ValueError, KeyError, TypeError):  # a state file cut short: the trainer refuses it too
            pass
    return {"started_at": timestamp(), "from_step": step, "from_epoch": epoch}


def earlier_segments(record: dict) -> list[dict]:
    """The segments a run's record holds that have ended; a run recorded before segments
    were (its summary covers its one segment) counts as one."""
    if isinstance(record.get("segments"), list):
        return [dict(s) for s in record["segments"] if isinstance(s, dict)]
    summary = record.get("summary") or {}
    if summary.get("train_runtime") is None:
        return []
    return [{"started_at": record.get("started_at"), "ended_at": record.get("ended_at"), "from_step": 0,
             "from_epoch": 0.0, "to_step": summary.get("global_step"), "status": record.get("status"),
             "train_runtime": summary["train_runtime"], "train_tokens": summary.get("train_tokens")}]


def _last_logged(run_dir: Path) -> tuple[int | None, float | None]:
    step = epoch = None
    for row in read_metrics(run_dir):
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            step, epoch = row["step"], row.get("epoch", epoch)
    return step, epoch


def ended_without_summary(segment: dict, run_dir: Path, ended: float, status: str) -> dict:
    """A segment that left no summary (its process was killed, or training raised), closed
    from what it wrote: it ran until `ended` and got as far as metrics.jsonl's last row
    (read before a resume cuts the rows back to the checkpoint). Its tokens are filled in
    later, from a segment that counted its tokens per epoch (see finish_segment)."""
    step, epoch = _last_logged(run_dir)
    try:
        started = datetime.fromisoformat(segment["started_at"]).timestamp()
    except (KeyError, TypeError, ValueError):
        started = ended
    return {**segment, "ended_at": datetime.fromtimestamp(ended, UTC).isoformat(timespec="seconds"),
            "status": status, "to_step": max(step or 0, segment.get("from_step") or 0),
            "to_epoch": max(epoch or 0.0, segment.get("from_epoch") or 0.0),
            "train_runtime": round(max(0.0, ended - started), 2), "train_tokens": None}


def close_interrupted_segment(run_dir: Path) -> None:
    """Before a resume: the segment a killed process left open is closed, as ended at its
    last write (metrics.jsonl, a checkpoint), and kept with the run's others."""
    record = read_record(run_dir)
    segment = record.get("segment")
    if not isinstance(segment, dict):
        return
    writes = [p.stat().st_mtime for p in (metrics_file(run_dir), *checkpoints_dir(run_dir).glob("checkpoint-*"))
              if p.exists()]
    started = datetime.fromisoformat(segment["started_at"]).timestamp() if segment.get("started_at") else 0.0
    ended = max([started, *writes])
    record["segments"] = earlier_segments(record) + [ended_without_summary(segment, run_dir, ended, "interrupted")]
    del record["segment"]
    write_record(run_dir, record)


def finish_segment(record: dict, summary: dict, run_dir: Path, status: str) -> dict:
    """The segment that just ended added to `record["segments"]` (in place), and `summary`
    with the run's totals: `train_runtime` and `train_tokens` summed over every segment
    (tokens None when a segment's are unknown). `summary["segment"]`: this segment's own
    figures, as train() reports them; none when it failed."""
    segment = record.pop("segment", None) or {"started_at": record.get("started_at"), "from_step": 0,
                                              "from_epoch": 0.0}
    figures = summary.pop("segment", None)
    if figures:
        done = {**segment, "ended_at": timestamp(), "status": status, **figures}
    else:
        done = ended_without_summary(segment, run_dir, time.time(), status)
    segments = earlier_segments(record) + [done]
    # a killed or failed segment's tokens: its epochs × the tokens an epoch has (the same split)
    per_epoch = next((s["tokens_per_epoch"] for s in reversed(segments) if s.get("tokens_per_epoch")), None)
    for s in segments:
        if s.get("train_tokens") is None and per_epoch and s.get("to_epoch") is not None:
            s["train_tokens"] = round(per_epoch * max(0.0, s["to_epoch"] - (s.get("from_epoch") or 0.0)))
    record["segments"] = segments
    if summary:
        summary["train_runtime"] = round(sum(s.get("train_runtime") or 0.0 for s in segments), 2)
        tokens = [s.get("train_tokens") for s in segments]
        summary["train_tokens"] = sum(tokens) if all(isinstance(t, int) for t in tokens) else None
    return summary


def seconds_per_step(segments: list[dict]) -> float | None:
    """How long a step took in the segments that measured their training loop, or None."""
    timed = [s for s in segments if s.get("loop_runtime") and (s.get("to_step") or 0) > (s.get("from_step") or 0)]
    steps = sum(s["to_step"] - (s.get("from_step") or 0) for s in timed)
    return sum(s["loop_runtime"] for s in timed) / steps if steps else None
