"""Charts shared by the Train and Results tabs: loss and learning-rate frames, short
legend labels, and Vega-Lite specs drawn through gr.Plot.
"""

from __future__ import annotations


import pandas as pd


# The config fields the tab edits, in the order of its inputs.


def curve_frame(rows: list[dict], label: str | None = None, validation: bool = False) -> pd.DataFrame | None:
    """Training and validation loss as one long frame.

    Two quirks of Gradio 6's LinePlot shape this: a plot first given an empty
    frame never draws, so an empty run gives None; and a color series that
    first appears in a later update is never drawn, so while a validation
    curve is still to come (`validation`) the frame carries one NaN point for
    it (Vega skips NaN; the series is known from the start).
    """
    points = []
    for r in rows:
        for key, series in (("loss", "training loss"), ("eval_loss", "validation loss")):
            if key in r:
                points.append({"step": r["step"], "loss": r[key],
                               "series": f"{label}: {series}" if label else series})
    if not points:
        return None
    if validation and not any(p["series"].endswith("validation loss") for p in points):
        points.append({"step": points[0]["step"], "loss": float("nan"),
                       "series": f"{label}: validation loss" if label else "validation loss"})
    return pd.DataFrame(points)


def short_label(run_id: str) -> str:
    """A legend label that fits: '1a2b 12:00' for run 20260101-120000-faq-1a2b (a long id
    was cut to the same first letters for every run, so two runs read alike); a run's
    own name is kept, cut at 16 characters."""
    parts = run_id.split("-")
    if len(parts) >= 4 and len(parts[1]) == 6 and parts[1].isdigit():
        return f"{parts[-1]} {parts[1][:2]}:{parts[1][2:4]}"
    return run_id if len(run_id) <= 16 else f"{run_id[:15]}…"


VEGA_LITE = "https://vega.github.io/schema/vega-lite/v5.json"  # names the version; never fetched


def vega_plot(spec: dict):
    """What gr.Plot takes for a Vega-Lite chart (as it sends an Altair one), drawn as SVG so
    its titles and labels are text in the page."""
    import json

    from gradio.components.plot import PlotData

    spec = spec | {"usermeta": {"embedOptions": {"renderer": "svg", "actions": False}}}
    return PlotData(type="altair", plot=json.dumps(spec))


def loss_spec(frame: pd.DataFrame, title: str) -> dict:
    """A line per series of a curve_frame (NaN points left out), with points and a legend."""
    values = frame.dropna(subset=["loss"]).to_dict("records")
    return {"$schema": VEGA_LITE, "title": title, "width": "container", "height": 260,
            "data": {"values": values},
            "mark": {"type": "line", "point": True, "tooltip": True},
            "encoding": {"x": {"field": "step", "type": "quantitative", "title": "step"},
                         "y": {"field": "loss", "type": "quantitative", "title": "loss", "scale": {"zero": False}},
                         "color": {"field": "series", "type": "nominal", "title": "series",
                                   "legend": {"labelLimit": 400}}}}


def lr_frame(rows: list[dict]) -> pd.DataFrame | None:
    points = [{"step": r["step"], "learning rate": r["learning_rate"]} for r in rows if "learning_rate" in r]
    return pd.DataFrame(points) if points else None


REWARD_SERIES = (("rewards/margins", "reward margin"), ("rewards/accuracies", "reward accuracy"))


def reward_frame(rows: list[dict], validation: bool = False) -> pd.DataFrame | None:
    """A preference run's reward margins and accuracies (TRL's, on the training rows and on
    the validation rows) as one long frame; None for a run that logs none (LoRA, prompt
    tuning). As in curve_frame, validation series still to come get a NaN point now."""
    points = []
    for r in rows:
        for key, series in REWARD_SERIES:
            for prefix, part in (("", "training"), ("eval_", "validation")):
                if prefix + key in r:
                    points.append({"step": r["step"], "value": r[prefix + key], "series": f"{part} {series}"})
    if not points:
        return None
    if validation:
        have = {p["series"] for p in points}
        for _, series in REWARD_SERIES:
            if f"training {series}" in have and f"validation {series}" not in have:
                points.append({"step": points[0]["step"], "value": float("nan"), "series": f"validation {series}"})
    return pd.DataFrame(points)
