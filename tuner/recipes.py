"""Recipes: the settings that make a dataset's fine-tune beat its base, stored beside the data.

`datasets/NAME.recipe.json` holds what a sweep on this machine found for the
starter set NAME (bench/recipes.py measures it):

    {"about": "one line on why",
     "train": {TrainConfig fields, as in run.json's config, without dataset/base_model/output_dir},
     "generate": {GenSettings fields: max_new_tokens, repetition_penalty, ...},
     "checks": ["starts with: Subject:", ...]}   # the automatic checks (ratings.checks)

A saved version of a starter set (`company_faq-v3.jsonl`) or an import of one
(`customer_support.jsonl` from the CSV) finds its starter's recipe by name. For
any other dataset, `suggest` derives settings from its size, reply lengths and
kind, and says why in one line. Standard library only (and TrainConfig).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field, fields
from pathlib import Path

from tuner.config import PREFERENCE_METHODS, TrainConfig, default_learning_rate, optimizer_steps
from tuner.paths import STARTER_DATASETS

NOT_IN_RECIPE = ("dataset", "base_model", "output_dir")
GENERATE_KEYS = ("max_new_tokens", "temperature", "top_p", "repetition_penalty", "seed", "batch_size")
SUFFIX = ".recipe.json"
TOKENS_PER_WORD = 1.4  # SmolLM2's tokenizer on English prose, measured on the starter sets' replies


@dataclass
class Recipe:
    name: str
    train: dict
    generate: dict = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)
    about: str = ""
    path: Path | None = None

    def config(self, dataset: str, base_model: str | None = None) -> TrainConfig:
        values = dict(self.train, dataset=str(dataset))
        if base_model:
            values["base_model"] = base_model
        return TrainConfig.from_dict(values)

    def describe(self) -> str:
        c = TrainConfig.from_dict(dict(self.train))  # unset fields read as TrainConfig's defaults
        if c.method == "prompt_tuning":
            what = f"prompt tuning, {c.num_virtual_tokens} virtual tokens"
        else:
            targets = c.target_modules
            what = (f"LoRA r={c.r}, alpha {c.lora_alpha}, "
                    f"{'all linear layers' if targets and len(targets) > 4 else ', '.join(targets or ['attention'])}")
        length = f"{c.max_steps} steps" if c.max_steps > 0 else f"{c.num_train_epochs:g} epochs"
        extras = [f"{c.lr_scheduler_type} schedule"] if c.lr_scheduler_type != "linear" else []
        if c.neftune_noise_alpha:
            extras.append(f"NEFTune {c.neftune_noise_alpha:g}")
        return ", ".join([what, f"lr {c.learning_rate:g}", length, *extras, f"split {_split_text(c)}"])


def _split_text(c: TrainConfig) -> str:
    test, val = c.test_fraction, c.validation_fraction
    text = f"{round(100 * (1 - test - val))}/{round(100 * val)}/{round(100 * test)}"
    return text + (f" by {c.stratify_by}" if c.stratify_by else "")


def parse(values, name: str, path: Path | None = None, parse_checks=None) -> Recipe:
    """A recipe from its JSON object; a problem is named with the file and the field.
    `parse_checks` (ratings.checks.parse_checks, passed in: the engine does not import
    the ratings layer) also checks the check lines' grammar."""
    where = path.name if path else name
    if not isinstance(values, dict):
        raise ValueError(f"{where}: a recipe is a JSON object with 'train', 'generate' and 'checks'")
    unknown = sorted(set(values) - {"about", "train", "generate", "checks", "measured"})
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; a recipe has about, train, generate, checks")
    train = values.get("train")
    if not isinstance(train, dict):
        raise ValueError(f"{where}: 'train' must be an object of TrainConfig settings")
    banned = [k for k in NOT_IN_RECIPE if k in train]
    if banned:
        raise ValueError(f"{where}: 'train' must not set {', '.join(banned)} (the dataset and model are chosen "
                         "when the recipe is used)")
    try:
        TrainConfig.from_dict(dict(train))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: train: {exc}") from None
    generate = values.get("generate") or {}
    bad = sorted(set(generate) - set(GENERATE_KEYS)) if isinstance(generate, dict) else ["(not an object)"]
    if bad:
        raise ValueError(f"{where}: generate: unknown setting(s) {', '.join(bad)}; known: {', '.join(GENERATE_KEYS)}")
    checks = values.get("checks") or []
    if not isinstance(checks, list) or not all(isinstance(c, str) for c in checks):
        raise ValueError(f"{where}: 'checks' must be a list of check lines")
    if parse_checks is not None:
        try:
            parse_checks(checks)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return Recipe(name, dict(train), dict(generate), list(checks), str(values.get("about") or ""), path)


