"""A leaderboard across runs: every variant ever rated, over every evaluation of one base
model, ranked by a Bradley–Terry model of its pairwise outcomes (Chatbot Arena's method).

Players. The `base` variant of a base model is one player, and a run (variant name = run
id) is the same player in every evaluation it appears in; a player is labelled with its
variant's label (from the latest evaluation). Runs of different base models never meet, so
a board is one base model's evaluations (`evaluations.base_model`).

Battles. Human board: within one evaluation, for each prompt and each pair of its variants,
each rater who scored both replies gives one battle — the higher score wins, equal scores are
a tie (raters the owner excluded are left out). Judge board (one per judge name, never mixed
with the raters'): each row of `judge_verdicts` is one order of one comparison, and its
verdict first/second/tie is a battle between the variants of `first_reply_id` and
`second_reply_id`. A tie counts as half a win for each side (Chatbot Arena's convention).

Model. P(a beats b) = logistic(β_a − β_b [+ γ·x]): a binomial GLM with a logit link
(statsmodels), the ±1 design matrix, no intercept and one player (the base model, when it
played) fixed at β = 0. Ratings are shown on an Elo-like scale, 1000 + 400/ln 10 × β (Arena's),
so the reference player is at 1000 and 400 points are 10:1 odds. A weak prior keeps a player
that won every battle finite (its maximum-likelihood β is infinite): `virtual_ties` ties
between every two players that met (0 gives the plain maximum-likelihood fit).

Intervals. The battles are resampled with replacement (`rounds` times, a fixed `seed`), the
model refitted each time; 95% percentile intervals of each rating, of γ, and of each
player's rank (1 = best) are reported.

Style control (Arena's "length control"): the covariate x = (len_a − len_b)/(len_a + len_b)
of the two replies' characters, scaled to unit root-mean-square over the board's battles (not
centred: x changes sign with the sides, and a centred x would not). γ > 0 means the longer
reply is preferred beyond what the players' strengths explain; the length-controlled β are
the players' strengths at equal length.

Next battles (`next_battles`): which two players more battles would teach the board most,
Chatbot Arena's active sampling at this app's scale. Arena (Chiang et al., 2024, Sec. 5)
samples a pair in proportion to how much one more battle would shrink the uncertainty of that
pair's comparison, sqrt(Σ/n) − sqrt(Σ/(n + 1)). Here the variance v of β_a − β_b is the
bootstrap's (so a pair that never met but is linked through others has a finite v), and one
more battle adds its Fisher information w = p(1 − p), p the fitted P(a beats b), along
x = e_a − e_b, so v becomes v / (1 + w·v) (Sherman–Morrison); with only direct battles this is
Arena's rule exactly. Because the owner asks which comparisons would change the *order*, that
shrinkage is weighted by how undecided the order is: 2·min(q, 1 − q), q the share of resamples
in which a is ahead (1 at 50/50, 0 when every resample agrees).
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from statsmodels.genmod import families
from statsmodels.genmod.generalized_linear_model import GLM
from statsmodels.tools.sm_exceptions import PerfectSeparationWarning

from ratings.store import Store

HUMAN = "human"
JUDGE = "judge:"  # a judge board's source: "judge:<judge name>"
BASE = "base"  # the base model's variant name in every evaluation
ELO_SCALE = 400 / math.log(10)  # Arena's scale: 400 rating points = odds of 10 to 1
ELO_BASE = 1000.0  # the reference player's rating
VIRTUAL_TIES = 1.0  # the prior: ties between every two players that met
ROUNDS = 300  # bootstrap resamples
SEED = 0
LENGTH = "length"  # the style-control covariate's column in a battles frame
BATTLE_COLUMNS = ["evaluation_id", "evaluation", "prompt", "rater", "a", "a_label", "b", "b_label",
                  "outcome", "len_a", "len_b"]


# --- battles -----------------------------------------------------------------------------
def base_models(store: Store) -> list[str]:
    """Every base model that has an evaluation, the most recent first."""
    return list(dict.fromkeys(e["base_model"] for e in store.evaluations()))


def sources(store: Store, base_model: str) -> list[str]:
    """The boards of a base model: 'human', then 'judge:<name>' for each judge with verdicts."""
    with store.db() as db:
        judges = [r[0] for r in db.execute(
            "SELECT DISTINCT v.judge FROM judge_verdicts v JOIN evaluations e ON e.id = v.evaluation_id"
            " WHERE e.base_model = ? AND v.verdict IS NOT NULL ORDER BY v.judge", [base_model])]
    return [HUMAN, *(JUDGE + j for j in judges)]


def _evaluations_of(store: Store, base_model: str) -> list[dict]:
    return sorted((e for e in store.evaluations() if e["base_model"] == base_model), key=lambda e: e["id"])


def human_battles(store: Store, base_model: str) -> pd.DataFrame:
    """One row per battle of the raters (columns BATTLE_COLUMNS; outcome 1 = a won, 0 = b won,
    0.5 = a tie): for each prompt, pair of variants and rater who scored both replies."""
    frames = []
    for evaluation in _evaluations_of(store, base_model):
        scores = store.ratings_frame(evaluation["id"])
        if scores.empty:
            continue
        order = {v["name"]: k for k, v in enumerate(store.variants(evaluation["id"]))}
        scores = scores.assign(order=scores["variant"].map(order))[
            ["prompt_id", "prompt", "rater", "variant", "label", "score", "reply_chars", "order"]]
        pairs = scores.merge(scores, on=["prompt_id", "prompt", "rater"], suffixes=("_a", "_b"))
        pairs = pairs[pairs["order_a"] < pairs["order_b"]]
        outcome = np.sign(pairs["score_a"] - pairs["score_b"]).map({1: 1.0, -1: 0.0, 0: 0.5})
        frames.append(pd.DataFrame({
            "evaluation_id": evaluation["id"], "evaluation": evaluation["name"], "prompt": pairs["prompt"],
            "rater": pairs["rater"], "a": pairs["variant_a"], "a_label": pairs["label_a"],
            "b": pairs["variant_b"], "b_label": pairs["label_b"], "outcome": outcome,
            "len_a": pairs["reply_chars_a"], "len_b": pairs["reply_chars_b"]}))
    return _battle_frame(frames)


def judge_battles(store: Store, base_model: str, judge: str) -> pd.DataFrame:
    """One row per readable verdict of `judge` (each order of a comparison is its own row)."""
    with store.db() as db:
        rows = list(db.query("""
            SELECT v.evaluation_id, e.name AS evaluation, p.text AS prompt, v.judge AS rater,
                   vf.name AS a, vf.label AS a_label, vs.name AS b, vs.label AS b_label, v.verdict,
                   length(rf.text) AS len_a, length(rs.text) AS len_b
            FROM judge_verdicts v JOIN evaluations e ON e.id = v.evaluation_id
            JOIN replies rf ON rf.id = v.first_reply_id JOIN variants vf ON vf.id = rf.variant_id
            JOIN replies rs ON rs.id = v.second_reply_id JOIN variants vs ON vs.id = rs.variant_id
            JOIN prompts p ON p.id = rf.prompt_id
            WHERE e.base_model = ? AND v.judge = ? AND v.verdict IS NOT NULL ORDER BY v.id""",
                             [base_model, judge]))
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["outcome"] = frame.pop("verdict").map({"first": 1.0, "second": 0.0, "tie": 0.5})
    return _battle_frame([frame])


def battles_of(store: Store, base_model: str, source: str = HUMAN) -> pd.DataFrame:
    """The battles of one board: `source` is 'human' or 'judge:<name>'."""
    if source == HUMAN:
        return human_battles(store, base_model)
    if source.startswith(JUDGE):
        return judge_battles(store, base_model, source[len(JUDGE):])
    raise ValueError(f"A board is {HUMAN!r} or '{JUDGE}<judge name>' (got {source!r}).")


def _battle_frame(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=BATTLE_COLUMNS)
    return pd.concat(frames, ignore_index=True)[BATTLE_COLUMNS]


def length_feature(battles: pd.DataFrame) -> pd.Series:
    """(len_a − len_b)/(len_a + len_b), scaled to unit root-mean-square (all zeros when every
    pair had equal lengths)."""
    a, b = battles["len_a"].astype(float), battles["len_b"].astype(float)
    x = ((a - b) / (a + b).where(a + b > 0)).fillna(0.0)
    rms = math.sqrt(float((x ** 2).mean())) if len(x) else 0.0
    return x / rms if rms > 0 else x * 0.0


def components(battles: pd.DataFrame) -> list[set[str]]:
    """The connected parts of the comparison graph (players linked by any chain of battles),
    the one with the most battles first."""
    players = list(dict.fromkeys([*battles["a"], *battles["b"]]))
    if not players:
        return []
    index = {p: k for k, p in enumerate(players)}
    a, b = battles["a"].map(index).to_numpy(), battles["b"].map(index).to_numpy()
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(len(players), len(players)))
    count, part_of = connected_components(graph, directed=False)
    parts = [{players[k] for k in np.flatnonzero(part_of == c)} for c in range(count)]

    def battles_in(part):
        return int(battles["a"].isin(part).sum())

    return sorted(parts, key=lambda part: (-battles_in(part), sorted(part)))


# --- the model -----------------------------------------------------------------------------
@dataclass
class Fit:
    """One Bradley–Terry fit: β per player (the reference at 0) and the covariate's γ."""
    beta: pd.Series
    gamma: float | None
    reference: str


