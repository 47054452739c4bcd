"""The Leaderboard tab: every variant ever rated, across the evaluations of one base model,
ranked by a Bradley–Terry model of the pairwise outcomes (the engine is ratings.leaderboard),
raw or length-controlled, for the human raters or for one judge model. "Which battles next?"
lists the pairs more battles would teach the board most (ratings.leaderboard.next_battles),
from the bootstrap the board already drew.
"""

from __future__ import annotations

import threading

import gradio as gr
import numpy as np
import pandas as pd

from ratings import leaderboard as lb
from ratings.store import Store
from tuner.ui.charts import VEGA_LITE, vega_plot

# headers wrap per word, never a letter a line ("Battl / es")
CSS = """
#leaderboard-table th, #leaderboard-table th *, #leaderboard-next-table th, #leaderboard-next-table th * {
  min-width: 4em; word-break: normal !important; overflow-wrap: normal; }
"""

RAW, CONTROLLED = "raw", "length"
MODES = [("Raw", RAW), ("Length-controlled", CONTROLLED)]

INTRO = ("Every model ever rated on this base model, across evaluations: each rater's two scores of one "
         "prompt's replies are a battle (the higher score wins; equal scores tie, half a win each), "
         "and a Bradley–Terry model turns the battles into ratings (1000 = the base model). "
         "**Length-controlled** adds the replies' length difference to the model, as Chatbot Arena's style "
         "control does, so a model that wins only by writing more loses that edge.")
NEXT_TOP = 5  # pairs shown by "Which battles next?"
NEXT_HOW = ("*A ahead in*: the share of the board's bootstrap resamples in which A rates above B. *Teaches*: how "
            "much one more battle would shrink the uncertainty of the pair's rating difference (Chatbot Arena's "
            "active-sampling weight) times how undecided their order is, as the share of the next battles "
            "Arena's sampling would give the pair.")
NEXT_WIDTHS = ["14%", "14%", "8%", "8%", "8%", "48%"]


class BoardCache:
    """The last board drawn for each (base model, board, mode, rounds), kept with the battles it
    was fitted on: asked again while those battles are unchanged, it returns the same board (its
    bootstrap included) without refitting; any new, changed or excluded rating refits it."""

    def __init__(self):
        self._boards: dict[tuple, tuple[pd.DataFrame, lb.Board]] = {}
        self._lock = threading.Lock()

    def board(self, store: Store, base_model: str, source: str, length_control: bool, rounds: int) -> lb.Board:
        key = (str(store.path), base_model, source, length_control, rounds)
        battles = lb.battles_of(store, base_model, source)
        with self._lock:
            kept = self._boards.get(key)
        if kept is not None and kept[0].equals(battles):
            return kept[1]
        board = lb.rank_battles(battles, base_model, source, length_control, rounds)
        with self._lock:
            self._boards[key] = (battles, board)
        return board


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
    ask = gr.Button("Which battles next?", elem_id="leaderboard-next-battles")
    next_note = gr.Markdown(elem_id="leaderboard-next-note")
    next_table = gr.Dataframe(interactive=False, wrap=True, visible=False, elem_id="leaderboard-next-table")
    shown = gr.State(None)  # the Board this page shows (the cache's object), None when it shows none
    cache = BoardCache()
    hidden = {next_note: "", next_table: gr.update(value=pd.DataFrame(), visible=False)}

    def show(base_model, source, mode_value):
        """The board; the suggestions of "Which battles next?" are cleared (they were for the
        board as it was when asked)."""
        return hidden | draw(base_model, source, mode_value)

    def draw(base_model, source, mode_value, ranked: lb.Board | None = None):
        bases, base_model, boards, source = _resolve(store, base_model, source)
        if base_model is None:
            return {base: gr.update(choices=[], value=None), board: gr.update(choices=[], value=None),
                    coverage: NO_EVALUATION, table: pd.DataFrame(), chart: None, notes: "", shown: None}
        picks = {base: gr.update(choices=bases, value=base_model),
                 board: gr.update(choices=[(_board_name(s), s) for s in boards], value=source)}
        try:
            if ranked is None:
                ranked = cache.board(store, base_model, source, mode_value == CONTROLLED, rounds)
        except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
            return picks | {coverage: f"⚠️ The board could not be fitted: {exc}", table: pd.DataFrame(),
                            chart: None, notes: "", shown: None}
        lines = ranked.sentences()
        return picks | {
            coverage: f"**{_board_name(source)}** on `{base_model}`: {lines[0]}",
            table: gr.update(value=display(ranked), column_widths=_widths(ranked.length_control)),
            chart: vega_plot(interval_spec(ranked)) if not ranked.table.empty else None,
            notes: "\n".join(f"- {line}" for line in lines[1:]), shown: ranked}

    def on_next(base_model, source, mode_value, on_screen):
        """The pairs more battles would teach the board most, from the board on screen (its
        bootstrap reused); when ratings came in since it was drawn, the board is redrawn too."""
        _, base_model, _, source = _resolve(store, base_model, source)
        if base_model is None:
            return hidden | draw(None, None, mode_value) | {next_note: NO_EVALUATION}
        try:
            ranked = cache.board(store, base_model, source, mode_value == CONTROLLED, rounds)
        except (ValueError, ArithmeticError, np.linalg.LinAlgError):
            return hidden | draw(base_model, source, mode_value)  # it says what went wrong
        redraw = {} if ranked is on_screen else draw(base_model, source, mode_value, ranked)
        note, pairs = suggestions(ranked, source)
        return redraw | {next_note: note, next_table: gr.update(value=pairs, visible=not pairs.empty,
                                                               column_widths=NEXT_WIDTHS)}

    inputs = [base, board, mode]
    outputs = [base, board, coverage, table, chart, notes, next_note, next_table, shown]
    refresh.click(show, inputs, outputs)
    for control in inputs:
        control.input(show, inputs, outputs)
    ask.click(on_next, [*inputs, shown], outputs)
    return show, inputs, outputs