def load(path: Path, parse_checks=None) -> Recipe:
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path.name}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    return parse(values, path.name[:-len(SUFFIX)], path, parse_checks)


def starter_name(dataset: Path) -> str:
    """company_faq-v3 → company_faq: a saved version keeps its starter's recipe."""
    from tuner.data import version_of

    return version_of(Path(dataset).stem)[0]


def for_dataset(dataset: Path | str | None, folder: Path = STARTER_DATASETS, parse_checks=None) -> Recipe | None:
    """The recipe of a dataset: one beside the file itself, else its starter set's; None if neither."""
    if not dataset:
        return None
    dataset = Path(dataset)
    for candidate in (dataset.with_name(dataset.stem + SUFFIX), Path(folder) / (starter_name(dataset) + SUFFIX)):
        if candidate.is_file():
            return load(candidate, parse_checks)
    return None


def all_recipes(folder: Path = STARTER_DATASETS) -> dict[str, Recipe]:
    return {p.name[:-len(SUFFIX)]: load(p) for p in sorted(Path(folder).glob("*" + SUFFIX))}


# --- settings for any other dataset -------------------------------------------------------------
FACT_WORDS = 25  # replies this short, a few facts each, are memorised: the FAQ kind
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _words(text) -> int:
    return len(text.split()) if isinstance(text, str) else 0


def reply_lengths(rows: list[dict]) -> list[int]:
    return [_words(r["messages"][-1].get("content")) for r in rows if r.get("messages")]


