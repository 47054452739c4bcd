"""From ratings to a better model: SFT, scores, then DPO and KTO, measured on held-out prompts.

    python bench/preference.py              # the formal-email set, as below (~9–11 min on 2 cores)
    python bench/preference.py --quick      # a smoke run: a few steps and prompts

1. SFT: the formal-email recipe (datasets/formal_email.recipe.json) trained with
   `python -m tuner train`, as bench/recipes.py does.
2. Scores: the SFT model answers its own training prompts several times (sampled, one
   variant per sample; the base is left out); the replies go into a real ratings database
   as one evaluation, and 30 synthetic raters score the pairs the app serves them from
   the automatic checks (every check passed → 5, else 1).
3. Preference runs: ratings.preferences turns the scores into DPO pairs and KTO examples
   (the app's rules: means a score apart; desirable ≥ 4, undesirable ≤ 2), and
   `python -m tuner train` trains each from the SFT run's adapter (method dpo, kto).
4. Held-out: base, SFT, SFT+DPO and SFT+KTO answer the SFT run's test prompts, greedy
   (the recipe's settings) and sampled (the same temperature as step 2, several samples):
   check pass rates with Wilson 95% intervals, and each preference run against its SFT
   start paired on the same prompt and sample (McNemar's exact test).

Each phase's samples come from one generate_all call (samples): every prompt asked several
times, BATCH rows a batch. A held-out reply ends once it fails a check whatever it writes next
(past the word limit, a wrong start): its pass or fail is then known (--full-replies: to the
end). The scored replies are written whole: they are what DPO and KTO train on.

Prints the tables and the training times, then one JSON line. Target: a preference run
beats its SFT start on the checks with paired p < 0.05, all of it within 10 minutes here.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from ratings import checks as rc  # noqa: E402
from ratings import stats  # noqa: E402
from ratings import preferences  # noqa: E402
from ratings.stats import wilson_interval  # noqa: E402
from ratings.store import Store  # noqa: E402
from tuner import data as tdata  # noqa: E402
from tuner import recipes, records  # noqa: E402
from tuner.models import BUNDLED  # noqa: E402
from tuner.prompts import from_row, read_prompts  # noqa: E402

SET = "formal_email"
RATERS = 30


def cli_train(values: dict, work: Path, run_id: str) -> Path:
    config = work / f"{run_id}.config.json"
    config.write_text(json.dumps(values, indent=1), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "tuner", "train", str(config), "--run-id", run_id],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{run_id}: training failed\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return work / run_id


def training_prompts(run_dir: Path, dataset: Path) -> list[dict]:
    """The rows the SFT run trained on (neither held out for validation nor for test), as prompts."""
    held = {json.dumps(r, sort_keys=True) for name in records.HELD_OUT
            for r in tdata.load_jsonl(records.held_out_file(run_dir, name)).rows}
    rows = [r for r in tdata.load_jsonl(dataset).rows if json.dumps(r, sort_keys=True) not in held]
    return [from_row(r, i) for i, r in enumerate(rows, start=1)]


def sampled(settings, temperature: float, seed: int):
    from tuner.generate import GenSettings

    return GenSettings(**{**settings.__dict__, "temperature": temperature, "top_p": 0.95, "seed": seed,
                          "batch_size": BATCH})


def samples(generator, items: list[dict], variants: list, settings, count: int, stop_when=None) -> list[list[list]]:
    """`count` sampled replies of each variant to each item, from one generate_all call: every
    item is asked `count` times, so the samples share batches (one call of 96 rows at BATCH
    rows a batch, not two calls of 48); result[v][k][i] is variant v's k-th sample for item i.

    The copies of an item sit side by side: every batch starts from the same seed, so copies at
    the same row of two batches would draw the same random numbers and come out identical."""
    conversations = [i["messages"] for i in items for _ in range(count)]
    answers = generator.generate_all(BUNDLED, conversations, settings, variants, stop_when=stop_when)
    return [[replies[k::count] for k in range(count)] for replies in answers]


def rated_evaluation(store: Store, generator, items: list[dict], sft: Path, settings, seeds: list[int],
                     checks: list, rng: random.Random) -> tuple[int, float]:
    """The SFT model's sampled replies to its training prompts (one variant per sample: on-policy
    pairs), as one evaluation rated by RATERS synthetic raters from the checks; (its id, seconds
    spent generating). The base is left out: it fails the format ~98% of the time, so its
    replies would add generation time and only SFT-vs-base pairs SFT already learnt."""
    variants, replies = [], {}
    start = time.perf_counter()
    adapter = [(sft.name, records.adapter_dir(sft))]
    drawn = samples(generator, items, adapter, sampled(settings, TEMP, seeds[0]), len(seeds))[0]
    for seed, answers in zip(seeds, drawn):
        name = f"sft-sample{seed}"
        variants.append({"name": name, "label": f"SFT sample {seed}", "kind": "lora"})
        replies[name] = answers
    spent = time.perf_counter() - start
    eval_id = store.create_evaluation("formal email: training prompts", BUNDLED, items, variants)
    ids = {v["name"]: v["id"] for v in store.variants(eval_id)}
    for index, prompt in enumerate(store.prompts(eval_id)):
        for name, answers in replies.items():
            reply = answers[index]
            store.add_reply(prompt["id"], ids[name], reply.text, reply.settings, reply.latency_s, reply.new_tokens)
    store.open_for_rating(eval_id)

    def score(text: str) -> int:
        return 5 if all(c.passes(text) for c in checks) else 1

    for k in range(RATERS):
        rater = f"rater{k:02d}"
        while (pair := store.next_pair(eval_id, rater, rng)) is not None:
            store.rate_pair(pair["assignment_id"], rater, score(pair["reply_a"]), score(pair["reply_b"]))
    return eval_id, spent


def held_out_replies(generator, items, variants: dict[str, Path | None], settings, seeds) -> pd.DataFrame:
    """Every variant's replies to the held-out prompts greedy (seed None), and the fine-tuned ones'
    sampled, one reply per entry of `seeds` (the base's sampled replies are left out: ~0% pass, and
    generation is the bench's largest cost); `position` numbers each (prompt, sample) so the paired
    test pairs the same prompt and sample."""
    rows = []
    conversations = [i["messages"] for i in items]
    names = list(variants)
    adapters = [None if path is None else (name, records.adapter_dir(path)) for name, path in variants.items()]
    greedy = generator.generate_all(BUNDLED, conversations, replace(settings, batch_size=BATCH), adapters,
                                    stop_when=STOP_WHEN)
    tuned = [k for k, path in enumerate(variants.values()) if path is not None]
    drawn = samples(generator, items, [adapters[k] for k in tuned], sampled(settings, TEMP, seeds[0]), len(seeds),
                    STOP_WHEN)
    runs = [(None, names[k], replies) for k, replies in enumerate(greedy)]
    runs += [(seed, names[k], per_seed[j]) for k, per_seed in zip(tuned, drawn) for j, seed in enumerate(seeds)]
    for seed, name, replies in runs:
        k = 0 if seed is None else 1 + seeds.index(seed)
        for item, reply in zip(items, replies):
            rows.append({"position": k * 1000 + item["position"], "prompt": item["text"],
                         "reference": item["reference"], "category": item["category"],
                         "decoding": "greedy" if seed is None else "sampled", "variant": name, "label": name,
                         "reply": reply.text, "new_tokens": reply.new_tokens})
    return pd.DataFrame(rows)


def pass_table(replies: pd.DataFrame, checks, max_new_tokens: int) -> tuple[pd.DataFrame, dict]:
    """Pass rates ("all checks") with Wilson intervals per decoding and variant, and McNemar's
    exact test of each preference run against SFT (paired on prompt and sample)."""
    rows, tests = [], {}
    for decoding in ("greedy", "sampled", "all"):
        part = replies if decoding == "all" else replies[replies["decoding"] == decoding]
        per = rc.per_reply(part, checks, max_new_tokens)
        for label, group in per.groupby("label", sort=False):
            passed, n = int(group["all checks"].sum()), len(group)
            low, high = wilson_interval(passed, n)
            rows.append([decoding, label, passed, n, passed / n, low, high])
        pivot = per.pivot_table(index="position", columns="label", values="all checks", aggfunc="first")
        for run in ("SFT+DPO", "SFT+KTO"):
            if run in pivot and "SFT" in pivot:
                better = int((pivot[run] & ~pivot["SFT"]).sum())
                worse = int((~pivot[run] & pivot["SFT"]).sum())
                p = float(stats.scipy_stats().binomtest(better, better + worse).pvalue) if better + worse else 1.0
                tests[(decoding, run)] = (better, worse, p)
    return pd.DataFrame(rows, columns=["decoding", "model", "passed", "n", "rate", "low", "high"]), tests


TEMP = 1.0  # sampled decoding: where an SFT model of this size still slips on the format
# rows a generation batch: larger batches share each decoding step's weight reads (2 cores, SmolLM2-135M,
# sampled, 96 rows: 24 → 48 rows a batch 1.09×, → 96 1.2×; docs/performance.md), at the memory of their KV cache
# (~1.3 GB for 96 rows of ~300 tokens). With finished rows leaving the batch, a long reply no longer holds
# the others: the 208 held-out replies 192.5 s at 48 rows, 171.8 s at 96 (one process, 2026-12-07, AMD)
BATCH = 96
STOP_WHEN = None  # main() sets it: a reply ends once it fails a check whatever follows (--full-replies: never)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 steps and 6 prompts")
    parser.add_argument("--work", help="folder for the run folders (default: a temporary one)")
    parser.add_argument("--sft", help="reuse this finished SFT run folder instead of training one")
    parser.add_argument("--seeds", type=int, default=2, help="sampled SFT replies per training prompt (default 2)")
    parser.add_argument("--test-seeds", type=int, default=3, help="sampled replies per held-out prompt (default 3)")
    parser.add_argument("--dpo", action="append", default=[], metavar="KEY=VALUE", help="a DPO setting")
    parser.add_argument("--kto", action="append", default=[], metavar="KEY=VALUE", help="a KTO setting")
    parser.add_argument("--full-replies", action="store_true",
                        help="write every reply to the end, not only as long as the checks need")
    args = parser.parse_args()

    from tuner.generate import GenSettings, Generator
    from tuner.paths import Layout, data_root

    started = time.perf_counter()
    work = Path(args.work or tempfile.mkdtemp(prefix="tuner-preference-"))
    work.mkdir(parents=True, exist_ok=True)
    recipe = recipes.load(tdata.STARTER_DATASETS / f"{SET}{recipes.SUFFIX}", rc.parse_checks)
    checks = rc.parse_checks(recipe.checks)
    settings = GenSettings(**recipe.generate)
    global STOP_WHEN
    # replies only as long as the checks need: one past the word limit fails it whatever it
    # writes next (the set's checks hold for every category)
    STOP_WHEN = None if args.full_replies else (
        lambda text: any(c.fails_whatever_follows(text) for c in checks if not c.categories))
    dataset = tdata.STARTER_DATASETS / f"{SET}.jsonl"
    line = {"quick": args.quick, "seeds": args.seeds, "temperature": TEMP, "raters": RATERS,
            "full_replies": args.full_replies}
    quick = dict(max_steps=3, eval_steps=100, save_steps=100) if args.quick else {}

    t0 = time.perf_counter()
    sft = Path(args.sft) if args.sft else cli_train(
        dict(recipe.train, **quick, dataset=str(dataset), base_model=BUNDLED, output_dir=str(work)), work,
        f"sft-{os.urandom(2).hex()}")
    line["sft_train_s"] = round(time.perf_counter() - t0, 1) if not args.sft else None

    generator = Generator(Layout(data_root()).models)
    store = Store(work / "ratings.db")
    items = training_prompts(sft, dataset)[: 6 if args.quick else None]
    seeds = list(range(1, args.seeds + 1))
    eval_id, line["score_generate_s"] = rated_evaluation(store, generator, items, sft, settings, seeds, checks,
                                                         random.Random(0))
    scores = store.ratings_frame(eval_id)
    line["ratings"] = len(scores)
    print(f"scores: {len(scores)} from {scores['rater'].nunique()} raters on {len(items)} training prompts "
          f"× {len(seeds)} sampled SFT replies, generated in {line['score_generate_s']:.0f} s", flush=True)

    runs = {}
    for method, extra in (("dpo", args.dpo), ("kto", args.kto)):
        given = {key: json.loads(value) for key, _, value in (item.partition("=") for item in extra)}
        data = preferences.build(store, eval_id, method)
        print(f"{method}: {data.describe()}", flush=True)
        if skew := data.length_skew({**PREFERENCE_SETTINGS[method], **given}.get("rpo_alpha", 0.0)):
            print(f"{method}: ⚠️ {skew}", flush=True)
            line[f"{method}_length_skew"] = skew
        if data.problem():  # e.g. a --quick SFT that fails every check: every score ties
            print(f"{method}: not trained: {data.problem()}")
            line[f"{method}_problem"] = data.problem()
            continue
        file = work / f"{method}.jsonl"
        file.write_text(preferences.to_jsonl(data.rows), encoding="utf-8")
        values = {**PREFERENCE_SETTINGS[method], **quick, "method": method, "dataset": str(file),
                  "base_model": BUNDLED, "init_adapter": str(sft), "output_dir": str(work), **given}
        t0 = time.perf_counter()
        runs[method] = cli_train(values, work, f"{method}-{os.urandom(2).hex()}")
        line[f"{method}_train_s"] = round(time.perf_counter() - t0, 1)
        line[f"{method}_examples"] = len(data.rows)
        summary = records.read_record(runs[method])["summary"]
        print(f"{method}: {summary['global_step']} steps in {line[f'{method}_train_s']:.0f} s, final loss "
              f"{summary['final_loss']:.4f}, {summary['tokens_per_second']} tokens/s", flush=True)

    test = read_prompts(records.held_out_file(sft, "test"))[: 4 if args.quick else None]
    for i, item in enumerate(test, start=1):
        item["position"] = i
    t0 = time.perf_counter()
    variants = {"base": None, "SFT": sft, **{f"SFT+{m.upper()}": run for m, run in runs.items()}}
    replies = held_out_replies(generator, test, variants, settings, list(range(101, 101 + args.test_seeds)))
    line["test_generate_s"] = round(time.perf_counter() - t0, 1)
    replies.to_json(work / "held-out.replies.jsonl", orient="records", lines=True, force_ascii=False)
    table, tests = pass_table(replies, checks, settings.max_new_tokens)
    pd.set_option("display.width", 200)
    print(f"\nheld-out: {len(test)} test prompts of the SFT run, greedy and {args.test_seeds} sampled "
          f"(temperature {TEMP}) replies each")
    print(table.assign(rate=table["rate"].round(3), low=table["low"].round(3), high=table["high"].round(3))
          .to_string(index=False))
    for (decoding, run), (better, worse, p) in tests.items():
        print(f"{run} vs SFT ({decoding}): passes where SFT fails {better}, fails where SFT passes {worse}, "
              f"McNemar exact p = {p:.3g}")
    for _, row in table.iterrows():
        line[f"{row['decoding']}_{row['model']}_pass"] = round(float(row["rate"]), 4)
    for (decoding, run), (_, _, p) in tests.items():
        line[f"{decoding}_{run}_vs_SFT_p"] = round(p, 5)
    line["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(line))
    return 0


# the preference runs' settings: LoRA continued from the SFT adapter, one epoch over the pairs.
# DPO at lr 5e-4 from the first step with an SFT term on the chosen replies (rpo_alpha 10, RPO): this
# set's pairs differ mostly in length (in 16–23 of 17–23 pairs the rejected reply is the longer,
# 1.37–1.56× the words; ratings.preferences' length_skew says so), and standard DPO at a rate that moves
# the sampled replies also cut greedy ones under the 60-word minimum. Chosen on prompts the pairs never
# held (validation sampled 8×, passing of 64; greedy on those and the unpaired training prompts, of
# 33–35), docs/does-it-work.md, 2026-12-07, AMD:
#   7th round: SFT 40–43 / 33; standard DPO 2e-4 after a warmup step 45, 44; 5e-4 54–58 but greedy 28
#   8th round, three pair sets, lr 5e-4: standard 56, 49 / 27, 28; ld_alpha 0.5 55 / 27; rpo_alpha 1
#   58 / 28, 3 57 / 30, 5 55 / 31, 10 61, 55, 57 / 32, 33, 33 (SFT 33–42 / 33); rpo 10 at lr 8e-4 60 / 34
#   whole runs on the test prompts: rpo 10 at 5e-4 p 0.115, 0.00015, 0.388 (9th round: 0.332, 0.0213),
#   greedy 15 → 16, 16 → 14, 16 → 15 (16 → 15, 15 → 15); at 8e-4 p 0.115 and (96
#   sampled) 0.243, greedy 16 → 15 and 16 → 13 (every failure under 60 words): 8e-4 is past what holds
PREFERENCE_SETTINGS = {
    "dpo": {"learning_rate": 5e-4, "num_train_epochs": 1, "per_device_train_batch_size": 4, "beta": 0.1,
            "rpo_alpha": 10.0, "max_seq_length": 512, "validation_fraction": 0.0, "lr_scheduler_type": "cosine",
            "warmup_steps": 0, "save_steps": 1000},
    "kto": {"learning_rate": 2e-4, "num_train_epochs": 1, "per_device_train_batch_size": 8, "beta": 0.1,
            "max_seq_length": 512, "validation_fraction": 0.0, "lr_scheduler_type": "cosine", "warmup_steps": 1,
            "save_steps": 1000},
}


if __name__ == "__main__":
    sys.exit(main())