@dataclass
class _Design:
    """The GLM's rows: one per distinct (player pair, covariate value) among the battles, each
    battle oriented so its first player comes first in `players`, then one per virtual tie."""
    players: list[str]  # every player; the reference's column is left out of X
    reference: str
    X: np.ndarray  # the distinct battle rows, then the virtual-tie rows
    group: np.ndarray  # each battle's row in X
    outcome: np.ndarray  # each battle's outcome, as oriented
    prior: np.ndarray  # fixed weights of the virtual-tie rows
    covariate: bool

    @property
    def n(self) -> int:
        return len(self.group)


def _design(battles: pd.DataFrame, reference: str | None, covariate: str | None,
            virtual_ties: float) -> _Design:
    players = list(dict.fromkeys([*battles["a"], *battles["b"]]))
    if reference is None:
        reference = BASE if BASE in players else players[0]
    index = {p: k for k, p in enumerate(players)}
    a, b = battles["a"].map(index).to_numpy(), battles["b"].map(index).to_numpy()
    flip = a > b  # one orientation per pair, so A-vs-B and B-vs-A battles share rows
    x = battles[covariate].to_numpy(float) if covariate else np.zeros(len(battles))
    keys = pd.DataFrame({"a": np.where(flip, b, a), "b": np.where(flip, a, b), "x": np.where(flip, -x, x)})
    group = keys.groupby(["a", "b", "x"], sort=False).ngroup().to_numpy()
    rows = keys.drop_duplicates()  # in the order of first appearance, as ngroup numbers them
    met = rows[["a", "b"]].drop_duplicates() if virtual_ties > 0 else rows.iloc[:0]
    pairs = [*zip(rows["a"], rows["b"]), *zip(met["a"], met["b"])]
    free = {k: col for col, k in enumerate(k for k in range(len(players)) if players[k] != reference)}
    X = np.zeros((len(pairs), len(free) + (covariate is not None)))
    for row, (first, second) in enumerate(pairs):
        if first in free:
            X[row, free[first]] += 1.0
        if second in free:
            X[row, free[second]] -= 1.0
    if covariate is not None:
        X[:len(rows), -1] = rows["x"].to_numpy()
    outcome = battles["outcome"].to_numpy(float)
    return _Design(players, reference, X, group, np.where(flip, 1.0 - outcome, outcome),
                   np.full(len(met), float(virtual_ties)), covariate is not None)


