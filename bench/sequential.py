"""When to stop rating (issue 28): is the anytime-valid decision right, and how many
ratings does it save?

    python bench/sequential.py [--quick] [--null 1000] [--gain 300] [--workers 2]

Simulates whole evaluations through the app's own store (a real SQLite file), its
scheduler (`Store.next_pair`, which picks every pair a rater is served) and its
statistic (`ratings.sequential.for_evaluation`, looked at after every rating, as an
owner watching the Results tab would). Raters are simulated people:

- a prompt has a difficulty (normal, sd DIFFICULTY_SD) shared by both models' replies;
- each reply has its own quality on top (normal, sd REPLY_SD): the fine-tuned reply to
  one prompt may be better or worse than the base's even when the models are equal on
  average; this is what makes ratings of one prompt depend on each other;
- the fine-tuned model adds GAIN (0 under "no difference"; calibrated to +20 points of
  success rate otherwise);
- a rater has a bias (normal, sd BIAS_SD, the same on every reply they score) and their
  own noise (sd uniform in NOISE_SD); a score is round(CENTER + all of it) clipped to 1–5,
  a success is a score of 4 or more.

These spreads are stated, not fitted: this project's ratings.db files are test fixtures
with scripted scores, not people. With them the base succeeds on ~40% of ratings and
raters agree on a reply's success ~70% of the time.

Each simulated evaluation: PROMPTS prompts (GAIN_PROMPTS with a gain), base and one fine-tuned model, RATERS raters
taking turns at random, each rating every pair the scheduler serves them, looked at after
every rating until the statistic decides or every prompt is in the test (from then on
further ratings feed the tables but cannot change the decision, so stopping there is
exact, not an approximation).

- Under no difference (--null evaluations): the share decided at all is the false
  decision rate (target ≤ 5%), with its 95% Wilson interval. Beside it, the same betting
  test fed every rating of the whole evaluation (every rater on every prompt) as if each
  were independent, the unit this app does not use: its false decision rate shows why
  the prompt is the unit. And --three evaluations of the base and two fine-tuned models
  where the first is better (+20 points) and the second is not: once the first is decided
  the scheduler serves the second's pairs first, so its order of prompts depends on the
  first's scores; the second's false decision rate shows whether that costs the guarantee
  (each model is decided at 5% / 2 there, the two sharing the evaluation's 5%).
- With +20 points (--gain evaluations): the median ratings to a correct decision, how
  often the decision is right, wrong or missing; against the fixed design's ratings for
  80% power, found by simulating the Results tab's own paired test (`stats.paired_tests`,
  Wilcoxon over per-prompt differences) on RATERS raters per prompt, once on success
  (the decision's own measure) and once on mean scores (the tab's default table).

Ends with one JSON line. Tests never run it; it takes ~5 minutes on 2 cores (--quick ~1).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import random
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ratings import sequential, stats  # noqa: E402
from ratings.store import Store  # noqa: E402

CENTER, DIFFICULTY_SD, REPLY_SD, BIAS_SD, NOISE_SD = 3.2, 1.0, 0.6, 0.5, (0.5, 1.1)
PROMPTS, RATERS, GAIN_PROMPTS = 120, 3, 250
TARGET_GAIN = 0.20
VARIANTS = [{"name": "base", "label": "base", "kind": "base"}, {"name": "ft", "label": "fine-tuned", "kind": "lora"},
            {"name": "ft2", "label": "fine-tuned 2", "kind": "lora"}]


def success_rate(shift: float) -> float:
    """P(score ≥ 4) for a reply shifted by `shift`, over prompts, replies, raters and noise."""
    from scipy.stats import norm

    noises = np.linspace(*NOISE_SD, 61)
    spread = np.sqrt(DIFFICULTY_SD ** 2 + REPLY_SD ** 2 + BIAS_SD ** 2 + noises ** 2)
    return float(norm.cdf((CENTER + shift - 3.5) / spread).mean())


def calibrated_gain(points: float) -> float:
    """The latent shift that lifts the success rate by `points` (0.20 = 20 points)."""
    from scipy.optimize import brentq

    base = success_rate(0.0)
    return brentq(lambda g: success_rate(g) - base - points, 0.0, 5.0)


class World:
    """One simulated evaluation's prompts, replies and raters."""

    def __init__(self, rng: np.random.Generator, prompts: int, raters: int, gain: float, gain2: float = 0.0):
        difficulty = rng.normal(0, DIFFICULTY_SD, prompts)
        self.quality = {"base": difficulty + rng.normal(0, REPLY_SD, prompts),
                        "ft": difficulty + rng.normal(0, REPLY_SD, prompts) + gain,
                        "ft2": difficulty + rng.normal(0, REPLY_SD, prompts) + gain2}
        self.bias = rng.normal(0, BIAS_SD, raters)
        self.noise = rng.uniform(*NOISE_SD, raters)
        self.rng = rng

    def score(self, variant: str, prompt: int, rater: int) -> int:
        latent = CENTER + self.quality[variant][prompt] + self.bias[rater] + self.rng.normal(0, self.noise[rater])
        return int(min(5, max(1, round(latent))))


