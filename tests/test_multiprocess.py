"""More than one process: the same CLI under `accelerate launch` trains one run together
(data parallel; on a CPU machine, gloo), only the main process writes the run folder, and the
loss follows a one-process run with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import chat, write_jsonl
from tuner import records

pytestmark = pytest.mark.slow  # two processes train, then one: ~30 s

ROOT = Path(__file__).resolve().parents[1]
# the two runs see the same rows in the same global batches; they differ in how each process
# packs and averages its half of a batch, so the losses agree closely but not bit for bit
LOSS_TOLERANCE = 0.03  # relative, at every step
ACCELERATE = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def _train(launcher: list[str], config: dict, folder: Path, run_id: str | None) -> subprocess.CompletedProcess:
    path = folder / f"{config['per_device_train_batch_size']}.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    env = {**os.environ, "TUNER_HOME": str(folder / "home"), "OMP_NUM_THREADS": "1"}
    args = launcher + ["-m", "tuner", "train", str(path)] + (["--run-id", run_id] if run_id else [])
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_two_processes_train_one_run_that_matches_one_process(tiny_llama, tmp_path):
    rows = [chat(f"Question {i}?", f"Answer number {i}, kindly.") for i in range(16)]
    dataset = write_jsonl(tmp_path / "d.jsonl", rows)
    base = {"base_model": str(tiny_llama), "dataset": str(dataset), "max_steps": 4, "learning_rate": 1e-2,
            "validation_fraction": 0, "test_fraction": 0, "save_steps": 100, "seed": 7, "precision": "fp32"}
    accelerate = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    # no --run-id: the processes must agree on one folder (the main process's id, broadcast)
    two = _train(accelerate, {**base, "per_device_train_batch_size": 2, "output_dir": str(tmp_path / "two")},
                 tmp_path, None)
    assert two.returncode == 0, two.stderr[-3000:]
    (run_dir,) = list((tmp_path / "two").iterdir())  # one run folder, not one per process
    record = records.read_record(run_dir)
    assert record["status"] == "completed" and record["summary"]["world_size"] == 2
    assert record["summary"]["global_step"] == 4
    two_rows = records.read_metrics(run_dir)
    assert len([r for r in two_rows if "loss" in r]) == 4  # each step logged once, by the main process
    one = _train([sys.executable], {**base, "per_device_train_batch_size": 4, "output_dir": str(tmp_path / "one")},
                 tmp_path, "one")
    assert one.returncode == 0, one.stderr[-3000:]
    one_record = records.read_record(tmp_path / "one" / "one")
    assert one_record["summary"]["world_size"] == 1
    one_rows = records.read_metrics(tmp_path / "one" / "one")
    losses = [(a["loss"], b["loss"]) for a, b in zip([r for r in two_rows if "loss" in r],
                                                     [r for r in one_rows if "loss" in r])]
    assert len(losses) == 4
    for together, alone in losses:
        assert abs(together - alone) <= LOSS_TOLERANCE * alone, losses
    assert [r["epoch"] for r in two_rows if "loss" in r] == [r["epoch"] for r in one_rows if "loss" in r]


def test_two_processes_on_an_empty_data_root_convert_the_bundled_model_once(tmp_path):
    """A fresh TUNER_HOME and the bundled model: the main process converts it first, the other
    waits and finds it ready (converting it together, one process failed with no message)."""
    rows = [chat(f"Question {i}?", f"Answer number {i}, kindly.") for i in range(8)]
    dataset = write_jsonl(tmp_path / "d.jsonl", rows)
    home = tmp_path / "home"
    assert not home.exists()
    config = {"base_model": "smollm2-135m-instruct", "dataset": str(dataset), "max_steps": 1, "validation_fraction": 0,
              "test_fraction": 0, "save_steps": 100, "seed": 7, "precision": "fp32", "max_seq_length": 64,
              "per_device_train_batch_size": 1, "output_dir": str(tmp_path / "runs")}
    done = _train(ACCELERATE, config, tmp_path, None)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = list((tmp_path / "runs").iterdir())
    record = records.read_record(run_dir)
    assert record["status"] == "completed" and record["summary"]["world_size"] == 2
    converted = home / "models" / "smollm2-135m-instruct"
    assert (converted / "config.json").is_file()


def test_a_failing_process_says_why(tmp_path):
    """Every process that cannot go on prints its error (here: a model that does not exist)."""
    dataset = write_jsonl(tmp_path / "d.jsonl", [chat("Q?", "A.")] * 4)
    config = {"base_model": str(tmp_path / "no-such-model"), "dataset": str(dataset), "max_steps": 1,
              "validation_fraction": 0, "test_fraction": 0, "per_device_train_batch_size": 1,
              "output_dir": str(tmp_path / "runs")}
    failed = _train(ACCELERATE, config, tmp_path, None)
    assert failed.returncode != 0
    for rank in (0, 1):
        assert f"error (process {rank} of 2)" in failed.stderr, failed.stderr[-3000:]
    assert "no-such-model" in failed.stderr
