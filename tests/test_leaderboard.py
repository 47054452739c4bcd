"""The leaderboard across runs (ratings/leaderboard.py): a Bradley–Terry fit checked against a
published example, then boards built from real SQLite stores rated through the Store API."""

from __future__ import annotations

import math
import random

import numpy as np
import pandas as pd
import pytest

from helpers import open_evaluation
from ratings import leaderboard as lb
from ratings.store import Store

# --- the published example ------------------------------------------------------------------
# Agresti, Categorical Data Analysis (2nd ed., 2002), Sec. 10.6, Table 10.11: the 1987 season
# of the seven teams of the American League's Eastern Division, as home wins / away wins of
# each (home, away) pairing. The data and the fits are BradleyTerry2's (Turner & Firth):
# data/baseball.csv, and tests/baseball.Rout.save, whose BTm() summaries print the estimates
# below to 4 decimals (Baltimore = 0), matching Table 10.11's column 3 (to its 2 decimals:
# 1.58, 1.44, 1.29, 1.25, 1.11, 0.68), and with a home-advantage covariate, at.home = 0.3023.
BASEBALL = """Milwaukee,Detroit,4,3 Milwaukee,Toronto,4,2 Milwaukee,New York,4,3 Milwaukee,Boston,6,1
Milwaukee,Cleveland,4,2 Milwaukee,Baltimore,6,0 Detroit,Milwaukee,3,3 Detroit,Toronto,4,2 Detroit,New York,4,3
Detroit,Boston,6,0 Detroit,Cleveland,6,1 Detroit,Baltimore,4,3 Toronto,Milwaukee,2,5 Toronto,Detroit,4,3
Toronto,New York,2,4 Toronto,Boston,4,3 Toronto,Cleveland,4,2 Toronto,Baltimore,6,0 New York,Milwaukee,3,3
New York,Detroit,5,1 New York,Toronto,2,5 New York,Boston,4,3 New York,Cleveland,4,2 New York,Baltimore,6,1
Boston,Milwaukee,5,1 Boston,Detroit,2,5 Boston,Toronto,3,3 Boston,New York,4,2 Boston,Cleveland,5,2
Boston,Baltimore,6,0 Cleveland,Milwaukee,2,5 Cleveland,Detroit,3,3 Cleveland,Toronto,3,4 Cleveland,New York,4,3
Cleveland,Boston,4,2 Cleveland,Baltimore,2,4 Baltimore,Milwaukee,2,5 Baltimore,Detroit,1,5 Baltimore,Toronto,1,6
Baltimore,New York,2,4 Baltimore,Boston,1,6 Baltimore,Cleveland,3,4"""
PUBLISHED = {"Boston": 1.1077, "Cleveland": 0.6839, "Detroit": 1.4364, "Milwaukee": 1.5814,
             "New York": 1.2476, "Toronto": 1.2945, "Baltimore": 0.0}
PUBLISHED_HOME = {"Boston": 1.1438, "Cleveland": 0.7047, "Detroit": 1.4754, "Milwaukee": 1.6196,
                  "New York": 1.2813, "Toronto": 1.3271, "Baltimore": 0.0}


def _baseball_games() -> pd.DataFrame:
    games = []
    for row in BASEBALL.replace("\n", " ").replace("New York", "New_York").split():
        home, away, home_wins, away_wins = row.replace("New_York", "New York").split(",")
        games += [(home, away, 1.0)] * int(home_wins) + [(home, away, 0.0)] * int(away_wins)
    frame = pd.DataFrame(games, columns=["a", "b", "outcome"])
    return frame.assign(home=1.0)  # a is the home team in every game