def _fit_design(design: _Design, counts: np.ndarray) -> Fit:
    """The GLM fit with each real battle counted `counts` times, plus the fixed virtual ties.
    A row's outcome is the share of its battles' points its first player took (a tie: half a
    point each) and its weight how many battles it holds: the same likelihood as one row a battle."""
    groups = len(design.X) - len(design.prior)
    weight = np.bincount(design.group, weights=counts, minlength=groups)
    points = np.bincount(design.group, weights=counts * design.outcome, minlength=groups)
    y = np.concatenate([np.divide(points, weight, out=np.zeros(groups), where=weight > 0),
                        np.full(len(design.prior), 0.5)])
    weights = np.concatenate([weight, design.prior])
    keep = weights > 0
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        # without a prior a player who won every battle has no finite β (and a resample of a few
        # battles can leave no residual degrees of freedom for the unused dispersion estimate)
        warnings.simplefilter("ignore", PerfectSeparationWarning)
        result = GLM(y[keep], design.X[keep], family=families.Binomial(), freq_weights=weights[keep],
                     hasconst=False).fit()
    params = np.asarray(result.params, dtype=float)
    free = [p for p in design.players if p != design.reference]
    beta = pd.Series(dict(zip(free, params[:len(free)])) | {design.reference: 0.0})[design.players]
    return Fit(beta, float(params[-1]) if design.covariate else None, design.reference)


