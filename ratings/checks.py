"""The automatic check, before anyone rates: pure functions, no database, no UI.

Right after generation, every variant of an evaluation is measured on the same
prompts: on prompts with a reference, answer accuracy (exact, contained, token
F1) and ROUGE-L; on every prompt, the share of replies cut at the token cap and
the reply length; and the evaluation's own checks, one per line, like assertions:

    starts with: Subject:
    contains any: sorry, cannot, can't
    contains all: Dear, Regards
    not contains: As an AI
    regex: ^Subject: .+
    min words: 60
    max words: 150
    [refusal] contains any: sorry, cannot     (only prompts of category "refusal")
    [short_answer, fact] max words: 40

Each is a pass rate per variant with a 95% Wilson interval, and every
fine-tuned variant is tested against the base on the same prompts: McNemar's
exact test for pass/fail measures (a binomial test on the prompts where exactly
one of the two passed), a sign test for the per-prompt differences of F1 and
ROUGE-L. `verdict` says in words, for each measure that matters here (answer
accuracy and ROUGE-L with references; each check and all checks together), whether
the fine-tuned model is better, worse or no different, with Holm's correction for
the number of measures; a regression comes first, and the advice follows it.

`replies` is Store.replies' shape: one row per reply with position, prompt,
reference, category, variant, label, reply and new_tokens.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

from ratings import metrics
from ratings.stats import format_p, mean_interval, p_text, scipy_stats, wilson_interval

KINDS = ("starts with", "contains", "contains any", "contains all", "not contains", "regex", "min words",
         "max words")
MAX_CHECKS = 50
MAX_LINE = 500
ALPHA = 0.05  # a paired p below this is "a clear difference"
_LINE = re.compile(r"^\s*(?:\[(?P<cats>[^\]]*)\]\s*)?(?P<kind>[A-Za-z ]+?)\s*:\s*(?P<arg>.*?)\s*$")


@dataclass(frozen=True)
class Check:
    """One assertion about a reply, optionally limited to some prompt categories."""

    kind: str
    argument: str
    categories: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        scope = f"[{', '.join(self.categories)}] " if self.categories else ""
        return f"{scope}{self.kind}: {self.argument}"

    def applies(self, category) -> bool:
        if not self.categories:
            return True
        value = (category or "").strip().lower() if isinstance(category, str) else ""
        return value in self.categories

    def passes(self, reply: str) -> bool:
        reply = reply or ""
        low = reply.lower()
        if self.kind == "starts with":
            return low.lstrip().startswith(self.argument.lower())
        if self.kind == "contains":
            return self.argument.lower() in low
        if self.kind in ("contains any", "contains all", "not contains"):
            words = [w.lower() for w in _items(self.argument)]
            found = [w in low for w in words]
            return any(found) if self.kind == "contains any" else all(found) if self.kind == "contains all" \
                else not any(found)
        if self.kind == "regex":
            return re.search(self.argument, reply, re.MULTILINE) is not None
        count = word_count(reply)
        return count >= int(self.argument) if self.kind == "min words" else count <= int(self.argument)


    def fails_whatever_follows(self, reply: str) -> bool:
        """Whether `reply` fails this check however it goes on (a reply being written): past a
        word limit, a start that is not the required one, a forbidden word already there. For
        the other kinds more text can still pass, so False."""
        reply = reply or ""
        if self.kind == "max words":
            return word_count(reply) > int(self.argument)
        if self.kind == "starts with":
            start = reply.lower().lstrip()
            return len(start) >= len(self.argument) and not self.passes(reply)
        if self.kind == "not contains":
            return not self.passes(reply)
        return False


def _items(argument: str) -> list[str]:
    return [w.strip() for w in argument.split(",") if w.strip()]


def word_count(text: str) -> int:
    return len((text or "").split())


def parse_checks(text) -> list[Check]:
    """Checks from the one-per-line text (or a list of lines, as a recipe stores
    them); a bad line is refused with its number and what to write instead."""
    lines = text if isinstance(text, list) else (text or "").splitlines()
    checks = []
    for number, line in enumerate(lines, start=1):
        if not isinstance(line, str):
            raise ValueError(f"check {number}: expected a line of text (got {type(line).__name__})")
        if not line.strip() or line.strip().startswith("#"):
            continue
        if len(line) > MAX_LINE:
            raise ValueError(f"check line {number}: longer than {MAX_LINE} characters")
        match = _LINE.match(line)
        kind = " ".join(match["kind"].lower().split()) if match else ""
        if not match or kind not in KINDS:
            raise ValueError(f"check line {number}: '{line.strip()[:80]}' is not a check; write one of "
                             f"{', '.join(k + ': …' for k in KINDS)}, optionally after [category]")
        argument = match["arg"]
        if not argument:
            raise ValueError(f"check line {number}: '{kind}:' needs something after the colon")
        if kind in ("min words", "max words"):
            if not argument.isdigit():
                raise ValueError(f"check line {number}: '{kind}' needs a whole number (got '{argument}')")
        elif kind == "regex":
            try:
                re.compile(argument)
            except re.error as exc:
                raise ValueError(f"check line {number}: the regex '{argument}' is not valid ({exc})") from None
        elif kind != "contains" and kind != "starts with" and not _items(argument):
            raise ValueError(f"check line {number}: '{kind}' needs words separated by commas")
        categories = tuple(c.strip().lower() for c in (match["cats"] or "").split(",") if c.strip())
        checks.append(Check(kind, argument, categories))
    # a line given twice (a recipe's checks and the same typed by hand) is one measure: two
    # rows of one name made every table lookup of it ambiguous and the verdict failed
    unique: dict[str, Check] = {}
    for check in checks:
        unique.setdefault(check.text, check)
    checks = list(unique.values())
    if len(checks) > MAX_CHECKS:
        raise ValueError(f"{len(checks)} checks; an evaluation takes at most {MAX_CHECKS}")
    return checks


# --- per reply ---------------------------------------------------------------------------
def token_f1(reply: str, reference: str) -> float:
    """SQuAD's token F1 of the normalised texts, 0–1."""
    got, want = metrics.normalize(reply).split(), metrics.normalize(reference).split()
    common = sum((Counter(got) & Counter(want)).values())
    if not got or not want or common == 0:
        return 0.0
    precision, recall = common / len(got), common / len(want)
    return 2 * precision * recall / (precision + recall)


