"""Expanding a chat dataset with paraphrases: a model rewords the user turn of some original
rows, each proposal is measured (does it keep the topic, is it new, is it a rewording at all
rather than talk about one), and the accepted ones are added as marked copies of their rows.

Like tuner.shaping, every function takes rows and plain settings and returns new rows or
plain values; nothing here writes a file.
"""

from __future__ import annotations

import copy
import json
import random
import re

from tuner import data as tdata

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
