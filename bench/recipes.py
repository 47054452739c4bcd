"""Does it work? Each starter set's recipe, trained and checked against the base.

    python bench/recipes.py                      # the four starter sets, their recipes
    python bench/recipes.py --quick              # a smoke run: a few steps, a few prompts
    python bench/recipes.py --set company_faq --override learning_rate=5e-4 --override r=32

For each set: its recipe (datasets/NAME.recipe.json) is trained on the bundled
model with `python -m tuner train CONFIG.json` (the CLI, as a user would), then
the base and the fine-tuned model answer the run's own held-out rows
(RUN/test.jsonl, plus the set's extra held-out prompts where it ships them)
with the recipe's generation settings, and the automatic checks
(ratings.checks) compare them: pass rates with 95% intervals, the paired test,
training time and tokens/s. Ends with one JSON line of the headline figures.
`--override` (repeatable, key=JSON value) changes a training setting: the sweep.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from ratings import checks as rc  # noqa: E402
from tuner import data as tdata  # noqa: E402
from tuner import recipes, records  # noqa: E402
from tuner.models import BUNDLED  # noqa: E402
from tuner.prompts import read_prompts  # noqa: E402

SETS = ("company_faq", "formal_email", "polite_assistant", "customer_support")
EXTRA_PROMPTS = ".eval.jsonl"  # datasets/NAME.eval.jsonl: more held-out prompts (never trained on)


def dataset_file(name: str, work: Path) -> Path:
    """The set as chat JSONL: the CSV set goes through the app's importer, as in the Dataset tab."""
    jsonl = tdata.STARTER_DATASETS / f"{name}.jsonl"
    if jsonl.is_file():
        return jsonl
    from tuner import importers

    result = importers.import_file(tdata.STARTER_DATASETS / f"{name}.csv",
                                   mapping=importers.Mapping("customer_message", "agent_reply", None, ("brand",)))
    out = work / f"{name}.jsonl"
    out.write_text(tdata.to_jsonl(result.rows), encoding="utf-8")
    return out