def test_the_fit_reproduces_agrestis_1987_baseball_estimates():
    games = _baseball_games()
    assert len(games) == 21 * 13  # every two of the 7 teams met 13 times (42 home-away pairings)
    plain = lb.fit(games, reference="Baltimore", virtual_ties=0)
    for team, estimate in PUBLISHED.items():
        assert plain.beta[team] == pytest.approx(estimate, abs=5e-5), team
    assert plain.gamma is None
    home = lb.fit(games, reference="Baltimore", covariate="home", virtual_ties=0)
    for team, estimate in PUBLISHED_HOME.items():
        assert home.beta[team] == pytest.approx(estimate, abs=5e-5), team
    assert home.gamma == pytest.approx(0.3023, abs=5e-5)
    # Table 10.11's column 5: the home-advantage model's abilities as shares, to 3 decimals
    shares = np.exp(home.beta) / np.exp(home.beta).sum()
    assert sorted(shares.round(3)) == [0.044, 0.088, 0.137, 0.157, 0.164, 0.190, 0.220]


def test_a_tie_is_half_a_win_for_each_side():
    # a beats b once, b never beats a, two ties: a has 2 points of 3, b has 1 → β_a − β_b = ln 2
    battles = pd.DataFrame({"a": ["x", "x", "y"], "b": ["y", "y", "x"], "outcome": [1.0, 0.5, 0.5]})
    assert lb.fit(battles, reference="y", virtual_ties=0).beta["x"] == pytest.approx(math.log(2), abs=1e-6)


# --- boards from real stores ----------------------------------------------------------------
BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def variant(name: str) -> dict:
    return {"name": name, "label": "base (SmolLM2)" if name == "base" else f"lora: {name}",
            "kind": "base" if name == "base" else "lora"}


def build(store: Store, names: list[str], prompts: list[str], reply=None, base_model: str = BASE_MODEL,
          name: str = "e") -> int:
    """An evaluation open for rating; `reply(variant, k, prompt)` gives each reply's text."""
    reply = reply or (lambda v, k, p: f"{v} answers {p}")
    return open_evaluation(store, name, base_model, prompts, [variant(n) for n in names], reply_settings={"t": 0},
                           reply=lambda p, v, _: reply(v, p["position"] - 1, p["text"]), latency_s=0.1, new_tokens=5)


def rate_all(store: Store, eval_id: int, raters: list[str], decide, seed: int = 0) -> int:
    """Each rater rates every pair served to them; decide(variant_a, variant_b, text_a, text_b,
    rng) gives (score_a, score_b). Returns how many pairs were rated."""
    writer = {row.reply: row.variant for row in store.replies(eval_id).itertuples()}
    rng, rated = random.Random(seed), 0
    for rater in raters:
        while (pair := store.next_pair(eval_id, rater, rng)) is not None:
            a, b = pair["reply_a"], pair["reply_b"]
            store.rate_pair(pair["assignment_id"], rater, *decide(writer[a], writer[b], a, b, rng))
            rated += 1
    return rated


def prefer(ranking: list[str]):
    """Scores that put the variants in `ranking`'s order, best first."""
    return lambda va, vb, a, b, rng: (5 - ranking.index(va), 5 - ranking.index(vb))


PROMPTS = [f"Question {i}" for i in range(6)]


def test_a_dominant_player_ranks_first_and_a_run_is_one_player_across_evaluations(tmp_path):
    store = Store(tmp_path / "r.db")
    first = build(store, ["base", "run-a", "run-b"], PROMPTS, name="first")
    second = build(store, ["base", "run-a"], PROMPTS[:4] + ["A new one"], name="second")
    order = ["run-a", "run-b", "base"]
    assert rate_all(store, first, ["ana", "ben", "cy"], prefer(order)) == 18  # 1 pair a prompt a rater
    assert rate_all(store, second, ["ana", "dee"], prefer(order)) == 10
    board = lb.leaderboard(store, BASE_MODEL, rounds=100)
    table = board.table.set_index("player")
    assert list(board.table["player"]) == ["run-a", "run-b", "base"]
    top = table.loc["run-a"]
    assert top["rank"] == 1 and top["win_rate"] == 1.0 and math.isfinite(top["rating"])  # finite: the prior
    assert table.loc["base", "rating"] == lb.ELO_BASE and board.reference == "base"
    assert table.loc["run-a", "label"] == "lora: run-a"
    # both evaluations feed the one run-a and the one base player
    assert table["battles"].sum() == 2 * 28
    assert board.coverage.prompts == 7 and [e["id"] for e in board.coverage.evaluations] == [first, second]
    assert board.coverage.shared == [(first, second, 4)]
    assert "#1 and #2 share 4 prompts" in board.coverage.sentence()
    assert lb.base_models(store) == [BASE_MODEL] and lb.sources(store, BASE_MODEL) == ["human"]


