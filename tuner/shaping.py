"""Shaping a chat dataset: filters, duplicates, downsampling, token lengths, and
a seeded (optionally stratified) split stored in the rows (the split itself is
tuner.data's, which training uses too). Paraphrase expansion is tuner.paraphrase's.

Every function takes rows (`{"messages": [...], **metadata}`) and plain
settings and returns new rows or plain tables; nothing here writes a file.
Filters return a keep-mask, so the tab can say what each one keeps before
anything is saved.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

from tuner import data as tdata
from tuner.data import SplitSpec, assign_splits, value_of

TEXT_FIELDS = ("user", "assistant", "system")


def metadata_columns(rows: list[dict]) -> list[str]:
    """Keys beside `messages` whose values are plain (text, numbers, booleans)."""
    plain = (str, int, float, bool, type(None))
    found = dict.fromkeys(k for row in rows for k, v in row.items() if k != "messages" and isinstance(v, plain))
    return list(found)


def field_text(row: dict, name: str) -> str:
    """A row's text in one field: every user turn, every reply, the system prompt, or a metadata value."""
    if name in TEXT_FIELDS:
        return "\n".join(m["content"] for m in row["messages"] if m["role"] == name)
    value = row.get(name)
    return "" if value is None else str(value)


# --- filters: each returns one bool per row, True = keep ------------------------------
def parse_words(text: str) -> list[str]:
    """Keywords or phrases separated by commas or new lines."""
    return [w.strip() for w in re.split(r"[,\n]", text or "") if w.strip()]


@dataclass(frozen=True)
class Keywords:
    words: tuple[str, ...]
    exclude: bool = False  # drop the rows that match instead of keeping them
    require_all: bool = False  # a row matches when it has all the words (else any)
    whole_word: bool = True  # "art" does not match "party"
    fields: tuple[str, ...] = ("user", "assistant")

    def describe(self) -> str:
        words = ", ".join(f'"{w}"' for w in self.words)
        how = "all of" if self.require_all and len(self.words) > 1 else "any of"
        return (f"{'exclude' if self.exclude else 'keep'} rows with {how} {words} in {', '.join(self.fields)}"
                f"{' (whole words)' if self.whole_word else ''}")


def keyword_mask(rows: list[dict], kw: Keywords) -> list[bool]:
    """Case-insensitive; a whole word is bounded by non-word characters, so "c++" works too."""
    if not kw.words:
        return [True] * len(rows)
    if not kw.fields:
        raise ValueError("choose at least one field to search for the keywords")

    def pattern(word):
        core = re.escape(word)
        return rf"(?<!\w){core}(?!\w)" if kw.whole_word else core

    patterns = [re.compile(pattern(w), re.IGNORECASE) for w in kw.words]
    either = re.compile("|".join(p.pattern for p in patterns), re.IGNORECASE)
    mask = []
    for row in rows:
        text = "\n".join(field_text(row, f) for f in kw.fields)
        hit = all(p.search(text) for p in patterns) if kw.require_all else bool(either.search(text))
        mask.append(hit != kw.exclude)
    return mask


def value_counts(rows: list[dict], column: str) -> list[tuple[str, int]]:
    """A metadata column's values, most frequent first (ties by value)."""
    counts = Counter(value_of(row, column) for row in rows)
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def top_values(rows: list[dict], column: str, n: int) -> list[str]:
    return [value for value, _ in value_counts(rows, column)[:max(0, int(n))]]


def value_mask(rows: list[dict], column: str, keep) -> list[bool]:
    keep = {str(v) for v in keep}
    return [value_of(row, column) in keep for row in rows]


def length_mask(lengths: list[int], min_tokens: int = 0, max_tokens: int = 0) -> list[bool]:
    """Keep rows of at least min_tokens and at most max_tokens tokens (0: no bound)."""
    return [(not min_tokens or n >= min_tokens) and (not max_tokens or n <= max_tokens) for n in lengths]


def duplicate_mask(rows: list[dict]) -> list[bool]:
    """False for a row whose conversation (every role and text) appeared before."""
    seen, mask = set(), []
    for row in rows:
        key = json.dumps([(m["role"], m["content"]) for m in row["messages"]], ensure_ascii=False)
        mask.append(key not in seen)
        seen.add(key)
    return mask


def sample_mask(n_rows: int, n: int, seed: int) -> list[bool]:
    """A seeded random n rows (all of them when n is 0 or at least n_rows), order kept."""
    if not n or n >= n_rows:
        return [True] * n_rows
    chosen = set(random.Random(seed).sample(range(n_rows), int(n)))
    return [i in chosen for i in range(n_rows)]


@dataclass(frozen=True)
class FilterSpec:
    """The Filter step's settings; each part is off at its default."""

    keywords: Keywords | None = None
    column: str | None = None  # a metadata column …
    values: tuple[str, ...] = ()  # … and the values of it to keep
    min_tokens: int = 0
    max_tokens: int = 0
    dedupe: bool = False
    sample: int = 0  # downsample to this many rows (0: keep all)
    seed: int = 0

    def needs_lengths(self) -> bool:
        return bool(self.min_tokens or self.max_tokens)


