"""Generate every reply of an evaluation ahead of rating, then open it to raters.

All variants share one loaded base model (tuner.generate.Generator switches
adapters), prompts go through in batches with fixed, recorded settings, and
nothing is stored until every reply exists: a failure leaves no half-made
evaluation behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ratings.evalsets import Rule, apply_rules, rules_to_json
from ratings.store import Store
from tuner import records
from tuner.generate import BASE, GenSettings, Generator


@dataclass(frozen=True)
class Variant:
    name: str  # "base" or a run id
    label: str  # what tables and the reveal show
    kind: str  # base, lora, prompt_tuning, …
    adapter: Path | None = None


def variants_for(runs: list[dict]) -> tuple[str, list[Variant]]:
    """The base model and a variant per run; every run must share one base model."""
    if not runs:
        raise ValueError("Choose at least one finished run to compare with its base model.")
    bases = {r["config"]["base_model"] for r in runs}
    if len(bases) > 1:
        raise ValueError(f"The chosen runs were trained on different base models ({', '.join(sorted(bases))}); "
                         "one evaluation compares variants of one base model.")
    base_model = bases.pop()
    variants = [Variant(BASE, f"base ({base_model})", "base")]
    for run in runs:
        method = run["config"].get("method", "lora")
        name = ((run.get("config") or {}).get("run_name") or "").strip()
        variants.append(Variant(run["run_id"], f"{method}: {name} ({run['run_id']})" if name else
                                f"{method}: {run['run_id']}", method, records.adapter_dir(Path(run["path"]))))
    return base_model, variants


def generate_evaluation(store: Store, generator: Generator, name: str, base_model: str, items: list[dict],
                        variants: list[Variant], settings: GenSettings, rules: list[Rule] | None = None,
                        tag: bool = False, invite_code: str | None = None, progress=None,
                        checks: list[str] | None = None, reveal: str = "end") -> int:
    """Generate, store, open for rating; returns the evaluation id.

    progress(done, total) counts prompt×variant replies.
    """
    rules = rules or []
    items = [apply_rules(item, rules, tag) for item in items]
    conversations = [item["messages"] for item in items]
    total = len(items) * len(variants)
    # the base and the LoRA variants share batches (Generator.generate_all)
    adapters = [(v.name, v.adapter) if v.adapter else None for v in variants]
    answers = generator.generate_all(base_model, conversations, settings, adapters,
                                     progress=(lambda n, _t: progress(n, total)) if progress else None)
    replies = {variant.name: answer for variant, answer in zip(variants, answers)}
    eval_id = store.create_evaluation(
        name, base_model, items, [{"name": v.name, "label": v.label, "kind": v.kind} for v in variants],
        settings=settings.__dict__ | {"variants": [v.name for v in variants]},
        rules=rules_to_json(rules), invite_code=invite_code, checks=checks, reveal=reveal)
    prompts = store.prompts(eval_id)
    ids = {v["name"]: v["id"] for v in store.variants(eval_id)}
    for variant in variants:
        for prompt, reply in zip(prompts, replies[variant.name]):
            store.add_reply(prompt["id"], ids[variant.name], reply.text, reply.settings, reply.latency_s,
                            reply.new_tokens, flags=prompt["flags"])
    store.open_for_rating(eval_id)
    return eval_id