def was_cut(new_tokens, max_new_tokens: int | None) -> bool:
    """Whether generation stopped at the cap rather than at the model's end token."""
    try:
        return bool(max_new_tokens) and int(new_tokens) >= int(max_new_tokens)
    except (TypeError, ValueError):
        return False


def per_reply(replies: pd.DataFrame, checks: list[Check], max_new_tokens: int | None) -> pd.DataFrame:
    """One row per reply: the reference measures (None without a reference), the
    cut flag, words, and each check (None where its category does not apply)."""
    rows = []
    for r in replies.to_dict("records"):
        text, reference = r.get("reply") or "", r.get("reference")
        ref = metrics.has_reference(reference)
        row = {"position": r["position"], "label": r["label"], "variant": r.get("variant"),
               "category": r.get("category"),
               "exact match": metrics.exact_match(text, reference) if ref else None,
               "answer contained": metrics.contains_answer(text, reference) if ref else None,
               "token F1": token_f1(text, reference) if ref else None,
               "ROUGE-L": metrics.rouge_l(text, reference) / 100 if ref else None,
               "cut at the token cap": was_cut(r.get("new_tokens"), max_new_tokens),
               "words": word_count(text)}
        applicable = []
        for check in checks:
            passed = check.passes(text) if check.applies(r.get("category")) else None
            row[check.text] = passed
            if passed is not None:
                applicable.append(passed)
        row["all checks"] = all(applicable) if applicable else None
        rows.append(row)
    return pd.DataFrame(rows)


