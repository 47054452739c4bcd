"""Evaluation sets and keyword rules: plain functions, no database, no UI.

An evaluation set is a list of prompts, each with an id, a short task name,
the prompt, and optionally a reference answer and a category. It comes from a
dataset's test split, from typed lines, or from an uploaded CSV/JSONL file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from tuner import data as tdata
from tuner import recipes, records
from tuner.generate import GenSettings
from tuner.prompts import from_row, prompt_item, read_prompts

FIELDS = ("id", "task", "prompt", "reference", "category")
MAX_PROMPTS = 500


def from_dataset(path: Path, validation_fraction: float, test_fraction: float, seed: int,
                 stratify: str | None = None) -> list[dict]:
    """The test split of a dataset, with the last assistant reply (or the row's
    short `answer`) as reference."""
    rows = tdata.load_jsonl(Path(path)).rows
    test = tdata.splits(rows, validation_fraction, test_fraction, seed, stratify)["test"]
    return [from_row(r, i) for i, r in enumerate(test, start=1)]


def from_run(run: dict) -> list[dict]:
    """A run's held-out prompts: its own test.jsonl (the exact rows it never trained
    on), or, for a run from before test.jsonl was kept, its dataset split again."""
    held_out = records.held_out_file(run["path"], "test")
    if held_out.is_file():
        rows = tdata.load_jsonl(held_out).rows if held_out.stat().st_size else []
        if not rows:
            raise ValueError(f"run {run['run_id']} held out no test rows (its test share is 0): type prompts or "
                             "upload a file of them instead")
        return _checked([from_row(r, i) for i, r in enumerate(rows, start=1)], f"{run['run_id']}/test.jsonl")
    c = run["config"]
    return from_dataset(Path(c["dataset"]), c.get("validation_fraction", 0.0), c["test_fraction"], c["seed"],
                        c.get("stratify_by"))


def leave_out_trained(items: list[dict], runs: list[dict]) -> tuple[list[dict], str]:
    """The prompts no chosen preference run learned from (its preference.jsonl), and a
    sentence on those left out ("" when none were): an evaluation compares on prompts
    that neither run trained on."""
    from tuner.preference import trained_prompts

    learned = {run["run_id"]: trained_prompts(Path(run["path"])) for run in runs}
    kept = [i for i in items if not any(i["text"].strip() in keys for keys in learned.values())]
    if len(kept) == len(items):
        return items, ""
    if not kept:
        raise ValueError(f"every one of the {len(items)} prompts was learned from by a chosen preference run "
                         f"({', '.join(r for r, k in learned.items() if k)}): compare on other prompts")
    return kept, (f"Left out {len(items) - len(kept)} of {len(items)} prompts that a chosen preference run learned "
                  "from: the evaluation compares on prompts no run trained on. ")


def from_lines(text: str) -> list[dict]:
    """One prompt per line; `task | prompt` names the task."""
    items = []
    for line in (text or "").splitlines():
        if not line.strip():
            continue
        task, sep, prompt = line.partition("|")
        if not sep:
            task, prompt = "", line
        if not prompt.strip():
            raise ValueError(f"line {len(items) + 1}: '{line.strip()}' has a task but no prompt after '|'")
        items.append(prompt_item(prompt, len(items) + 1, task=task))
    return _checked(items, "the typed prompts")


def from_file(path: Path) -> list[dict]:
    """An uploaded CSV or JSONL file of prompts (see tuner.prompts)."""
    return _checked(read_prompts(Path(path)), Path(path).name)


def _checked(items: list[dict], source: str) -> list[dict]:
    if not items:
        raise ValueError(f"{source}: no prompts")
    if len(items) > MAX_PROMPTS:
        raise ValueError(f"{source}: {len(items)} prompts; an evaluation takes at most {MAX_PROMPTS}")
    seen = set()
    for item in items:
        if item["external_id"] in seen:
            raise ValueError(f"{source}: the id '{item['external_id']}' appears twice")
        seen.add(item["external_id"])
    return items


# --- the form's defaults: the cap and the checks --------------------------------------------------
def default_max_new_tokens(items: list[dict], runs: list[dict]) -> tuple[int | None, str]:
    """The cap when the owner sets none, and where it came from in words: room for the
    evaluation's reference answers or, where the prompts carry none (typed prompts, a file
    without references), for the first run's training replies (tuner.recipes.max_new_tokens_for).
    None when there is neither: the generation engine's default then."""
    references = [i["reference"] for i in items if i.get("reference")]
    if references:
        return recipes.max_new_tokens_for(references), f"room for the {len(references)} reference answers"
    replies = training_replies(runs[0]) if runs else []
    if replies:
        return recipes.max_new_tokens_for(replies), f"room for run {runs[0]['run_id']}'s training replies"
    return None, "the default: no references and no training replies to measure"


