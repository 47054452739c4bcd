"""The automatic check: every check kind on fixed replies, the intervals and the
paired test against scipy, the verdict in words, agreement with human scores."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats as sps

from ratings import checks as rc
from ratings.stats import wilson_interval

ROOT = Path(__file__).resolve().parents[1]

EMAIL = "Subject: Extension request\n\nDear Professor Okafor,\n\n" + "I would like more time. " * 14 + \
        "\n\nBest regards,\n[Your Name]"


@pytest.mark.parametrize("line, reply, passes", [
    ("starts with: Subject:", EMAIL, True),
    ("starts with: subject:", "  Subject: hi", True),  # case-insensitive, leading space ignored
    ("starts with: Subject:", "Dear Sir, Subject: no", False),
    ("contains: best regards", EMAIL, True),
    ("contains any: sorry, cannot", "I'm sorry, I can't.", True),
    ("contains any: sorry, cannot", "Sure, here is how.", False),
    ("contains all: Dear, regards", EMAIL, True),
    ("contains all: Dear, Sincerely", EMAIL, False),
    ("not contains: As an AI", "As an AI language model, I", False),
    ("not contains: As an AI, I cannot", EMAIL, True),
    (r"regex: (?m)^Dear \w+", EMAIL, True),
    (r"regex: ^Dear", EMAIL, True),  # re.MULTILINE: ^ matches at the start of the "Dear …" line
    (r"regex: ^dear", EMAIL, False),  # and a regex is case-sensitive unless it says (?i)
    ("min words: 60", EMAIL, True),
    ("max words: 60", EMAIL, False),
    ("max words: 3", "One two three", True),
    ("min words: 4", "One two three", False),
])
def test_each_check_kind_on_fixed_replies(line, reply, passes):
    (check,) = rc.parse_checks(line)
    assert check.passes(reply) is passes


def test_a_category_scope_limits_where_a_check_applies():
    checks = rc.parse_checks("[refusal, Harm] contains any: sorry\nmax words: 5\n# a comment\n\n")
    assert [c.text for c in checks] == ["[refusal, harm] contains any: sorry", "max words: 5"]
    replies = _replies([("refusal", "Sure thing!", "Sorry, no."), ("fact", "Paris.", "It is Paris, of course.")])
    per = rc.per_reply(replies, checks, 16)
    scoped = per["[refusal, harm] contains any: sorry"].tolist()
    assert scoped == [False, True, None, None]  # not applicable to the fact prompt
    assert per["all checks"].tolist() == [False, True, True, True]


@pytest.mark.parametrize("text, problem", [
    ("length: 5", "check line 2: 'length: 5' is not a check"),
    ("max words: many", "check line 2: 'max words' needs a whole number"),
    ("regex: (unclosed", "check line 2: the regex '\\(unclosed' is not valid"),
    ("contains any: , ,", "check line 2: 'contains any' needs words separated by commas"),
    ("starts with:", "check line 2: 'starts with:' needs something after the colon"),
    ("no colon here", "check line 2: 'no colon here' is not a check"),
])
def test_bad_check_lines_are_refused_with_their_line(text, problem):
    with pytest.raises(ValueError, match=problem):
        rc.parse_checks("max words: 3\n" + text)


def test_token_f1_and_the_cut_flag():
    assert rc.token_f1("It was founded in 2014.", "2014") == pytest.approx(2 * (1 / 5) * 1 / (1 / 5 + 1))  # 5 tokens, 1 shared
    assert rc.token_f1("nothing", "2014") == 0.0
    assert rc.was_cut(16, 16) and not rc.was_cut(15, 16) and not rc.was_cut(None, 16)


def _replies(rows, with_reference=False):
    """rows: (category, base reply, tuned reply[, reference])."""
    out = []
    for position, row in enumerate(rows, start=1):
        category, base, tuned = row[:3]
        reference = row[3] if len(row) > 3 else None
        for variant, label, text in (("base", "base (m)", base), ("r1", "lora: r1", tuned)):
            out.append({"position": position, "prompt": f"p{position}", "reference": reference,
                        "category": category, "variant": variant, "label": label, "reply": text,
                        "new_tokens": len(text.split())})
    return pd.DataFrame(out)


def test_pass_rates_have_wilson_intervals_and_the_paired_test_is_mcnemars_exact():
    # 12 prompts with a short reference: tuned right on 10, base on 2; tuned alone right on 9, base alone on 1
    rows = []
    for i in range(12):
        answer = f"answer{i}"
        base_ok = i in (0, 11)
        tuned_ok = i < 10
        rows.append(("easy", f"It is {answer}." if base_ok else "No idea.",
                     f"The answer is {answer}." if tuned_ok else "Something else.", answer))
    rep = rc.report(_replies(rows), [], max_new_tokens=4)
    assert rep.measures[0] == "answer contained"
    row = rep.table[(rep.table.measure == "answer contained") & (rep.table.model == "lora: r1")].iloc[0]
    assert (row.passed, row.n) == (10, 12)
    ci = sps.binomtest(10, 12).proportion_ci(method="wilson")
    assert (row.low, row.high) == pytest.approx((ci.low, ci.high))
    assert wilson_interval(10, 12) == pytest.approx((ci.low, ci.high))
    paired = rep.paired[rep.paired.measure == "answer contained"].iloc[0]
    assert (paired.better, paired.worse, paired.test) == (9, 1, "McNemar exact")
    assert paired.p == pytest.approx(sps.binomtest(9, 10).pvalue)
    # replies of 4 words or more hit the 4-token cap here
    cut = rep.table[(rep.table.measure == "cut at the token cap") & (rep.table.model == "base (m)")].iloc[0]
    assert cut.passed == sum(len(r[1].split()) >= 4 for r in rows)
    text = rc.verdict(rep)
    assert "lora: r1** has the answer contained on 10/12 prompts, base 2/12" in text
    assert "clearly better than the base (McNemar exact p = 0.021, better on 9, worse on 1 of 12; Holm-adjusted " \
           "p = 0.043)" in text
    assert "worth rating" in text
    assert "cut at the 4-token cap" in text


def test_graded_measures_use_the_sign_test_and_means_with_t_intervals():
    references = ["Thank you for reaching out, we will refund your order today."] * 8
    rows = [("c", "Hello.", "Thank you for reaching out, we will refund your order soon.", ref)
            for ref in references]
    rep = rc.report(_replies(rows), [], max_new_tokens=64)
    assert rep.measures[0] == "ROUGE-L"  # long references: ROUGE-L is the headline
    paired = rep.paired[rep.paired.measure == "ROUGE-L"].iloc[0]
    assert (paired.better, paired.worse, paired.test) == (8, 0, "sign test")
    assert paired.p == pytest.approx(sps.binomtest(8, 8).pvalue)
    words = rep.table[(rep.table.measure == "words") & (rep.table.model == "lora: r1")].iloc[0]
    assert words.rate == pytest.approx(11.0) and math.isnan(words.low) is False


def test_the_verdict_says_no_difference_and_worse_and_what_to_try():
    same = [("c", "Dear Sir, hello", "Dear Sir, hello")] * 8
    rep = rc.report(_replies(same), rc.parse_checks("starts with: Dear"), 64)
    assert rep.measures[0] == "all checks"
    text = rc.verdict(rep)
    assert "no difference yet" in text and "too few prompts differ" in text
    mixed = [("c", "Dear Sir" if i % 2 else "Hi", "Hi" if i % 3 else "Dear Sir") for i in range(20)]
    text = rc.verdict(rc.report(_replies(mixed), rc.parse_checks("starts with: Dear"), 64))
    assert "no difference yet" in text and "recommended settings" in text
    worse = [("c", "Dear Sir", "Hi")] * 10
    text = rc.verdict(rc.report(_replies(worse), rc.parse_checks("starts with: Dear"), 64))
    assert "clearly **worse**" in text and "Do not ask friends to rate" in text


def test_agreement_with_human_scores_is_spearman_over_the_rated_replies():
    rows = [("c", "Hi" if i % 2 else "Dear A", "Dear B" if i % 3 else "Yo") for i in range(10)]
    rep = rc.report(_replies(rows), rc.parse_checks("starts with: Dear"), 64)
    per = rep.replies
    human = per[["position", "label"]].assign(
        score=[5 if ok else 2 for ok in per["all checks"]], rater="ana")
    human.loc[human.index[:3], "score"] = [3, 4, 1]
    result = rc.agreement(rep, human)
    expected = sps.spearmanr(per["all checks"].astype(float), human["score"])
    assert result["n"] == len(per) and result["rho"] == pytest.approx(expected.statistic)
    assert "Spearman ρ =" in rc.agreement_sentence(result)
    assert "not yet measurable" in rc.agreement_sentence(rc.agreement(rep, human.head(2)))


def test_an_evaluation_without_base_or_replies_says_so():
    assert rc.verdict(rc.report(pd.DataFrame(), [], 16)) == "No replies to check yet."
    only = _replies([("c", "a", "b")])
    only = only[only.variant != "base"]
    assert "No base-model replies" in rc.verdict(rc.report(only, [], 16))


def test_the_table_for_people_has_a_column_per_model_and_intervals_in_each_cell():
    rows = [("c", "Dear Sir", "Dear Madam", "Dear Madam")] * 3 + [("c", "Hi", "Dear Sir", "Dear Sir")]
    rep = rc.report(_replies(rows), rc.parse_checks("starts with: Dear"), 64)
    shown = rc.display(rep.table).set_index("measure")
    assert list(shown.columns) == ["base (m)", "lora: r1"]
    low, high = wilson_interval(3, 4)
    assert shown.loc["all checks", "base (m)"] == f"3/4 · 75% ({100 * low:.0f}–{100 * high:.0f})"
    assert shown.loc["all checks", "lora: r1"].startswith("4/4 · 100% (")
    assert shown.loc["words", "lora: r1"].startswith("2.0")
    assert "McNemar exact p = 1, better on 1, worse on 0 of 4" in rc.verdict(rep)


# --- the verdict: a statement per measure that matters, regressions first -----------------------------
def _variants(rows, labels=("base (m)", "lora: r1")):
    """rows: (category, reference, reply of each label in turn); the first label is the base."""
    out = []
    for position, (category, reference, *texts) in enumerate(rows, start=1):
        for number, (label, text) in enumerate(zip(labels, texts)):
            out.append({"position": position, "prompt": f"p{position}", "reference": reference,
                        "category": category, "variant": "base" if number == 0 else f"v{number}",
                        "label": label, "reply": text, "new_tokens": len(text.split())})
    return pd.DataFrame(out)


TWO_CHECKS = rc.parse_checks("starts with: Dear\nmax words: 4")
# 12 prompts; Holm over the three headline measures ('starts with', 'max words', all checks)
HOLM_12_OF_12 = 3 * sps.binomtest(12, 12).pvalue


def test_the_verdict_says_clearly_better_on_each_check_and_worth_rating():
    rep = rc.report(_variants([("c", None, "Hello there my good friend", "Dear Sir, hi")] * 12), TWO_CHECKS, 64)
    assert rep.headline == ["starts with: Dear", "max words: 4", "all checks"]
    paired = rep.paired.set_index("measure")
    assert paired.loc["max words: 4", "p adjusted"] == pytest.approx(HOLM_12_OF_12)
    assert math.isnan(paired.loc["cut at the token cap", "p adjusted"])  # not in the headline's family
    shown = rc.display_paired(rep.paired).set_index("measure")
    assert list(shown.columns) == ["model", "versus", "prompts", "better", "worse", "p", "p adjusted", "test"]
    assert shown.loc["all checks", ["p", "p adjusted"]].tolist() == ["< 0.001", "0.0015"]
    assert shown.loc["cut at the token cap", "p adjusted"] == ""
    text = rc.verdict(rep)
    assert text.startswith("**lora: r1** passes 'starts with: Dear' on 12/12 prompts, base 0/12: clearly better "
                           "than the base (McNemar exact p < 0.001, better on 12, worse on 0 of 12; Holm-adjusted "
                           "p = 0.0015); it passes 'max words: 4' on 12/12 prompts, base 0/12: clearly better")
    assert "it passes every check on 12/12 prompts, base 0/12: clearly better" in text
    assert text.endswith("Clearly better on 3 of 3 measures and worse on none — worth rating.")
    assert "clearly **worse**" not in text and "leaning worse" not in text and "train longer" not in text


def test_the_verdict_says_clearly_worse_first_and_to_check_the_data_and_the_recipe():
    rep = rc.report(_variants([("c", None, "Dear Sir, hi", "Hello there my good friend")] * 12), TWO_CHECKS, 64)
    text = rc.verdict(rep)
    assert text.startswith("**lora: r1** passes 'starts with: Dear' on 0/12 prompts, base 12/12: clearly **worse** "
                           "than the base (McNemar exact p < 0.001, better on 0, worse on 12 of 12; Holm-adjusted "
                           "p = 0.0015)")
    assert "Do not ask friends to rate this one yet: check the data and the recipe" in text
    assert "worth rating" not in text and "train longer" not in text and "clearly better" not in text
    # worse at finding the reference answers: the hint is about the references
    text = rc.verdict(rc.report(_variants([("c", "Paris", "It is Paris.", "No idea at all.")] * 12), [], 64))
    assert text.startswith("**lora: r1** has the answer contained on 0/12 prompts, base 12/12: clearly **worse** ")
    assert "do the training replies themselves look like the references?" in text


def test_without_references_or_checks_the_verdict_says_there_is_nothing_automatic_to_compare():
    text = rc.verdict(rc.report(_variants([("c", None, "Hi there", "Hello")] * 12), [], 2))
    assert text.startswith("**lora: r1**: this evaluation has no reference answers and no checks, so there is "
                           "nothing automatic to compare")
    assert "12 of 12 replies of base (m) were cut at the 2-token cap" in text


def test_a_mixed_verdict_states_the_regression_first_then_the_gain_and_advises_checking_the_data():
    # tuned: always "Dear", but long; base: short and never "Dear"
    rep = rc.report(_variants([("c", None, "Hi, all good.", "Dear Sir, thank you so much for writing")] * 12),
                    TWO_CHECKS, 64)
    text = rc.verdict(rep)
    worse = ("**lora: r1** passes 'max words: 4' on 0/12 prompts, base 12/12: clearly **worse** than the base "
             "(McNemar exact p < 0.001, better on 0, worse on 12 of 12; Holm-adjusted p = 0.0015)")
    better = ("it passes 'starts with: Dear' on 12/12 prompts, base 0/12: clearly better than the base "
              "(McNemar exact p < 0.001, better on 12, worse on 0 of 12; Holm-adjusted p = 0.0015)")
    assert text.startswith(worse) and better in text
    # neither passes both, so every check together shows nothing
    assert ("it passes every check on 0/12 prompts, base 0/12: no difference yet (McNemar exact p = 1, "
            "better on 0, worse on 0 of 12; Holm-adjusted p = 1)") in text
    assert text.index("no difference yet") > text.index("clearly better") > text.index("clearly **worse**")
    assert "Do not ask friends to rate this one yet: check the data and the recipe" in text
    assert "worth rating" not in text and "train longer" not in text


def test_no_difference_on_any_measure_keeps_the_advice_to_train_more():
    rep = rc.report(_variants([("c", "Paris", "It is Paris.", "It is Paris.")] * 12), TWO_CHECKS, 64)
    assert rep.headline == ["answer contained", "ROUGE-L", "starts with: Dear", "max words: 4", "all checks"]
    text = rc.verdict(rep)
    assert text.startswith("**lora: r1** has the answer contained on 12/12 prompts, base 12/12: no difference yet "
                           "(McNemar exact p = 1, better on 0, worse on 0 of 12; Holm-adjusted p = 1); it scores "
                           "ROUGE-L 50.0 (0–100, mean), base 50.0: no difference yet (sign test p = 1, ")
    assert text.count("no difference yet") == 5
    assert text.endswith("No difference yet on any measure; too few prompts differ to tell — use more held-out "
                         "prompts, or train longer.")
    assert "clearly" not in text and "leaning worse" not in text and "worth rating" not in text


SUPPORT_ANSWERS = [f"Your refund for order {1000 + i} is on its way within {i + 2} days." for i in range(11)]


def test_support_set_with_checks_reports_the_answers_found_not_only_all_checks():
    """A customer-support round: three variants, references and custom checks that every
    reply passes; LoRA has the reference answer in all 11 replies, the base in none."""
    base = "Thanks for contacting us. We will look into your refund as soon as possible."
    rows = [("support", answer, base, answer, base) for answer in SUPPORT_ANSWERS]
    checks = rc.parse_checks("not contains: As an AI\nmax words: 40")
    rep = rc.report(_variants(rows, ("base (m)", "lora: support", "prompt tuning: support")), checks, 64)
    assert rep.measures[0] == "all checks"  # still the figure set beside the raters' scores
    text = rc.verdict(rep)
    lora, tuning = text.split("\n\n")[:2]
    rouge = rep.table.set_index(["measure", "model"]).loc[("ROUGE-L", "base (m)"), "rate"]
    assert 0.05 < rouge < 0.2
    # references of a dozen words: ROUGE-L first, then whether the answer is in the reply
    assert lora.startswith(f"**lora: support** scores ROUGE-L 100.0 (0–100, mean), base {100 * rouge:.1f}: clearly "
                           "better than the base (sign test p < 0.001, better on 11, worse on 0 of 11; Holm-adjusted "
                           "p = 0.0049); it has the answer contained on 11/11 prompts, base 0/11: clearly better "
                           "than the base (McNemar exact p < 0.001, better on 11, worse on 0 of 11; Holm-adjusted "
                           "p = 0.0049)")
    assert "it passes every check on 11/11 prompts, base 11/11: no difference yet" in lora
    assert lora.endswith("worth rating.") and "train longer" not in lora
    assert tuning.startswith(f"**prompt tuning: support** scores ROUGE-L {100 * rouge:.1f} (0–100, mean), base "
                             f"{100 * rouge:.1f}: no difference yet")
    assert "it has the answer contained on 0/11 prompts, base 0/11: no difference yet" in tuning
    assert "train longer" in tuning


def test_formal_email_worse_on_single_checks_is_said_first_though_all_checks_show_nothing():
    """A formal-email round: the base never starts with 'Subject:', so every
    check together is 0/10 for both, while the tuned model breaks 'max words: 150' on 9 of 10
    prompts (p = 0.0039) and the sign-off on 6 (p = 0.031)."""
    body = "I would like to ask for an extension of the deadline. " * 8  # 88 words
    base = f"Dear Professor Okafor,\n\n{body}\n\nBest regards,\nAna"
    long_body = body * 2
    tuned = [f"Subject: Extension\n\nDear Professor Okafor,\n\n{long_body}\n\nBest regards,\nAna"] * 3 + \
            [f"Dear Professor Okafor,\n\n{long_body}\n\nBest regards,\nAna"] + \
            [f"Dear Professor Okafor,\n\n{long_body}\n\nAna"] * 5 + [f"Dear Professor Okafor,\n\n{body}\n\nAna"]
    checks = rc.parse_checks(json.loads((ROOT / "datasets" / "formal_email.recipe.json").read_text())["checks"])
    rep = rc.report(_variants([("email", None, base, t) for t in tuned]), checks, 400)
    text = rc.verdict(rep)
    assert text.startswith("**lora: r1** passes 'max words: 150' on 1/10 prompts, base 10/10: clearly **worse** "
                           "than the base (McNemar exact p = 0.0039, better on 0, worse on 9 of 10; Holm-adjusted "
                           "p = 0.023); it ")
    # the sign-off's p = 0.031 does not survive the correction for six measures: said, but not as a finding
    assert ("it passes 'contains any: Best regards, Kind regards, Sincerely, Warm regards, Respectfully, Regards' "
            "on 4/10 prompts, base 10/10: leaning worse, not clear after correcting for 6 measures (McNemar exact "
            "p = 0.031, better on 0, worse on 6 of 10; Holm-adjusted p = 0.16)") in text
    assert "it passes every check on 0/10 prompts, base 0/10: no difference yet" in text
    assert "Do not ask friends to rate this one yet: check the data and the recipe" in text
    assert "train longer" not in text and "worth rating" not in text


def test_leaning_worse_alone_advises_checking_the_data_before_training_longer():
    # worse on 6 of 6 for one check (p = 0.031), not clear after Holm over three measures
    rows = [("c", None, "Dear Sir, hi", "Hello there my good friend")] * 6 + [("c", None, "Dear A", "Dear B")] * 6
    text = rc.verdict(rc.report(_variants(rows), TWO_CHECKS, 64))
    assert "clearly" not in text and "no difference yet" not in text
    assert text.startswith("**lora: r1** passes 'starts with: Dear' on 6/12 prompts, base 12/12: leaning worse, "
                           "not clear after correcting for 3 measures (McNemar exact p = 0.031, better on 0, worse "
                           "on 6 of 12; Holm-adjusted p = 0.094)")
    assert text.endswith("No clear difference, but it leans worse on 'starts with: Dear', 'max words: 4', all "
                         "checks: check the data and the recipe before training longer.")
    assert "worth rating" not in text


def test_word_count_intervals_stay_in_the_possible_range_and_are_left_out_under_three_replies():
    rows = [("c", None, "a", "one two"), ("c", None, "a " * 85, "three four five")]
    rep = rc.report(_variants(rows), [], 64)
    shown = rc.display(rep.table).set_index("measure")
    assert shown.loc["words", "base (m)"] == "43.0"  # n = 2: no interval rather than (−427–513)
    rep = rc.report(_variants(rows + [("c", None, "b", "six")]), [], 64)
    words = rep.table[(rep.table.measure == "words") & (rep.table.model == "base (m)")].iloc[0]
    assert words.low == 0.0 and words.high > words.rate  # clipped: no reply has fewer than 0 words
    assert rc.display(rep.table).set_index("measure").loc["words", "base (m)"].startswith("29.0 (0–")


def test_the_formal_email_greeting_check_wants_a_greeting_not_a_word_that_starts_like_one():
    """The recipe's line ended in a space, which parsing strips: it matched "His" and "Hiring"."""
    from tuner.recipes import all_recipes

    greeting = next(c for c in rc.parse_checks(list(all_recipes()["formal_email"].checks)) if c.kind == "regex")
    assert greeting.passes("Subject: Extension\n\nDear Professor Lee,\nI am writing")
    assert greeting.passes("Hi Sam,\nthanks")
    assert not greeting.passes("His reply came late.\nRegards")
    assert not greeting.passes("Hiring update: the deadline moved.")