# --- per variant, and paired against the base --------------------------------------------------
BINARY = ("answer contained", "exact match")
GRADED = ("token F1", "ROUGE-L")
LOWER_IS_BETTER = ("cut at the token cap",)  # "better on N prompts" means fewer cut
TABLE_COLUMNS = ["measure", "model", "n", "passed", "rate", "low", "high"]
# "p adjusted": Holm's correction over the headline measures of that model; blank for the others
PAIRED_COLUMNS = ["measure", "model", "versus", "prompts", "better", "worse", "p", "test", "p adjusted"]


@dataclass
class CheckReport:
    table: pd.DataFrame  # TABLE_COLUMNS: one row per measure and model
    paired: pd.DataFrame  # PAIRED_COLUMNS: each fine-tuned model against the base
    replies: pd.DataFrame  # per_reply
    measures: list[str]  # in the order they are shown; the figure set beside the raters' scores first
    base: str | None
    cut_cap: int | None
    headline: list[str] = field(default_factory=list)  # the measures the verdict speaks to, one statement each


SHORT_REFERENCE = 8  # words: a median reference this short is an answer to find in the reply, not a text to match


def measures_for(per: pd.DataFrame, checks: list[Check], short_references: bool = True) -> list[str]:
    """The measures worth showing, in order: every check together when there are
    checks, else the answer-contained rate for short references (facts), else
    ROUGE-L (longer references: style and content). The verdict speaks to
    `headline_measures`, not only to the first."""
    if per.empty:
        return []
    has_ref = per["answer contained"].notna().any()
    out = []
    if checks:
        out.append("all checks")
    if has_ref:
        out += ["answer contained", "ROUGE-L"] if short_references else ["ROUGE-L", "answer contained"]
        out += ["token F1", "exact match"]
    out += [c.text for c in checks] if len(checks) > 1 else []
    return out + ["cut at the token cap"]


def headline_measures(per: pd.DataFrame, checks: list[Check], short_references: bool = True) -> list[str]:
    """The measures that matter for this evaluation, each stated in the verdict: with
    references, answer accuracy and ROUGE-L; with checks, each check and every check
    together (one check is the same as all of them, so it is said once)."""
    if per.empty:
        return []
    out = []
    if per["answer contained"].notna().any():
        out += ["answer contained", "ROUGE-L"] if short_references else ["ROUGE-L", "answer contained"]
    if len(checks) > 1:
        out += [c.text for c in checks]
    return out + (["all checks"] if checks else [])


