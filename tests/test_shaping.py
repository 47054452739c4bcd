"""Filters, duplicates, downsampling, token lengths, the split and paraphrases."""

import random
import re
from collections import Counter

import pytest

from helpers import chat
from tuner import data as tdata
from tuner import paraphrase as para
from tuner import shaping as sh
from tuner.shaping import FilterSpec, Keywords, SplitSpec


def users(rows):
    return [tdata.last_user_text(r) for r in rows]


ROWS = [
    chat("Write an email to my landlord", "Dear Sir, ...", category="email"),
    chat("Emails are boring", "They can be.", category="chat"),
    chat("Draft a formal EMAIL and a letter", "Here is both.", category="email"),
    chat("Tell me about art", "Art is ...", category="art"),
    chat("Plan a party", "Invite friends.", category="party"),
    chat("Is C++ hard?", "Somewhat.", category="code"),
]


# --- keyword filter ----------------------------------------------------------------
def test_keywords_are_case_insensitive_whole_words_by_default():
    mask = sh.keyword_mask(ROWS, Keywords(("email",)))
    assert users([r for r, k in zip(ROWS, mask) if k]) == ["Write an email to my landlord",
                                                           "Draft a formal EMAIL and a letter"]
    loose = sh.keyword_mask(ROWS, Keywords(("email",), whole_word=False))
    assert sum(loose) == 3  # "Emails" matches as a substring
    assert sh.keyword_mask(ROWS, Keywords(("art",))) == [False, False, False, True, False, False]  # not "party"
    assert sh.keyword_mask(ROWS, Keywords(("c++",)))[5]  # a word ending in a symbol


def test_keywords_any_all_exclude_and_fields():
    any_of = sh.keyword_mask(ROWS, Keywords(("email", "letter")))
    all_of = sh.keyword_mask(ROWS, Keywords(("email", "letter"), require_all=True))
    assert (sum(any_of), sum(all_of)) == (2, 1) and all_of[2]
    excluded = sh.keyword_mask(ROWS, Keywords(("email", "letter"), exclude=True))
    assert excluded == [not k for k in any_of]
    # only the reply is searched: "art" appears in a reply too, "landlord" only in a prompt
    assert sum(sh.keyword_mask(ROWS, Keywords(("landlord",), fields=("assistant",)))) == 0
    assert sh.keyword_mask(ROWS, Keywords(("party",), fields=("category",)))[4]
    with_system = [{"messages": [{"role": "system", "content": "You are a pirate."}, *chat("q", "a")["messages"]]}]
    assert sh.keyword_mask(with_system, Keywords(("pirate",), fields=("system",))) == [True]
    assert sh.parse_words(" email, thank you\nletter,, ") == ["email", "thank you", "letter"]
    with pytest.raises(ValueError, match="choose at least one field"):
        sh.keyword_mask(ROWS, Keywords(("x",), fields=()))


# --- metadata values, lengths, duplicates, sampling --------------------------------
def support_rows(seed=0):
    rng = random.Random(seed)
    brands = ["Acme"] * 40 + ["Globex"] * 30 + ["Initech"] * 20 + ["Umbrella"] * 15 + ["Hooli"] * 10 + ["Wayne"] * 5
    return [chat(f"Help with order {i}", f"Reply {i}", brand=b) for i, b in enumerate(rng.sample(brands, len(brands)))]


def test_top_values_and_value_filter():
    rows = support_rows() + [chat("no brand", "x")]
    counts = sh.value_counts(rows, "brand")
    assert counts[:2] == [("Acme", 40), ("Globex", 30)] and ("(none)", 1) in counts
    top = sh.top_values(rows, "brand", 5)
    assert top == ["Acme", "Globex", "Initech", "Umbrella", "Hooli"]
    assert sum(sh.value_mask(rows, "brand", top)) == 115
    assert sh.metadata_columns(rows) == ["brand"]


