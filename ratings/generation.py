"""Generate every reply of an evaluation ahead of rating, then open it to raters.

All variants share one loaded base model (tuner.generate.Generator switches
adapters), prompts go through in batches with fixed, recorded settings, and
nothing is stored until every reply exists: a failure leaves no half-made
evaluation behind.

A reply that stopped at the token cap is cut text: with `open_if_cut=False` such an
evaluation is stored but not opened, and its owner chooses between `regenerate_cut`
(a larger cap for the prompts with a cut reply) and opening it anyway.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ratings.checks import was_cut
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
    variants = [Variant(BASE, f"base ({model_short_name(base_model)})", "base")]
    for run in runs:
        method = run["config"].get("method", "lora")
        name = ((run.get("config") or {}).get("run_name") or "").strip()
        said = method.replace("_", " ")  # "prompt tuning", as the Train tab says it
        variants.append(Variant(run["run_id"], f"{said}: {name} ({run['run_id']})" if name else
                                f"{said}: {run['run_id']}", method, records.adapter_dir(Path(run["path"]))))
    return base_model, variants


def model_short_name(base_model: str) -> str:
    """A base model as a label names it: a local folder by its own name (its whole path made
    every table's first column as wide as the path), a Hub id or the bundled name as it is."""
    path = Path(str(base_model))
    return path.name if path.is_absolute() and path.name else str(base_model)


def _category_column(items: list[dict]) -> dict:
    """{"category_column": name} where the prompts' categories came from another column than
    "category" (tuner.prompts.from_row takes a row's difficulty): the tables are headed by it."""
    names = sorted({i.get("category_column") or "category" for i in items if i.get("category")})
    return {"category_column": " or ".join(names)} if names and names != ["category"] else {}


def generate_evaluation(store: Store, generator: Generator, name: str, base_model: str, items: list[dict],
                        variants: list[Variant], settings: GenSettings, rules: list[Rule] | None = None,
                        tag: bool = False, invite_code: str | None = None, progress=None,
                        checks: list[str] | None = None, reveal: str = "end", open_if_cut: bool = True) -> int:
    """Generate, store, open for rating; returns the evaluation id.

    progress(done, total) counts prompt×variant replies. `open_if_cut` False: an
    evaluation with a reply cut at the cap is stored but left closed (see `cut_replies`).
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
        settings=settings.__dict__ | {"variants": [v.name for v in variants]} | _category_column(items),
        rules=rules_to_json(rules), invite_code=invite_code, checks=checks, reveal=reveal)
    prompts = store.prompts(eval_id)
    ids = {v["name"]: v["id"] for v in store.variants(eval_id)}
    for variant in variants:
        for prompt, reply in zip(prompts, replies[variant.name]):
            store.add_reply(prompt["id"], ids[variant.name], reply.text, reply.settings, reply.latency_s,
                            reply.new_tokens, flags=prompt["flags"])
    if open_if_cut:
        store.open_for_rating(eval_id)
    else:
        open_unless_cut(store, eval_id)
    return eval_id


def open_unless_cut(store: Store, eval_id: int) -> bool:
    """Open the evaluation for rating when no reply stopped at the cap; whether it is open now."""
    if not cut_replies(store, eval_id).cut:
        store.open_for_rating(eval_id)
    return store.is_open(eval_id)


MAX_CAP = 2048  # tuner.generate.GenSettings' upper bound


@dataclass(frozen=True)
class Cut:
    cut: int  # replies that stopped at the cap
    total: int
    cap: int | None  # the evaluation's max_new_tokens
    positions: tuple[int, ...] = ()  # the prompts (1-based) with at least one cut reply

    @property
    def larger_cap(self) -> int | None:
        """The cap a regeneration offers: twice this one, at most MAX_CAP; None at the limit."""
        if not self.cap or self.cap >= MAX_CAP:
            return None
        return min(MAX_CAP, 2 * int(self.cap))

    def sentence(self) -> str:
        return f"{self.cut} of {self.total} replies were cut at the {self.cap}-token cap"


def cut_replies(store: Store, eval_id: int) -> Cut:
    """How many of the evaluation's replies stopped at its cap (ratings.checks.was_cut), and on which prompts."""
    evaluation = store.evaluation(eval_id)
    if evaluation is None:
        raise ValueError(f"evaluation #{eval_id} does not exist")
    cap = (evaluation.get("settings") or {}).get("max_new_tokens")
    replies = store.replies(eval_id)
    if replies.empty:
        return Cut(0, 0, cap)
    flags = [was_cut(n, cap) for n in replies["new_tokens"]]
    positions = sorted({int(p) for p, flag in zip(replies["position"], flags) if flag})
    return Cut(sum(flags), len(flags), cap, tuple(positions))


def regenerate_cut(store: Store, generator: Generator, eval_id: int, variants: list[Variant], max_new_tokens: int,
                   progress=None) -> int:
    """Generate again, with the cap `max_new_tokens`, every reply on the prompts where any
    reply was cut (both sides of a pair then share their settings); the new replies take
    the old ones' places once all exist, and the evaluation records the new cap and what
    was regenerated. Only before rating opens: raters never see a reply change under them.
    Returns how many replies were generated again."""
    if store.is_open(eval_id):
        raise ValueError(f"evaluation #{eval_id} is already open for rating; its replies stay as rated")
    evaluation = store.evaluation(eval_id)
    cut = cut_replies(store, eval_id)
    if not cut.cut:
        return 0
    old = evaluation["settings"]
    if int(max_new_tokens) <= int(cut.cap or 0):
        raise ValueError(f"a regeneration needs a cap above the {cut.cap} tokens the replies were cut at")
    stored = {v["name"]: v["id"] for v in store.variants(eval_id)}
    missing = [name for name in stored if name not in {v.name for v in variants}]
    if missing:
        raise ValueError(f"evaluation #{eval_id}'s variant(s) {', '.join(missing)} are not among the runs "
                         "given (a deleted run?)")
    order = list(stored)  # the evaluation's own order of variants
    variants = sorted((v for v in variants if v.name in stored), key=lambda v: order.index(v.name))
    keys = {f.name for f in dataclasses.fields(GenSettings)}
    settings = GenSettings(**{k: v for k, v in old.items() if k in keys} | {"max_new_tokens": int(max_new_tokens)})
    prompts = [p for p in store.prompts(eval_id) if p["position"] in cut.positions]
    total = len(prompts) * len(variants)
    adapters = [(v.name, v.adapter) if v.adapter else None for v in variants]
    answers = generator.generate_all(evaluation["base_model"], [p["messages"] for p in prompts], settings, adapters,
                                     progress=(lambda n, _t: progress(n, total)) if progress else None)
    history = list(old.get("regenerated") or []) + [
        {"from": cut.cap, "to": int(max_new_tokens), "prompts": list(cut.positions)}]
    # one transaction, refused if rating was opened meanwhile (another tab): what raters may be reading stays
    store.replace_replies(eval_id, [
        {"prompt_id": prompt["id"], "variant_id": stored[variant.name], "text": reply.text, "settings": reply.settings,
         "latency_s": reply.latency_s, "new_tokens": reply.new_tokens, "flags": prompt["flags"]}
        for variant, replies in zip(variants, answers) for prompt, reply in zip(prompts, replies)],
        old | {"max_new_tokens": int(max_new_tokens), "regenerated": history})
    return total