@dataclass
class Step:
    name: str
    rows_in: int
    kept: int


@dataclass
class Filtered:
    rows: list[dict]
    steps: list[Step] = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([(s.name, s.rows_in, s.kept, s.rows_in - s.kept) for s in self.steps],
                            columns=["filter", "rows in", "kept", "removed"])

    def describe(self) -> str:
        return "; ".join(f"{s.name} ({s.rows_in} → {s.kept})" for s in self.steps)


def apply_filters(rows: list[dict], spec: FilterSpec, lengths: list[int] | None = None) -> Filtered:
    """Each filter in turn, counting what it keeps; downsampling comes last.
    `lengths` (one per row, in tokens) is needed only for the length filter."""
    out = Filtered(list(rows))
    if spec.needs_lengths() and (lengths is None or len(lengths) != len(rows)):
        raise ValueError("the token-length filter needs the rows' token lengths")
    current = list(range(len(rows)))

    def step(name, mask):
        nonlocal current
        kept = [i for i, keep in zip(current, mask) if keep]
        out.steps.append(Step(name, len(current), len(kept)))
        current = kept

    def picked():
        return [rows[i] for i in current]

    if spec.keywords and spec.keywords.words:
        step(spec.keywords.describe(), keyword_mask(picked(), spec.keywords))
    if spec.column and spec.values:
        shown = ", ".join(spec.values[:5]) + (", …" if len(spec.values) > 5 else "")
        step(f"{spec.column} in {shown}", value_mask(picked(), spec.column, spec.values))
    if spec.needs_lengths():
        bounds = f"{spec.min_tokens or 0}–{spec.max_tokens or '∞'}"
        step(f"{bounds} tokens", length_mask([lengths[i] for i in current], spec.min_tokens, spec.max_tokens))
    if spec.dedupe:
        step("exact duplicates removed", duplicate_mask(picked()))
    if spec.sample:
        step(f"random {spec.sample} (seed {spec.seed})", sample_mask(len(current), spec.sample, spec.seed))
    out.rows = picked()
    return out


# --- token lengths -----------------------------------------------------------------
def token_lengths(rows: list[dict], tokenizer) -> list[int]:
    """Tokens per conversation as training sees it: the model's own chat
    template (ChatML where it has none), before truncation."""
    from tuner.chat import ensure_chat_template

    if not rows:
        return []
    ensure_chat_template(tokenizer)
    texts = tokenizer.apply_chat_template([r["messages"] for r in rows], tokenize=False)
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def length_histogram(lengths: list[int], bins: int = 20) -> pd.DataFrame:
    """Rows per token-length bin from the shortest to the longest row, as
    "lo–hi" labels in order (for a bar chart)."""
    if not lengths:
        return pd.DataFrame(columns=["tokens", "rows"])
    low, high = min(lengths), max(lengths)
    width = max(1, -(-(high - low + 1) // bins))  # ceil, so `bins` bins cover low..high
    counts = Counter((n - low) // width for n in lengths)
    return pd.DataFrame([(f"{low + b * width}–{low + (b + 1) * width - 1}", counts.get(b, 0))
                         for b in range((high - low) // width + 1)], columns=["tokens", "rows"])


def length_summary(lengths: list[int], max_length: int) -> str:
    if not lengths:
        return "No rows to measure."
    over = sum(n > max_length for n in lengths)
    ordered = sorted(lengths)
    median = ordered[len(ordered) // 2]
    return (f"**{over} of {len(lengths)} rows are longer than {max_length} tokens** (they are truncated in "
            f"training). Shortest {ordered[0]}, median {median}, longest {ordered[-1]} tokens.")


# --- split: the rows assigned by tuner.data (SplitSpec, assign_splits), stored or counted ---
def apply_split(rows: list[dict], spec: SplitSpec) -> list[dict]:
    """Copies of the rows, each with its `split` stored (tdata.splits uses it as is)."""
    return [{**row, tdata.SPLIT_FIELD: label} for row, label in zip(rows, assign_splits(rows, spec))]


def split_table(rows: list[dict], labels: list[str], stratify: str | None = None) -> pd.DataFrame:
    """Rows per stratum and split, with the share of each split, and a total line."""
    keys = [value_of(row, stratify) if stratify else "all rows" for row in rows]
    counts = Counter(zip(keys, labels))
    order = [k for k, _ in Counter(keys).most_common()]
    lines = []
    for key in order + (["total"] if stratify else []):
        got = {s: (sum(counts[(k, s)] for k in order) if key == "total" else counts[(key, s)]) for s in tdata.SPLITS}
        total = sum(got.values())
        lines.append([key, total, *got.values(),
                      " / ".join(f"{100 * got[s] / total:.0f}%" for s in tdata.SPLITS) if total else ""])
    return pd.DataFrame(lines, columns=[stratify or "stratum", "rows", *tdata.SPLITS, "shares"])
