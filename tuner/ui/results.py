"""The Results tab: success rates, paired tests, breakdowns, raters, plots and exports
of one evaluation.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import gradio as gr
import pandas as pd

from ratings import checks as rchecks
from ratings import reports, sequential, stats, tables
from ratings.scale import SCORES, SUCCESS_AT
from ratings.store import RatingError, Store, clean_rater
from tuner.paths import StorageError
from tuner.records import read_metrics, run_label
from tuner.runs import RunManager
from tuner.ui.charts import VEGA_LITE, curve_frame, loss_spec, short_label, vega_plot
from tuner.ui.rate import eval_choices, picked_evaluation
from tuner.ui.judge import judge_section



# table headers are model labels ("lora: polite r16 (2026…)"): wrapped per word, never a letter a line
CSS = """
#per-prompt-table th, #per-prompt-table th *, #breakdown-table th, #breakdown-table th *,
#success-table th, #success-table th * { min-width: 7em; word-break: normal !important; overflow-wrap: normal; }
"""


class _Section(NamedTuple):
    """One part of the tab that `show` fills: `blank` ({component: value}) before there is an
    evaluation, else what `filled(results, asked)` gives for the same components."""
    blank: dict
    filled: Callable[..., dict]


@dataclass
class _Asked:
    """What `show` was asked for, as every section reads it."""
    eval_id: int
    cutoff: int
    with_raters: bool
    by: str | None


# the tab's refreshes and Close/Reopen run one at a time, in the order they were asked: a refresh
# still in flight when Reopen was clicked answered after it and blanked its "Rating is open again"
IN_ORDER = {"concurrency_limit": 1, "concurrency_id": "results-show"}


def results_tab(store: Store, trainer: RunManager | None = None, datasets_dir: Path | None = None):
    """Every table of `ratings.tables.gather` for one evaluation, the plots and the exports.

    Returns (show, its inputs, its outputs) so the page can refresh the tab when it is opened.
    """
    with gr.Row():
        eval_pick = gr.Dropdown(choices=[], value=None, allow_custom_value=True, label="Evaluation",
                                elem_id="results-eval", scale=3)
        threshold = gr.Radio(SCORES, value=SUCCESS_AT, label="A reply succeeds when scored at least",
                             elem_id="results-threshold", scale=2)
        refresh = gr.Button("↻ Refresh", elem_id="results-refresh", scale=0)
    summary = gr.Markdown(elem_id="results-summary")
    # collapsible sections: the page was one 4,400-pixel column
    sections = [_decision_section(store, eval_pick, threshold), _success_section(store, trainer)]
    raters, per_prompt = _per_prompt_section()
    by, breakdown = _breakdown_section()
    sections += [per_prompt, breakdown, _paired_section(), _bias_section(), _metrics_section(), _checks_section()]
    sections.append(_Section(*judge_section(store, trainer, eval_pick, threshold)))  # beside, never mixed in
    rater_table, rater_name, reason, exclude, include, rater_note = _raters_section()
    if datasets_dir is not None:  # the owner's better replies: chosen answers for the next run
        from tuner.ui.corrections import corrections_section

        corrections_section(store, datasets_dir, eval_pick)
    export, export_note, files = _exports_section()

    def show(eval_id, cutoff, with_raters, by_value):
        evals = eval_choices(store)
        if eval_id is None and evals:
            eval_id = evals[0][1]
        try:  # the list is filled by the page; a script may send anything
            eval_id = int(eval_id) if eval_id is not None else None
        except (TypeError, ValueError):
            eval_id = -1
        if eval_id is None or store.evaluation(int(eval_id)) is None:
            blank = {c: v for s in sections for c, v in s.blank.items()}
            return {eval_pick: gr.update(choices=evals, value=None),
                    summary: "No evaluation yet: build one on the Compare tab.", **blank}
        asked = _Asked(eval_id, int(cutoff or SUCCESS_AT), bool(with_raters), by_value)
        r = _gathered(store, trainer, eval_id, cutoff)
        filled = {c: v for s in sections for c, v in s.filled(r, asked).items()}
        # above every table: a model nobody (or hardly anybody) rated has no row, or a thin one, below
        unrated = [f"- ⚠️ **{note}**" for note in tables.coverage_notes(r.variants, r.replies, r.scores)]
        return {eval_pick: gr.update(choices=evals, value=eval_id),
                summary: "\n".join(unrated + [f"- {line}" for line in r.summary()]), **filled}

    def on_export(eval_id, cutoff):
        if eval_id is None:
            return {export_note: "⚠️ Choose an evaluation first.", files: None}
        r = _gathered(store, trainer, eval_id, cutoff)
        try:
            paths = reports.write_exports(r, Path(tempfile.mkdtemp(prefix="tuner-results-")), store.path)
        except OSError as exc:  # StorageError: names the file and the problem
            return {export_note: f"⚠️ {exc}", files: None}
        return {export_note: f"Built {len(paths)} files for evaluation #{eval_id} (success at {r.threshold} or more).",
                files: [str(p) for p in paths]}

    inputs = [eval_pick, threshold, raters, by]
    outputs = [eval_pick, summary, *(c for s in sections for c in s.blank)]
    rater_rows, set_rater = _rater_handlers(store, rater_table, rater_note)
    refresh.click(show, inputs, outputs, **IN_ORDER).then(rater_rows, eval_pick, rater_table)
    for control in inputs:
        control.input(show, inputs, outputs, **IN_ORDER).then(rater_rows, eval_pick, rater_table)
    eval_pick.change(rater_rows, eval_pick, rater_table)
    for button, excluded in ((exclude, True), (include, False)):
        button.click(set_rater(excluded), [eval_pick, rater_name, reason], [rater_table, rater_note],
                     api_name="exclude_rater" if excluded else "include_rater").then(show, inputs, outputs)
    export.click(on_export, [eval_pick, threshold], [export_note, files])
    return show, inputs, outputs


def _gathered(store: Store, trainer: RunManager | None, eval_id, cutoff):
    return tables.gather(store, int(eval_id), int(cutoff or SUCCESS_AT), _runs_of(store, trainer, eval_id))


DECISION_MEANING = (
    "Each line is valid however often you look, after every rating if you like (anytime-valid at 95%: if no "
    "fine-tuned model were different from the base, the chance that any line ever says \"Decided\" is at most "
    "5%; with several fine-tuned models they share it). The unit is the prompt: a prompt counts once, with the "
    f"first rating of its pair of the two models' replies (success = scored {SUCCESS_AT} or more, fixed before "
    "rating: the threshold above moves the tables, not this line, since a threshold picked after seeing the "
    "scores would void the guarantee). Excluding a rater or changing scores works the decision out again from "
    "the ratings left: decide whom to exclude before you read it. Later ratings of a pair count in the tables "
    "below, which are fixed-sample tests and stay as they are.")


def _decision_section(store: Store, eval_pick: gr.Dropdown, threshold: gr.Radio) -> _Section:
    """When to stop: the anytime-valid decision of each fine-tuned model against the base
    (ratings.sequential), and closing rating in one click once every one is decided."""
    with gr.Accordion("When to stop: anytime-valid decision", open=True, elem_id="results-section-decision"):
        decision = gr.Markdown(elem_id="results-decision")
        with gr.Row():
            close = gr.Button("Close rating", variant="primary", visible=False, scale=0,
                              elem_id="results-close-rating")
            reopen = gr.Button("Reopen rating", visible=False, scale=0, elem_id="results-reopen-rating")
        note = gr.Markdown(elem_id="results-close-note")

    def view(eval_id: int, cutoff: int, said: str = "") -> dict:
        decisions = sequential.for_evaluation(store, eval_id)  # success at SUCCESS_AT, whatever `cutoff` shows
        closed = store.is_closed(eval_id)
        lines = [f"- {d.sentence()}" for d in decisions]
        if not decisions:
            lines = ["- This evaluation has no fine-tuned model to set against the base."]
        done = bool(decisions) and all(d.decided for d in decisions)
        if closed:
            state = ("**Rating is closed**: raters who open a pair or submit one are told so; every rating "
                     "saved is kept and counts here and below. Reopen rating lets them go on.")
        elif done:
            state = ("**Every fine-tuned model is decided**: you may stop rating here. Close rating tells the "
                     "raters so and keeps every rating saved; until then, their further ratings still count "
                     "in the tables below.")
        else:
            state = ""
        text = "\n".join(lines) + (f"\n\n{state}" if state else "") + f"\n\n{DECISION_MEANING}"
        return {decision: text, close: gr.update(visible=done and not closed), reopen: gr.update(visible=closed),
                note: said}

    def switch(closing: bool):
        def handler(eval_id, cutoff):
            eval_id = picked_evaluation(store, eval_id)
            if eval_id is None:
                return {decision: "", close: gr.update(visible=False), reopen: gr.update(visible=False),
                        note: "⚠️ Choose an evaluation first."}
            try:
                (store.close_rating if closing else store.reopen_rating)(eval_id)
            except (RatingError, StorageError) as exc:
                return view(eval_id, int(cutoff or SUCCESS_AT), f"⚠️ {exc}")
            said = ("Rating is closed: raters are told so at their next pair or submission; their saved "
                    "ratings are kept." if closing else "Rating is open again: raters can go on.")
            return view(eval_id, int(cutoff or SUCCESS_AT), said)
        handler.__name__ = "on_close_rating" if closing else "on_reopen_rating"
        return handler

    outputs = [decision, close, reopen, note]
    close.click(switch(True), [eval_pick, threshold], outputs, api_name="close_rating", **IN_ORDER)
    reopen.click(switch(False), [eval_pick, threshold], outputs, api_name="reopen_rating", **IN_ORDER)
    blank = {decision: "", close: gr.update(visible=False), reopen: gr.update(visible=False), note: ""}
    return _Section(blank, lambda r, asked: view(asked.eval_id, asked.cutoff))


def _success_section(store: Store, trainer: RunManager | None) -> _Section:
    with gr.Accordion("Success rate per model", open=True, elem_id="results-section-success"):
        gr.Markdown("Replies scored at or above the threshold / replies rated, with 95% Wilson intervals; the "
                    "mean score with its 95% t interval.")
        success = gr.Dataframe(interactive=False, elem_id="success-table")
        plots_key = gr.State(None)  # a new value re-renders the plots (see _results_plots)
        _results_plots(store, trainer, plots_key)
    return _Section({success: pd.DataFrame(), plots_key: None}, lambda r, asked: {
        success: tables.display(r.success), plots_key: (asked.eval_id, asked.cutoff, time.time())})


def _per_prompt_section():
    with gr.Accordion("Per prompt", open=True, elem_id="results-section-prompts"):
        gr.Markdown("Each model's mean score over the raters, and the model with the highest mean.")
        raters = gr.Checkbox(False, label="Show each rater's scores", elem_id="results-raters")
        per_prompt = gr.Dataframe(interactive=False, wrap=True, max_height=900, elem_id="per-prompt-table")

    def filled(r, asked: _Asked) -> dict:
        if not asked.with_raters:
            return {per_prompt: tables.display(r.per_prompt)}
        prompts = r.replies.drop_duplicates("position") if not r.replies.empty else None
        return {per_prompt: tables.display(stats.per_prompt_table(r.scores, prompts, raters=True))}

    return raters, _Section({per_prompt: pd.DataFrame()}, filled)


def _breakdown_section():
    with gr.Accordion("Breakdown", open=True, elem_id="results-section-breakdown"):
        by = gr.Radio([], label="Success rate by", elem_id="results-by")
        breakdown = gr.Dataframe(interactive=False, elem_id="breakdown-table")

    def filled(r, asked: _Asked) -> dict:
        choices = list(r.breakdowns)
        picked = asked.by if asked.by in choices else (choices[0] if choices else None)
        return {by: gr.update(choices=choices, value=picked),
                breakdown: tables.display(r.breakdowns[picked]) if picked else pd.DataFrame()}

    return by, _Section({by: gr.update(choices=[], value=None), breakdown: pd.DataFrame()}, filled)


def _paired_section() -> _Section:
    with gr.Accordion("Head to head", open=True, elem_id="results-section-paired"):
        gr.Markdown("A paired test of the per-prompt mean scores (Wilcoxon signed-rank; sign test beside it), then "
                    "the raters' stated preferences (win rate = won / pairs with a preference).")
        paired = gr.Dataframe(interactive=False, wrap=True, elem_id="paired-table")
        preferences = gr.Dataframe(interactive=False, elem_id="preference-table")
    return _Section({paired: pd.DataFrame(), preferences: pd.DataFrame()}, lambda r, asked: {
        paired: tables.display(r.paired.drop(columns=["in words"])), preferences: tables.display(r.preferences)})


def _bias_section() -> _Section:
    with gr.Accordion("Agreement and bias checks", open=False, elem_id="results-section-bias"):
        agreement = gr.Markdown(elem_id="results-agreement")
        position = gr.Dataframe(interactive=False, elem_id="bias-table")
        lengths = gr.Dataframe(interactive=False, elem_id="length-table")
    return _Section({agreement: "", position: pd.DataFrame(), lengths: pd.DataFrame()}, lambda r, asked: {
        agreement: r.agreement["note"], position: tables.display(r.position_bias),
        lengths: tables.display(r.lengths)})


def _metrics_section() -> _Section:
    with gr.Accordion("Automatic metrics and the runs behind each model", open=True,
                      elem_id="results-section-metrics"):
        gr.Markdown("Exact match and answer contained compare the normalised reply with the reference answer; "
                    "BLEU (sacrebleu) and ROUGE-L (F1) are 0–100. Only replies with a reference count for them.")
        automatic = gr.Dataframe(interactive=False, elem_id="metrics-table")
        automatic_by = gr.Dataframe(interactive=False, elem_id="metrics-by-table", visible=False)
        runs = gr.Dataframe(interactive=False, wrap=True, elem_id="results-runs")

    def filled(r, asked: _Asked) -> dict:
        by_category = tables.display(r.automatic_by) if r.automatic_by is not None else None
        return {automatic: tables.display(r.automatic),
                automatic_by: gr.update(value=by_category, visible=r.automatic_by is not None),
                runs: tables.display(r.runs)}

    blank = {automatic: pd.DataFrame(), automatic_by: gr.update(value=pd.DataFrame(), visible=False),
             runs: pd.DataFrame()}
    return _Section(blank, filled)


def _checks_section() -> _Section:
    with gr.Accordion("Automatic check beside the human scores", open=True, elem_id="results-section-checks"):
        gr.Markdown("The check made right after generation (the evaluation's own checks, answer accuracy, replies "
                    "cut at the token cap), and how well its headline figure agrees with the raters' mean scores "
                    "(Spearman).")
        check_note = gr.Markdown(elem_id="results-checks-note")
        check_table = gr.Dataframe(interactive=False, elem_id="results-checks")
    return _Section({check_note: "", check_table: pd.DataFrame()}, lambda r, asked: {
        check_note: "\n\n".join(r.check_lines()),
        check_table: rchecks.display(r.checks.table) if r.checks is not None else pd.DataFrame()})


def _raters_section():
    with gr.Accordion("Raters: who rated, and leaving one out", open=False, elem_id="results-raters-panel"):
        gr.Markdown("Every rater of this evaluation: scores given, their mean, when, and how many rater names "
                    "came from the same address. Excluding a rater leaves their ratings stored (and the decision "
                    "recorded) but out of every table above and of the exports; Include brings them back.")
        rater_table = gr.Dataframe(interactive=False, elem_id="results-rater-table")
        with gr.Row():
            rater_name = gr.Textbox(label="Rater", placeholder="a name from the table", scale=2,
                                    elem_id="results-rater-name")
            reason = gr.Textbox(label="Why (kept in the audit)", scale=2, elem_id="results-rater-reason")
            exclude = gr.Button("Exclude", variant="stop", scale=1, elem_id="results-rater-exclude")
            include = gr.Button("Include", scale=1, elem_id="results-rater-include")
        rater_note = gr.Markdown(elem_id="results-rater-note")
    return rater_table, rater_name, reason, exclude, include, rater_note


def _exports_section():
    gr.Markdown("### Exports\nThe Markdown report, the raw ratings (CSV), preference pairs and KTO examples for "
                "the next run (JSONL prompt/chosen/rejected and prompt/completion/label, as `python -m tuner train` "
                "takes them), the low-rated replies to rewrite (CSV: fill `completion`, then "
                "import it on the Dataset tab) and a copy of the whole ratings database.")
    export = gr.Button("Build the export files", elem_id="results-export")
    export_note = gr.Markdown(elem_id="results-export-note")
    files = gr.File(label="Exports", file_count="multiple", interactive=False, elem_id="results-files")
    return export, export_note, files


def _rater_handlers(store: Store, rater_table: gr.Dataframe, rater_note: gr.Markdown):
    """The raters table of an evaluation, and the handler that excludes (or includes) one rater."""
    def rater_rows(eval_id):
        if eval_id is None or store.evaluation(int(eval_id)) is None:
            return pd.DataFrame()
        frame = store.raters(int(eval_id))
        frame["excluded"] = frame["excluded"].map({True: "excluded", False: ""})
        return frame.rename(columns={"mean_score": "mean score", "first_at": "first", "last_at": "last",
                                     "names_from_address": "names from its address"})

    def set_rater(excluded: bool):
        def handler(eval_id, name, why):
            if eval_id is None:
                return {rater_table: rater_rows(eval_id), rater_note: "⚠️ Choose an evaluation first."}
            try:
                changed = store.set_excluded(int(eval_id), name, excluded, (why or "").strip())
            except (RatingError, StorageError) as exc:
                return {rater_table: rater_rows(eval_id), rater_note: f"⚠️ {exc}"}
            word = "excluded from" if excluded else "included in"
            text = (f"{clean_rater(name)!r} is now {word} this evaluation's statistics; the tables are recomputed."
                    if changed else f"{clean_rater(name)!r} was already {word} them.")
            return {rater_table: rater_rows(eval_id), rater_note: text}
        handler.__name__ = "on_exclude_rater" if excluded else "on_include_rater"
        return handler

    return rater_rows, set_rater


def _runs_of(store: Store, trainer: RunManager | None, eval_id) -> dict[str, dict | None]:
    """The run record behind each fine-tuned variant of an evaluation (None once deleted)."""
    if trainer is None or eval_id is None:
        return {}
    records = {r["run_id"]: r for r in trainer.runs()}
    return {v["name"]: records.get(v["name"]) for v in store.variants(int(eval_id)) if v["kind"] != "base"}


def _results_plots(store: Store, trainer: RunManager | None, key: gr.State) -> None:
    """Score distribution, success rate with interval bars, and the runs' loss curves.

    Rebuilt whenever `key` changes (evaluation, threshold or a refresh). Each is a
    Vega-Lite spec drawn by gr.Plot (tuner/ui/charts.py says why not LinePlot;
    BarPlot has neither grouped bars nor error bars).
    """

    @gr.render(inputs=key)
    def plots(current):
        if not current:
            return
        eval_id, cutoff, _ = current
        scores = store.ratings_frame(eval_id)
        if scores.empty:
            gr.Markdown("The plots appear once there are ratings.", elem_id="results-no-plots")
        else:
            with gr.Row():
                gr.Plot(vega_plot(_distribution_spec(stats.score_distribution(scores))), show_label=False,
                        elem_id="results-distribution")
                gr.Plot(vega_plot(_interval_spec(stats.success_table(scores, cutoff), cutoff)), show_label=False,
                        elem_id="results-success-plot")
        curves = [curve_frame(read_metrics(Path(run["path"])), short_label(run_label(run)))
                  for run_id, run in _runs_of(store, trainer, eval_id).items() if run]
        curves = [c for c in curves if c is not None]
        if curves:
            gr.Plot(vega_plot(loss_spec(pd.concat(curves, ignore_index=True), "Loss curves of the evaluation's runs")),
                    show_label=False, elem_id="results-loss")


def _distribution_spec(distribution: pd.DataFrame) -> dict:
    order = list(dict.fromkeys(distribution["model"]))
    return {"$schema": VEGA_LITE, "title": "Score distribution per model", "width": 380, "height": 220,
            "data": {"values": distribution.to_dict("records")},
            "mark": {"type": "bar", "tooltip": True},
            "encoding": {"x": {"field": "score", "type": "ordinal", "title": "score"},
                         "xOffset": {"field": "model", "sort": order},
                         "y": {"field": "share", "type": "quantitative", "title": "share of the model's ratings",
                               "axis": {"format": "%"}},
                         "color": {"field": "model", "type": "nominal", "sort": order}}}


def _interval_spec(success: pd.DataFrame, cutoff: int) -> dict:
    order = list(success["model"])
    rows = success[["model", "rate", "rate low", "rate high", "success"]].rename(
        columns={"rate low": "low", "rate high": "high"}).to_dict("records")
    y = {"field": "model", "type": "nominal", "sort": order, "title": None}
    scale = {"domain": [0, 1]}
    return {"$schema": VEGA_LITE, "title": f"Success rate (scored {cutoff}+) with 95% intervals",
            "width": 380, "height": 40 + 40 * len(rows), "data": {"values": rows},
            "layer": [
                {"mark": {"type": "rule", "strokeWidth": 2},
                 "encoding": {"y": y, "x": {"field": "low", "type": "quantitative", "scale": scale,
                                            "axis": {"format": "%"}, "title": "success rate"},
                              "x2": {"field": "high"}, "color": {"field": "model", "sort": order, "legend": None}}},
                {"mark": {"type": "point", "filled": True, "size": 90, "tooltip": True},
                 "encoding": {"y": y, "x": {"field": "rate", "type": "quantitative", "scale": scale},
                              "color": {"field": "model", "sort": order, "legend": None}}}]}