def max_new_tokens_for(texts: list[str], tokenizer=None, cap: int = 512) -> int:
    """Room for the longest usual reply: the 95th percentile of the references' (or
    training replies') lengths in tokens, plus a third, rounded up to 16; at least 32."""
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        return 96
    if tokenizer is not None:
        lengths = sorted(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    else:
        lengths = sorted(math.ceil(_words(t) * TOKENS_PER_WORD) for t in texts)
    p95 = lengths[min(len(lengths) - 1, math.ceil(0.95 * len(lengths)) - 1)]
    return int(min(cap, max(32, 16 * math.ceil(p95 * 4 / 3 / 16))))


@dataclass
class Suggestion:
    train: dict
    generate: dict
    why: str
    train_rows: int = 0  # the training rows its step count is for
    steps: int = 0  # the optimizer steps it makes (config.optimizer_steps), as `why` says


def suggest(rows: list[dict], architecture_modules: list[str] | None = None, method: str = "lora",
            train_rows: int | None = None) -> Suggestion:
    """Settings from the dataset itself: its size, reply lengths and kind (facts to
    memorise vs. a style or format to pick up), for `method` (LoRA, QLoRA or prompt
    tuning: the one chosen is kept). The rules are the starter sets' sweeps
    (bench/recipes.py) in general form; they say why in one line. `train_rows`: the rows
    the run will train on (tuner.estimate.suggest counts them with the model's
    tokenizer); by default the split's training rows."""
    from tuner import data as tdata

    n = len(rows)
    if n == 0:
        raise ValueError("the dataset has no rows to suggest settings for")
    if method in PREFERENCE_METHODS:
        raise ValueError(f"Suggest settings derives a supervised recipe (LoRA or prompt tuning); {method.upper()} "
                         "learns from an evaluation's scores instead")
    lengths = reply_lengths(rows)
    median = statistics.median(lengths) if lengths else 0
    facts = median <= FACT_WORDS or any("answer" in r for r in rows[:50])
    modules = architecture_modules or ALL_LINEAR
    validation, test, stratify = (0.1 if n >= 30 else 0.0), (0.2 if n >= 30 else 0.15), _stratify_column(rows)
    if train_rows is None:
        train_rows = len(tdata.splits(rows, validation, test, TrainConfig().seed, stratify)["train"])
    # what the starter sets' sweeps found (bench/recipes.py, docs/does-it-work.md): LoRA on every
    # linear layer at lr 1e-3 in batches of 4; a format or style is picked up in ~50 optimiser
    # steps (formal_email: every check passed after 18), facts need more passes (company_faq:
    # ~170 steps, the validation loss flat after ~2 epochs), and a tiny set needs many epochs
    batch = 4
    steps_per_epoch = max(1, math.ceil(train_rows / batch))
    if facts:
        kind = "short factual replies to memorise"
        wanted, epochs_cap, lr, r = 170, 12, 1e-3, 16
    else:
        kind = "longer replies in a style or format"
        wanted, epochs_cap, lr, r = 50, 8, 1e-3, 16
    epochs = max(3 if facts else 2, min(epochs_cap, math.ceil(wanted / steps_per_epoch)))
    if n < 50:
        epochs = max(epochs, 6)
    tokens_per_row = max(32, max(lengths or [0]) * TOKENS_PER_WORD + 64)
    max_seq = int(min(1024, 64 * math.ceil(tokens_per_row / 64)))
    if method == "prompt_tuning":
        # kept as chosen: the soft prompt's own rate (LoRA's would barely move it)
        lr = default_learning_rate(method)
        adapter = {"method": method, "num_virtual_tokens": TrainConfig().num_virtual_tokens}
        what = f"prompt tuning (as chosen), {adapter['num_virtual_tokens']} virtual tokens"
    else:
        adapter = {"method": method, "r": r, "lora_alpha": 2 * r, "target_modules": list(modules)}
        what = f"{'QLoRA' if method == 'qlora' else 'LoRA'} r={r} on all linear layers"
    train = {**adapter, "learning_rate": lr, "num_train_epochs": float(epochs), "lr_scheduler_type": "cosine",
             "warmup_steps": min(10, max(1, epochs * steps_per_epoch // 20)),
             "per_device_train_batch_size": batch, "max_seq_length": max_seq,
             "validation_fraction": validation, "test_fraction": test}
    if stratify:
        train["stratify_by"] = stratify
    steps = optimizer_steps(TrainConfig.from_dict(train), train_rows)
    generate = {"max_new_tokens": max_new_tokens_for([r["messages"][-1].get("content") for r in rows]),
                "temperature": 0.0, "repetition_penalty": 1.0 if facts else 1.05}
    why = (f"{n} rows of {kind} (median reply {median:g} words): {what}, "
           f"lr {lr:g}, {epochs} epochs ({steps} steps over {train_rows} training rows), cosine schedule"
           + (f", split stratified by {stratify}" if stratify else "")
           + f"; replies up to {generate['max_new_tokens']} new tokens.")
    return Suggestion(train, generate, why, train_rows, steps)


def _stratify_column(rows: list[dict]) -> str | None:
    """A metadata column with a few repeated values (difficulty, category, brand), if any."""
    for column in ("difficulty", "category", "brand"):
        values = [r.get(column) for r in rows]
        if all(isinstance(v, str) and v for v in values) and 2 <= len(set(values)) <= max(2, len(rows) // 5):
            return column
    return None


def train_keys() -> list[str]:
    return [f.name for f in fields(TrainConfig) if f.name not in NOT_IN_RECIPE]