def test_ties_count_half_and_excluded_raters_are_left_out(tmp_path):
    store = Store(tmp_path / "r.db")
    eval_id = build(store, ["base", "run-1"], PROMPTS[:1])
    outcomes = iter([(4, 2), (3, 3), (3, 3), (1, 5)])  # whoever is A: one win, two ties, then a cheat
    rate_all(store, eval_id, ["ana", "ben", "cy", "mallory"], lambda va, vb, a, b, rng: next(outcomes))
    store.set_excluded(eval_id, "mallory", True, "test")
    battles = lb.human_battles(store, BASE_MODEL)
    assert len(battles) == 3 and (battles["outcome"] == 0.5).sum() == 2
    board = lb.leaderboard(store, BASE_MODEL, rounds=50, virtual_ties=0)
    table = board.table.set_index("player")
    assert table["ties"].tolist() == [2, 2] and table["battles"].tolist() == [3, 3]
    winner = table["wins"].idxmax()
    assert table.loc[winner, "win_rate"] == pytest.approx(2 / 3)  # 1 win + 2 half wins of 3
    gap = (table.loc[winner, "rating"] - table.drop(winner)["rating"].iloc[0]) / lb.ELO_SCALE
    assert gap == pytest.approx(math.log(2), abs=1e-6)  # 2 points to 1
    # all ties: level ratings, a win rate of one half
    store2 = Store(tmp_path / "ties.db")
    level = build(store2, ["base", "run-1"], PROMPTS)
    rate_all(store2, level, ["ana", "ben"], lambda va, vb, a, b, rng: (3, 3))
    even = lb.leaderboard(store2, BASE_MODEL, rounds=50).table
    assert even["rating"].tolist() == pytest.approx([lb.ELO_BASE] * 2) and even["win_rate"].tolist() == [0.5, 0.5]


def test_a_disconnected_graph_is_reported(tmp_path):
    store = Store(tmp_path / "r.db")
    linked = build(store, ["base", "run-1"], PROMPTS[:3], name="linked")
    apart = build(store, ["run-2", "run-3"], PROMPTS[:3], name="apart")  # never met base or run-1
    rate_all(store, linked, ["ana", "ben"], prefer(["run-1", "base"]))
    rate_all(store, apart, ["ana", "ben"], prefer(["run-2", "run-3"]))
    board = lb.leaderboard(store, BASE_MODEL, rounds=50)
    assert set(board.table["player"]) == {"base", "run-1"}
    assert board.unranked == [["lora: run-2", "lora: run-3"]]
    words = " ".join(board.sentences())
    assert "lora: run-2, lora: run-3: never compared" in words and "cannot be ranked against them" in words
    assert [len(p) for p in lb.components(lb.human_battles(store, BASE_MODEL))] == [2, 2]
    assert board.coverage.shared == [(linked, apart, 3)]


def test_bootstrap_intervals_contain_the_estimate_and_repeat_with_the_seed(tmp_path):
    store = Store(tmp_path / "r.db")
    eval_id = build(store, ["base", "run-1", "run-2"], [f"Q{i}" for i in range(12)])
    strength = {"base": 0.0, "run-1": 1.0, "run-2": 0.5}

    def noisy(va, vb, a, b, rng):
        p = 1 / (1 + math.exp(strength[vb] - strength[va]))
        return (4, 2) if rng.random() < p else (2, 4)

    rate_all(store, eval_id, [f"r{i}" for i in range(5)], noisy)
    board = lb.leaderboard(store, BASE_MODEL, rounds=200, seed=7)
    t = board.table
    assert ((t["low"] <= t["rating"]) & (t["rating"] <= t["high"])).all()
    assert ((t["rank_low"] <= t["rank"]) & (t["rank"] <= t["rank_high"])).all()
    assert (t.loc[t["player"] != "base", "high"] > t.loc[t["player"] != "base", "low"]).all()
    again = lb.leaderboard(store, BASE_MODEL, rounds=200, seed=7).table
    pd.testing.assert_frame_equal(t, again)
    other = lb.leaderboard(store, BASE_MODEL, rounds=200, seed=8).table
    assert not np.allclose(other["low"], t["low"]) and np.allclose(other["rating"], t["rating"])
    draws = lb.bootstrap(lb.human_battles(store, BASE_MODEL), rounds=20, seed=7)
    assert draws.shape == (20, 3) and (draws["base"] == 0).all()


