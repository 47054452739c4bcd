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
"""

from __future__ import annotations

import json
import os
import shutil
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
