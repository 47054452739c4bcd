"""What an evaluation can detect before anyone rates (ratings.planning), and what the owner
sees of it and of the anytime-valid decision on Compare: the power figures against
statsmodels' own and against a simulation, the variance components recovered from a
real store of scripted ratings, the plan's sentence, and Compare's handlers."""

from __future__ import annotations

import importlib.util
import math
import random
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.power import TTestPower

from helpers import open_evaluation
from ratings import planning, sequential
from ratings.store import Store

VARIANTS = [{"name": "base", "label": "Base model", "kind": "base"},
            {"name": "run-1", "label": "LoRA run", "kind": "lora"}]
ROOT = Path(__file__).resolve().parent.parent
SCORES = {1: (5, 2), 0: (4, 4), -1: (2, 5)}  # a rating's difference in success -> (fine-tuned, base) scores


def _known(tau: float, sigma: float) -> planning.Components:
    return planning.Components(tau ** 2, sigma ** 2, "assumed")


# --- the power figures ---------------------------------------------------------------------------
def test_the_figures_are_statsmodels_own_for_the_paired_design():
    power = TTestPower()
    plan = planning.make_plan(12, 4, _known(0.3, 0.6))
    sd = math.sqrt(0.3 ** 2 + 0.6 ** 2 / 4)
    assert plan.sd() == pytest.approx(sd)
    needed = power.solve_power(effect_size=None, nobs=12, alpha=0.05, power=0.8, alternative="two-sided")
    assert plan.detectable == pytest.approx(needed * sd)
    assert plan.power(plan.detectable) == pytest.approx(0.8, abs=1e-6)
    assert plan.power(0.25) == pytest.approx(power.power(0.25 / sd, 12, 0.05, alternative="two-sided"))
    # the target: half the detectable gain to 5 points; the prompts that reach 80% at it with these raters
    assert plan.target == pytest.approx(round(needed * sd / 2 / 0.05) * 0.05)
    total = power.solve_power(effect_size=plan.target / sd, nobs=None, alpha=0.05, power=0.8)
    assert plan.prompts_for_target == math.ceil(total)
    assert power.power(plan.target / sd, plan.prompts_for_target, 0.05) >= 0.8
    assert power.power(plan.target / sd, plan.prompts_for_target - 1, 0.05) < 0.8
    # tau² alone (0.09) is more than a 20-point gain allows at 12 prompts: no number of raters reaches it
    assert plan.target == pytest.approx(0.2) and (0.2 / needed) ** 2 < 0.09
    assert plan.raters_for_target is None
    assert power.power(0.2 / 0.3, 12, 0.05) < 0.8  # even infinitely many raters (sd = tau)


def test_the_raters_that_reach_the_target_are_the_fewest_that_do():
    components = _known(0.1, 0.7)
    plan = planning.make_plan(10, 2, components)
    assert plan.raters_for_target is not None
    enough = planning.make_plan(10, plan.raters_for_target, components)
    fewer = planning.make_plan(10, plan.raters_for_target - 1, components)
    assert enough.power(plan.target) >= 0.8 > fewer.power(plan.target)
    # with three models each rater meets the base on a third of a prompt's pairs: three times the raters
    three = planning.make_plan(10, 2, components, models=3)
    assert three.per_prompt == pytest.approx(2 / 3)
    assert three.sd() == pytest.approx(math.sqrt(0.01 + 0.49 / (2 / 3)))
    reach = planning.make_plan(10, three.raters_for_target, components, models=3, target=three.target)
    short = planning.make_plan(10, three.raters_for_target - 1, components, models=3, target=three.target)
    assert reach.power(three.target) >= 0.8 > short.power(three.target)


def test_the_power_matches_a_simulated_paired_t_test():
    """Per-prompt true gains drawn with spread tau, each rated by R raters with spread sigma,
    a two-sided one-sample t-test on the per-prompt means: found as often as the formula says."""
    tau, sigma, raters, prompts, gain, runs = 0.25, 0.5, 3, 10, 0.3, 6000
    plan = planning.make_plan(prompts, raters, _known(tau, sigma))
    rng = np.random.default_rng(7)
    true = rng.normal(gain, tau, (runs, prompts))
    means = true + rng.normal(0, sigma, (runs, prompts, raters)).mean(axis=2)
    found = scipy_stats.ttest_1samp(means, 0.0, axis=1).pvalue < 0.05
    assert found.mean() == pytest.approx(plan.power(gain), abs=0.025), (found.mean(), plan.power(gain))
    # and at the detectable gain, 8 times in 10
    true = rng.normal(plan.detectable, tau, (runs, prompts))
    means = true + rng.normal(0, sigma, (runs, prompts, raters)).mean(axis=2)
    assert (scipy_stats.ttest_1samp(means, 0.0, axis=1).pvalue < 0.05).mean() == pytest.approx(0.8, abs=0.025)