def fit(battles: pd.DataFrame, reference: str | None = None, covariate: str | None = None,
        virtual_ties: float = VIRTUAL_TIES) -> Fit:
    """Bradley–Terry maximum likelihood (with the virtual-tie prior) on a battles frame
    (columns a, b, outcome and, with `covariate`, that column: +x favours a). `reference`
    (default: the base model if it played, else the first player) is fixed at β = 0."""
    design = _design(battles, reference, covariate, virtual_ties)
    return _fit_design(design, np.ones(design.n))


def bootstrap(battles: pd.DataFrame, reference: str | None = None, covariate: str | None = None,
              virtual_ties: float = VIRTUAL_TIES, rounds: int = ROUNDS, seed: int = SEED) -> pd.DataFrame:
    """β of every player (and 'gamma' with a covariate) in each of `rounds` fits to the
    battles resampled with replacement: one row per round, reproducible with `seed`."""
    design = _design(battles, reference, covariate, virtual_ties)
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(int(rounds)):
        counts = rng.multinomial(design.n, np.full(design.n, 1.0 / design.n))  # n draws with replacement
        one = _fit_design(design, counts)
        rows.append(one.beta.to_dict() | ({"gamma": one.gamma} if covariate else {}))
    return pd.DataFrame(rows)


def rating(beta):
    """β on the Elo-like scale: 1000 + 400/ln 10 × β."""
    return ELO_BASE + ELO_SCALE * beta


# --- the board -----------------------------------------------------------------------------
@dataclass
class Coverage:
    """What a board spans: the evaluations with battles, the distinct prompts (by text), and
    which evaluations share prompts."""
    evaluations: list[dict]  # id, name, battles, prompts
    prompts: int
    shared: list[tuple[int, int, int]]  # (evaluation id, evaluation id, prompts in common)

    def sentence(self) -> str:
        if not self.evaluations:
            return "No battles yet."
        names = ", ".join(f"#{e['id']} “{e['name']}” ({e['battles']} battles)" for e in self.evaluations)
        text = (f"{sum(e['battles'] for e in self.evaluations)} battles from {len(self.evaluations)} "
                f"evaluation{'s' * (len(self.evaluations) != 1)} ({names}) over {self.prompts} distinct "
                f"prompt{'s' * (self.prompts != 1)}.")
        if len(self.evaluations) > 1:
            share = "; ".join(f"#{a} and #{b} share {n} prompt{'s' * (n != 1)}" for a, b, n in self.shared)
            text += f" {share}." if share else " No two of them share a prompt."
        return text


def coverage(battles: pd.DataFrame) -> Coverage:
    """The evaluations a battles frame comes from, its distinct prompt texts, and the prompt
    texts each two evaluations have in common."""
    per = []
    texts = {}
    for (eval_id, name), group in battles.groupby(["evaluation_id", "evaluation"], sort=True):
        texts[int(eval_id)] = set(group["prompt"])
        per.append({"id": int(eval_id), "name": name, "battles": len(group), "prompts": len(texts[int(eval_id)])})
    shared = [(a, b, len(texts[a] & texts[b])) for a, b in itertools.combinations(sorted(texts), 2)
              if texts[a] & texts[b]]
    return Coverage(per, int(battles["prompt"].nunique()), shared)