def test_length_duplicates_and_seeded_sample():
    assert sh.length_mask([5, 50, 500], min_tokens=10) == [False, True, True]
    assert sh.length_mask([5, 50, 500], max_tokens=100) == [True, True, False]
    assert sh.length_mask([5, 50, 500]) == [True, True, True]
    rows = [chat("a", "b"), chat("a", "b", category="other"), chat("a", "c"), chat("A", "b")]
    assert sh.duplicate_mask(rows) == [True, False, True, True]  # metadata does not make a row new
    once = sh.sample_mask(100, 10, seed=1)
    assert sum(once) == 10 and once == sh.sample_mask(100, 10, seed=1) and once != sh.sample_mask(100, 10, seed=2)
    assert sh.sample_mask(5, 10, seed=1) == [True] * 5 and sh.sample_mask(5, 0, seed=1) == [True] * 5


def test_apply_filters_counts_each_step_the_support_case():
    rows = support_rows()
    rows += [dict(rows[0]), dict(rows[1])]  # two exact duplicates
    spec = FilterSpec(keywords=Keywords(("order",)), column="brand",
                      values=tuple(sh.top_values(rows, "brand", 3)), dedupe=True, sample=50, seed=7)
    out = sh.apply_filters(rows, spec)
    in_top = sum(r["brand"] in spec.values for r in rows)  # 90 and the duplicates of such rows
    assert [(s.rows_in, s.kept) for s in out.steps] == [(122, 122), (122, in_top), (in_top, 90), (90, 50)]
    assert len(out.rows) == 50 and {r["brand"] for r in out.rows} <= {"Acme", "Globex", "Initech"}
    assert list(out.table().columns) == ["filter", "rows in", "kept", "removed"]
    assert f"brand in Acme, Globex, Initech (122 → {in_top})" in out.describe()
    assert sh.apply_filters(rows, spec).rows == out.rows  # seeded: the same 50
    assert sh.apply_filters(rows, FilterSpec()).steps == []  # nothing on, nothing counted
    with pytest.raises(ValueError, match="needs the rows' token lengths"):
        sh.apply_filters(rows, FilterSpec(max_tokens=10))
    lengths = list(range(len(rows)))
    kept = sh.apply_filters(rows, FilterSpec(column="brand", values=("Acme",), min_tokens=50), lengths)
    assert [s.kept for s in kept.steps] == [40, sum(1 for i, r in enumerate(rows) if r["brand"] == "Acme" and i >= 50)]


def test_dolly_case_keywords_cut_thousands_to_a_few_hundred():
    rng = random.Random(0)
    topics = ["email", "poem", "recipe", "history", "physics", "travel", "music", "sports"]
    rows = [chat(f"Write something about {rng.choice(topics)} number {i}", "ok", category="creative_writing")
            for i in range(3000)]
    out = sh.apply_filters(rows, FilterSpec(keywords=Keywords(("email", "poem"))))
    assert 600 < len(out.rows) < 900 and out.steps[0].rows_in == 3000


# --- token lengths -----------------------------------------------------------------
def test_token_lengths_match_what_training_encodes(smollm2_tokenizer):
    from transformers import AutoTokenizer

    from tuner.chat import encode_example

    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer)
    rows = [chat("Hi", "Hello!"), chat("Tell me a long story " * 20, "Once upon a time " * 30)]
    lengths = sh.token_lengths(rows, tok)
    assert lengths == [len(encode_example(r["messages"], tok, 10_000)["input_ids"]) for r in rows]
    assert lengths[0] < 40 < lengths[1] and sh.token_lengths([], tok) == []
    hist = sh.length_histogram([10, 11, 19, 30, 49], bins=4)
    assert hist.values.tolist() == [["10–19", 3], ["20–29", 0], ["30–39", 1], ["40–49", 1]]
    text = sh.length_summary(lengths, max_length=64)
    assert "1 of 2 rows are longer than 64 tokens" in text