def report(replies: pd.DataFrame, checks: list[Check], max_new_tokens: int | None = None) -> CheckReport:
    per = per_reply(replies, checks, max_new_tokens)
    lengths = sorted(word_count(r) for r in replies.get("reference", []) if metrics.has_reference(r))
    short = bool(lengths) and lengths[len(lengths) // 2] <= SHORT_REFERENCE
    measures = measures_for(per, checks, short)
    headline = headline_measures(per, checks, short)
    labels = list(dict.fromkeys(per["label"])) if not per.empty else []
    base = next((lab for lab, v in zip(per.get("label", []), per.get("variant", [])) if v == "base"), None)
    table_rows = []
    for measure in measures + ["words"]:
        for label in labels:
            values = per.loc[per["label"] == label, measure].dropna()
            if values.empty:
                continue
            table_rows.append([measure, label, *_summary(measure, values)])
    paired_rows = []
    for label in labels:
        if base is None or label == base:
            continue
        rows = [row for row in (_paired(per, measure, label, base) for measure in measures) if row]
        # each model asks "better or worse than the base?" once per headline measure: Holm keeps the
        # chance of any false finding among them at ALPHA
        family = [row for row in rows if row[0] in headline]
        adjusted = _holm([row[6] for row in family]) if family else []
        holm = {row[0]: float(p) for row, p in zip(family, adjusted)}
        paired_rows += [row + [holm.get(row[0], math.nan)] for row in rows]
    return CheckReport(pd.DataFrame(table_rows, columns=TABLE_COLUMNS),
                       pd.DataFrame(paired_rows, columns=PAIRED_COLUMNS), per, measures, base, max_new_tokens,
                       headline)


def _holm(pvalues: list[float]) -> list[float]:
    # imported on first use, like scipy: statsmodels is slow to import, and the app need not wait for it
    from statsmodels.stats.multitest import multipletests

    return list(multipletests(pvalues, alpha=ALPHA, method="holm")[1])


def _summary(measure: str, values: pd.Series) -> list:
    n = len(values)
    if measure in GRADED or measure == "words":
        # F1 and ROUGE-L lie in 0–1; no reply has fewer than no words
        mean, low, high = mean_interval(values, (0.0, 1.0) if measure in GRADED else (0.0, math.inf))
        if n < 3:  # a t interval of two values spans far beyond anything possible: none is more honest
            return [n, None, mean, math.nan, math.nan]
        return [n, None, mean, low, high]
    passed = int(values.astype(bool).sum())
    low, high = wilson_interval(passed, n)
    return [n, passed, passed / n, low, high]


def _paired(per: pd.DataFrame, measure: str, model: str, base: str) -> list | None:
    both = per.pivot_table(index="position", columns="label", values=measure, aggfunc="first")
    if model not in both or base not in both:
        return None
    both = both[[model, base]].dropna()
    if both.empty:
        return None
    mine, theirs = both[model].astype(float), both[base].astype(float)
    if measure in LOWER_IS_BETTER:
        mine, theirs = -mine, -theirs
    better, worse = int((mine > theirs).sum()), int((mine < theirs).sum())
    # binomial test of the prompts where the two differ: McNemar's exact test for pass/fail
    # measures, the sign test for graded ones
    test = "sign test" if measure in GRADED else "McNemar exact"
    p = float(scipy_stats().binomtest(better, better + worse).pvalue) if better + worse else 1.0
    return [measure, model, base, len(both), better, worse, p, test]


# --- in words -----------------------------------------------------------------------------------
def _figure(table: pd.DataFrame, measure: str, label: str) -> str:
    row = table[(table["measure"] == measure) & (table["model"] == label)]
    if row.empty:
        return "—"
    row = row.iloc[0]
    if measure in GRADED:
        return f"{100 * row['rate']:.1f}"
    return f"{int(row['passed'])}/{int(row['n'])}"


def _verb(measure: str) -> str:
    if measure == "all checks":
        return "passes every check on"
    if measure in GRADED:
        return f"scores {measure}"
    return f"has the {measure} on" if measure in BINARY else f"passes '{measure}' on"


def _name(measure: str) -> str:
    return measure if measure in BINARY + GRADED or measure == "all checks" else f"'{measure}'"


def _statement(rep: CheckReport, r: pd.Series, finding: str, family: int) -> str:
    """One measure of one model against the base: both figures, what they show, the test."""
    measure, label = r["measure"], r["model"]
    unit = " (0–100, mean)" if measure in GRADED else " prompts"
    holm = f"; Holm-adjusted {p_text(r['p adjusted'])}" if family > 1 else ""
    return (f"{_verb(measure)} {_figure(rep.table, measure, label)}{unit}, base "
            f"{_figure(rep.table, measure, rep.base)}: {finding} ({r['test']} {p_text(r['p'])}, better on "
            f"{r['better']}, worse on {r['worse']} of {r['prompts']}{holm})")


def _variant_verdict(rep: CheckReport, label: str) -> str:
    if not rep.headline:
        return (f"**{label}**: this evaluation has no reference answers and no checks, so there is nothing "
                "automatic to compare (add checks, one per line, to have some) — the raters will tell.")
    rows = rep.paired[(rep.paired["model"] == label) & rep.paired["measure"].isin(rep.headline)]
    rows = rows.set_index("measure", drop=False)
    measured = [m for m in rep.headline if m in rows.index]
    if not measured:
        return f"**{label}**: nothing to compare on ({', '.join(_name(m) for m in rep.headline)})."
    family = len(measured)
    clear = {m: rows.loc[m, "p adjusted"] < ALPHA for m in measured}
    up = {m: rows.loc[m, "better"] > rows.loc[m, "worse"] for m in measured}
    worse = [m for m in measured if clear[m] and not up[m]]
    better = [m for m in measured if clear[m] and up[m]]
    # a raw p below ALPHA that the correction takes away is not a finding, but it is no
    # reason to train longer either
    leaning = [m for m in measured if not clear[m] and rows.loc[m, "p"] < ALPHA and not up[m]]
    same = [m for m in measured if m not in worse + better + leaning]
    statements = ([_statement(rep, rows.loc[m], "clearly **worse** than the base", family) for m in worse]
                  + [_statement(rep, rows.loc[m], "clearly better than the base", family) for m in better]
                  + [_statement(rep, rows.loc[m], f"leaning worse, not clear after correcting for {family} "
                                                  "measures", family) for m in leaning]
                  + [_statement(rep, rows.loc[m], "no difference yet", family) for m in same])
    text = f"**{label}** " + "; it ".join(statements) + "."
    missing = [m for m in rep.headline if m not in rows.index]
    if missing:
        text += f" Nothing to compare on {', '.join(_name(m) for m in missing)}."
    if worse:
        # a regression is most often the data teaching it (training replies that fail the check
        # or stray from the references), else a recipe that overshoots
        wants = [want for want, found in (("pass these checks", any(m not in BINARY + GRADED for m in worse)),
                                          ("look like the references", any(m in BINARY + GRADED for m in worse)))
                 if found]
        data = " and ".join(wants)
        return text + (f" Do not ask friends to rate this one yet: check the data and the recipe — do the training "
                       f"replies themselves {data}? Then try a lower learning rate, fewer epochs, or the dataset's "
                       "recommended settings.")
    if better:
        watch = f"; the raters should look at {', '.join(_name(m) for m in leaning)}" if leaning else ""
        return text + (f" Clearly better on {len(better)} of {family} measures and worse on none — worth "
                       f"rating{watch}.")
    if leaning:
        return text + (f" No clear difference, but it leans worse on {', '.join(_name(m) for m in leaning)}: "
                       "check the data and the recipe before training longer.")
    differ = max(int(rows.loc[m, "better"] + rows.loc[m, "worse"]) for m in measured)
    if differ < 6:
        return text + (" No difference yet on any measure; too few prompts differ to tell — use more held-out "
                       "prompts, or train longer.")
    return text + (" No difference yet on any measure. Try the dataset's recommended settings (Train tab), more "
                   "epochs or a higher learning rate, then generate again before friends rate.")


def verdict(rep: CheckReport) -> str:
    """One paragraph per fine-tuned variant: a statement per headline measure against
    the base (regressions first, then clear gains, then the rest) with the paired test
    and Holm's correction for the number of measures, and what to do next."""
    if rep.replies.empty or not rep.measures:
        return "No replies to check yet."
    if rep.base is None:
        return "No base-model replies in this evaluation: the automatic check compares each variant with the base."
    lines = [_variant_verdict(rep, label) for label in dict.fromkeys(rep.replies["label"]) if label != rep.base]
    cut = rep.replies.groupby("label")["cut at the token cap"].agg(["sum", "count"])
    for label, (n_cut, n) in cut.iterrows():
        if n_cut:
            lines.append(f"{int(n_cut)} of {int(n)} replies of {label} were cut at the {rep.cut_cap}-token cap "
                         "(marked for you, not for raters): raise Max new tokens if they matter.")
    return "\n\n".join(lines)


def display(table: pd.DataFrame) -> pd.DataFrame:
    """The table as people read it: one row per measure, one column per model, each
    cell "passed/n · rate% (95% low–high)" (means for F1, ROUGE-L on 0–100, and words)."""
    if table.empty:
        return table
    models = list(dict.fromkeys(table["model"]))
    rows = []
    for measure in dict.fromkeys(table["measure"]):
        part = table[table["measure"] == measure].set_index("model")
        rows.append([measure] + [_cell(measure, part.loc[m]) if m in part.index else "" for m in models])
    return pd.DataFrame(rows, columns=["measure"] + models)


def _cell(measure: str, row: pd.Series) -> str:
    scale = 1 if measure == "words" else 100
    low, high = row["low"], row["high"]
    interval = f" ({scale * low:.0f}–{scale * high:.0f})" if pd.notna(low) and pd.notna(high) else ""
    if measure == "words" or measure in GRADED:
        return f"{scale * row['rate']:.1f}{interval}"
    return f"{int(row['passed'])}/{int(row['n'])} · {100 * row['rate']:.0f}%{interval}"


def display_paired(paired: pd.DataFrame) -> pd.DataFrame:
    if paired.empty:
        return paired
    shown = paired.assign(p=paired["p"].map(format_p),
                          **{"p adjusted": paired["p adjusted"].map(lambda p: "" if pd.isna(p) else format_p(p))})
    # the corrected p beside the raw one; blank for measures outside the verdict's family
    return shown[["measure", "model", "versus", "prompts", "better", "worse", "p", "p adjusted", "test"]]


def of_evaluation(evaluation: dict, replies: pd.DataFrame) -> CheckReport:
    """The automatic check of a stored evaluation (Store.evaluation, Store.replies)."""
    settings = evaluation.get("settings") or {}
    return report(replies, parse_checks(evaluation.get("checks") or []), settings.get("max_new_tokens"))


# --- the checks against the human scores ---------------------------------------------------------
def agreement(rep: CheckReport, scores: pd.DataFrame) -> dict:
    """How well the automatic check agrees with the raters: Spearman's rho between
    each rated reply's automatic figure (its headline measure) and its mean human score."""
    if rep.replies.empty or scores.empty or not rep.measures:
        return {"n": 0, "rho": math.nan, "p": math.nan, "measure": rep.measures[0] if rep.measures else None}
    measure = rep.measures[0] if rep.measures[0] != "cut at the token cap" else None
    if measure is None:
        return {"n": 0, "rho": math.nan, "p": math.nan, "measure": None}
    human = scores.groupby(["position", "label"])["score"].mean()
    auto = rep.replies.set_index(["position", "label"])[measure].dropna().astype(float)
    both = pd.concat([auto, human], axis=1, join="inner").dropna()
    n = len(both)
    if n < 3 or both.iloc[:, 0].nunique() < 2 or both.iloc[:, 1].nunique() < 2:
        return {"n": n, "rho": math.nan, "p": math.nan, "measure": measure}
    result = scipy_stats().spearmanr(both.iloc[:, 0], both.iloc[:, 1])
    return {"n": n, "rho": float(result.statistic), "p": float(result.pvalue), "measure": measure}


def agreement_sentence(result: dict) -> str:
    if not result.get("measure"):
        return "No automatic measure to set beside the human scores."
    if result["n"] < 3 or math.isnan(result["rho"]):
        return (f"Agreement with the raters: not yet measurable ({result['n']} rated replies with a "
                f"'{result['measure']}' figure and varied scores; 3 or more are needed).")
    rho = result["rho"]
    strength = "strong" if abs(rho) >= 0.6 else "moderate" if abs(rho) >= 0.3 else "weak"
    return (f"Agreement with the raters: Spearman ρ = {rho:.2f} (p = {format_p(result['p'])}) between "
            f"'{result['measure']}' and the mean human score over {result['n']} rated replies: {strength}"
            f"{' (the raters like what the check fails)' if rho < 0 else ''}.")