def test_style_control_removes_a_pure_length_effect(tmp_path):
    """Synthetic raters who like long replies: the long-winded model is no better, only longer."""
    store = Store(tmp_path / "r.db")
    rng = np.random.default_rng(3)
    n = 40
    lengths = {"base": rng.integers(60, 400, n), "tuned": rng.integers(60, 400, n),
               "verbose": rng.integers(500, 900, n)}
    eval_id = build(store, ["base", "tuned", "verbose"], [f"Q{i}" for i in range(n)],
                    reply=lambda v, k, p: f"{v} {k} ".ljust(int(lengths[v][k]), "."))
    quality = {"base": 0.0, "tuned": 0.8, "verbose": 0.0}

    def likes_length(va, vb, a, b, r):
        x = (len(a) - len(b)) / (len(a) + len(b))
        p = 1 / (1 + math.exp(-(quality[va] - quality[vb] + 5.0 * x)))
        return (4, 2) if r.random() < p else (2, 4)

    rate_all(store, eval_id, [f"r{i}" for i in range(8)], likes_length, seed=5)
    raw = lb.leaderboard(store, BASE_MODEL, rounds=200)
    controlled = lb.leaderboard(store, BASE_MODEL, length_control=True, rounds=200)
    assert raw.table["player"].iloc[0] == "verbose" and raw.gamma is None
    assert controlled.table["player"].iloc[0] != "verbose"
    assert controlled.table["player"].iloc[0] == "tuned"
    gamma, low, high = controlled.gamma
    assert 0 < low < gamma < high
    ctl = controlled.table.set_index("player")
    assert ctl.loc["verbose", "rating"] < ctl.loc["verbose", "raw_rating"]
    assert ctl.loc["verbose", "raw_rating"] == pytest.approx(raw.table.set_index("player").loc["verbose", "rating"])
    assert "the longer reply is preferred" in " ".join(controlled.sentences())


def _judge(store: Store, eval_id: int, judge: str, better: str, unreadable: int = 0) -> int:
    """The judge's verdicts, both orders of every comparison, `better` always preferred; the
    last `unreadable` rows have no verdict. Returns the rows written."""
    with store.db() as db:
        pairs = list(db.execute("""
            SELECT c.id, c.reply1_id, c.reply2_id, v1.name, v2.name FROM comparisons c
            JOIN replies r1 ON r1.id = c.reply1_id JOIN variants v1 ON v1.id = r1.variant_id
            JOIN replies r2 ON r2.id = c.reply2_id JOIN variants v2 ON v2.id = r2.variant_id
            JOIN prompts p ON p.id = c.prompt_id WHERE p.evaluation_id = ?""", [eval_id]))
    rows = []
    for cid, r1, r2, n1, n2 in pairs:
        for first, second, first_name in ((r1, r2, n1), (r2, r1, n2)):
            rows.append([eval_id, judge, cid, first, second, "first" if first_name == better else "second"])
    for row in rows[len(rows) - unreadable:]:
        row[-1] = None
    with store.write() as db:
        db.conn.executemany("INSERT INTO judge_verdicts (evaluation_id, judge, comparison_id, first_reply_id, "
                       "second_reply_id, verdict, raw, created_at) VALUES (?, ?, ?, ?, ?, ?, 'raw', 'now')", rows)
    return len(rows)


