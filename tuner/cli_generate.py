"""`python -m tuner generate --run RUN_DIR --prompts FILE`: replies without the UI.

Reads prompts from JSONL (a `prompt` field, or `messages`) or CSV (a `prompt`
column) as tuner.prompts describes, generates the base model's
and the run's fine-tuned replies from one loaded copy, and writes one JSON line
per prompt and variant: prompt, reference, category, variant, model, reply,
latency_s, new_tokens, settings. A run's own held-out rows work as they are:
`--prompts RUN/test.jsonl` (their replies, or short `answer`s, become references).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tuner import records
from tuner.prompts import read_prompts


def _generate(args) -> int:
    from tuner.generate import GenSettings, Generator
    from tuner.paths import Layout, data_root

    run_dir = Path(args.run)
    try:
        record = records.read_record(run_dir)
        prompts = read_prompts(Path(args.prompts))
        settings = GenSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                               top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                               seed=args.seed, batch_size=args.batch_size)
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not records.has_adapter(run_dir):
        print(f"error: {run_dir} has no adapter/ (is the run finished?)", file=sys.stderr)
        return 2
    base_model = record["config"]["base_model"]
    generator = Generator(Layout(data_root()).models)
    conversations = [p["messages"] for p in prompts]
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    try:
        tuned = (record["run_id"], records.adapter_dir(run_dir))
        variants = [("base", base_model, None), ("tuned", record["run_id"], tuned)]
        answers = generator.generate_all(base_model, conversations, settings, [a for _v, _m, a in variants])
        for (variant, model_label, _adapter), replies in zip(variants, answers):
            for prompt, reply in zip(prompts, replies):
                out.write(json.dumps({"prompt": prompt["text"], "reference": prompt.get("reference"),
                                      "category": prompt.get("category"), "variant": variant, "model": model_label,
                                      "reply": reply.text, "latency_s": round(reply.latency_s, 3),
                                      "new_tokens": reply.new_tokens, "settings": reply.settings},
                                     ensure_ascii=False) + "\n")
            out.flush()
    finally:
        if args.out:
            out.close()
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="base and fine-tuned replies to a prompts file, as JSONL")
    p.add_argument("--run", required=True, help="a run folder (with run.json and adapter/)")
    p.add_argument("--prompts", required=True, help="JSONL or CSV of prompts")
    p.add_argument("--out", help="output JSONL (default: standard output)")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=4)
    p.set_defaults(func=_generate)