def train(name: str, recipe: recipes.Recipe, dataset: Path, work: Path, overrides: dict, quick: bool) -> Path:
    values = dict(recipe.train, **overrides, dataset=str(dataset), base_model=BUNDLED, output_dir=str(work))
    if quick:
        values.update(max_steps=3, eval_steps=100, save_steps=100)
    config = work / f"{name}.config.json"
    config.write_text(json.dumps(values, indent=1), encoding="utf-8")
    run_id = f"{name}-{os.urandom(2).hex()}"
    proc = subprocess.run([sys.executable, "-m", "tuner", "train", str(config), "--run-id", run_id],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{name}: training failed\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return work / run_id


def prompts_of(name: str, run_dir: Path, quick: bool) -> list[dict]:
    items = read_prompts(records.held_out_file(run_dir, "test"))
    extra = tdata.STARTER_DATASETS / f"{name}{EXTRA_PROMPTS}"
    if extra.is_file():
        items += read_prompts(extra)
    for i, item in enumerate(items, start=1):
        item["position"] = i
    return items[:4] if quick else items


def generate(generator, run_dir: Path, items: list[dict], settings) -> pd.DataFrame:
    adapters = [None, (run_dir.name, records.adapter_dir(run_dir))]
    start = time.perf_counter()
    answers = generator.generate_all(BUNDLED, [i["messages"] for i in items], settings, adapters)
    elapsed = time.perf_counter() - start
    rows = []
    for variant, label, replies in (("base", "base", answers[0]), ("tuned", "fine-tuned", answers[1])):
        for item, reply in zip(items, replies):
            rows.append({"position": item["position"], "prompt": item["text"], "reference": item["reference"],
                         "category": item["category"], "variant": variant, "label": label,
                         "reply": reply.text,
                         "new_tokens": reply.new_tokens})
    frame = pd.DataFrame(rows)
    frame.attrs["generate_s"] = elapsed
    return frame


def figures(name: str, rep: rc.CheckReport) -> dict:
    """The headline figures of one set, for the JSON line and the README table."""
    def rate(measure, label):
        row = rep.table[(rep.table["measure"] == measure) & (rep.table["model"] == label)]
        return round(float(row.iloc[0]["rate"]), 4) if not row.empty else None

    def p(measure):
        row = rep.paired[rep.paired["measure"] == measure]
        return float(row.iloc[0]["p"]) if not row.empty else None

    key = {"company_faq": ("faq_accuracy", "answer contained"), "formal_email": ("email_checks", "all checks"),
           "polite_assistant": ("polite_checks", "all checks"),
           "customer_support": ("support_rouge_l", "ROUGE-L")}.get(name, (name, rep.measures[0]))
    out = {f"{key[0]}_base": rate(key[1], "base"), f"{key[0]}_tuned": rate(key[1], "fine-tuned"),
           f"{key[0]}_p": p(key[1]),
           f"{name}_cut_tuned": rate("cut at the token cap", "fine-tuned")}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", action="append", choices=SETS, help="only this set (repeatable)")
    parser.add_argument("--quick", action="store_true", help="3 training steps and 4 prompts a set: a smoke run")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a training setting over the recipe's (JSON value), e.g. learning_rate=5e-4")
    parser.add_argument("--work", help="folder for the run folders (default: a temporary one)")
    parser.add_argument("--show-replies", type=int, default=0, help="print this many replies of each variant")
    args = parser.parse_args()
    overrides = {}
    for item in args.override:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value

    from tuner.generate import GenSettings, Generator
    from tuner.paths import Layout, data_root

    started = time.perf_counter()
    work = Path(args.work or tempfile.mkdtemp(prefix="tuner-recipes-"))
    work.mkdir(parents=True, exist_ok=True)
    generator = Generator(Layout(data_root()).models)
    line = {"quick": args.quick, "overrides": overrides}
    pd.set_option("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 60)
    for name in args.set or SETS:
        recipe = recipes.load(tdata.STARTER_DATASETS / f"{name}{recipes.SUFFIX}", rc.parse_checks)
        dataset = dataset_file(name, work)
        t0 = time.perf_counter()
        run_dir = train(name, recipe, dataset, work, overrides, args.quick)
        train_s = time.perf_counter() - t0
        summary = records.read_record(run_dir)["summary"]
        items = prompts_of(name, run_dir, args.quick)
        settings = GenSettings(**recipe.generate)
        replies = generate(generator, run_dir, items, settings)
        replies.to_json(work / f"{name}.replies.jsonl", orient="records", lines=True, force_ascii=False)
        checks = rc.parse_checks(recipe.checks)
        rep = rc.report(replies, checks, settings.max_new_tokens)
        held_out = len(tdata.load_jsonl(records.held_out_file(run_dir, "test")).rows)
        print(f"\n=== {name}: {recipe.describe()}"
              + (f" (overrides: {overrides})" if overrides else ""))
        print(f"trained {summary['train_examples']} rows, {summary['global_step']} steps in {train_s:.0f} s "
              f"(train_runtime {summary['train_runtime']:.0f} s, {summary['tokens_per_second']} tokens/s, "
              f"final loss {summary['final_loss']}, best validation loss {summary['best_eval_loss']}); "
              f"{len(items)} prompts ({held_out} from test.jsonl), generated in {replies.attrs['generate_s']:.0f} s")
        if name == "company_faq":
            trained = " ".join(tdata.conversation_parts(r)["assistant"].lower()
                               for r in tdata.load_jsonl(dataset).rows
                               if r not in tdata.load_jsonl(run_dir / "test.jsonl").rows
                               and r not in tdata.load_jsonl(run_dir / "validation.jsonl").rows)
            absent = sum(1 for i in items if i["reference"] and i["reference"].lower() not in trained)
            print(f"{absent} of {len(items)} test answers appear in no training reply")
            line["faq_answers_absent_from_training"] = absent
        print(rc.display(rep.table).to_string(index=False))
        print(rc.display_paired(rep.paired).to_string(index=False))
        print(rc.verdict(rep).replace("**", ""))
        if "category" in replies and replies["category"].notna().any():
            by = rep.replies.groupby(["category", "label"])[rep.measures[0]].mean().unstack()
            print(f"{rep.measures[0]} by category:\n{by.round(3).to_string()}")
        for label in ("base", "fine-tuned"):
            for text in replies[replies["label"] == label]["reply"].head(args.show_replies):
                print(f"--- {label}: {text[:400]!r}")
        line.update(figures(name, rep))
        line[f"{name}_train_s"] = round(train_s, 1)
        line[f"{name}_tokens_per_second"] = summary["tokens_per_second"]
        line[f"{name}_prompts"] = len(items)
    line["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
