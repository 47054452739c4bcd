"""Shaping a chat dataset: filters, duplicates, downsampling, token lengths,
a seeded (optionally stratified) split, and paraphrase expansion.

Every function takes rows (`{"messages": [...], **metadata}`) and plain
settings and returns new rows or plain tables; nothing here writes a file.
Filters return a keep-mask, so the tab can say what each one keeps before
anything is saved.
"""

from __future__ import annotations

import copy
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

from tuner import data as tdata

TEXT_FIELDS = ("user", "assistant", "system")
NONE = "(none)"  # how a row without a value for a column is counted


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


def value_of(row: dict, column: str) -> str:
    value = row.get(column)
    return NONE if value is None or value == "" else str(value)


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


# --- split -------------------------------------------------------------------------
@dataclass(frozen=True)
class SplitSpec:
    """Percentages of the rows for train/validation/test; `stratify` keeps a
    metadata column's proportions the same in each part."""

    train: int = 80
    validation: int = 10
    test: int = 10
    seed: int = 0
    stratify: str | None = None

    def __post_init__(self):
        parts = (self.train, self.validation, self.test)
        if any(p < 0 or p > 100 for p in parts):
            raise ValueError("each percentage must be between 0 and 100 "
                             f"(got {self.train}/{self.validation}/{self.test})")
        if sum(parts) != 100:
            raise ValueError(f"train + validation + test must make 100% (got {sum(parts)}%)")
        if self.train <= 0:
            raise ValueError("the train part must be more than 0%")

    def describe(self) -> str:
        by = f", stratified by {self.stratify}" if self.stratify else ""
        return f"split {self.train}/{self.validation}/{self.test}{by}, seed {self.seed}"


def _allocate(n: int, shares: tuple[int, ...]) -> list[int]:
    """n items in whole numbers as close to the shares as can be (largest remainder)."""
    exact = [n * s / 100 for s in shares]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(shares)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[:n - sum(counts)]:
        counts[i] += 1
    return counts


def assign_splits(rows: list[dict], spec: SplitSpec) -> list[str]:
    """One split name per row. The same rows and spec give the same answer; with
    `stratify`, each value's rows are divided by the percentages on their own.
    Each stratum is shuffled with its own seed, so adding rows of one value
    does not move the rows of another."""
    strata: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        strata.setdefault(value_of(row, spec.stratify) if spec.stratify else "", []).append(i)
    labels = [""] * len(rows)
    for value, indices in strata.items():
        random.Random(f"{spec.seed}|{value}").shuffle(indices)
        counts = _allocate(len(indices), (spec.train, spec.validation, spec.test))
        start = 0
        for name, count in zip(tdata.SPLITS, counts):
            for i in indices[start:start + count]:
                labels[i] = name
            start += count
    return labels


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


# --- paraphrase expansion ----------------------------------------------------------
PARAPHRASE_PROMPT = ("Rewrite the following request in different words. Keep its meaning and its language. "
                     "Reply with the rewritten request only.\n\nRequest: {text}")
ORIGIN_FIELD = "origin"  # metadata that marks an added paraphrase, so a filter can find (or drop) them


def paraphrase_requests(rows: list[dict], indices: list[int]) -> list[list[dict]]:
    """One conversation per chosen row asking the model to reword its last user turn."""
    return [[{"role": "user", "content": PARAPHRASE_PROMPT.format(text=tdata.last_user_text(rows[i]))}]
            for i in indices]


def clean_paraphrase(text: str, original: str) -> str:
    """The reworded request alone: no label, no quotes; "" when nothing new came back."""
    text = (text or "").strip()
    text = re.sub(r"^(rewritten request|request|paraphrase|rewritten)\s*:\s*", "", text, flags=re.IGNORECASE)
    text = text.strip().strip('"“”').strip()
    return "" if text.casefold() == original.strip().casefold() else text


def pick_rows(n_rows: int, n: int, seed: int) -> list[int]:
    return sorted(random.Random(seed).sample(range(n_rows), min(max(0, int(n)), n_rows)))


def is_paraphrase(row: dict) -> bool:
    return row.get(ORIGIN_FIELD) == "paraphrase"


def source_rows(rows: list[dict]) -> list[int]:
    """The rows that may be paraphrased: the originals, never an added paraphrase."""
    return [i for i, row in enumerate(rows) if not is_paraphrase(row)]


def pick_sources(rows: list[dict], n: int, seed: int) -> list[int]:
    """n random original rows (all of them when there are fewer), in order."""
    sources = source_rows(rows)
    return [sources[i] for i in pick_rows(len(sources), n, seed)]


# words too common to say whether a paraphrase kept the topic
STOPWORDS = frozenset("""a an the is are was were be been am do does did i me my you your we our us it its to of
in on for at by with and or but not no this that these those what which who whom how why when where can could
would should will shall may might must please there here from as so if then than into about just also very""".split())
DRIFT_BELOW = 0.2  # a proposal sharing less than this with its source is flagged as off-topic


def topic_words(text: str) -> set[str]:
    """A text's content words, crudely stemmed (their first 5 letters), so "emails" meets "email"."""
    words = re.findall(r"\w+", text.casefold())
    return {w[:5] for w in words if w not in STOPWORDS and (len(w) > 2 or w.isdigit())}