def test_the_judge_board_is_separate_from_the_human_board(tmp_path):
    store = Store(tmp_path / "r.db")
    eval_id = build(store, ["base", "run-1"], PROMPTS)
    rate_all(store, eval_id, ["ana", "ben"], prefer(["run-1", "base"]))
    assert _judge(store, eval_id, "qwen-judge", better="base", unreadable=2) == 12
    assert lb.sources(store, BASE_MODEL) == ["human", "judge:qwen-judge"]
    human = lb.leaderboard(store, BASE_MODEL, rounds=50)
    judge = lb.leaderboard(store, BASE_MODEL, "judge:qwen-judge", rounds=50)
    assert human.table["player"].iloc[0] == "run-1" and judge.table["player"].iloc[0] == "base"
    assert human.table["battles"].tolist() == [12, 12]  # 6 prompts × 2 raters
    assert judge.table["battles"].tolist() == [10, 10]  # 12 verdict rows, 2 unreadable left out
    assert len(lb.judge_battles(store, BASE_MODEL, "someone-else")) == 0
    with pytest.raises(ValueError):
        lb.battles_of(store, BASE_MODEL, "crowd")


def test_an_empty_board_says_so(tmp_path):
    store = Store(tmp_path / "r.db")
    build(store, ["base", "run-1"], PROMPTS[:2])
    board = lb.leaderboard(store, BASE_MODEL)
    assert board.table.empty and board.sentences() == ["No battles yet."]
    assert lb.leaderboard(store, "other/model").table.empty


# --- which battles next (Arena's active sampling across evaluations) -------------------------
def outcomes_for(player: str, results: str):
    """Scores in which `player` wins (W), loses (L) or ties (T) its battles in `results`' order,
    whichever side it is served on."""
    points = iter(results)

    def decide(va, vb, a, b, rng):
        mine, theirs = {"W": (4, 2), "L": (2, 4), "T": (3, 3)}[next(points)]
        return (mine, theirs) if va == player else (theirs, mine)
    return decide


def pair_row(pairs: pd.DataFrame, x: str, y: str) -> pd.Series:
    """The row of the pair {x, y} with its place in the order (`place`, 0 = first)."""
    places = [k for k, (a, b) in enumerate(zip(pairs["a"], pairs["b"])) if {a, b} == {x, y}]
    assert len(places) == 1, (x, y)
    return pairs.iloc[places[0]].copy().rename(None).to_frame().T.assign(place=places[0]).iloc[0]


def two_strong_runs_that_met_a_little(store: Store):
    """run-a and run-b each beat the base in all 60 of their battles (20 prompts × 3 raters),
    and met each other in one small evaluation: 3 wins each of 6 battles."""
    for run in ("run-a", "run-b"):
        eval_id = build(store, ["base", run], [f"Q{i}" for i in range(20)], name=f"{run} vs base")
        assert rate_all(store, eval_id, ["ana", "ben", "cy"], outcomes_for(run, "W" * 60)) == 60
    small = build(store, ["run-a", "run-b"], PROMPTS[:3], name="a vs b")
    assert rate_all(store, small, ["ana", "ben"], outcomes_for("run-a", "WLWLWL")) == 6


def test_a_close_pair_with_few_battles_comes_before_a_clear_pair_with_many(tmp_path):
    store = Store(tmp_path / "r.db")
    two_strong_runs_that_met_a_little(store)
    board = lb.leaderboard(store, BASE_MODEL, rounds=200)
    pairs = lb.next_battles(board)
    assert len(pairs) == 3 and list(pairs.columns) == lb.NEXT_COLUMNS
    close = pair_row(pairs, "run-a", "run-b")
    assert close["place"] == 0 and close["battles"] == 6
    assert 0.5 <= close["p_ahead"] < lb.SETTLED and close["teaches"] > 0
    assert close["reason"].startswith("ranks uncertain: ") and close["reason"].endswith(", 6 battles")
    assert f"ahead in {close['p_ahead']:.0%} of resamples" in close["reason"]
    for run in ("run-a", "run-b"):
        clear = pair_row(pairs, run, "base")
        assert clear["place"] > 0 and clear["battles"] == 60 and clear["a"] == run
        assert clear["p_ahead"] == 1.0 and clear["teaches"] == 0 and clear["narrows"] > 0
        assert clear["reason"] == f"order clear: lora: {run} ahead in all 200 resamples, 60 battles"
    assert pairs["share"].sum() == pytest.approx(1.0) and pairs["share"].iloc[0] == pytest.approx(1.0)
    sentence = lb.next_battles_sentence(board, pairs)
    assert sentence.startswith(f"{close['a_label']} vs {close['b_label']} would teach the board most: ranks uncertain")
    assert len(lb.next_battles(board, top=2)) == 2


