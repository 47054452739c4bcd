"""The Results tab: success rates, paired tests, breakdowns, raters, plots and exports
of one evaluation.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import gradio as gr
import pandas as pd

from ratings import checks as rchecks
from ratings import exports, stats
from ratings.store import RatingError, Store, clean_rater
from tuner.paths import StorageError
from tuner.runs import RunManager, run_label
from tuner.train import read_metrics
from tuner.ui.charts import VEGA_LITE, curve_frame, short_label, vega_plot
from tuner.ui.rate import SCORES, eval_choices



# table headers are model labels ("lora: polite r16 (2026…)"): wrapped per word, never a letter a line
CSS = """
#per-prompt-table th, #per-prompt-table th *, #breakdown-table th, #breakdown-table th *,
#success-table th, #success-table th * { min-width: 7em; word-break: normal !important; overflow-wrap: normal; }
"""


def results_tab(store: Store, trainer: RunManager | None = None):
    """Every table of `ratings.exports.gather` for one evaluation, the plots and the exports.

    Returns (show, its inputs, its outputs) so the page can refresh the tab when it is opened.
    """
    with gr.Row():
        eval_pick = gr.Dropdown(choices=[], value=None, allow_custom_value=True, label="Evaluation",
                                elem_id="results-eval", scale=3)
        threshold = gr.Radio(SCORES, value=stats.SUCCESS, label="A reply succeeds when scored at least",
                             elem_id="results-threshold", scale=2)
        refresh = gr.Button("↻ Refresh", elem_id="results-refresh", scale=0)
    summary = gr.Markdown(elem_id="results-summary")
    # collapsible sections: the page was one 4,400-pixel column
    with gr.Accordion("Success rate per model", open=True, elem_id="results-section-success"):
        gr.Markdown("Replies scored at or above the threshold / replies rated, with 95% Wilson intervals; the "
                    "mean score with its 95% t interval.")
        success = gr.Dataframe(interactive=False, elem_id="success-table")
        plots_key = gr.State(None)  # a new value re-renders the plots (see _results_plots)
        _results_plots(store, trainer, plots_key)
    with gr.Accordion("Per prompt", open=True, elem_id="results-section-prompts"):
        gr.Markdown("Each model's mean score over the raters, and the model with the highest mean.")
        raters = gr.Checkbox(False, label="Show each rater's scores", elem_id="results-raters")
        per_prompt = gr.Dataframe(interactive=False, wrap=True, max_height=900, elem_id="per-prompt-table")
    with gr.Accordion("Breakdown", open=True, elem_id="results-section-breakdown"):
        by = gr.Radio([], label="Success rate by", elem_id="results-by")
        breakdown = gr.Dataframe(interactive=False, elem_id="breakdown-table")
    with gr.Accordion("Head to head", open=True, elem_id="results-section-paired"):
        gr.Markdown("A paired test of the per-prompt mean scores (Wilcoxon signed-rank; sign test beside it), then "
                    "the raters' stated preferences (win rate = won / pairs with a preference).")
        paired = gr.Dataframe(interactive=False, wrap=True, elem_id="paired-table")
        preferences = gr.Dataframe(interactive=False, elem_id="preference-table")
    with gr.Accordion("Agreement and bias checks", open=False, elem_id="results-section-bias"):
        agreement = gr.Markdown(elem_id="results-agreement")
        position = gr.Dataframe(interactive=False, elem_id="bias-table")
        lengths = gr.Dataframe(interactive=False, elem_id="length-table")
    with gr.Accordion("Automatic metrics and the runs behind each model", open=True,
                      elem_id="results-section-metrics"):
        gr.Markdown("Exact match and answer contained compare the normalised reply with the reference answer; "
                    "BLEU (sacrebleu) and ROUGE-L (F1) are 0–100. Only replies with a reference count for them.")
        automatic = gr.Dataframe(interactive=False, elem_id="metrics-table")
        automatic_by = gr.Dataframe(interactive=False, elem_id="metrics-by-table", visible=False)
        runs = gr.Dataframe(interactive=False, wrap=True, elem_id="results-runs")
    with gr.Accordion("Automatic check beside the human scores", open=True, elem_id="results-section-checks"):
        gr.Markdown("The check made right after generation (the evaluation's own checks, answer accuracy, replies "
                    "cut at the token cap), and how well its headline figure agrees with the raters' mean scores "
                    "(Spearman).")
        check_note = gr.Markdown(elem_id="results-checks-note")
        check_table = gr.Dataframe(interactive=False, elem_id="results-checks")
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
    gr.Markdown("### Exports\nThe Markdown report, the raw ratings (CSV), preference pairs for the next run "
                "(JSONL prompt/chosen/rejected), the low-rated replies to rewrite (CSV: fill `completion`, then "
                "import it on the Dataset tab) and a copy of the whole ratings database.")
    export = gr.Button("Build the export files", elem_id="results-export")
    export_note = gr.Markdown(elem_id="results-export-note")
    files = gr.File(label="Exports", file_count="multiple", interactive=False, elem_id="results-files")

    def gathered(eval_id, cutoff):
        return exports.gather(store, int(eval_id), int(cutoff or stats.SUCCESS), _runs_of(store, trainer, eval_id))

    def show(eval_id, cutoff, with_raters, by_value):
        evals = eval_choices(store)
        if eval_id is None and evals:
            eval_id = evals[0][1]
        try:  # the list is filled by the page; a script may send anything
            eval_id = int(eval_id) if eval_id is not None else None
        except (TypeError, ValueError):
            eval_id = -1
        if eval_id is None or store.evaluation(int(eval_id)) is None:
            empty = pd.DataFrame()
            return [gr.update(choices=evals, value=None), "No evaluation yet: build one on the Compare tab.",
                    empty, None, empty, gr.update(choices=[], value=None), empty, empty, empty, "", empty, empty,
                    empty, gr.update(value=empty, visible=False), empty, "", empty]
        r = gathered(eval_id, cutoff)
        choices = list(r.breakdowns)
        by_value = by_value if by_value in choices else (choices[0] if choices else None)
        prompts = r.replies.drop_duplicates("position") if not r.replies.empty else None
        table = stats.per_prompt_table(r.scores, prompts, raters=bool(with_raters)) if with_raters else r.per_prompt
        return [gr.update(choices=evals, value=eval_id), "\n".join(f"- {line}" for line in r.summary()),
                exports.display(r.success), (int(eval_id), int(cutoff or stats.SUCCESS), time.time()),
                exports.display(table), gr.update(choices=choices, value=by_value),
                exports.display(r.breakdowns[by_value]) if by_value else pd.DataFrame(),
                exports.display(r.paired.drop(columns=["in words"])), exports.display(r.preferences),
                r.agreement["note"],
                exports.display(r.position_bias), exports.display(r.lengths), exports.display(r.automatic),
                gr.update(value=exports.display(r.automatic_by) if r.automatic_by is not None else None,
                          visible=r.automatic_by is not None),
                exports.display(r.runs), "\n\n".join(r.check_lines()),
                rchecks.display(r.checks.table) if r.checks is not None else pd.DataFrame()]

    def on_export(eval_id, cutoff):
        if eval_id is None:
            return "⚠️ Choose an evaluation first.", None
        r = gathered(eval_id, cutoff)
        try:
            paths = exports.write_exports(r, Path(tempfile.mkdtemp(prefix="tuner-results-")), store.path)
        except OSError as exc:  # StorageError: names the file and the problem
            return f"⚠️ {exc}", None
        return (f"Built {len(paths)} files for evaluation #{eval_id} (success at {r.threshold} or more).",
                [str(p) for p in paths])

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
                return rater_rows(eval_id), "⚠️ Choose an evaluation first."
            try:
                changed = store.set_excluded(int(eval_id), name, excluded, (why or "").strip())
            except (RatingError, StorageError) as exc:
                return rater_rows(eval_id), f"⚠️ {exc}"
            word = "excluded from" if excluded else "included in"
            text = (f"{clean_rater(name)!r} is now {word} this evaluation's statistics; the tables are recomputed."
                    if changed else f"{clean_rater(name)!r} was already {word} them.")
            return rater_rows(eval_id), text
        handler.__name__ = "on_exclude_rater" if excluded else "on_include_rater"
        return handler

    inputs = [eval_pick, threshold, raters, by]
    outputs = [eval_pick, summary, success, plots_key, per_prompt, by, breakdown, paired, preferences, agreement,
               position, lengths, automatic, automatic_by, runs, check_note, check_table]
    refresh.click(show, inputs, outputs).then(rater_rows, eval_pick, rater_table)
    for control in inputs:
        control.input(show, inputs, outputs).then(rater_rows, eval_pick, rater_table)
    eval_pick.change(rater_rows, eval_pick, rater_table)
    for button, excluded in ((exclude, True), (include, False)):
        button.click(set_rater(excluded), [eval_pick, rater_name, reason], [rater_table, rater_note],
                     api_name="exclude_rater" if excluded else "include_rater").then(show, inputs, outputs)
    export.click(on_export, [eval_pick, threshold], [export_note, files])
    return show, inputs, outputs


def _runs_of(store: Store, trainer: RunManager | None, eval_id) -> dict[str, dict | None]:
    """The run record behind each fine-tuned variant of an evaluation (None once deleted)."""
    if trainer is None or eval_id is None:
        return {}
    records = {r["run_id"]: r for r in trainer.runs()}
    return {v["name"]: records.get(v["name"]) for v in store.variants(int(eval_id)) if v["kind"] != "base"}


def _results_plots(store: Store, trainer: RunManager | None, key: gr.State) -> None:
    """Score distribution, success rate with interval bars, and the runs' loss curves.

    Rebuilt whenever `key` changes (evaluation, threshold or a refresh), never
    updated in place: a Gradio 6 LinePlot first given an empty frame never
    draws, and a color series that first appears in an update is never drawn.
    The first two are Vega-Lite specs drawn by gr.Plot (BarPlot has neither
    grouped bars nor error bars).
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
            gr.LinePlot(pd.concat(curves, ignore_index=True), x="step", y="loss", color="series", height=280,
                        title="Loss curves of the evaluation's runs", elem_id="results-loss")


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