# --- split -------------------------------------------------------------------------
def faq_rows(n=300):
    difficulty = ["easy"] * (n // 2) + ["medium"] * (n // 3) + ["hard"] * (n - n // 2 - n // 3)
    return [chat(f"Question {i}?", f"Answer {i}.", difficulty=d, category=f"c{i % 7}")
            for i, d in enumerate(difficulty)]


def test_same_seed_same_split_and_another_seed_another():
    rows = faq_rows()
    spec = SplitSpec(70, 20, 10, seed=3, stratify="difficulty")
    assert sh.assign_splits(rows, spec) == sh.assign_splits(rows, spec)
    assert sh.assign_splits(rows, spec) != sh.assign_splits(rows, SplitSpec(70, 20, 10, seed=4, stratify="difficulty"))


@pytest.mark.parametrize("shares", [(70, 20, 10), (80, 10, 10)])
def test_stratified_split_keeps_each_strata_proportions(shares):
    rows = faq_rows()
    labels = sh.assign_splits(rows, SplitSpec(*shares, seed=0, stratify="difficulty"))
    totals = Counter(labels)
    assert [totals[s] for s in tdata.SPLITS] == [300 * p // 100 for p in shares]
    for difficulty, n in Counter(r["difficulty"] for r in rows).items():
        got = Counter(lab for r, lab in zip(rows, labels) if r["difficulty"] == difficulty)
        for split, share in zip(tdata.SPLITS, shares):
            assert abs(got[split] - n * share / 100) < 1, (difficulty, split)
    table = sh.split_table(rows, labels, "difficulty")
    assert list(table["difficulty"]) == ["easy", "medium", "hard", "total"]
    assert table.iloc[-1]["rows"] == 300 and table.iloc[0]["shares"] == " / ".join(f"{p}%" for p in shares)


def test_small_strata_and_unstratified_split():
    rows = [chat(f"q{i}", "a", level="rare" if i < 3 else "common") for i in range(23)]
    labels = sh.assign_splits(rows, SplitSpec(70, 20, 10, stratify="level"))
    rare = Counter(lab for r, lab in zip(rows, labels) if r["level"] == "rare")
    assert sum(rare.values()) == 3 and rare["train"] == 2  # 2.1 / 0.6 / 0.3 → 2 / 1 / 0
    plain = sh.assign_splits(rows, SplitSpec(80, 10, 10))
    assert Counter(plain) == {"train": 19, "validation": 2, "test": 2}  # 18.4 / 2.3 / 2.3
    assert sh.split_table(rows, plain).values.tolist() == [["all rows", 23, 19, 2, 2, "83% / 9% / 9%"]]


def test_a_saved_split_is_what_training_and_compare_use(tmp_path):
    rows = faq_rows(40)
    split = sh.apply_split(rows, SplitSpec(70, 20, 10, seed=1, stratify="difficulty"))
    path = tdata.save_version(split, "faq", tmp_path, note=SplitSpec(70, 20, 10, 1, "difficulty").describe())
    loaded = tdata.load_jsonl(path).rows
    parts = tdata.splits(loaded, validation_fraction=0.5, test_fraction=0.3, seed=99)  # fractions ignored
    assert [len(parts[s]) for s in tdata.SPLITS] == [28, 8, 4]
    assert tdata.note_of(path) == "split 70/20/10, stratified by difficulty, seed 1"
    assert rows[0].get("split") is None  # the input rows are not changed


@pytest.mark.parametrize("shares, message", [
    ((70, 20, 20), "must make 100%"),
    ((0, 50, 50), "train part must be more than 0%"),
    ((110, -10, 0), "between 0 and 100"),
])
def test_split_settings_are_checked(shares, message):
    with pytest.raises(ValueError, match=message):
        SplitSpec(*shares)


# --- paraphrases -------------------------------------------------------------------
def test_paraphrase_cleaning_and_adding():
    assert para.clean_paraphrase('Rewritten request: "Could you tell me the time?"', "What time is it?") == \
        "Could you tell me the time?"
    assert para.clean_paraphrase("what time is it?", "What time is it?") == ""
    rows = [chat("What time is it?", "Noon.", split="test"),
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                          {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "See you"}]}]
    out = para.with_paraphrases(rows, [(0, "Tell me the time, please."), (1, "Farewell"), (0, "  ")])
    assert len(out) == 4 and out[:2] == rows
    assert users(out[2:]) == ["Tell me the time, please.", "Farewell"]
    assert out[2]["split"] == "test" and out[2]["origin"] == "paraphrase"  # stays with its source's split
    assert out[3]["messages"][0]["content"] == "Hi" and rows[1]["messages"][2]["content"] == "Bye"


