"""Replies for 10 prompts × 2 variants (base and fine-tuned) with the bundled model.

    python bench/generate_speed.py [--run RUN_DIR] [--max-new-tokens 64]

Two ways in one invocation, on one shared base copy (the adapter switched off
for the base replies): all prompts in batches, and one prompt at a time. With
no --run, a 2-step LoRA adapter is trained first (its quality is irrelevant
here; the adapter's shape is what costs). Prints both times, new tokens per
second and peak resident memory; ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ratings.evalsets import from_lines  # noqa: E402
from tuner import models  # noqa: E402
from tuner.config import TrainConfig  # noqa: E402
from tuner.generate import GenSettings, Generator  # noqa: E402
from tuner.paths import STARTER_DATASETS, Layout, data_root  # noqa: E402
from tuner.train import train  # noqa: E402

PROMPTS = """Ask a professor for feedback on a draft
Decline a social invitation politely
What is the capital of Japan?
Give me three tips for sleeping better.
Write a short thank-you note to a colleague.
Explain briefly why the sky is blue.
How do I politely ask my landlord to fix the heating?
Summarise the benefits of regular exercise in two sentences.
Can you help me plan a simple dinner for four?
Tell me how to apologise for missing a meeting."""


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", help="a run folder with adapter/ (default: train a 2-step adapter)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=10)
    args = parser.parse_args()
    models_dir = Layout(data_root()).models
    models.resolve(models.BUNDLED, models_dir)
    if args.run:
        adapter = Path(args.run) / "adapter"
    else:
        run_dir = Path(tempfile.mkdtemp()) / "run"
        run_dir.mkdir()
        train(TrainConfig(dataset=str(STARTER_DATASETS / "polite_assistant.jsonl"), max_steps=2, save_steps=100),
              run_dir, models_dir=models_dir)
        adapter = run_dir / "adapter"
    conversations = [item["messages"] for item in from_lines(PROMPTS)]
    generator = Generator(models_dir)
    generator.generate(models.BUNDLED, conversations[:1], GenSettings(max_new_tokens=2))  # load once, untimed
    results = {}
    for mode, batch in (("batched", args.batch_size), ("one_at_a_time", 1)):
        settings = GenSettings(max_new_tokens=args.max_new_tokens, batch_size=batch)
        start = time.perf_counter()
        base = generator.generate(models.BUNDLED, conversations, settings)
        tuned = generator.generate(models.BUNDLED, conversations, settings, adapter=("bench", adapter))
        seconds = time.perf_counter() - start
        tokens = sum(r.new_tokens for r in base + tuned)
        results[mode] = {"seconds": round(seconds, 1), "new_tokens": tokens,
                         "tokens_per_s": round(tokens / seconds, 1)}
        print(f"{mode:>14}: {results[mode]}", flush=True)
    results["speedup"] = round(results["one_at_a_time"]["seconds"] / results["batched"]["seconds"], 2)
    results["peak_rss_mb"] = round(peak_rss_mb())
    print(f"speedup of batching: {results['speedup']}×, peak RSS {results['peak_rss_mb']} MB")
    print(json.dumps({"benchmark": "generate_speed", "prompts": 10, "variants": 2,
                      "max_new_tokens": args.max_new_tokens, **results}))


if __name__ == "__main__":
    main()