NO_EVALUATION = "No evaluation yet: build one on the Compare tab and have it rated."


def _resolve(store: Store, base_model, source):
    """(every base model, the one to show, its boards, the board to show): the first base model
    and the human board where the asked ones are gone; no base model without an evaluation."""
    bases = lb.base_models(store)
    if base_model not in bases:
        base_model = bases[0] if bases else None
    if base_model is None:
        return bases, None, [], None
    boards = lb.sources(store, base_model)
    return bases, base_model, boards, source if source in boards else lb.HUMAN


def which_battles_next(store: Store, base_model, source, mode_value, rounds: int = lb.ROUNDS,
                       cache: BoardCache | None = None, top: int = NEXT_TOP) -> tuple[str, pd.DataFrame]:
    """"Which battles next?" for a board named by its controls: `suggestions` of the board
    `cache` holds for it (and so its bootstrap) while its battles are unchanged, else of a
    board fitted now."""
    _, base_model, _, source = _resolve(store, base_model, source)
    if base_model is None:
        return NO_EVALUATION, pd.DataFrame()
    try:
        board = (cache or BoardCache()).board(store, base_model, source, mode_value == CONTROLLED, rounds)
    except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
        return f"⚠️ The board could not be fitted: {exc}", pd.DataFrame()
    return suggestions(board, source, top)


def suggestions(board: lb.Board, source: str, top: int = NEXT_TOP) -> tuple[str, pd.DataFrame]:
    """A note (what the board lacks, or the pair that would teach it most and the Compare
    evaluation that gives those battles) and the top pairs' table; no refit."""
    pairs = lb.next_battles(board)
    lines = [lb.next_battles_sentence(board, pairs)]
    if not pairs.empty:
        lines.append(_how_to_get(pairs.iloc[0], source))
        lines.append(NEXT_HOW)
    for part in board.unranked:
        lines.append(f"{', '.join(part)}: never compared with the ranked models through any chain of battles; "
                     "an evaluation holding one of them and a ranked model would put them on the board.")
    return "\n\n".join(lines), next_display(pairs.head(top))


def _how_to_get(pair, source: str) -> str:
    """One sentence: the Compare evaluation that would give the pair's battles."""
    runs = [p for p in (pair["a"], pair["b"]) if p != lb.BASE]
    if len(runs) == 2:
        which = f"the runs `{runs[0]}` and `{runs[1]}` (the base model's replies come with them)"
    else:
        which = f"the run `{runs[0]}` (the base model is in every evaluation)"
    rated = ("have it rated" if source == lb.HUMAN else
             f"run the judge `{source[len(lb.JUDGE):]}` on it from the Results tab")
    return (f"To get {pair['a_label']} vs {pair['b_label']} battles: on the **Compare** tab, build an evaluation "
            f"with {which} and {rated}; its battles join this board.")


def next_display(pairs: pd.DataFrame) -> pd.DataFrame:
    """next_battles' pairs as the tab shows them."""
    if pairs.empty:
        return pd.DataFrame()
    return pd.DataFrame({
        "Model A": pairs["a_label"], "Model B": pairs["b_label"], "Battles so far": pairs["battles"],
        "A ahead in": [_percent(q) for q in pairs["p_ahead"]],
        "Teaches": [f"{s:.0%}" for s in pairs["share"]],
        "Why": pairs["reason"]})


def _percent(q: float) -> str:
    """A share as a whole percent that never reads 100% (or 50%) unless it is."""
    if q >= 1:
        return "100%"
    return ">99%" if q >= 0.995 else f"{q:.0%}"


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