def test_paraphrase_proposals_come_from_the_loaded_model(tiny_llama, tmp_path):
    from tuner.generate import GenSettings, Generator

    rows = [chat(f"Question number {i}?", "Answer.") for i in range(6)]
    proposals = para.propose_paraphrases(Generator(tmp_path), str(tiny_llama), rows, n=3, seed=0,
                                         settings=GenSettings(max_new_tokens=8))
    assert [p["row"] for p in proposals] == para.pick_rows(6, 3, 0) and len(proposals) == 3
    assert all(p["original"] == users(rows)[p["row"]] and isinstance(p["paraphrase"], str) for p in proposals)
    requests = para.paraphrase_requests(rows, [1])
    assert "Question number 1?" in requests[0][0]["content"]


# --- real cases on the starter sets --------------------------------------------
def test_support_csv_top_brands_downsampled_and_split_80_10_10():
    from tuner import importers as imp

    table = imp.read_file(tdata.STARTER_DATASETS / "customer_support.csv")
    mapping = imp.suggest_mapping(table.columns)
    assert (mapping.user, mapping.assistant) == ("customer_message", "agent_reply")
    result = imp.convert(table, mapping=mapping)
    assert result.problems == [] and len(result.rows) == len(table.records) >= 300
    assert any("\n" in tdata.last_user_text(r) for r in result.rows)  # quoted line breaks survive
    top = sh.top_values(result.rows, "brand", 5)
    out = sh.apply_filters(result.rows, FilterSpec(column="brand", values=tuple(top), sample=200, seed=1))
    assert out.steps[0].kept == sum(n for _, n in sh.value_counts(result.rows, "brand")[:5]) > 200
    assert len(out.rows) == 200 and {r["brand"] for r in out.rows} <= set(top)
    split = sh.apply_split(out.rows, SplitSpec(80, 10, 10, seed=0))
    assert Counter(r["split"] for r in split) == {"train": 160, "validation": 20, "test": 20}


def test_company_faq_split_70_20_10_stratified_by_difficulty():
    rows = tdata.load_jsonl(tdata.STARTER_DATASETS / "company_faq.jsonl").rows
    assert len(rows) >= 250 and {r["difficulty"] for r in rows} == {"easy", "medium", "hard"}
    split = sh.apply_split(rows, SplitSpec(70, 20, 10, seed=0, stratify="difficulty"))
    for level in ("easy", "medium", "hard"):
        part = [r["split"] for r in split if r["difficulty"] == level]
        got = Counter(part)
        for name, share in zip(tdata.SPLITS, (70, 20, 10)):
            assert abs(got[name] - len(part) * share / 100) < 1
    test = tdata.splits(split)["test"]
    assert all(r["split"] == "test" for r in test) and len(test) == Counter(r["split"] for r in split)["test"]


def test_formal_email_set_keyword_filter():
    rows = tdata.load_jsonl(tdata.STARTER_DATASETS / "formal_email.jsonl").rows
    kept = sh.apply_filters(rows, FilterSpec(keywords=Keywords(("professor", "supervisor"), fields=("user",))))
    assert 0 < len(kept.rows) < len(rows)
    assert all(re.search(r"\b(professor|supervisor)\b", tdata.last_user_text(r), re.I) for r in kept.rows)


# --- paraphrases: drift, duplicates, sources ---------------------------------------
def test_similarity_tells_a_rewording_from_an_off_topic_proposal():
    original = "How do I reset my password?"
    assert para.similarity(original, "What is the way to reset my password?") > 0.5
    assert para.similarity(original, "Passwords: how can I reset mine?") >= para.DRIFT_BELOW
    assert para.similarity(original, "The weather in Paris is lovely in spring.") < para.DRIFT_BELOW
    assert para.similarity(original, "") == 0.0
    assert para.similarity("Hi", "Hello") == 1.0  # too short to tell: not flagged
    known = {"how do i reset my password?"}
    assert para.proposal_flag("What is the way to reset my password?", 0.8, known) == ""
    assert para.proposal_flag("The weather is lovely.", 0.0, known) == "drift"
    assert para.proposal_flag("How do I reset my password?", 1.0, known) == "known"
    assert para.proposal_flag("", 0.0, known) == "empty"