def test_fewer_battles_teach_more_and_a_pair_that_never_met_is_weighed_through_its_links(tmp_path):
    """Two even runs against the base: run-a over 60 battles, run-b over 6; they never met."""
    store = Store(tmp_path / "r.db")
    many = build(store, ["base", "run-a"], [f"Q{i}" for i in range(30)], name="many")
    rate_all(store, many, ["ana", "ben"], outcomes_for("run-a", "WL" * 30))
    few = build(store, ["base", "run-b"], PROMPTS[:3], name="few")
    rate_all(store, few, ["ana", "ben"], outcomes_for("run-b", "WL" * 3))
    board = lb.leaderboard(store, BASE_MODEL, rounds=200)
    pairs = lb.next_battles(board)
    few_pair, many_pair = pair_row(pairs, "run-b", "base"), pair_row(pairs, "run-a", "base")
    assert few_pair["battles"] == 6 and many_pair["battles"] == 60
    assert few_pair["place"] < many_pair["place"]
    assert few_pair["narrows"] > 3 * many_pair["narrows"] and few_pair["teaches"] > many_pair["teaches"]
    apart = pair_row(pairs, "run-a", "run-b")
    assert apart["battles"] == 0 and "never met (linked only through other models)" in apart["reason"]
    assert 0.5 <= apart["p_ahead"] <= 1 and np.isfinite([apart["narrows"], apart["teaches"]]).all()
    # its difference is uncertain through both links: at least as uncertain as the weaker link
    assert apart["narrows"] >= few_pair["narrows"] * 0.9


def test_with_direct_battles_only_the_rule_is_arenas():
    """Two players, n battles: Arena's weight sqrt(Σ/n) − sqrt(Σ/(n + 1)) with Σ/n the variance
    of their difference, which asymptotically is 1/(n·p(1 − p))."""
    rng = np.random.default_rng(1)
    n = 200
    battles = pd.DataFrame({"evaluation_id": 1, "evaluation": "e", "prompt": [f"q{k}" for k in range(n)],
                            "rater": "r", "a": "run-1", "a_label": "run 1", "b": "base", "b_label": "base",
                            "outcome": (rng.random(n) < 0.6).astype(float), "len_a": 10, "len_b": 10})
    board = lb.rank_battles(battles, rounds=1000)
    pair = lb.next_battles(board).iloc[0]
    v = float((board.draws["run-1"] - board.draws["base"]).var())
    arena = lb.ELO_SCALE * (math.sqrt(v) - math.sqrt(v * n / (n + 1)))
    assert pair["narrows"] == pytest.approx(arena, rel=0.15)
    p = board.table.set_index("player")["win_rate"]["run-1"]
    assert v == pytest.approx(1 / (n * p * (1 - p)), rel=0.15)


