"""The automatic check: every check kind on fixed replies, the intervals and the
paired test against scipy, the verdict in words, agreement with human scores."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from scipy import stats as sps

from ratings import checks as rc
from ratings.stats import wilson_interval

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
    assert "a clear difference (McNemar exact p = 0.021" in text and "worth rating" in text
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