@dataclass
class Board:
    """A ranked board: `table` has one row per ranked player (player, label, rating, low, high,
    rank, rank_low, rank_high, battles, wins, ties, losses, win_rate, raw_rating), best first."""
    base_model: str
    source: str
    length_control: bool
    table: pd.DataFrame
    coverage: Coverage
    reference: str | None = None
    gamma: tuple[float, float, float] | None = None  # the length coefficient with its 95% interval
    unranked: list[list[str]] = field(default_factory=list)  # labels of the parts not linked to the board
    rounds: int = ROUNDS
    seed: int = SEED
    virtual_ties: float = VIRTUAL_TIES
    battles: pd.DataFrame | None = None  # the ranked players' battles, as fitted
    draws: pd.DataFrame | None = None  # the bootstrap's β of each player, one row per round

    def sentences(self) -> list[str]:
        """What the board is, in words: coverage, method, the length effect, the unranked."""
        lines = [self.coverage.sentence()]
        if self.table.empty:
            return lines
        ref = self.table.set_index("player").loc[self.reference, "label"]
        lines.append(
            f"Bradley–Terry fit of {int(self.table['battles'].sum() // 2)} battles (a binomial GLM, statsmodels); "
            f"a tie counts as half a win for each side; ratings = 1000 + 400/ln 10 × β with {ref} fixed at 1000 "
            f"(400 points = odds of 10 to 1); {_ties(self.virtual_ties)} between every two players that met, "
            f"as a weak prior. 95% intervals and rank ranges: {self.rounds} bootstrap resamples of the "
            f"battles (seed {self.seed}).")
        if self.gamma is not None:
            lines.append(_gamma_sentence(*self.gamma))
        elif self.length_control:
            lines.append("Length control: every pair's replies had the same length, so there is nothing to control "
                         "for; these are the raw ratings.")
        for part in self.unranked:
            lines.append(f"{', '.join(part)}: never compared, through any chain of battles, with the ranked "
                         "players, so they cannot be ranked against them.")
        return lines


def _ties(n: float) -> str:
    return "no virtual tie" if n == 0 else "one virtual tie" if n == 1 else f"{n:g} virtual ties"


def _gamma_sentence(gamma: float, low: float, high: float) -> str:
    if low > 0:
        verdict = "the longer reply is preferred beyond the models' strengths"
    elif high < 0:
        verdict = "the shorter reply is preferred beyond the models' strengths"
    else:
        verdict = "no clear preference for either length"
    return (f"Length control: reply length (x = (len_a − len_b)/(len_a + len_b), scaled to unit RMS) has "
            f"coefficient γ = {gamma:.2f} (95% {low:.2f} to {high:.2f}) in log-odds per unit: {verdict}.")


def _tally(battles: pd.DataFrame) -> pd.DataFrame:
    """Battles, wins, ties, losses and the win rate (a tie = half a win) of each player."""
    sides = pd.concat([
        pd.DataFrame({"player": battles["a"], "score": battles["outcome"]}),
        pd.DataFrame({"player": battles["b"], "score": 1.0 - battles["outcome"]})])
    out = sides.groupby("player")["score"].agg(
        battles="size", wins=lambda s: int((s == 1).sum()), ties=lambda s: int((s == 0.5).sum()),
        losses=lambda s: int((s == 0).sum()), points="sum")
    out["win_rate"] = out.pop("points") / out["battles"]
    return out


def _labels(battles: pd.DataFrame) -> dict[str, str]:
    pairs = [*zip(battles["a"], battles["a_label"]), *zip(battles["b"], battles["b_label"])]
    order = np.argsort(np.concatenate([battles["evaluation_id"].to_numpy()] * 2), kind="stable")
    return {pairs[k][0]: pairs[k][1] for k in order}  # the latest evaluation's label wins


def _ranked(point: Fit, rounds: pd.DataFrame) -> pd.DataFrame:
    """Ratings with 95% percentile intervals and rank ranges, from the bootstrap rounds."""
    players = list(point.beta.index)
    ranks = rounds[players].rank(axis=1, ascending=False, method="min")
    table = pd.DataFrame({
        "player": players, "rating": rating(point.beta.to_numpy()),
        "low": rating(rounds[players].quantile(0.025).to_numpy()),
        "high": rating(rounds[players].quantile(0.975).to_numpy()),
        "rank_low": ranks.quantile(0.025).round().astype(int).to_numpy(),
        "rank_high": ranks.quantile(0.975).round().astype(int).to_numpy()})
    table["rank"] = table["rating"].rank(ascending=False, method="min").astype(int)
    return table