def test_no_battles_or_one_player_gives_a_plain_message(tmp_path):
    from tuner.ui import leaderboard as ui

    store = Store(tmp_path / "r.db")
    note, table = ui.which_battles_next(store, None, None, ui.RAW)
    assert note == "No evaluation yet: build one on the Compare tab and have it rated." and table.empty
    eval_id = build(store, ["base", "run-1"], PROMPTS[:2])  # never rated
    board = lb.leaderboard(store, BASE_MODEL)
    pairs = lb.next_battles(board)
    assert pairs.empty and list(pairs.columns) == lb.NEXT_COLUMNS
    assert lb.next_battles_sentence(board, pairs).startswith("No battles yet, so no comparison to suggest")
    note, table = ui.which_battles_next(store, BASE_MODEL, lb.HUMAN, ui.RAW)
    assert note.startswith("No battles yet, so no comparison to suggest") and table.empty
    # a board of one ranked model (the table cut to its first row)
    rate_all(store, eval_id, ["ana"], prefer(["run-1", "base"]))
    board = lb.leaderboard(store, BASE_MODEL, rounds=20)
    board.table = board.table.head(1)
    assert lb.next_battles(board).empty
    assert lb.next_battles_sentence(board, lb.next_battles(board)) == (
        "Only one model (lora: run-1) is ranked: a comparison needs battles between two models.")


def test_the_tab_names_the_pair_and_the_runs_to_compare_and_reuses_the_board(tmp_path):
    import gradio as gr

    from tuner.ui import leaderboard as ui

    store = Store(tmp_path / "r.db")
    two_strong_runs_that_met_a_little(store)
    with gr.Blocks() as demo:
        show, inputs, outputs = ui.leaderboard_tab(store, rounds=100)
    on_next = next(f for f in demo.fns.values() if f.name == "on_next")
    assert demo.blocks[on_next.targets[0][0]].elem_id == "leaderboard-next-battles"
    by_id = {c.elem_id: c for c in outputs}
    note_box, table_box, board_table = (by_id[k] for k in ("leaderboard-next-note", "leaderboard-next-table",
                                                           "leaderboard-table"))
    shown_board = on_next.outputs[-1]  # the board the page shows, kept for the page
    opened = show(BASE_MODEL, lb.HUMAN, ui.RAW)  # opening the tab: the board, no suggestions yet
    assert opened[note_box] == "" and opened[table_box]["visible"] is False
    board = opened[shown_board]
    assert list(board.table["player"]) == list(lb.leaderboard(store, BASE_MODEL, rounds=100).table["player"])
    answer = on_next.fn(BASE_MODEL, lb.HUMAN, ui.RAW, board)
    assert board_table not in answer  # the board on screen is current: only the suggestions are drawn
    note, table = answer[note_box], answer[table_box]
    assert "lora: run-" in note and "would teach the board most: ranks uncertain" in note
    assert ("on the **Compare** tab, build an evaluation with the runs `run-a` and `run-b`" in note
            or "with the runs `run-b` and `run-a`" in note) and "have it rated" in note
    shown = table["value"]
    assert table["visible"] and len(shown) == 3
    assert {shown["Model A"].iloc[0], shown["Model B"].iloc[0]} == {"lora: run-a", "lora: run-b"}
    assert shown["Battles so far"].iloc[0] == 6 and shown["Teaches"].iloc[0] == "100%"
    assert list(shown["A ahead in"].iloc[1:]) == ["100%", "100%"]
    alone_note, alone_table = ui.which_battles_next(store, BASE_MODEL, lb.HUMAN, ui.RAW, rounds=100)
    assert alone_note == note  # the same board (same battles, same seed) without the page
    pd.testing.assert_frame_equal(alone_table, shown)
    # a page that shows no board (or an older one) gets the board redrawn with the suggestions
    fresh = on_next.fn(BASE_MODEL, lb.HUMAN, ui.RAW, None)
    assert fresh[shown_board] is board and fresh[note_box] == note and board_table in fresh
    # the board is drawn once while its battles stand, and again once they change
    cache = ui.BoardCache()
    first = cache.board(store, BASE_MODEL, lb.HUMAN, False, 50)
    assert cache.board(store, BASE_MODEL, lb.HUMAN, False, 50) is first
    extra = build(store, ["run-a", "run-b"], ["One more"], name="one more")
    rate_all(store, extra, ["dee"], outcomes_for("run-b", "W"))
    redrawn = cache.board(store, BASE_MODEL, lb.HUMAN, False, 50)
    assert redrawn is not first and pair_row(lb.next_battles(redrawn), "run-a", "run-b")["battles"] == 7
