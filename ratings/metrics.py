"""Automatic metrics beside the human scores: pure functions, no database, no UI.

Text metrics need reference answers (an evaluation built from a dataset's
held-out rows has them; typed prompts do not). BLEU is sacrebleu's and
ROUGE-L is rouge-score's, both installed packages that compute offline (the
`evaluate` library would fetch their code from the Hub at run time). Latency,
adapter size and the trainable share need no reference.

`replies` is Store.replies' shape: one row per reply with position, reference,
category, task, variant, label, reply, latency_s, new_tokens.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from pathlib import Path

import pandas as pd

from tuner import records

_ARTICLES = re.compile(r"\b(a|an|the)\b")
# Porter stemming is pure Python in nltk: no data files to download


@functools.cache
def _rouge():
    """ROUGE-L scorer, built on first use: rouge-score imports nltk (slow: see docs/performance.md), off the start-up path."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def normalize(text: str | None) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles,
    single spaces (after NFKC, so full-width and composed forms compare equal)."""
    text = unicodedata.normalize("NFKC", text or "").lower()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return " ".join(_ARTICLES.sub(" ", text).split())


def has_reference(reference) -> bool:
    return isinstance(reference, str) and bool(reference.strip())


def exact_match(reply: str, reference: str) -> bool:
    return normalize(reply) == normalize(reference)


def contains_answer(reply: str, reference: str) -> bool:
    """The normalised reference appears in the normalised reply as whole words
    ("2014" is in "It was founded in 2014." but not in "20145")."""
    answer = normalize(reference)
    return bool(answer) and f" {answer} " in f" {normalize(reply)} "


def bleu(replies: list[str], references: list[str]) -> float:
    """Corpus BLEU (sacrebleu's defaults: 13a tokenisation, 0–100)."""
    if not replies:
        return math.nan
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(replies), [list(references)]).score)


def rouge_l(reply: str, reference: str) -> float:
    """ROUGE-L F1 of one reply against its reference, 0–100."""
    return 100 * _rouge().score(reference, reply)["rougeL"].fmeasure


METRIC_COLUMNS = ["model", "replies", "with reference", "exact match", "answer contained", "BLEU", "ROUGE-L",
                  "mean latency (s)", "mean new tokens"]


def automatic_table(replies: pd.DataFrame, by: str | None = None) -> pd.DataFrame:
    """Per model (and per value of `by`, e.g. category): exact match and
    answer-contained rates, corpus BLEU and mean ROUGE-L F1 over the replies
    that have a reference; mean latency and new tokens over all replies."""
    columns = ([by] if by else []) + METRIC_COLUMNS
    if replies.empty:
        return pd.DataFrame(columns=columns)
    order = list(dict.fromkeys(replies["label"]))
    frame = replies.assign(_group=replies[by].fillna("(none)").astype(str).replace("", "(none)") if by else "")
    rows = []
    for group in dict.fromkeys(frame["_group"]):
        for label in order:
            part = frame[(frame["_group"] == group) & (frame["label"] == label)]
            if part.empty:
                continue
            rows.append(([group] if by else []) + [label] + _metrics(part))
    return pd.DataFrame(rows, columns=columns).round(3)


def _metrics(part: pd.DataFrame) -> list:
    ref = part[part["reference"].map(has_reference)]
    pairs = list(zip(ref["reply"].fillna(""), ref["reference"]))
    if pairs:
        text = [sum(exact_match(r, a) for r, a in pairs) / len(pairs),
                sum(contains_answer(r, a) for r, a in pairs) / len(pairs),
                bleu([r for r, _ in pairs], [a for _, a in pairs]),
                sum(rouge_l(r, a) for r, a in pairs) / len(pairs)]
    else:
        text = [math.nan] * 4
    latency = pd.to_numeric(part["latency_s"], errors="coerce").mean()
    tokens = pd.to_numeric(part["new_tokens"], errors="coerce").mean()
    return [len(part), len(pairs), *text, latency, tokens]


# --- runs: the settings behind each variant ------------------------------------------------------
def adapter_bytes(folder: Path) -> int | None:
    """The adapter's size on disk (every file under its folder); None without one."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def settings_text(config: dict) -> str:
    """The settings that distinguish one run from another, in a line."""
    method = config.get("method", "lora")
    if method == "prompt_tuning":
        parts = [f"{config.get('num_virtual_tokens')} virtual tokens"]
    else:
        parts = [f"r {config.get('r')}", f"alpha {config.get('lora_alpha')}",
                 f"dropout {config.get('lora_dropout')}"]
        parts += [name for key, name in (("use_dora", "DoRA"), ("use_rslora", "rsLoRA")) if config.get(key)]
        if config.get("target_modules"):
            parts.append("modules " + "/".join(config["target_modules"]))
    parts.append(f"lr {config.get('learning_rate')}")
    if method in ("dpo", "kto"):
        parts.append(f"β {config.get('beta', 0.1)}")
        parts += [f"{key} {config[key]:g}" for key, standard in (("rpo_alpha", 0.0), ("ld_alpha", 1.0))
                  if config.get(key, standard) != standard]
    steps = config.get("max_steps") or -1
    parts.append(f"{steps} steps" if steps > 0 else f"{config.get('num_train_epochs')} epochs")
    parts.append(f"batch {config.get('per_device_train_batch_size')}×{config.get('gradient_accumulation_steps', 1)}")
    return ", ".join(parts)


RUN_COLUMNS = ["model", "method", "settings", "dataset", "trainable", "trainable params", "adapter (MB)",
               "final loss", "best val loss"]


def run_table(variants: list[dict], runs: dict[str, dict | None]) -> pd.DataFrame:
    """One row per variant: the run behind it (method, settings, dataset,
    trainable share, adapter size on disk, losses); the base model's row is
    mostly empty. `variants` has name, label, kind; `runs` maps a variant's
    name to its run record (run.json plus `path`), None when it is gone."""
    rows = []
    for v in variants:
        run = runs.get(v["name"])
        if run is None:
            note = "" if v["kind"] == "base" else "run not found"
            rows.append([v["label"], v["kind"], note, "", math.nan, math.nan, math.nan, math.nan, math.nan])
            continue
        config, summary = run.get("config", {}), run.get("summary") or {}
        size = adapter_bytes(records.adapter_dir(Path(run["path"])))
        rows.append([v["label"], config.get("method", v["kind"]), settings_text(config),
                     Path(config.get("dataset", "")).name, summary.get("trainable_percent", math.nan),
                     summary.get("trainable_params", math.nan),
                     size / 1e6 if size is not None else math.nan,
                     summary.get("final_loss", math.nan), summary.get("best_eval_loss", math.nan)])
    table = pd.DataFrame(rows, columns=RUN_COLUMNS)
    table["trainable"] = table["trainable"].map(
        lambda p: "" if pd.isna(p) else f"{p:.2f}%" if p >= 0.1 or p == 0 else f"{p:.2g}%")
    return table.round(4)