def training_replies(run: dict) -> list[str]:
    """The replies a run learned from: its dataset's, or, where that file is gone or
    unreadable, its held-out rows' (the same data, kept in the run's folder)."""
    try:
        rows = tdata.load_jsonl(Path(run["config"]["dataset"])).rows
    except (OSError, KeyError, TypeError, ValueError):
        rows = []
        for name in ("validation", "test"):
            try:
                held_out = records.held_out_file(run["path"], name)
                if held_out.is_file() and held_out.stat().st_size:
                    rows += tdata.load_jsonl(held_out).rows
            except (OSError, KeyError, TypeError, ValueError):
                continue
    return [r["messages"][-1].get("content") for r in rows
            if isinstance(r, dict) and r.get("messages") and isinstance(r["messages"][-1], dict)]


# the recipe's generation settings Compare's form takes besides the cap, with their words
SETTINGS = {"temperature": "temperature", "repetition_penalty": "repetition penalty", "batch_size": "batch size"}
FORM_FIELDS = ("checks", "cap", *SETTINGS)


@dataclass(frozen=True)
class FormFill:
    """What choosing a run puts in Compare's form: the checks (lines), the cap (0: from the
    references' lengths, else the training replies') and the other generation settings the
    recipe was measured with (temperature, repetition penalty, batch size); None (or a
    setting left out of `settings`) leaves the owner's own."""
    checks: str | None
    max_new_tokens: int | None
    note: str
    recipe: str | None = None  # the recipe's name, if one was found
    settings: dict = field(default_factory=dict)


def recipe_fill(run: dict | None, kept=()) -> FormFill:
    """The checks and the cap from the run's dataset recipe (datasets/NAME.recipe.json),
    except the fields in `kept` (edited by hand since the last fill). A dataset without
    a recipe clears the checks and leaves the cap to the references: nothing of an
    earlier evaluation's recipe stays behind unseen."""
    from ratings.checks import parse_checks

    if not run:
        return FormFill(None, None, "")
    kept = set(kept) & set(FORM_FIELDS)
    dataset = (run.get("config") or {}).get("dataset")
    problem = ""
    try:
        recipe = recipes.for_dataset(dataset, parse_checks=parse_checks)
    except ValueError as exc:
        recipe, problem = None, f"⚠️ {exc}; "
    checks = None if "checks" in kept else "\n".join(recipe.checks) if recipe else ""
    cap = None if "cap" in kept else int((recipe.generate if recipe else {}).get("max_new_tokens") or 0)
    # the settings the recipe was measured with; without a recipe, the engine's defaults (nothing of
    # an earlier run's recipe stays behind unseen)
    defaults = GenSettings()
    settings = {key: (recipe.generate[key] if recipe and key in recipe.generate else getattr(defaults, key))
                for key in SETTINGS if key not in kept}
    from_recipe = [key for key in settings if recipe and key in recipe.generate]
    filled = [f for f in FORM_FIELDS if f not in kept and (f in ("checks", "cap") or f in from_recipe)]
    if recipe:
        words = {"checks": "checks", "cap": "cap", **SETTINGS}
        named = [words[f] for f in filled]
        what = _and(named).capitalize()
        values = ([f"{len(recipe.checks)} check{'s' if len(recipe.checks) != 1 else ''}" if recipe.checks
                   else "no checks"] if "checks" in filled else []) + (
            [f"up to {cap} new tokens" if cap else "the cap from the references' lengths"] if "cap" in filled else [])
        values += [_setting_words(key, settings[key]) for key in from_recipe]
        defaulted = [SETTINGS[key] for key in settings if key not in from_recipe]
        note = (f"{what} from the {recipe.name} recipe ({', '.join(values)})" if filled
                else f"The {recipe.name} recipe was not applied")
        if defaulted:  # the recipe says nothing of them: the engine's defaults, not the last run's values
            note += f"; the default {_and(defaulted)}"
    else:
        name = Path(dataset).name if dataset else "this run's dataset"
        values = (["no checks"] if "checks" in filled else []) + (
            ["the cap from the references' lengths, else the training replies'"] if "cap" in filled else [])
        values += ["the default " + _and([SETTINGS[k] for k in settings])] if settings else []
        note = f"{problem}No recipe for {name}" + (f": {', '.join(values)}" if values else "")
    if kept:
        words = {"checks": "checks", "cap": "cap", **SETTINGS}
        note += f"; your {' and '.join(words[f] for f in FORM_FIELDS if f in kept)} kept (edited by hand)"
    return FormFill(checks, cap, note + ".", recipe.name if recipe else None, settings)


