"""When to stop rating: an anytime-valid decision for each fine-tuned model against the
base, valid however often the owner looks (after every rating, if they like).

The unit is the prompt, as in the Results tab's paired test. Ratings of one prompt are
not independent (every rater reads the same two replies; a reply that happens to suit
one model shows in every rating of it), so single ratings cannot be the unit: a test
that counts each rating as independent evidence treats a lucky prompt rated by six
raters as six pieces of evidence, and its guarantee does not hold under "no difference
on average" (how far it errs depends on how much replies differ from prompt to prompt;
bench/sequential.py reports it beside this test's own rate).

Each prompt enters the test once, when the pair of exactly these two models' replies
on it has been rated `quota` times (1: its first rating). Its value is the mean over
those ratings of success(fine-tuned) - success(base), a number in [-1, 1]; one rater
scored both replies of a pair, so that rater's strictness cancels. Later ratings of
the pair feed the tables, not the test: measured in bench/sequential.py, a prompt's
first rating teaches more than a second rating of a prompt already in (the replies
differ from prompt to prompt more than raters differ on one prompt), so the test
takes one rating per prompt and the scheduler spreads ratings over prompts. When a prompt enters depends only on how many ratings
it has, never on what they say, so under "the fine-tuned model succeeds no more
often than the base on a prompt drawn like these" the prompts' values are
independent with mean ≤ 0 in the order they enter, whatever the raters' own
leanings (a rater's general strictness lands on both replies of a pair).

On those values runs a test by betting (Waudby-Smith & Ramdas, "Estimating means of
bounded random variables by betting", JRSS-B 2024, the hedged capital process with
aGRAPA bets, their sections 4–5 and the defaults of their `confseq.betting`):
two capital processes, one betting that the fine-tuned model is better and one that
it is worse, each starting at 1/2 and multiplied after each prompt by
1 ± λ·(y - 1/2) with y = (value + 1)/2 and λ chosen from the earlier prompts only.
Under the null each is a nonnegative supermartingale, so by Ville's inequality the
chance that either ever reaches 1/α is at most α: that is the whole guarantee, and it
holds at every rating, so looking after every rating costs nothing.

Why not a package: confseq 0.0.11 (the authors' own) does not build on Python 3.11
(its build pins pybind11 2.6); expectation needs Python 3.12 and is GPL-3.0 with
further restrictions; savvi's anytime-valid t-test assumes normal errors (a prompt's
value here is -1, 0 or 1), installs cvxpy, and on the benchmark's simulated prompts
needed more of them to decide (median 71 against 64.5, 300 runs each). The betting process is twenty lines; tests check it against its
definition and bench/sequential.py checks its error rate by simulation through the
app's own store and scheduler.

Pure Python and pandas: no database, no UI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ratings.scale import SUCCESS_AT

ALPHA = 0.05  # the chance of ever deciding wrongly, per fine-tuned model, when there is no difference
DEFAULT_QUOTA = 1  # ratings of each pair that put a prompt into the test (see the module's text)
TRUNCATION = 0.5 / 0.5  # confseq's default: at most trunc_scale / m with trunc_scale = 1/2 and m = 1/2
PRIOR_MEAN, PRIOR_VARIANCE, PRIOR_WEIGHT = 0.5, 0.25, 1  # confseq's aGRAPA defaults (one fake observation)


def betting_paths(values, alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """The two capital processes after each value (values in [-1, 1], null mean 0):
    (better, worse), each scaled so that reaching 1/alpha decides. Hedged: each side
    starts with half the capital, so the threshold on each unscaled side is 2/alpha
    and the sum of the two is a nonnegative martingale starting at 1 under the null."""
    x = np.clip(np.asarray(values, dtype=float), -1.0, 1.0)
    y = (x + 1.0) / 2.0
    m = 0.5
    better, worse = np.empty(len(y)), np.empty(len(y))
    log_up = log_down = 0.0
    total, squares, count = PRIOR_MEAN * PRIOR_WEIGHT, 0.0, PRIOR_WEIGHT
    variance = PRIOR_VARIANCE
    for t, value in enumerate(y):
        mean = total / count
        lean = mean - m
        spread = variance + lean * lean
        up = min(max(lean / spread, 0.0), TRUNCATION)  # bets only on the side the earlier prompts lean to
        down = min(max(-lean / spread, 0.0), TRUNCATION)
        log_up += math.log1p(up * (value - m))
        log_down += math.log1p(-down * (value - m))
        better[t], worse[t] = math.exp(log_up) / 2, math.exp(log_down) / 2
        # the running mean and variance for the next bet (with the prior's one fake observation)
        total += value
        count += 1
        squares += (value - total / count) ** 2
        variance = (PRIOR_VARIANCE * PRIOR_WEIGHT + squares) / count
    return better * alpha, worse * alpha


def fewest_prompts_to_decide(models: int = 1, alpha: float = ALPHA) -> int:
    """No model can be decided with fewer prompts in its test than this: the first bet is 0 (the
    prior leans nowhere) and each later one multiplies a side's capital by at most
    1 + TRUNCATION/2, from 1/2, against the 1/(alpha/models) it must reach. (11 for one
    fine-tuned model, 12 for two, 13 for three.)"""
    return 1 + math.ceil(math.log(2 * max(1, models) / alpha) / math.log1p(TRUNCATION / 2))


@dataclass
class Entry:
    """One prompt entering the test: its value, and how many ratings of the evaluation
    (rated pairs, all models) had been given when it entered."""
    prompt_id: int
    value: float
    at_rating: int


@dataclass
class Decision:
    model: str
    versus: str
    quota: int
    entries: list[Entry] = field(default_factory=list)
    ratings: int = 0  # rated pairs in the evaluation so far
    better: float = 0.0  # the capital processes at the end, scaled: 1 decides
    worse: float = 0.0
    decided: str | None = None  # "better" | "worse"
    decided_at: int | None = None  # the rating (rated pairs so far) at which it was decided
    decided_prompts: int | None = None
    more_ratings: int | None = None  # at the present rate, about how many more ratings to a decision
    more_prompts: int | None = None  # ... and how many more prompts that is
    available: int | None = None  # prompts with this pair in the evaluation (None: not known)
    models: int = 1  # fine-tuned models sharing the evaluation's 5%

    @property
    def prompts(self) -> int:
        return len(self.entries)

    @property
    def mean(self) -> float:
        return float(np.mean([e.value for e in self.entries])) if self.entries else math.nan

    @property
    def _counted(self) -> str:
        return ("the first rating of each prompt's pair" if self.quota == 1
                else f"the first {self.quota} ratings of each prompt's pair")

    @property
    def left(self) -> int | None:
        """Prompts of the evaluation not in the test yet (None: not known)."""
        return None if self.available is None else max(0, self.available - self.prompts)

    def sentence(self) -> str:
        name, base = self.model, self.versus
        level = f"anytime-valid {100 - round(ALPHA * 100)}%" + (
            f" for {'both' if self.models == 2 else f'all {self.models}'} fine-tuned models together"
            if self.models > 1 else "")
        if self.decided:
            return (f"Decided after {self.decided_at} ratings: {name} {self.decided} than {base} "
                    f"({level}; {self.decided_prompts} prompts, {self._counted}).")
        text = f"{name} against {base}: not decided yet ({self.prompts} prompts in the test so far, {self._counted}"
        if self.prompts:
            text += f"; success rate difference so far {self.mean * 100:+.0f} points"
        if self.left == 0 and self.prompts:
            return text + ("). Every prompt of this evaluation is in the test, so more ratings cannot decide it: "
                           "a new evaluation with more prompts can.")
        if self.more_ratings is not None:
            if self.left is not None and self.more_prompts > self.left:
                return text + (f"). At this rate it needs about {self.more_prompts} more prompts and this "
                               f"evaluation has {self.left} left: a new evaluation with more prompts can decide it.")
            return text + f"). At this rate about {self.more_ratings} more ratings."
        if self.prompts >= 3:
            return text + "). No lean either way yet: more prompts may not settle it."
        return text + ")."


def _project(decision: Decision, values: np.ndarray) -> float | None:
    """About how many more prompts until the leading side reaches 1/alpha, if the prompts still
    to come are like those so far: the log-capital still missing over the expected growth per
    prompt at the present bet."""
    if len(values) < 3:
        return None
    y = (values + 1) / 2
    lean, variance = float(y.mean()) - 0.5, float(y.var())
    if abs(lean) < 1e-9:
        return None
    bet = min(abs(lean) / (variance + lean * lean), TRUNCATION)
    growth = float(np.mean(np.log1p(bet * np.sign(lean) * (y - 0.5))))
    if growth <= 1e-6:
        return None
    have = decision.better if lean > 0 else decision.worse
    missing = -math.log(max(have, 1e-300))
    prompts = max(missing, 0.0) / growth
    return None if prompts > 10_000 else prompts


def pair_differences(sequence: pd.DataFrame, model: str, versus: str, threshold: int = SUCCESS_AT):
    """(rated pairs so far, prompt id, success(model) - success(versus)) for each rated pair of
    exactly these two models, in rating order. `sequence` is Store.rating_sequence's shape. One
    rater scored both replies of a pair, so that rater's strictness leaves the difference alone."""
    for pairs, row in enumerate(sequence.itertuples(index=False), start=1):
        if {row.label_a, row.label_b} != {model, versus}:
            continue
        mine, theirs = (row.score_a, row.score_b) if row.label_a == model else (row.score_b, row.score_a)
        yield pairs, int(row.prompt_id), int(mine >= threshold) - int(theirs >= threshold)