def similarity(original: str, paraphrase: str) -> float:
    """How much of the topic two texts share, 0 to 1: the overlap (Dice) of
    their content words. A rewording keeps the key words; an answer, a ramble
    or another subject does not."""
    a, b = topic_words(original), topic_words(paraphrase)
    if not a:  # "Hi", "Why?": too short to tell
        return 1.0 if paraphrase.strip() else 0.0
    if not b:
        return 0.0
    return 2 * len(a & b) / (len(a) + len(b))


# A reply that talks about the rewording instead of being one: the model answered the
# instruction ("Here is the rephrased version: …"), labelled its parts ("Original:"), or
# echoed the instruction. Each counts only where the source request does not use it itself
# (a request about paraphrasing may well say "paraphrase").
META_WORDS = re.compile(r"\b(rephras|reword|rewrit|paraphras)\w*", re.IGNORECASE)
META_OPENERS = re.compile(r"\bhere(\s+is|\s+are|'s|’s)\b|^\W*(sure|certainly|of\s+course|okay)\b\s*[,!.:]",
                          re.IGNORECASE)
META_LABELS = re.compile(r"\b(original|rewritten|rephrased|paraphrased?|request|question|prompt|sentence|text|"
                         r"answer|reply|response|output|input|version)\s*:", re.IGNORECASE)
ECHO_WORDS = 4  # this many words in a row taken from the instruction are an echo of it


def _runs_of_words(text: str, n: int) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.casefold())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def meta_text(paraphrase: str, original: str = "") -> str:
    """What in a proposal is talk about the rewording rather than a rewording ("" if
    nothing): a word of rewording, an opener or a label the source does not have, a
    label repeated, or a run of the instruction's words."""
    for pattern in (META_WORDS, META_OPENERS, META_LABELS):
        found = pattern.search(paraphrase)
        if found and not pattern.search(original):
            return found.group(0)
    labels = [m.group(1).casefold() for m in META_LABELS.finditer(paraphrase)]
    repeated = next((label for label in labels if labels.count(label) > 1), None)
    if repeated:
        return f"{repeated}: (twice)"
    labelled = re.search(r"\b([A-Z][a-z]+)\s+\1\s*:", paraphrase)  # "Original Original:"
    if labelled:
        return labelled.group(0)
    instruction = PARAPHRASE_PROMPT.replace("{text}", "")
    echoes = (_runs_of_words(paraphrase, ECHO_WORDS) & _runs_of_words(instruction, ECHO_WORDS)) \
        - _runs_of_words(original, ECHO_WORDS)
    return " ".join(min(echoes)) if echoes else ""


def proposal_flag(paraphrase: str, score: float, known: set[str], original: str = "") -> str:
    """Why a proposal should not be ticked by default: "empty" (nothing new came
    back), "known" (already a user turn of the draft's), "meta" (it talks about
    the rewording instead of being one: meta_text), "drift" (few words shared
    with its source), or "" when it looks usable. `known`: the draft's user turns,
    casefolded; `original`: the request it rewords."""
    if not paraphrase:
        return "empty"
    if paraphrase.strip().casefold() in known:
        return "known"
    if meta_text(paraphrase, original):
        return "meta"
    return "drift" if score < DRIFT_BELOW else ""


def propose_paraphrases(generator, model_name: str, rows: list[dict], n: int, seed: int, settings) -> list[dict]:
    """Ask the model (a tuner.generate.Generator) for a paraphrase of n random
    original rows' user turns (never of an added paraphrase): [{"row": index,
    "original": text, "paraphrase": text, "similarity": 0..1, "flag": code}],
    where a flag (proposal_flag; "" for none) says why the proposal looks unusable."""
    indices = pick_sources(rows, n, seed)
    if not indices:
        return []
    replies = generator.generate(model_name, paraphrase_requests(rows, indices), settings)
    known = {tdata.last_user_text(row).strip().casefold() for row in rows}
    proposals = []
    for i, reply in zip(indices, replies):
        original = tdata.last_user_text(rows[i])
        text = clean_paraphrase(reply.text, original)
        score = similarity(original, text) if text else 0.0
        proposals.append({"row": i, "original": original, "paraphrase": text, "similarity": score,
                          "flag": proposal_flag(text, score, known, original)})
    return proposals


def _conversation_key(row: dict) -> str:
    return json.dumps([(m["role"], m["content"]) for m in row["messages"]], ensure_ascii=False)


def add_paraphrases(rows: list[dict], accepted: list[tuple[int, str]]) -> tuple[list[dict], int]:
    """The rows plus one new row per accepted (row index, paraphrase): a copy
    of that row with its last user turn reworded, marked as a paraphrase. It
    keeps the row's stored split, so a reworded test prompt is never trained on.
    A paraphrase whose conversation is already in the rows (added before) is
    not added again. Returns (rows, how many were added)."""
    seen = {_conversation_key(row) for row in rows}
    added = []
    for index, text in accepted:
        if not text.strip():
            continue
        row = copy.deepcopy(rows[index])
        last_user = max(i for i, m in enumerate(row["messages"]) if m["role"] == "user")
        row["messages"][last_user]["content"] = text.strip()
        row[ORIGIN_FIELD] = "paraphrase"
        key = _conversation_key(row)
        if key not in seen:
            seen.add(key)
            added.append(row)
    return rows + added, len(added)


def with_paraphrases(rows: list[dict], accepted: list[tuple[int, str]]) -> list[dict]:
    """add_paraphrases' rows alone."""
    return add_paraphrases(rows, accepted)[0]