def _and(words: list[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else "".join(words)


def _setting_words(key: str, value) -> str:
    if key == "temperature":
        return "greedy" if not value else f"temperature {value:g}"
    if key == "repetition_penalty":
        return f"repetition penalty {value:g}"
    return f"{int(value)} rows a batch"


# --- keyword rules -------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    flag: str  # e.g. "escalate"
    keywords: tuple[str, ...]  # matched as whole words, case-insensitive
    priority: int  # 1 is the most urgent

    def matches(self, text: str) -> bool:
        return any(re.search(rf"\b{re.escape(k)}\b", text, re.IGNORECASE) for k in self.keywords)


def parse_rules(text: str) -> list[Rule]:
    """One rule a line: `flag: keyword, keyword, … [priority N]`.

    e.g. `escalate: cancel, angry, lawsuit priority 1`. Without a priority, the
    line's position is its priority.
    """
    rules = []
    for number, line in enumerate((text or "").splitlines(), start=1):
        if not line.strip():
            continue
        flag, sep, rest = line.partition(":")
        if not sep or not flag.strip():
            raise ValueError(f"rule line {number}: write it as 'flag: keyword, keyword' (got '{line.strip()}')")
        priority = len(rules) + 1
        found = re.search(r"\bpriority\s+(\d+)\s*$", rest, re.IGNORECASE)
        if found:
            priority = int(found.group(1))
            rest = rest[:found.start()]
        keywords = tuple(k.strip() for k in rest.split(",") if k.strip())
        if not keywords:
            raise ValueError(f"rule line {number}: '{flag.strip()}' has no keywords")
        rules.append(Rule(flag.strip().lower(), keywords, priority))
    return rules


def apply_rules(item: dict, rules: list[Rule], tag: bool) -> dict:
    """The item with its flags (most urgent first) and, when `tag`, the flags
    prefixed to the last user turn the model sees (raters still read the
    untagged prompt)."""
    hits = sorted((r for r in rules if r.matches(item["text"])), key=lambda r: r.priority)
    flags = list(dict.fromkeys(r.flag for r in hits))
    out = dict(item, flags=flags)
    if tag and flags:
        messages = [dict(m) for m in item["messages"]]
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        prefix = " ".join(f"[{f.upper()}]" for f in flags)
        messages[last_user]["content"] = f"{prefix} {messages[last_user]['content']}"
        out["messages"] = messages
    return out


def rules_to_json(rules: list[Rule]) -> list[dict]:
    return [{"flag": r.flag, "keywords": list(r.keywords), "priority": r.priority} for r in rules]
