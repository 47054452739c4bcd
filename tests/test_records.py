"""tuner.records: run folders on disk, read and written without the training stack."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tuner import records
from tuner.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


def make_run(runs: Path, run_id: str, status: str = "completed", adapter: bool = True, **fields) -> Path:
    folder = runs / run_id
    folder.mkdir(parents=True)
    records.write_record(folder, {"run_id": run_id, "status": status, "config": {}, **fields})
    if adapter:
        (folder / "adapter").mkdir()
        (folder / "adapter" / "adapter_config.json").write_text('{"r": 8}')
    return folder


def make_checkpoint(run_dir: Path, step: int, complete: bool = True) -> Path:
    folder = run_dir / "checkpoints" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (folder / "adapter_model.safetensors").write_bytes(b"w")
    for name in ("optimizer.pt", "scheduler.pt")[: 2 if complete else 1]:
        (folder / name).write_bytes(b"x")
    return folder


def test_reading_runs_loads_no_training_stack():
    code = ("import sys, tuner.records, tuner.export, tuner.cli_generate; "
            "print([m for m in ('torch', 'transformers', 'peft') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("run_id", ["20260101-120000-faq-1a2b", "r-failed", "a_b.c"])
def test_a_plain_name_is_a_run_id(run_id):
    assert records.check_run_id(run_id) == run_id


@pytest.mark.parametrize("run_id", ["../x", "/etc", "a\\b", "a/b", "..", ".", "", "x\x00y", "%2e%2e", None, 3])
def test_a_path_or_odd_name_is_not_a_run_id(run_id, tmp_path):
    with pytest.raises(ValueError):
        records.check_run_id(run_id)
    with pytest.raises(ValueError):
        records.run_folder(tmp_path, run_id)


@pytest.mark.parametrize(("settings", "part"), [({"run_name": "polite r16 try 2"}, "-polite-r16-try-2-"),
                                                ({"dataset": "/data/support faq.jsonl"}, "-support-faq-"),
                                                ({}, "-run-")])
def test_a_new_run_id_names_the_run_else_its_dataset(settings, part):
    run_id = records.new_run_id(TrainConfig(**settings))
    assert part in run_id and records.check_run_id(run_id) == run_id
    assert records.new_run_id(TrainConfig(**settings)) != run_id  # random suffix


def test_run_label_is_the_owners_name_else_the_id():
    assert records.run_label({"run_id": "r1", "config": {"run_name": " mine "}}) == "mine"
    assert records.run_label({"run_id": "r1", "config": {"run_name": ""}}) == "r1"
    assert records.run_label({"run_id": "r1"}) == "r1"


def test_a_record_is_written_and_read_back_and_must_be_an_object(tmp_path):
    record = records.start_record(tmp_path, "r1", TrainConfig(run_name="x"))
    assert records.read_record(tmp_path) == record
    assert record["status"] == "running" and record["config"]["run_name"] == "x"
    assert record["pid"] == os.getpid() and not records.still_running(record)  # this process: its manager knows
    records.record_file(tmp_path).write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        records.read_record(tmp_path)


def test_still_running_follows_the_writing_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        record = {"pid": proc.pid, "pid_started": records.process_started(proc.pid)}
        assert record["pid_started"] and records.still_running(record)
        assert not records.still_running({**record, "pid_started": "1"})  # a reused pid is another process
    finally:
        proc.kill()
        proc.wait()
    assert not records.still_running(record)
    assert not records.still_running({"pid": "1", "pid_started": "1"})


def test_list_runs_is_newest_first_and_skips_what_is_not_a_run(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "20260101-a")
    make_run(runs, "20260102-b", status="failed")
    (runs / "20260103-broken").mkdir()
    (runs / "20260103-broken" / "run.json").write_text("{cut")
    (runs / "20260104-list").mkdir()
    (runs / "20260104-list" / "run.json").write_text("[]")
    (runs / "bad name").mkdir()
    (runs / "bad name" / "run.json").write_text("{}")
    make_run(tmp_path / "elsewhere", "stolen")
    (runs / "20260105-link").symlink_to(tmp_path / "elsewhere" / "stolen")
    copied = make_run(runs, "20260106-copy")
    records.write_record(copied, {"run_id": "orig", "status": "stopped"})
    listed = records.list_runs(runs)
    assert [r["run_id"] for r in listed] == ["20260106-copy", "20260102-b", "20260101-a"]
    assert listed[1]["path"] == str((runs / "20260102-b").resolve())
    assert records.list_runs(tmp_path / "none") == []


@pytest.mark.parametrize(("status", "adapter", "finished"), [
    ("completed", True, True), ("stopped", True, True), ("diverged", True, False), ("failed", True, False),
    ("running", True, False), ("completed", False, False)])
def test_finished_means_completed_or_stopped_with_an_adapter(tmp_path, status, adapter, finished):
    folder = make_run(tmp_path, "r1", status=status, adapter=adapter)
    (run,) = records.list_runs(tmp_path)
    assert records.is_finished(run) is finished
    assert records.has_adapter(folder) is adapter


def test_an_adapter_folder_without_its_config_is_no_adapter(tmp_path):
    folder = make_run(tmp_path, "r1", adapter=False)
    (folder / "adapter").mkdir()
    assert not records.has_adapter(folder) and not records.is_finished(records.list_runs(tmp_path)[0])


def test_write_adapter_replaces_the_old_one_whole_or_not_at_all(tmp_path):
    folder = make_run(tmp_path, "r1")

    def save(into: Path) -> None:
        into.mkdir()
        (into / "adapter_config.json").write_text('{"r": 16}')

    records.write_adapter(folder, save)
    assert records.adapter_config(folder) == {"r": 16}

    def fails(into: Path) -> None:
        into.mkdir()
        (into / "adapter_config.json").write_text("{")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        records.write_adapter(folder, fails)
    assert records.adapter_config(folder) == {"r": 16}
    records.write_adapter(folder, save)  # the temp folder a failure left is cleared first
    assert sorted(p.name for p in folder.iterdir()) == ["adapter", "run.json"]


def test_metrics_are_appended_read_and_cut_back_to_a_step(tmp_path):
    assert records.read_metrics(tmp_path) == []
    records.truncate_metrics(tmp_path, 3)  # nothing logged yet: nothing to cut
    assert not records.metrics_file(tmp_path).exists()
    for step in (1, 2, 3, 4):
        records.append_metrics(tmp_path, {"step": step, "loss": 1.0 / step})
    with open(records.metrics_file(tmp_path), "a") as fh:
        fh.write('{"step": 5, "lo')  # a killed process's last line
    assert [r["step"] for r in records.read_metrics(tmp_path)] == [1, 2, 3, 4]
    records.truncate_metrics(tmp_path, 2)
    assert records.read_metrics(tmp_path) == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]


def test_the_last_complete_checkpoint_and_its_step(tmp_path):
    assert records.last_complete_checkpoint(tmp_path) is None
    assert records.stopped_at(tmp_path) == {"step": None, "checkpoint": None}
    make_checkpoint(tmp_path, 3)
    ten = make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 12, complete=False)  # killed while saving
    (tmp_path / "checkpoints" / "checkpoint-x").mkdir()
    assert records.last_complete_checkpoint(tmp_path) == ten
    assert records.checkpoint_step(ten) == 10
    for step in (1, 11, 12):
        records.append_metrics(tmp_path, {"step": step})
    assert records.stopped_at(tmp_path) == {"step": 12, "checkpoint": 10}
    (ten / "trainer_state.json").write_text("{")
    assert records.stopped_at(tmp_path) == {"step": 12, "checkpoint": None}


def test_held_out_rows_are_kept_as_split(tmp_path):
    rows = {"train": [{"q": 0}], "validation": [{"q": 1}], "test": [{"q": 2}, {"q": "é"}]}
    records.write_held_out(tmp_path, rows)
    for name in records.HELD_OUT:
        lines = records.held_out_file(tmp_path, name).read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == rows[name]
    assert not (tmp_path / "train.jsonl").exists()


def test_a_killed_segment_is_closed_at_its_last_write_and_counted_with_the_next(tmp_path):
    """A resumed run counts every segment's time and tokens (it once reported only its last
    segment's time, and no tokens)."""
    from datetime import UTC, datetime

    started = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    folder = make_run(tmp_path, "r1", status="running", adapter=False, started_at=started.isoformat(),
                      segment={"started_at": started.isoformat(), "from_step": 0, "from_epoch": 0.0})
    for step in range(1, 9):
        records.append_metrics(folder, {"step": step, "epoch": step / 4, "loss": 1.0})
    last_write = started.timestamp() + 40
    os.utime(records.metrics_file(folder), (last_write, last_write))
    records.close_interrupted_segment(folder)
    record = records.read_record(folder)
    assert "segment" not in record
    [killed] = record["segments"]
    assert (killed["status"], killed["to_step"], killed["to_epoch"], killed["train_runtime"]) == \
        ("interrupted", 8, 2.0, 40.0)
    records.close_interrupted_segment(folder)  # nothing open: nothing changes
    assert records.read_record(folder) == record

    # resumed from the checkpoint of step 6 (epoch 1.5) and run to step 10 (epoch 2.5)
    record["segment"] = {"started_at": started.isoformat(), "from_step": 6, "from_epoch": 1.5}
    summary = {"status": "completed", "segment": {"from_step": 6, "to_step": 10, "from_epoch": 1.5, "to_epoch": 2.5,
                                                  "train_runtime": 12.5, "loop_runtime": 8.0, "train_tokens": 1000,
                                                  "tokens_per_epoch": 1000}}
    summary = records.finish_segment(record, summary, folder, "completed")
    killed, resumed = record["segments"]
    assert killed["train_tokens"] == 2000  # its two epochs' tokens, from the resumed segment's count
    assert summary == {"status": "completed", "train_runtime": 52.5, "train_tokens": 3000}
    assert records.seconds_per_step(record["segments"]) == 2.0  # only the segment that timed its loop


def test_a_run_recorded_before_segments_counts_as_one():
    record = {"status": "stopped", "started_at": "x", "ended_at": "y",
              "summary": {"train_runtime": 20.0, "train_tokens": None, "global_step": 5}}
    [only] = records.earlier_segments(record)
    assert (only["train_runtime"], only["to_step"], only["train_tokens"]) == (20.0, 5, None)
    assert records.earlier_segments({"status": "failed", "summary": {}}) == []
