"""Tables from raw scores: pure pandas, no database, no UI.

`scores` is Store.ratings_frame's shape: one row per rating with at least
position, prompt, variant, label, rater and score.
"""

from __future__ import annotations

import pandas as pd

SUCCESS = 4  # a reply "succeeds" when rated 4 or more


def success_table(scores: pd.DataFrame, threshold: int = SUCCESS) -> pd.DataFrame:
    """Per variant: replies rated, replies at or above the threshold, the rate."""
    columns = ["model", "rated", "successes", "success", "rate", "mean score"]
    if scores.empty:
        return pd.DataFrame(columns=columns)
    grouped = scores.groupby("label", sort=False)
    table = pd.DataFrame({
        "rated": grouped["score"].size(),
        "successes": grouped["score"].agg(lambda s: int((s >= threshold).sum())),
        "mean score": grouped["score"].mean().round(2),
    }).reset_index().rename(columns={"label": "model"})
    table["success"] = table["successes"].astype(str) + "/" + table["rated"].astype(str)
    table["rate"] = (table["successes"] / table["rated"]).round(3)
    return table[columns]


def per_prompt_table(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per prompt: the mean score each variant got (over raters)."""
    if scores.empty:
        return pd.DataFrame(columns=["#", "prompt"])
    order = list(dict.fromkeys(scores["label"]))
    table = scores.pivot_table(index=["position", "prompt"], columns="label", values="score",
                               aggfunc="mean").round(2)
    table = table.reset_index().rename(columns={"position": "#"})
    table.columns.name = None
    return table[["#", "prompt"] + [label for label in order if label in table.columns]]