def leaderboard(store: Store, base_model: str, source: str = HUMAN, length_control: bool = False,
                rounds: int = ROUNDS, seed: int = SEED, virtual_ties: float = VIRTUAL_TIES) -> Board:
    """The board of one base model's evaluations: 'human' (the raters) or 'judge:<name>'."""
    return rank_battles(battles_of(store, base_model, source), base_model, source, length_control,
                        rounds, seed, virtual_ties)


def rank_battles(battles: pd.DataFrame, base_model: str = "", source: str = HUMAN, length_control: bool = False,
                 rounds: int = ROUNDS, seed: int = SEED, virtual_ties: float = VIRTUAL_TIES) -> Board:
    """A Board from a battles frame (BATTLE_COLUMNS). Only players linked by some chain of battles
    can be ranked against each other: the part of the comparison graph holding the base model
    (else the one with the most battles) is ranked, and the other parts are named in `unranked`."""
    board = Board(base_model, source, length_control, pd.DataFrame(), coverage(battles),
                  rounds=rounds, seed=seed, virtual_ties=virtual_ties)
    parts = components(battles)
    if not parts or len(parts[0]) < 2:
        return board
    main = next((part for part in parts if BASE in part), parts[0])  # the base model's part, where it played
    labels = _labels(battles)
    board.unranked = [sorted(labels[p] for p in part) for part in parts if part is not main]
    battles = battles[battles["a"].isin(main)].reset_index(drop=True)
    raw = fit(battles, virtual_ties=virtual_ties)
    covariate = None
    if length_control:
        battles = battles.assign(**{LENGTH: length_feature(battles)})
        covariate = LENGTH if battles[LENGTH].abs().sum() > 0 else None
    point = fit(battles, covariate=covariate, virtual_ties=virtual_ties) if covariate else raw
    draws = bootstrap(battles, covariate=covariate, virtual_ties=virtual_ties, rounds=rounds, seed=seed)
    table = _ranked(point, draws).join(_tally(battles), on="player")
    table["label"] = table["player"].map(labels)
    table["raw_rating"] = rating(raw.beta[table["player"]].to_numpy())
    columns = ["player", "label", "rating", "low", "high", "rank", "rank_low", "rank_high", "battles", "wins",
               "ties", "losses", "win_rate", "raw_rating"]
    board.table = table.sort_values(["rank", "label"])[columns].reset_index(drop=True)
    board.reference = point.reference
    board.battles, board.draws = battles, draws
    if covariate:
        board.gamma = (point.gamma, float(draws["gamma"].quantile(0.025)), float(draws["gamma"].quantile(0.975)))
    return board


# --- which battles next ------------------------------------------------------------------------
SETTLED = 0.975  # a pair's order is clear when one side is ahead in this share of resamples
NEXT_COLUMNS = ["a", "a_label", "b", "b_label", "battles", "p_ahead", "narrows", "teaches", "share", "reason"]