def entries(sequence: pd.DataFrame, model: str, versus: str, quota: int,
            threshold: int = SUCCESS_AT) -> tuple[list[Entry], int]:
    """The prompts in the order they entered the test, and the rated pairs in all.
    `sequence` is Store.rating_sequence's shape: one row per rated pair, in the order
    they were rated, with prompt_id and each side's label and score. Only pairs of
    exactly these two models count (pair_differences)."""
    if sequence.empty:
        return [], 0
    seen: dict[int, list[int]] = {}
    out: list[Entry] = []
    for pairs, prompt_id, difference in pair_differences(sequence, model, versus, threshold):
        got = seen.setdefault(prompt_id, [])
        if len(got) >= quota:
            continue  # the prompt is in already: later ratings feed the tables, not the test
        got.append(difference)
        if len(got) == quota:
            out.append(Entry(prompt_id, sum(got) / quota, pairs))
    return out, len(sequence)


def decide(sequence: pd.DataFrame, model: str, versus: str, quota: int = DEFAULT_QUOTA,
           threshold: int = SUCCESS_AT, alpha: float = ALPHA, available: int | None = None,
           models: int = 1) -> Decision:
    """The anytime-valid result of `model` against `versus` after every rating so far, at level
    `alpha` (this model's share of the evaluation's); `available`: the prompts that have this
    pair (what the projection may count on)."""
    quota = max(1, int(quota))
    found, pairs = entries(sequence, model, versus, quota, threshold)
    decision = Decision(model, versus, quota, found, pairs, available=available, models=models)
    if not found:
        return decision
    values = np.array([e.value for e in found])
    better, worse = betting_paths(values, alpha)
    decision.better, decision.worse = float(better[-1]), float(worse[-1])
    for i, (up, down) in enumerate(zip(better, worse)):
        if up >= 1 or down >= 1:  # once decided, decided: the first crossing is the decision
            decision.decided = "better" if up >= 1 else "worse"
            decision.decided_at, decision.decided_prompts = found[i].at_rating, i + 1
            break
    if decision.decided is None:
        more = _project(decision, values)
        if more is not None:
            rate = pairs / len(found)  # rated pairs per prompt entered, so far
            decision.more_prompts = max(1, math.ceil(more))
            decision.more_ratings = max(1, math.ceil(more * rate))
    return decision


def decisions(sequence: pd.DataFrame, labels: list[str], quota: int = DEFAULT_QUOTA,
              threshold: int = SUCCESS_AT, alpha: float = ALPHA, available: int | None = None) -> list[Decision]:
    """Each model after the first (the base) against the first, in `labels` order. The models
    share `alpha` equally (Bonferroni): with k fine-tuned models each is decided at alpha / k,
    so the chance that any of them is ever wrongly decided stays at most alpha."""
    if len(labels) < 2:
        return []
    k = len(labels) - 1
    return [decide(sequence, model, labels[0], quota, threshold, alpha / k, available, k) for model in labels[1:]]


def for_evaluation(store, evaluation_id: int, threshold: int = SUCCESS_AT, quota: int = DEFAULT_QUOTA,
                   alpha: float = ALPHA) -> list[Decision]:
    """Each fine-tuned model of the evaluation against its base (the first variant), after
    every rating so far (`store` is a ratings.store.Store)."""
    labels = [v["label"] for v in store.variants(evaluation_id)]
    available = len(store.prompts(evaluation_id))
    return decisions(store.rating_sequence(evaluation_id), labels, quota, threshold, alpha, available)