def test_a_paraphrase_already_added_is_not_added_again():
    rows = [chat("What time is it?", "Noon."), chat("Where are you?", "Here.")]
    ticked = [(0, "Tell me the time, please."), (1, "Where are you now?")]
    once = para.with_paraphrases(rows, ticked)
    assert len(once) == 4
    assert para.with_paraphrases(once, ticked) == once  # a second click adds nothing
    rows_, added = para.add_paraphrases(once, [*ticked, (0, "What is the time?")])
    assert added == 1 and users(rows_)[-1] == "What is the time?"
    assert para.add_paraphrases(rows, [(0, "Same"), (0, "Same")])[1] == 1  # ticked twice in one batch


def test_only_original_rows_are_paraphrased_and_proposals_are_measured(tiny_llama, tmp_path):
    from tuner.generate import GenSettings, Generator

    rows = [chat(f"Question number {i} about gardens?", "Answer.") for i in range(3)]
    rows = para.with_paraphrases(rows, [(0, "A reworded first question"), (1, "A reworded second question")])
    assert para.source_rows(rows) == [0, 1, 2]
    assert set(para.pick_sources(rows, 10, seed=1)) == {0, 1, 2}
    proposals = para.propose_paraphrases(Generator(tmp_path), str(tiny_llama), rows, n=16, seed=0,
                                         settings=GenSettings(max_new_tokens=8))
    assert [p["row"] for p in proposals] == [0, 1, 2]  # never a paraphrase of a paraphrase
    for p in proposals:  # the tiny random model's words are no rewording: flagged, measured
        assert p["flag"] in ("drift", "empty") and 0 <= p["similarity"] < para.DRIFT_BELOW


# --- paraphrases: meta-text is no rewording -------------------------------------------
RESET = "How do I reset my password?"
META_REPLIES = [
    "The requested rephrased version… Original Original:",  # as Expand ticked it
    "The requested rephrased version of the request is as follows. Original Original: How do I reset my password?",
    "Here is the rewritten request: how can I reset my password?",
    "Sure! How can I reset my password?",
    "Original: How do I reset my password? New: How can I reset my password?",
    "A paraphrase of your request: what is the way to reset my password?",
    "Keep its meaning and its language: how can my password be reset?",
    "Question: how can I reset my password? Question: how?",
]
GOOD_REPLIES = [
    (RESET, "What is the way to reset my password?"),
    (RESET, "Could you explain how I can change my password?"),
    ("Can you paraphrase this sentence: the cat sat on the mat.",
     "Could you paraphrase this line for me: the cat sat on the mat?"),  # its subject is paraphrasing
    ("Question: what is 2+2?", "Question: what does 2+2 make?"),  # a label the request has itself
    ("Does the shop really open at nine?", "Are you sure the shop opens at nine?"),
    ("Here is my code, why does it crash?", "Here is my code: why does it crash?"),
]


@pytest.mark.parametrize("reply", META_REPLIES)
def test_a_reply_that_talks_about_the_rewording_is_not_ticked(reply):
    text = para.clean_paraphrase(reply, RESET)
    assert para.meta_text(text, RESET)
    # however many words it shares with its source
    assert para.proposal_flag(text, 1.0, {RESET.casefold()}, RESET) == "meta"


@pytest.mark.parametrize(("original", "reply"), GOOD_REPLIES)
def test_a_real_paraphrase_is_ticked(original, reply):
    text = para.clean_paraphrase(reply, original)
    assert para.meta_text(text, original) == ""
    assert para.proposal_flag(text, para.similarity(original, text), {original.casefold()}, original) == ""


class FixedReplies:
    """A generator that answers with set texts: the meta-text a small model once gave."""

    def __init__(self, texts):
        self.texts = texts

    def generate(self, model_name, conversations, settings):
        from tuner.generate import Reply

        return [Reply(t, "base", 0.0, 1, {}) for t in self.texts[:len(conversations)]]


def test_proposals_flag_a_small_models_meta_text_reply():
    rows = [chat(RESET, "Use the link."), chat("Where is my order?", "On its way.")]
    proposals = para.propose_paraphrases(FixedReplies([META_REPLIES[1], "Where has my order got to?"]), "m", rows,
                                         n=2, seed=0, settings=None)
    assert [p["flag"] for p in proposals] == ["meta", ""]