def reply_text(prompt: dict, variant: str, k: int) -> str:
    return f"{variant}|{prompt['position'] - 1}"  # what the simulated rater "reads": which model, which prompt


def run_evaluation(store: Store, seed: int, gain: float, prompts: int, raters: int, models: int = 2) -> dict:
    """Rate one evaluation through the store's scheduler until the statistic decides or
    every prompt is in the test; the decision as the owner would have seen it. With
    models=3, the first fine-tuned model has `gain` and the second none: the scheduler
    turns to the second's pairs once the first is decided, and "second_decided" says
    whether the second (no better than the base) was ever wrongly decided."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import open_evaluation

    rng = np.random.default_rng(seed)
    world = World(rng, prompts, raters, gain, 0.0)
    variants = VARIANTS[:models]
    eval_id = open_evaluation(store, f"sim {seed}", "sim", prompts, variants, reply=reply_text, reply_settings={})
    labels = [v["label"] for v in variants]
    names = [f"rater {i}" for i in range(raters)]
    turns = random.Random(seed)
    active = list(range(raters))
    looks = 0
    decision = None
    while active:
        r = turns.choice(active)
        pair = store.next_pair(eval_id, names[r], turns)
        if pair is None:
            active.remove(r)
            continue
        scores = []
        for text in (pair["reply_a"], pair["reply_b"]):
            variant, prompt = text.split("|")
            scores.append(world.score(variant, int(prompt), r))
        store.rate_pair(pair["assignment_id"], names[r], *scores)
        # the owner looks after every rating: the app's own statistic on the store as it is now
        found = sequential.decisions(store.rating_sequence(eval_id), labels)
        decision = found[0]
        looks += 1
        if all(d.decided or d.prompts == prompts for d in found):
            break  # decided, or every prompt is in the test: later ratings feed the tables, not the decision
    # the unit this app does not use: every rating of the whole evaluation (each rater rates
    # every prompt, round after round, as the scheduler serves them) fed to the same test as if
    # independent. Drawn from the same simulated world, outside the store (the app never does this)
    per_rating = [int(world.score("ft", p, r) >= 4) - int(world.score("base", p, r) >= 4)
                  for r in range(raters) for p in range(prompts)]
    up, down = sequential.betting_paths(per_rating) if per_rating else ([0], [0])
    return {"decided": decision.decided if decision else None,
            "at": decision.decided_at if decision and decision.decided else None,
            "ratings": looks, "prompts_in": decision.prompts if decision else 0,
            "second_decided": found[1].decided is not None if models > 2 else None,
            "per_rating_decided": bool(np.any(np.asarray(up) >= 1) or np.any(np.asarray(down) >= 1))}


def worker(job: tuple[list[int], float, int, int, int]) -> list[dict]:
    seeds, gain, prompts, raters, models = job
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as folder:
        results = []
        for i, seed in enumerate(seeds):
            if i % 50 == 0:  # a fresh file now and then: one file of thousands of evaluations slows the queries
                store = Store(Path(folder) / f"ratings-{i}.db")
            results.append(run_evaluation(store, seed, gain, prompts, raters, models))
        return results


def simulate(count: int, gain: float, workers: int, first_seed: int, models: int = 2,
             prompts: int | None = None) -> list[dict]:
    seeds = list(range(first_seed, first_seed + count))
    jobs = [(seeds[i::workers], gain, prompts or PROMPTS, RATERS, models) for i in range(workers)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return [r for part in pool.map(worker, jobs) for r in part]


def fixed_power(gain: float, prompts: int, raters: int, runs: int, on: str, seed: int) -> float:
    """How often the Results tab's paired test (stats.paired_tests: Wilcoxon over the
    per-prompt differences, two-sided p < 0.05) finds the fine-tuned model better, for
    `prompts` prompts each rated by `raters` raters; `on` "success" or "score"."""
    rng = np.random.default_rng(seed)
    found = 0
    for _ in range(runs):
        world = World(rng, prompts, raters, gain)
        rows = []
        for p in range(prompts):
            for r in range(raters):
                for variant, label in (("base", "base"), ("ft", "fine-tuned")):
                    score = world.score(variant, p, r)
                    rows.append((p + 1, label, f"r{r}", float(score >= 4) if on == "success" else float(score)))
        frame = pd.DataFrame(rows, columns=["position", "label", "rater", "score"])
        test = stats.paired_tests(frame).iloc[0]
        found += bool(test["wilcoxon p"] < 0.05 and test["mean difference"] > 0)
    return found / runs


def fixed_design_prompts(gain: float, raters: int, runs: int, on: str) -> int:
    """The fewest prompts at which the fixed design reaches 80% power (bisection)."""
    low, high = 4, 400
    while fixed_power(gain, high, raters, runs, on, seed=high) < 0.8:
        high *= 2
    while high - low > 1:
        middle = (low + high) // 2
        if fixed_power(gain, middle, raters, runs, on, seed=middle) >= 0.8:
            high = middle
        else:
            low = middle
    return high


def main() -> None:
    global PROMPTS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 null and 60 gain evaluations")
    parser.add_argument("--null", type=int, default=1000)
    parser.add_argument("--gain", type=int, default=300)
    parser.add_argument("--three", type=int, default=200,
                        help="evaluations of the base, a better fine-tuned model and one no better")
    parser.add_argument("--workers", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    parser.add_argument("--prompts", type=int, default=PROMPTS, help="prompts per evaluation without a difference")
    parser.add_argument("--gain-prompts", type=int, default=GAIN_PROMPTS,
                        help="prompts per evaluation with a gain: enough that running out is rare, so the "
                             "median measures the test, not the evaluation's size")
    parser.add_argument("--power-runs", type=int, default=0, help="simulations per step of the fixed design's search")
    args = parser.parse_args()
    if args.quick:
        args.null, args.gain, args.three = 100, 60, 30
    PROMPTS = args.prompts
    started = time.perf_counter()
    gain = calibrated_gain(TARGET_GAIN)

    null = simulate(args.null, 0.0, args.workers, first_seed=1)
    wrong = sum(r["decided"] is not None for r in null)
    low, high = stats.wilson_interval(wrong, len(null))
    per_rating = sum(r["per_rating_decided"] for r in null)

    three = simulate(args.three, gain, args.workers, first_seed=500_000, models=3)
    three_wrong = sum(r["second_decided"] for r in three)
    three_low, three_high = stats.wilson_interval(three_wrong, len(three))

    gained = simulate(args.gain, gain, args.workers, first_seed=100_000, prompts=args.gain_prompts)
    right = [r for r in gained if r["decided"] == "better"]
    to_decision = [r["at"] for r in right]
    # a missed decision counts as never: the median over all runs, not only the lucky ones
    all_times = sorted([r["at"] if r["decided"] == "better" else math.inf for r in gained])
    median = all_times[len(all_times) // 2]

    power_runs = args.power_runs or (150 if args.quick else 400)
    fixed_success = fixed_design_prompts(gain, RATERS, power_runs, "success") * RATERS
    fixed_score = fixed_design_prompts(gain, RATERS, power_runs, "score") * RATERS
    figures = {
        "bench": "sequential", "date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
        "null_evaluations": len(null), "false_decision_rate": round(wrong / len(null), 4),
        "false_decision_interval": [round(low, 4), round(high, 4)],
        "false_decision_rate_if_each_rating_were_a_unit": round(per_rating / len(null), 4),
        "three_model_evaluations": len(three),
        "false_decision_rate_beside_a_better_model": round(three_wrong / len(three), 4),
        "false_decision_interval_beside_a_better_model": [round(three_low, 4), round(three_high, 4)],
        "better_model_decided_in_three_model_runs": round(sum(r["decided"] == "better" for r in three) / len(three), 4),
        "gain_evaluations": len(gained), "gain_points": round(TARGET_GAIN * 100),
        "base_success_rate": round(success_rate(0.0), 3),
        "median_ratings_to_decision": median if math.isfinite(median) else None,
        "mean_ratings_to_correct_decision": round(float(np.mean(to_decision)), 1) if to_decision else None,
        "correct_decision_rate": round(len(right) / len(gained), 4),
        "wrong_direction_rate": round(sum(r["decided"] == "worse" for r in gained) / len(gained), 4),
        "undecided_rate": round(sum(r["decided"] is None for r in gained) / len(gained), 4),
        "fixed_design_ratings": fixed_success, "fixed_design_raters_per_prompt": RATERS,
        "ratio_to_fixed": round(median / fixed_success, 3) if math.isfinite(median) else None,
        "fixed_design_ratings_on_mean_scores": fixed_score,
        "ratio_to_fixed_on_mean_scores": round(median / fixed_score, 3) if math.isfinite(median) else None,
        "prompts_per_evaluation": PROMPTS, "prompts_per_evaluation_with_gain": args.gain_prompts, "raters_per_evaluation": RATERS,
        "spreads": {"difficulty": DIFFICULTY_SD, "reply": REPLY_SD, "rater_bias": BIAS_SD, "rater_noise": NOISE_SD},
        "workers": args.workers, "total_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
