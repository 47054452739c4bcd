"""Seconds per training step of the bundled model at the Train tab's defaults.

    python bench/train_step.py [--steps 8] [--precision auto|bf16|fp32 ...]

Trains the polite-assistant starter set with TrainConfig's defaults (only
max_steps, precision and packing are set) and prints for each combination: the
time to the first step (model and data setup), the mean seconds per optimizer
step (first step excluded: it pays one-time costs), and useful (non-padding)
tokens per second. Ends with one JSON line. For a whole epoch against the usual
tutorial recipe, with peak memory and FLOP/s, see bench/train_speed.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tuner import models  # noqa: E402
from tuner.paths import STARTER_DATASETS, Layout, data_root  # noqa: E402
from tuner.config import TrainConfig  # noqa: E402
from tuner.train import RunControl, train  # noqa: E402


def run(precision: str, packing: bool, steps: int, models_dir: Path) -> dict:
    stamps: list[float] = []
    config = TrainConfig(dataset=str(STARTER_DATASETS / "polite_assistant.jsonl"), max_steps=steps,
                         precision=precision, packing=packing, save_steps=10_000)

    def update(**changes):
        if changes.get("step"):  # on_train_begin reports step 0: not a step
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        start = time.perf_counter()
        summary = train(config, run_dir, RunControl(update=update), models_dir=models_dir)
    per_step = [b - a for a, b in zip(stamps, stamps[1:])]
    return {
        "precision": summary["precision"],
        "packing": summary["packing"],
        "total_s": round(time.perf_counter() - start, 1),
        "s_per_step": round(sum(per_step) / len(per_step), 2) if per_step else None,
        "first_step_s": round(stamps[0] - start, 1) if stamps else None,
        "final_loss": summary["final_loss"],
        "tokens_per_s": summary["tokens_per_second"],  # useful (non-padding) tokens
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--precision", nargs="+", default=["auto", "bf16"])
    parser.add_argument("--packing", nargs="+", default=["on", "off"], choices=["on", "off"])
    args = parser.parse_args()
    models_dir = Layout(data_root()).models
    models.resolve(models.BUNDLED, models_dir)
    results = []
    for packing in args.packing:
        for precision in args.precision:
            result = run(precision, packing == "on", args.steps, models_dir)
            print(f"{precision:>5} packing={packing}: {result}", flush=True)
            results.append(result)
    print(json.dumps({"benchmark": "train_step", "defaults": TrainConfig().__dict__ | {"dataset": "polite_assistant"},
                      "results": results}))


if __name__ == "__main__":
    main()