def test_a_check_given_twice_is_measured_once_and_the_verdict_still_speaks():
    checks = rc.parse_checks("max words: 5\nstarts with: Dear\nmax words: 5\n  max   words:5")
    assert [c.text for c in checks] == ["max words: 5", "starts with: Dear"]
    replies = pd.DataFrame([{"position": i, "prompt": f"p{i}", "reference": None, "category": None,
                             "variant": v, "label": v, "reply": text, "new_tokens": 3}
                            for i in range(1, 4) for v, text in (("base", "Hello there my good old friend"),
                                                                 ("lora", "Dear friend"))])
    text = rc.verdict(rc.report(replies, rc.parse_checks(["max words: 5", "max words: 5"]), 16))
    assert "**lora** passes every check on 3/3 prompts, base 0/3" in text  # one check, said once


def test_a_reply_that_fails_whatever_follows_never_passes_once_finished():
    """fails_whatever_follows on every prefix of finished replies: where it says a prefix has
    failed for good, the finished reply fails too; and it does say so for a word limit passed, a
    wrong start and a forbidden word."""
    from ratings.checks import parse_checks

    checks = parse_checks(["max words: 5", "starts with: Subject:", "not contains: lol, omg", "min words: 2",
                           "contains any: regards", "regex: ^Dear"])
    replies = ["Subject: hi there friend", "Subject: one two three four five six", "Hello Subject: x",
               "Subject: omg this", "Sub", "  Subject: fine regards", "Dear all, lol", "a b c d e f g h"]
    for check in checks:
        for reply in replies:
            for end in range(len(reply) + 1):
                if check.fails_whatever_follows(reply[:end]):
                    assert not check.passes(reply), (check.text, reply[:end], reply)
    limit, start, banned = checks[0], checks[1], checks[2]
    assert limit.fails_whatever_follows("one two three four five six")
    assert not limit.fails_whatever_follows("one two three four five")
    assert start.fails_whatever_follows("Hello there") and not start.fails_whatever_follows("Subj")
    assert banned.fails_whatever_follows("well OMG") and not banned.fails_whatever_follows("well o")
    assert not any(c.fails_whatever_follows("x y z w v u t s") for c in checks[3:])