def next_battles(board: Board, top: int | None = None) -> pd.DataFrame:
    """The pairs of ranked players, the ones more battles would teach the board most first.

    Columns: a, b (players; a is the one ahead in more bootstrap resamples) with their labels,
    battles (between the two so far, over every evaluation of the board), p_ahead (the share of
    the board's bootstrap resamples in which a's β exceeds b's, a tie counting half), narrows,
    teaches, share (teaches as a share of all pairs' teaches: the part of the next battles
    Arena's proportional sampling would give the pair), and reason (in words).

    The rule: v = the bootstrap variance of β_a − β_b, w = p(1 − p) with p = logistic(β_a − β_b)
    from the board's fit; one more a-vs-b battle would take v to v / (1 + w·v), so
    narrows = 400/ln 10 × (sqrt(v) − sqrt(v / (1 + w·v))), the rating points by which it would
    shrink the standard error of the pair's difference (Chatbot Arena's sampling weight,
    sqrt(Σ/n) − sqrt(Σ/(n + 1)), when all the information is direct), and
    teaches = narrows × 2·min(q, 1 − q), q = p_ahead: a pair whose order no resample doubts
    teaches the ranking nothing, a 50/50 pair the most. Few battles and no indirect links mean
    a large v, so such pairs come first. Sorted by teaches, then narrows (so when every order
    is settled the pairs whose intervals would narrow most still come first). It reuses the
    board's bootstrap (`board.draws`), refitting nothing. Fewer than two ranked players: an
    empty frame (`next_battles_sentence` says why)."""
    table = board.table
    if len(table) < 2:
        return pd.DataFrame(columns=NEXT_COLUMNS)
    players = list(table["player"])
    labels = dict(zip(table["player"], table["label"]))
    beta = dict(zip(table["player"], (table["rating"].to_numpy(float) - ELO_BASE) / ELO_SCALE))
    draws = board.draws
    if draws is None:  # a board made by hand: resample its battles once
        draws = bootstrap(board.battles, reference=board.reference, virtual_ties=board.virtual_ties,
                          rounds=board.rounds, seed=board.seed)
    samples = draws[players].to_numpy(float)
    rounds = len(samples)
    met = pd.Series([tuple(sorted(pair)) for pair in zip(board.battles["a"], board.battles["b"])],
                    dtype=object).value_counts().to_dict() if board.battles is not None else {}
    rows = []
    for i, j in itertools.combinations(range(len(players)), 2):
        d = samples[:, i] - samples[:, j]
        q = float((d > 0).mean() + 0.5 * (d == 0).mean())
        a, b = players[i], players[j]
        if q < 0.5:
            a, b, d, q = b, a, -d, 1.0 - q
        v = float(d.var(ddof=1)) if rounds > 1 else 0.0
        p = 1.0 / (1.0 + math.exp(beta[b] - beta[a]))
        after = v / (1.0 + p * (1.0 - p) * v)
        narrows = ELO_SCALE * (math.sqrt(v) - math.sqrt(after))
        n = int(met.get(tuple(sorted((a, b))), 0))
        rows.append({"a": a, "a_label": labels[a], "b": b, "b_label": labels[b], "battles": n, "p_ahead": q,
                     "narrows": narrows, "teaches": narrows * 2.0 * (1.0 - q), "share": 0.0,
                     "reason": _reason(labels[a], q, int(round(q * rounds)), rounds, n)})
    out = pd.DataFrame(rows, columns=NEXT_COLUMNS)
    weight = out["teaches"] if out["teaches"].sum() > 0 else out["narrows"]  # every order clear: by narrows
    out["share"] = weight / weight.sum() if weight.sum() > 0 else 1.0 / len(out)
    out = out.sort_values(
        ["teaches", "narrows", "a_label", "b_label"], ascending=[False, False, True, True]).reset_index(drop=True)
    return out if top is None else out.head(int(top))


def _reason(a_label: str, q: float, ahead: int, rounds: int, battles: int) -> str:
    if q >= 1:
        share = f"all {rounds} resamples"
    elif q >= 0.995:  # "100%" would say every resample agrees
        share = f"{ahead} of {rounds} resamples"
    else:
        share = f"{q:.0%} of resamples"
    met = (f"{battles} battle{'s' if battles != 1 else ''}" if battles else
           "never met (linked only through other models)")
    if q >= SETTLED:
        return f"order clear: {a_label} ahead in {share}, {met}"
    return f"ranks uncertain: {a_label} ahead in {share}, {met}"


def next_battles_sentence(board: Board, pairs: pd.DataFrame) -> str:
    """One plain line about `next_battles`' answer: why there is none, that every order is
    already clear, or which pair would teach the board most and why."""
    if board.table.empty:
        return ("No battles yet, so no comparison to suggest: once two models' replies to the same prompts "
                "have been rated, this says which pairs more battles would sharpen most.")
    if len(board.table) < 2 or pairs.empty:
        return (f"Only one model ({board.table['label'].iloc[0]}) is ranked: a comparison needs battles "
                "between two models.")
    top = pairs.iloc[0]
    if top["p_ahead"] >= SETTLED:
        return (f"Every pair's order is clear (one side ahead in at least {SETTLED:.1%} of the resamples): more "
                "battles would narrow the intervals but not change the ranking. The pairs below would narrow "
                "them most.")
    return f"{top['a_label']} vs {top['b_label']} would teach the board most: {top['reason']}."
