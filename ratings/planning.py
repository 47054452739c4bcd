"""Before inviting raters: what an evaluation of P prompts rated by R raters can detect.

The design is the Results tab's paired one, on success (a score of 4 or more): each
prompt gives one number, the mean over its raters of success(fine-tuned) -
success(base), and the test asks whether those numbers average above 0. Its power is
that of a one-sample (paired) t-test, two-sided at 5%, computed with statsmodels'
`TTestPower` (the noncentral t; the Results tab itself reports a Wilcoxon test, whose
power on these numbers is close to the t-test's). A prompt's number varies for two
reasons, so its variance is

    tau² + sigma² / R

- tau²: how much the true gain differs from prompt to prompt (a reply that happens to
  suit one model); more raters cannot shrink it, only more prompts can;
- sigma²: how much one rating's difference differs from rater to rater on one prompt.

Both come from the ratings of past evaluations in the store where there are enough
(`variance_components`: a one-way random-effects analysis of variance, method of
moments, pooled over every fine-tuned model against its base in every past evaluation:
every prompt rated at least once counts for tau, prompts rated at least twice give
sigma). Where there are too few, the plan says so and uses ASSUMED_TAU and ASSUMED_SIGMA,
what the simulated raters of bench/sequential.py give (tests/test_planning.py checks
that they still do).

With three or more models a rater scores one disjoint pair per two replies of a prompt
(Store.next_pair never serves a reply twice), so each fine-tuned model meets the base in
R·⌊K/2⌋ / C(K, 2) ratings per prompt on average: the plan uses that for R.

The anytime-valid decision (ratings.sequential) takes one rating per prompt: the plan
says how many prompts it needs at the gain the fixed design finds 8 times in 10, from
simulated runs of that test itself (`sequential.betting_paths`) on prompts whose single
rating's difference has that mean and variance tau² + sigma² (on -1, 0, 1 these two
numbers fix the distribution).

No UI; statsmodels is imported on first use (it is slow to import).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from ratings.scale import SUCCESS_AT
from ratings.sequential import pair_differences

ALPHA = 0.05  # two-sided, as the Results tab's paired test
POWER = 0.8  # "found 8 times in 10"
# bench/sequential.py's simulated raters (prompt difficulty sd 1.0, reply sd 0.6, rater bias
# sd 0.5, rater noise sd 0.5–1.1, base success ~42%) give tau = 0.245 and sigma = 0.493 on success
ASSUMED_TAU, ASSUMED_SIGMA = 0.25, 0.50
MIN_PROMPTS_TWICE = 10  # prompts rated at least twice (over all past evaluations) to trust an estimate
SEQUENTIAL_RUNS = 200  # simulated runs of the anytime-valid test behind its figure
SEQUENTIAL_CAP = 1000  # prompts per simulated run; beyond this the figure is left out


@functools.cache
def _power():
    from statsmodels.stats.power import TTestPower

    return TTestPower()


# --- variance components from past evaluations ---------------------------------------------------
@dataclass
class Components:
    """tau² (between prompts) and sigma² (between raters on one prompt) of a rating's
    difference in success, where they came from, and how much data was behind them."""
    tau2: float
    sigma2: float
    source: str  # "past" | "assumed"
    evaluations: int = 0  # past evaluations with ratings of a fine-tuned model against its base
    prompts: int = 0  # prompts rated at least once, over those
    prompts_twice: int = 0  # prompts rated at least twice

    @property
    def tau(self) -> float:
        return math.sqrt(self.tau2)

    @property
    def sigma(self) -> float:
        return math.sqrt(self.sigma2)

    def sentence(self) -> str:
        meaning = (f"τ = {self.tau:.2f} (how much the gain differs from prompt to prompt), "
                   f"σ = {self.sigma:.2f} (how much raters differ on one prompt)")
        if self.source == "past":
            return (f"Based on rater agreement in {self.evaluations} past evaluation"
                    f"{'' if self.evaluations == 1 else 's'}: {meaning}, from {self.prompts} prompts, "
                    f"{self.prompts_twice} of them rated twice or more.")
        why = (f"every rating of the {self.prompts} prompts in past evaluations gave the same difference"
               if self.prompts_twice >= MIN_PROMPTS_TWICE else
               f"past evaluations have too few prompts rated twice to measure it ({self.prompts_twice} of the "
               f"{MIN_PROMPTS_TWICE} needed)")
        return f"Assumed, as {why}: {meaning}, as with bench/sequential.py's simulated raters."


def estimate(groups: list[list[list[float]]]) -> tuple[float, float, int, int] | None:
    """Method-of-moments estimates (tau², sigma², prompts, prompts rated twice) from
    `groups`: one group per (evaluation, fine-tuned model), one list per prompt of that
    group of the differences its raters gave. Each group has its own mean (a better model
    in one evaluation is no spread between prompts); the sums of squares are pooled:
    sigma² = SS within / df within, and tau² = (SS between - sigma²·df between) / c with
    c = sum over groups of N - sum(n_i²)/N (the unbalanced one-way layout's E[SS between] =
    df between·sigma² + c·tau²). None when no prompt is rated twice."""
    ss_within = df_within = ss_between = df_between = c = 0.0
    prompts = twice = 0
    for group in groups:
        cells = [np.asarray(cell, dtype=float) for cell in group if len(cell)]
        if not cells:
            continue
        sizes = np.array([len(cell) for cell in cells], dtype=float)
        means = np.array([cell.mean() for cell in cells])
        total = sizes.sum()
        grand = float((sizes * means).sum() / total)
        ss_within += float(sum(((cell - cell.mean()) ** 2).sum() for cell in cells))
        df_within += float(total - len(cells))
        ss_between += float((sizes * (means - grand) ** 2).sum())
        df_between += len(cells) - 1
        c += float(total - (sizes ** 2).sum() / total)
        prompts += len(cells)
        twice += int((sizes >= 2).sum())
    if df_within <= 0:
        return None
    sigma2 = ss_within / df_within
    tau2 = max(0.0, (ss_between - sigma2 * df_between) / c) if c > 0 else 0.0
    return tau2, sigma2, prompts, twice


def _groups(store, evaluation_id: int, threshold: int) -> list[list[list[float]]]:
    """Each fine-tuned model of one evaluation against its base (the first variant): per
    prompt, the difference in success each rater of that pair gave (one rater scored both
    replies, so their strictness cancels)."""
    labels = [v["label"] for v in store.variants(evaluation_id)]
    if len(labels) < 2:
        return []
    sequence = store.rating_sequence(evaluation_id)
    if sequence.empty:
        return []
    base, groups = labels[0], []
    for model in labels[1:]:
        cells: dict[int, list[float]] = {}
        for _, prompt_id, difference in pair_differences(sequence, model, base, threshold):
            cells.setdefault(prompt_id, []).append(float(difference))
        if cells:
            groups.append(list(cells.values()))
    return groups


def variance_components(store, exclude: int | None = None, threshold: int = SUCCESS_AT) -> Components:
    """tau² and sigma² from every evaluation in `store` but `exclude`, or the stated
    assumption when they hold too few prompts rated twice (MIN_PROMPTS_TWICE)."""
    groups, used = [], 0
    for evaluation in store.evaluations():
        if evaluation["id"] == exclude:
            continue
        found = _groups(store, evaluation["id"], threshold)
        used += bool(found)
        groups += found
    got = estimate(groups)
    if got is not None:
        tau2, sigma2, prompts, twice = got
        if twice >= MIN_PROMPTS_TWICE and tau2 + sigma2 > 0:
            return Components(tau2, sigma2, "past", used, prompts, twice)
        return Components(ASSUMED_TAU ** 2, ASSUMED_SIGMA ** 2, "assumed", used, prompts, twice)
    prompts = sum(len(g) for g in groups)
    return Components(ASSUMED_TAU ** 2, ASSUMED_SIGMA ** 2, "assumed", used, prompts, 0)


# --- the plan --------------------------------------------------------------------------------------
def ratings_per_prompt(raters: int, models: int) -> float:
    """On average, how many ratings of one fine-tuned model against the base a prompt gets
    when `raters` raters each rate every pair they may (k replies: k // 2 disjoint pairs)."""
    models = max(2, int(models))
    return raters * (models // 2) / (models * (models - 1) / 2)


def sequential_prompts(gain: float, variance: float, runs: int = SEQUENTIAL_RUNS, seed: int = 0) -> int | None:
    """Median prompts (one rating each) until ratings.sequential's test decides "better",
    over `runs` simulated runs whose prompt values (-1, 0, 1) have mean `gain` and variance
    `variance`; None when no such distribution exists or the median is past SEQUENTIAL_CAP."""
    return _sequential_prompts(round(float(gain), 4), round(float(variance), 4), runs, seed)


@functools.lru_cache(maxsize=256)
def _sequential_prompts(gain: float, variance: float, runs: int, seed: int) -> int | None:
    from ratings.sequential import ALPHA as SEQ_ALPHA
    from ratings.sequential import betting_paths

    second = variance + gain * gain  # E[x²] = P(x = 1) + P(x = -1)
    up, down = (second + gain) / 2, (second - gain) / 2
    if gain <= 0 or down < -1e-12 or second > 1 + 1e-12:
        return None
    probabilities = np.clip([max(down, 0.0), 1 - second, up], 0, None)
    probabilities /= probabilities.sum()
    rng = np.random.default_rng(seed)
    # long enough for most runs: about twice the prompts at which the bet's growth rate reaches 1/alpha
    length = int(min(SEQUENTIAL_CAP, max(60, 4 * math.log(2 / SEQ_ALPHA) * 2 * variance / gain ** 2)))
    times = []
    for _ in range(runs):
        values = rng.choice([-1.0, 0.0, 1.0], size=length, p=probabilities)
        better, _worse = betting_paths(values, SEQ_ALPHA)
        crossed = np.flatnonzero(better >= 1)
        times.append(int(crossed[0]) + 1 if len(crossed) else math.inf)
    median = float(np.median(times))
    return int(math.ceil(median)) if math.isfinite(median) else None


def _half_rounded(gain: float) -> float:
    """Half a gain, to the nearest 5 points, between 5 and 50."""
    return min(0.5, max(0.05, round(gain / 2 / 0.05) * 0.05))


@dataclass
class Plan:
    """What `prompts` prompts rated by `raters` raters can detect, by the numbers."""
    prompts: int
    raters: int
    models: int  # the base and the fine-tuned models
    components: Components
    detectable: float | None = None  # the gain found 8 times in 10 (0.31 = 31 points); None under 2 prompts
    target: float | None = None  # a smaller gain to aim for
    raters_for_target: int | None = None  # raters that reach 80% at the target; None: no number does
    prompts_for_target: int | None = None  # prompts (all of them) that reach 80% at the target with these raters
    decision_prompts: int | None = None  # the anytime-valid decision's median prompts at the detectable gain

    @property
    def per_prompt(self) -> float:
        """Ratings of each fine-tuned model against the base per prompt."""
        return ratings_per_prompt(self.raters, self.models)

    def sd(self, per_prompt: float | None = None) -> float:
        """The standard deviation of one prompt's mean difference."""
        per_prompt = self.per_prompt if per_prompt is None else per_prompt
        return math.sqrt(self.components.tau2 + self.components.sigma2 / max(per_prompt, 1e-9))

    def power(self, gain: float, prompts: int | None = None) -> float:
        """The chance the paired test finds a gain of `gain` (0.2 = 20 points), two-sided 5%."""
        prompts = self.prompts if prompts is None else prompts
        if prompts < 2:
            return math.nan
        return float(_power().power(effect_size=gain / self.sd(), nobs=prompts, alpha=ALPHA,
                                    alternative="two-sided"))

    def sentence(self) -> str:
        raters = f"{self.raters} rater{'' if self.raters == 1 else 's'}"
        head = f"{self.prompts} prompt{'' if self.prompts == 1 else 's'} × {raters}"
        if self.detectable is None:
            return (f"{head}: a paired test needs at least 2 prompts, so no gain can be found yet; add prompts. "
                    + self.components.sentence())
        points = math.ceil(self.detectable * 100 - 1e-9)
        if self.detectable > 1:
            text = (f"{head}: even a gain of 100 points in success rate would be found less than 8 times in 10 "
                    f"({self.power(1.0) * 10:.0f} in 10)")
        else:
            text = f"{head}: a gain of ≥ {points} points in success rate would be found 8 times in 10"
        if self.target is not None and self.prompts_for_target is not None:
            target = round(self.target * 100)
            more = max(1, self.prompts_for_target - self.prompts)
            if self.raters_for_target is None:
                text += (f"; for {target} points add ~{more} prompts (more raters alone cannot reach it: "
                         f"the gain differs too much from prompt to prompt)")
            else:
                text += f"; for {target} points invite ~{self.raters_for_target} raters or add ~{more} prompts"
        text += "."
        if self.models > 2:
            text += (f" With {self.models} models a rater scores {self.models // 2} of a prompt's "
                     f"{self.models * (self.models - 1) // 2} pairs, so each fine-tuned model meets the base "
                     f"~{self.per_prompt:.1f} times per prompt.")
        text += " " + self.components.sentence()
        text += " (Power of the paired t-test on per-prompt differences, two-sided 5%, by statsmodels.)"
        if self.decision_prompts is not None and self.detectable <= 1:
            text += (f" The anytime-valid decision uses one rating per prompt: at a {points}-point gain it needs "
                     f"~{self.decision_prompts} prompts (median of {SEQUENTIAL_RUNS} simulated runs of its test)"
                     + (f", more than these {self.prompts}." if self.decision_prompts > self.prompts else "."))
        return text


def make_plan(prompts: int, raters: int, components: Components, models: int = 2,
              target: float | None = None) -> Plan:
    """The plan for `prompts` prompts, `raters` raters and `models` models (base included);
    `target` a gain to aim for (default: half the detectable one, to 5 points, 5–50)."""
    prompts, raters, models = int(prompts), max(1, int(raters)), max(2, int(models))
    plan = Plan(prompts, raters, models, components)
    if prompts < 2:
        return plan
    sd = plan.sd()
    needed = float(_power().solve_power(effect_size=None, nobs=prompts, alpha=ALPHA, power=POWER,
                                        alternative="two-sided"))  # the effect size found 8 times in 10
    plan.detectable = needed * sd
    plan.target = _half_rounded(plan.detectable) if target is None else float(target)
    # more raters: tau² + sigma²/per_prompt must fall to (target / needed)²
    allowed = (plan.target / needed) ** 2
    sigma2, tau2 = components.sigma2, components.tau2
    if sigma2 > 0 and allowed > tau2:
        per_prompt = sigma2 / (allowed - tau2)
        per_rater = ratings_per_prompt(1, models)
        plan.raters_for_target = max(raters, math.ceil(per_prompt / per_rater - 1e-9))
    # more prompts, with these raters
    total = float(_power().solve_power(effect_size=plan.target / sd, nobs=None, alpha=ALPHA, power=POWER,
                                       alternative="two-sided"))
    if math.isfinite(total):
        plan.prompts_for_target = math.ceil(total - 1e-9)
    if plan.detectable <= 1:
        plan.decision_prompts = sequential_prompts(plan.detectable, tau2 + sigma2)
    return plan


def for_evaluation(store, evaluation_id: int, raters: int, threshold: int = SUCCESS_AT) -> Plan | None:
    """The plan for one evaluation of the store, with rater agreement from the others;
    None when it does not exist."""
    found = next((e for e in store.evaluations() if e["id"] == int(evaluation_id)), None)
    if found is None:
        return None
    components = variance_components(store, exclude=int(evaluation_id), threshold=threshold)
    return make_plan(found["n_prompts"], raters, components, models=found["n_variants"])