def test_the_decision_figure_is_the_anytime_valid_tests_own():
    """A fine-tuned model better on every prompt (gain 1, no spread): every simulated run
    decides exactly where ratings.sequential's betting test does on a run of +1s."""
    better, _worse = sequential.betting_paths(np.ones(60))
    first = int(np.flatnonzero(better >= 1)[0]) + 1
    assert planning.sequential_prompts(1.0, 0.0) == first
    assert planning.sequential_prompts(0.3, 0.05) is None  # no values in -1, 0, 1 have that mean and variance
    assert planning.sequential_prompts(0.0, 0.3) is None  # no gain: it never needs to decide
    # a smaller gain, or more spread, needs more prompts
    assert planning.sequential_prompts(0.4, 0.3) < planning.sequential_prompts(0.25, 0.3)
    assert planning.sequential_prompts(0.4, 0.3) < planning.sequential_prompts(0.4, 0.5)


def test_the_assumption_is_what_the_benchmarks_simulated_raters_give():
    """ASSUMED_TAU and ASSUMED_SIGMA are stated as bench/sequential.py's raters' spreads."""
    spec = importlib.util.spec_from_file_location("bench_sequential", ROOT / "bench" / "sequential.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    rng = np.random.default_rng(3)
    prompts, raters = 6000, 200
    difficulty = rng.normal(0, bench.DIFFICULTY_SD, prompts)
    quality = {v: difficulty + rng.normal(0, bench.REPLY_SD, prompts) for v in ("base", "ft")}
    bias, noise = rng.normal(0, bench.BIAS_SD, raters), rng.uniform(*bench.NOISE_SD, raters)

    def success(variant):
        latent = (bench.CENTER + quality[variant][:, None] + bias[None]
                  + rng.normal(0, 1, (prompts, raters)) * noise[None])
        return (np.clip(np.round(latent), 1, 5) >= 4).astype(float)

    difference = success("ft") - success("base")
    sigma2 = difference.var(axis=1, ddof=1).mean()
    tau2 = difference.mean(axis=1).var(ddof=1) - sigma2 / raters
    assert math.sqrt(tau2) == pytest.approx(planning.ASSUMED_TAU, abs=0.03)
    assert math.sqrt(sigma2) == pytest.approx(planning.ASSUMED_SIGMA, abs=0.03)


# --- variance components from the store ---------------------------------------------------------
def _scripted(store: Store, script: list[tuple[int, ...]], name: str = "past") -> int:
    """An evaluation whose raters rate through the store's own scheduler, rater j giving
    prompt i the difference script[i][j] in success (fine-tuned minus base)."""
    eval_id = open_evaluation(store, name, "m", len(script), VARIANTS, reply="{variant}|{position}")
    rng = random.Random(0)
    for j in range(len(script[0])):
        rater = f"rater {j}"
        while (pair := store.next_pair(eval_id, rater, rng)) is not None:
            (variant_a, position), (_variant_b, _) = (text.split("|") for text in (pair["reply_a"], pair["reply_b"]))
            ft, base = SCORES[script[int(position) - 1][j]]
            store.rate_pair(pair["assignment_id"], rater, *((ft, base) if variant_a == "run-1" else (base, ft)))
    return eval_id


def _balanced(script) -> tuple[float, float]:
    """The textbook balanced one-way estimates: sigma² the mean within-prompt variance,
    tau² the variance of the prompt means less sigma² / raters."""
    values = np.array(script, dtype=float)
    sigma2 = values.var(axis=1, ddof=1).mean()
    return max(0.0, values.mean(axis=1).var(ddof=1) - sigma2 / values.shape[1]), sigma2


FIRST = [(1, 1, 1), (1, 1, 0), (1, 0, 0), (0, 0, 0), (0, 0, -1), (1, 1, 1), (1, 0, -1), (0, 0, 0), (1, 1, 0),
         (-1, -1, 0), (1, 1, 1), (0, 1, 0)]
SECOND = [(0, 0, 0), (0, 0, 0), (1, 1, 1), (-1, 0, 0), (0, 0, 1), (-1, -1, -1), (0, 0, 0), (1, 0, 0), (0, 0, 0),
          (0, -1, 0), (0, 0, 0), (1, 1, 1)]


def test_the_spreads_are_recovered_from_past_ratings_of_known_spread(tmp_path):
    store = Store(tmp_path / "r.db")
    first = _scripted(store, FIRST)
    tau2, sigma2 = _balanced(FIRST)
    found = planning.variance_components(store)
    assert (found.source, found.evaluations, found.prompts, found.prompts_twice) == ("past", 1, 12, 12)
    assert found.tau2 == pytest.approx(tau2) and found.sigma2 == pytest.approx(sigma2)
    assert tau2 > 0.05 and sigma2 > 0.1  # the script has both spreads
    # two evaluations of equal size pool to the mean of their estimates (each about its own mean gain)
    second = _scripted(store, SECOND, "second")
    both = planning.variance_components(store)
    other = _balanced(SECOND)
    assert both.evaluations == 2 and both.prompts_twice == 24
    assert both.tau2 == pytest.approx((tau2 + other[0]) / 2) and both.sigma2 == pytest.approx((sigma2 + other[1]) / 2)
    # the evaluation being planned is left out of its own plan
    assert planning.variance_components(store, exclude=second).sigma2 == pytest.approx(sigma2)
    assert planning.variance_components(store, exclude=first).tau2 == pytest.approx(other[0])
    assert "Based on rater agreement in 2 past evaluations" in both.sentence()
    assert f"τ = {math.sqrt(both.tau2):.2f}" in both.sentence() and "24 of them rated twice" in both.sentence()


def test_too_few_prompts_rated_twice_fall_back_to_the_stated_assumption(tmp_path):
    store = Store(tmp_path / "r.db")
    found = planning.variance_components(store)
    assert (found.source, found.tau, found.sigma) == ("assumed", planning.ASSUMED_TAU, planning.ASSUMED_SIGMA)
    _scripted(store, FIRST[:6])
    found = planning.variance_components(store)
    assert (found.source, found.prompts_twice) == ("assumed", 6)
    assert "(6 of the 10 needed)" in found.sentence() and "τ = 0.25" in found.sentence()
    assert "bench/sequential.py" in found.sentence()


# --- the sentence ----------------------------------------------------------------------------------
def test_the_sentence_says_the_plans_own_numbers():
    power = TTestPower()
    assumed = _known(planning.ASSUMED_TAU, planning.ASSUMED_SIGMA)
    plan = planning.make_plan(10, 3, assumed)
    text = plan.sentence()
    detectable = power.solve_power(effect_size=None, nobs=10, alpha=0.05, power=0.8) * math.sqrt(0.0625 + 0.25 / 3)
    points = math.ceil(detectable * 100)
    assert points == 39
    assert text.startswith(f"10 prompts × 3 raters: a gain of ≥ {points} points in success rate would be found "
                           "8 times in 10; for 20 points add ~"), text
    assert f"add ~{plan.prompts_for_target - 10} prompts (more raters alone cannot reach it" in text
    assert "Assumed" in text and "statsmodels" in text
    assert (f"at a {points}-point gain it needs ~{plan.decision_prompts} prompts (median of "
            f"{planning.SEQUENTIAL_RUNS} simulated runs of its test), more than these 10.") in text
    # raters that do reach it
    reachable = planning.make_plan(10, 1, _known(0.1, 0.7))
    assert (f"for {round(reachable.target * 100)} points invite ~{reachable.raters_for_target} raters or add "
            f"~{reachable.prompts_for_target - 10} prompts.") in reachable.sentence()
    assert reachable.sentence().startswith("10 prompts × 1 rater: ")
    # too few prompts to find anything
    assert "needs at least 2 prompts" in planning.make_plan(1, 3, assumed).sentence()
    few = planning.make_plan(3, 1, assumed).sentence()
    assert few.startswith("3 prompts × 1 rater: even a gain of 100 points in success rate would be found less than "
                          "8 times in 10"), few


# --- Compare -------------------------------------------------------------------------------------
def _closed_evaluation(store: Store, prompts: int) -> int:
    """An evaluation with every reply written and rating not open yet (none cut at the cap)."""
    eval_id = store.create_evaluation("new round", "m", [{"text": f"Write note {i}."} for i in range(prompts)],
                                      VARIANTS, settings={"max_new_tokens": 16})
    for prompt in store.prompts(eval_id):
        for variant in store.variants(eval_id):
            store.add_reply(prompt["id"], variant["id"], f"{variant['name']}|{prompt['position']}",
                            {"max_new_tokens": 16}, 0.1, 3)
    return eval_id


def test_compare_shows_the_plan_before_inviting_and_each_decision_while_friends_rate(tmp_path):
    import gradio as gr

    from tuner.generate import Generator
    from tuner.runs import RunManager
    from tuner.ui import compare

    store = Store(tmp_path / "r.db")
    _scripted(store, FIRST + SECOND)  # a past evaluation: the plan is based on its raters
    eval_id = _closed_evaluation(store, 14)
    with gr.Blocks() as demo:
        compare.compare_tab(RunManager(tmp_path / "runs", tmp_path / "models"), Generator(tmp_path / "models"), store)
    handlers = {b.name: b for b in demo.fns.values()}
    raters = next(c for c in demo.blocks.values() if getattr(c, "elem_id", None) == "eval-raters")
    assert (raters.value, raters.minimum, raters.maximum) == (3, 1, 50)

    # opening rating shows the plan for that evaluation with the raters typed
    opened = handlers["on_open"]
    shown = {getattr(c, "elem_id", None): v for c, v in opened.fn(eval_id, 5).items()}
    expected = planning.make_plan(14, 5, planning.variance_components(store, exclude=eval_id))
    assert shown["eval-plan"] == f"**Plan for evaluation #{eval_id}:** {expected.sentence()}"
    assert "14 prompts × 5 raters: a gain of ≥" in shown["eval-plan"]
    assert "Based on rater agreement in 1 past evaluation" in shown["eval-plan"]
    assert "Raters can start now" in shown["generate-message"]
    # a new number of raters: the plan again, for the evaluation shown
    on_plan = handlers["on_plan"]
    assert [getattr(c, "elem_id", None) for c in on_plan.outputs] == ["eval-plan"]
    again = on_plan.fn(2, eval_id, None, None)
    assert again.startswith(f"**Plan for evaluation #{eval_id}:** 14 prompts × 2 raters: a gain of ≥")
    assert again != shown["eval-plan"]
    assert "× 50 raters" in on_plan.fn(400, eval_id, None, None)  # kept within what the input allows
    assert "× 3 raters" in on_plan.fn(None, None, None, eval_id)  # nothing shown yet: the evaluation picked
    assert on_plan.fn(3, None, None, None) == ""

    # while friends rate: one line per fine-tuned model, not decided yet, then decided
    on_decisions = handlers["on_decisions"]
    assert [getattr(c, "elem_id", None) for c in on_decisions.outputs] == ["rate-decisions"]
    [waiting] = sequential.for_evaluation(store, eval_id)
    assert waiting.decided is None
    assert on_decisions.fn(eval_id) == f"- {waiting.sentence()}"
    assert "LoRA run against Base model: not decided yet" in on_decisions.fn(eval_id)
    rng = random.Random(1)
    while (pair := store.next_pair(eval_id, "ana", rng)) is not None:  # the fine-tuned reply wins every prompt
        ft_left = pair["reply_a"].startswith("run-1|")
        store.rate_pair(pair["assignment_id"], "ana", *((5, 2) if ft_left else (2, 5)))
    [decision] = sequential.for_evaluation(store, eval_id)
    assert decision.decided == "better"
    line = on_decisions.fn(eval_id)
    assert line == f"- {decision.sentence()}"
    assert line.startswith(f"- Decided after {decision.decided_at} ratings: LoRA run better than Base model")
    assert on_decisions.fn(None) == "" and on_decisions.fn("nonsense") == "" and on_decisions.fn(999) == ""
    # the owner's notes tick with the timer, and follow the evaluation picked
    ticking = [b for b in demo.fns.values() if b.name == "on_decisions"]
    assert len(ticking) == 2 and all(getattr(b.inputs[0], "elem_id", None) == "rate-eval" for b in ticking)
