"""How long the owner waits for the Results and Leaderboard screens (issue 29, item 2).

    python bench/screens.py [--evaluations 5] [--raters 25] [--prompts 40] [--repeat 3]

Builds a realistic ratings.db through the app's own store: `--evaluations` evaluations of
one base model, each with the base and two fine-tuned runs (three replies per prompt, so
a rater is served one pair per prompt) over `--prompts` prompts, and `--raters` raters
rating every pair the scheduler serves them (25 × 40 × 5 = 5,000 rated pairs, 10,000
scores, and 10,000 battles on the board). Scores follow each run's strength plus rater
noise. Then it times the screens through the app's own handlers (the functions the
page's events call, built in a Blocks as app.py builds them), each `--repeat` times:

- Results: opening each evaluation in turn (switching evaluations), the first time
  (cold) and again with nothing changed (warm);
- Leaderboard: opening the tab (raw ratings, then length-controlled), cold and warm,
  and after one new rating (what the owner sees while friends rate).

Ends with one JSON line; figures are seconds (median of the repeats, and the worst).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from helpers import open_evaluation  # noqa: E402

from ratings.store import Store  # noqa: E402

VARIANTS = [{"name": "base", "label": "base", "kind": "base"},
            {"name": "run-a", "label": "lora: run-a", "kind": "lora"},
            {"name": "run-b", "label": "lora: run-b", "kind": "lora"}]
STRENGTH = {"base": 2.9, "run-a": 3.4, "run-b": 3.6}


def build(store: Store, evaluations: int, raters: int, prompts: int, seed: int = 7) -> list[int]:
    rng = np.random.default_rng(seed)
    turns = random.Random(seed)
    ids = []
    for e in range(evaluations):
        eval_id = open_evaluation(store, f"round {e + 1}", "HuggingFaceTB/SmolLM2-135M-Instruct", prompts, VARIANTS,
                                  reply=lambda p, variant, k: f"{variant}|" + "word " * int(rng.integers(10, 120)),
                                  reply_settings={})
        ids.append(eval_id)
        bias = rng.normal(0, 0.5, raters)
        for r in range(raters):
            name = f"rater {r + 1}"
            while (pair := store.next_pair(eval_id, name, turns)) is not None:
                scores = []
                for text in (pair["reply_a"], pair["reply_b"]):
                    variant = text.split("|")[0]
                    scores.append(int(min(5, max(1, round(STRENGTH[variant] + bias[r] + rng.normal(0, 0.9))))))
                store.rate_pair(pair["assignment_id"], name, *scores)
    return ids


def timed(fn, *args) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def summary(times: list[float]) -> dict:
    return {"median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3)}


def main() -> None:
    import gradio as gr

    from ratings.scale import SUCCESS_AT
    from tuner.ui import leaderboard, results

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--evaluations", type=int, default=5)
    parser.add_argument("--raters", type=int, default=25)
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        store = Store(Path(folder) / "ratings.db")
        ids = build(store, args.evaluations, args.raters, args.prompts)
        built_s = time.perf_counter() - started
        pairs = sum(len(store.judgements_frame(i)) for i in ids)
        figures: dict = {"bench": "screens", "date": date.today().isoformat(),
                         "machine": platform.processor() or platform.machine(),
                         "evaluations": len(ids), "raters": args.raters, "rated_pairs": pairs,
                         "scores": sum(len(store.ratings_frame(i)) for i in ids), "build_s": round(built_s, 1)}
        cold, warm = [], []
        board_cold, board_warm, board_lc, board_after = [], [], [], []
        for attempt in range(args.repeat):
            # a fresh page each time: nothing kept from the last attempt but what the app keeps itself
            with gr.Blocks():
                show_results, _, _ = results.results_tab(store)
            with gr.Blocks():
                show_board, _, _ = leaderboard.leaderboard_tab(store)
            base_model = store.evaluation(ids[0])["base_model"]
            for eval_id in ids:
                cold.append(timed(show_results, eval_id, SUCCESS_AT, False, None))
            for eval_id in ids:
                warm.append(timed(show_results, eval_id, SUCCESS_AT, False, None))
            board_cold.append(timed(show_board, base_model, "human", leaderboard.RAW))
            board_warm.append(timed(show_board, base_model, "human", leaderboard.RAW))
            board_lc.append(timed(show_board, base_model, "human", leaderboard.CONTROLLED))
            # one more rating: the board's battles change
            name = f"late rater {attempt}"
            pair = store.next_pair(ids[-1], name, random.Random(attempt))
            store.rate_pair(pair["assignment_id"], name, 4, 3)
            board_after.append(timed(show_board, base_model, "human", leaderboard.RAW))
        figures |= {"results_switch_cold": summary(cold), "results_switch_warm": summary(warm),
                    "leaderboard_open_cold": summary(board_cold), "leaderboard_open_warm": summary(board_warm),
                    "leaderboard_length_controlled": summary(board_lc),
                    "leaderboard_after_a_new_rating": summary(board_after),
                    "total_s": round(time.perf_counter() - started, 1)}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
