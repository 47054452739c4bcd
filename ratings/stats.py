"""Tables from raw scores: pure pandas, no database, no UI."""

from __future__ import annotations

import pandas as pd

SUCCESS = 4  # a reply "succeeds" when rated 4 or more


def success_table(scores: pd.DataFrame, threshold: int = SUCCESS) -> pd.DataFrame:
    """Per variant: replies rated, replies at or above the threshold, the rate."""
    columns = ["variant", "model", "rated", "successes", "success", "rate", "mean score"]
    if scores.empty:
        return pd.DataFrame(columns=columns)
    grouped = scores.groupby("variant", sort=True)
    table = pd.DataFrame({
        "model": grouped["model"].agg(lambda s: ", ".join(sorted(set(s)))),
        "rated": grouped["score"].size(),
        "successes": grouped["score"].agg(lambda s: int((s >= threshold).sum())),
        "mean score": grouped["score"].mean().round(2),
    }).reset_index()
    table["success"] = table["successes"].astype(str) + "/" + table["rated"].astype(str)
    table["rate"] = (table["successes"] / table["rated"]).round(3)
    return table[columns]


def per_prompt_table(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per prompt: the mean score of each variant."""
    if scores.empty:
        return pd.DataFrame(columns=["#", "prompt", "base", "tuned"])
    table = scores.pivot_table(index=["position", "prompt"], columns="variant", values="score",
                               aggfunc="mean").round(2)
    table = table.reset_index().rename(columns={"position": "#"})
    table.columns.name = None
    for variant in ("base", "tuned"):
        if variant not in table:
            table[variant] = float("nan")
    return table[["#", "prompt", "base", "tuned"] + [c for c in table.columns
                                                     if c not in ("#", "prompt", "base", "tuned")]]
