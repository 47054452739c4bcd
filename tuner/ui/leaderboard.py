"""The Leaderboard tab: every variant ever rated, across the evaluations of one base model,
ranked by a Bradley–Terry model of the pairwise outcomes (the engine is ratings.leaderboard),
raw or length-controlled, for the human raters or for one judge model.
"""

from __future__ import annotations

import gradio as gr
import numpy as np
import pandas as pd

from ratings import leaderboard as lb
from ratings.store import Store
from tuner.ui.charts import VEGA_LITE, vega_plot

# headers wrap per word, never a letter a line ("Battl / es")
CSS = """
#leaderboard-table th, #leaderboard-table th * { min-width: 4em; word-break: normal !important; overflow-wrap: normal; }
"""

RAW, CONTROLLED = "raw", "length"
MODES = [("Raw", RAW), ("Length-controlled", CONTROLLED)]

INTRO = ("Every model ever rated on this base model, across evaluations: each rater's two scores of one "
         "prompt's replies are a battle (the higher score wins; equal scores tie, half a win each), "
         "and a Bradley–Terry model turns the battles into ratings (1000 = the base model). "
         "**Length-controlled** adds the replies' length difference to the model, as Chatbot Arena's style "
         "control does, so a model that wins only by writing more loses that edge.")


def leaderboard_tab(store: Store, rounds: int = lb.ROUNDS):
    """The tab's controls, table, chart and notes; returns (show, its inputs, its outputs) so the
    page refreshes the tab when it is opened."""
    gr.Markdown(INTRO)
    with gr.Row():
        base = gr.Dropdown(choices=[], value=None, allow_custom_value=True, label="Base model",
                           elem_id="leaderboard-base", scale=3)
        board = gr.Dropdown(choices=[], value=None, allow_custom_value=True, label="Board",
                            elem_id="leaderboard-board", scale=2)
        mode = gr.Radio(MODES, value=RAW, label="Ratings", elem_id="leaderboard-mode", scale=2)
        refresh = gr.Button("↻ Refresh", elem_id="leaderboard-refresh", scale=0)
    coverage = gr.Markdown(elem_id="leaderboard-coverage")
    table = gr.Dataframe(interactive=False, wrap=True, elem_id="leaderboard-table")
    chart = gr.Plot(show_label=False, elem_id="leaderboard-chart")
    notes = gr.Markdown(elem_id="leaderboard-notes")

    def show(base_model, source, mode_value):
        bases = lb.base_models(store)
        if base_model not in bases:
            base_model = bases[0] if bases else None
        if base_model is None:
            return {base: gr.update(choices=[], value=None), board: gr.update(choices=[], value=None),
                    coverage: "No evaluation yet: build one on the Compare tab and have it rated.",
                    table: pd.DataFrame(), chart: None, notes: ""}
        boards = lb.sources(store, base_model)
        source = source if source in boards else lb.HUMAN
        picks = {base: gr.update(choices=bases, value=base_model),
                 board: gr.update(choices=[(_board_name(s), s) for s in boards], value=source)}
        try:
            ranked = lb.leaderboard(store, base_model, source, length_control=mode_value == CONTROLLED,
                                    rounds=rounds)
        except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
            return picks | {coverage: f"⚠️ The board could not be fitted: {exc}", table: pd.DataFrame(),
                            chart: None, notes: ""}
        lines = ranked.sentences()
        return picks | {
            coverage: f"**{_board_name(source)}** on `{base_model}`: {lines[0]}",
            table: gr.update(value=display(ranked), column_widths=_widths(ranked.length_control)),
            chart: vega_plot(interval_spec(ranked)) if not ranked.table.empty else None,
            notes: "\n".join(f"- {line}" for line in lines[1:])}

    inputs = [base, board, mode]
    outputs = [base, board, coverage, table, chart, notes]
    refresh.click(show, inputs, outputs)
    for control in inputs:
        control.input(show, inputs, outputs)
    return show, inputs, outputs


def _widths(length_control: bool) -> list[str]:
    """Column shares that keep the table inside the page (a long model label wraps)."""
    if length_control:
        return ["6%", "28%", "8%", "8%", "12%", "9%", "8%", "12%", "9%"]
    return ["6%", "32%", "8%", "14%", "9%", "8%", "14%", "9%"]


def _board_name(source: str) -> str:
    return "Human raters" if source == lb.HUMAN else f"Judge: {source[len(lb.JUDGE):]}"


def display(board: lb.Board) -> pd.DataFrame:
    """The board as the tab shows it: rank, model, rating with its 95% interval and rank range,
    battles, wins/ties/losses and the win rate; the raw rating beside a length-controlled one."""
    t = board.table
    if t.empty:
        return pd.DataFrame()
    fixed = t["player"] == board.reference
    out = pd.DataFrame({
        "Rank": t["rank"], "Model": t["label"], "Rating": t["rating"].round().astype(int),
        "95% interval": np.where(fixed, "fixed (reference)",
                                 [f"{lo:.0f} – {hi:.0f}" for lo, hi in zip(t["low"], t["high"])]),
        "Rank range": [f"{lo}" if lo == hi else f"{lo} – {hi}" for lo, hi in zip(t["rank_low"], t["rank_high"])],
        "Battles": t["battles"],
        "Wins / ties / losses": [f"{w} / {d} / {lo}" for w, d, lo in zip(t["wins"], t["ties"], t["losses"])],
        "Win rate": [f"{r:.0%}" for r in t["win_rate"]]})
    if board.length_control:
        out.insert(3, "Raw rating", t["raw_rating"].round().astype(int))
    return out


def interval_spec(board: lb.Board) -> dict:
    """Each model's rating as a point with its 95% interval as a bar (the reference's line at
    1000); with length control, the raw rating as an open circle beside it."""
    t = board.table
    rows = t.assign(model=t["label"]).rename(columns={"raw_rating": "raw"})[
        ["model", "rating", "low", "high", "raw", "battles"]].round(1).to_dict("records")
    order = list(t["label"])
    y = {"field": "model", "type": "nominal", "sort": order, "title": None, "axis": {"labelLimit": 260}}
    x = {"type": "quantitative", "scale": {"zero": False}, "title": "rating (1000 = the reference)"}
    color = {"field": "model", "sort": order, "legend": None, "scale": {"scheme": "tableau10"}}
    layers = [
        {"mark": {"type": "rule", "strokeDash": [4, 4], "color": "#888"},
         "encoding": {"x": {"datum": lb.ELO_BASE, **x}}},
        {"mark": {"type": "rule", "strokeWidth": 2},
         "encoding": {"y": y, "x": {"field": "low", **x}, "x2": {"field": "high"},
                      "color": color}},
        {"mark": {"type": "point", "filled": True, "size": 90, "tooltip": True},
         "encoding": {"y": y, "x": {"field": "rating", **x}, "color": color}}]
    title = "Ratings with 95% bootstrap intervals"
    if board.length_control:
        layers.append({"mark": {"type": "point", "filled": False, "size": 70, "color": "#666", "tooltip": True},
                       "encoding": {"y": y, "x": {"field": "raw", **x}}})
        title = "Length-controlled ratings (●) with 95% intervals; raw ratings (○)"
    return {"$schema": VEGA_LITE, "title": title, "width": 520, "height": 40 + 36 * len(rows),
            "data": {"values": rows}, "layer": layers}
