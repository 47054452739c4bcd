"""Seconds per training step of the bundled model at the Train tab's defaults.

    python bench/train_step.py [--steps 8] [--precision auto|bf16|fp32 ...]

Trains the polite-assistant starter set with TrainConfig's defaults (only
max_steps is set) and prints, per precision: model+data setup time, the mean
seconds per optimizer step (first step excluded: it pays one-time costs),
and useful (non-padding) tokens per second. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tuner import models  # noqa: E402
from tuner.paths import STARTER_DATASETS, Layout, data_root  # noqa: E402
from tuner.train import TrainConfig, train  # noqa: E402


def run(precision: str, steps: int, models_dir: Path) -> dict:
    stamps: list[float] = []
    config = TrainConfig(dataset=str(STARTER_DATASETS / "polite_assistant.jsonl"), max_steps=steps,
                         precision=precision)

    def update(**changes):
        if "step" in changes:
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        start = time.perf_counter()
        def append(row, metrics_file):
            with open(metrics_file, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")

        summary = train(config, run_dir, threading.Event(), update, append, models_dir=models_dir)
    per_step = [b - a for a, b in zip(stamps, stamps[1:])]
    tokens = summary.get("train_tokens_per_step")
    return {
        "precision": summary["precision"],
        "total_s": round(time.perf_counter() - start, 1),
        "s_per_step": round(sum(per_step) / len(per_step), 2) if per_step else None,
        "first_step_s": round(stamps[0] - start, 1) if stamps else None,
        "final_loss": summary["final_loss"],
        "tokens_per_step": tokens,
        "tokens_per_s": round(tokens / (sum(per_step) / len(per_step)), 1) if tokens and per_step else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--precision", nargs="+", default=["auto", "fp32"])
    args = parser.parse_args()
    models_dir = Layout(data_root()).models
    models.resolve(models.BUNDLED, models_dir)
    results = []
    for precision in args.precision:
        result = run(precision, args.steps, models_dir)
        print(f"{precision:>5}: {result}", flush=True)
        results.append(result)
    print(json.dumps({"benchmark": "train_step", "defaults": TrainConfig().__dict__ | {"dataset": "polite_assistant"},
                      "results": results}))


if __name__ == "__main__":
    main()
