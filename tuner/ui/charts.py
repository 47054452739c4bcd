"""Charts shared by the Train and Results tabs: loss and learning-rate frames, short
legend labels, and Vega-Lite specs drawn through gr.Plot.

Every chart is a gr.Plot of a Vega-Lite spec, redrawn whole on each change. Gradio 6's
LinePlot was not: a plot first given an empty frame never drew, a series that first
appeared in an update was never drawn, and its resize observers outlived the plot they
measured, so a chart updated in a hidden tab or emptied for a new run threw "Cannot read
properties of null (reading 'offsetWidth')" in the page.
"""

from __future__ import annotations

import pandas as pd


def curve_frame(rows: list[dict], label: str | None = None) -> pd.DataFrame | None:
    """Training and validation loss as one long frame; None for a run that logged none."""
    points = []
    for r in rows:
        for key, series in (("loss", "training loss"), ("eval_loss", "validation loss")):
            if key in r:
                points.append({"step": r["step"], "loss": r[key],
                               "series": f"{label}: {series}" if label else series})
    return pd.DataFrame(points) if points else None


LABEL_MAX = 32  # characters of a run's own name in a chart legend


def short_label(run_id: str) -> str:
    """A legend label that fits: '1a2b 12:00' for run 20260101-120000-faq-1a2b (a long id
    was cut to the same first letters for every run, so two runs read alike); a run's
    own name is kept whole up to 32 characters (the legend is 400 px wide: "crates soft
    prompt" cut to 16 read as "crates soft pro…")."""
    parts = run_id.split("-")
    if len(parts) >= 4 and len(parts[1]) == 6 and parts[1].isdigit():
        return f"{parts[-1]} {parts[1][:2]}:{parts[1][2:4]}"
    return run_id if len(run_id) <= LABEL_MAX else f"{run_id[:LABEL_MAX - 1]}…"


VEGA_LITE = "https://vega.github.io/schema/vega-lite/v5.json"  # names the version; never fetched


def vega_plot(spec: dict):
    """What gr.Plot takes for a Vega-Lite chart (its public `data_model`, as it sends an Altair
    chart: building an altair.Chart of the same spec costs time at every draw (measured: see
    docs/performance.md), this nothing), drawn as SVG
    so its titles and labels are text in the page."""
    import json

    import gradio as gr

    spec = spec | {"usermeta": {"embedOptions": {"renderer": "svg", "actions": False}}}
    return gr.Plot.data_model(type="altair", plot=json.dumps(spec))


# A chart's plot width in pixels. Not "container": gr.Plot centres its chart in a flex
# column, so the container Vega would measure is as wide as its content, none at first,
# and the chart was drawn with a plot of zero width (a blank box with a legend).
PLOT_WIDTH = 640


def line_spec(frame: pd.DataFrame, y: str, title: str, width: int = PLOT_WIDTH, compact: bool = False) -> dict:
    """A line with points of `y` against step, one per series if the frame has a "series"
    column; NaN points left out. `compact`: `width` is the whole chart's, its legend
    under the plot, for charts side by side in a row."""
    values = frame.dropna(subset=[y]).to_dict("records")
    encoding = {"x": {"field": "step", "type": "quantitative", "title": "step"},
                "y": {"field": y, "type": "quantitative", "title": y, "scale": {"zero": False}}}
    if "series" in frame.columns:
        legend = {"labelLimit": 400} | ({"orient": "bottom", "direction": "vertical"} if compact else {})
        encoding["color"] = {"field": "series", "type": "nominal", "title": "series", "legend": legend}
    spec = {"$schema": VEGA_LITE, "title": title, "width": width, "height": 260, "data": {"values": values},
            "mark": {"type": "line", "point": True, "tooltip": True}, "encoding": encoding}
    if compact:
        spec["autosize"] = {"type": "fit", "contains": "padding"}
    return spec


def loss_spec(frame: pd.DataFrame, title: str, width: int = PLOT_WIDTH, compact: bool = False) -> dict:
    """A line per series of a curve_frame, with points and a legend."""
    return line_spec(frame, "loss", title, width, compact)


def bar_spec(frame: pd.DataFrame, x: str, y: str, title: str, width: int = PLOT_WIDTH) -> dict:
    """A bar of `y` for each value of `x`, in the frame's order."""
    return {"$schema": VEGA_LITE, "title": title, "width": width, "height": 220,
            "data": {"values": frame.to_dict("records")}, "mark": {"type": "bar", "tooltip": True},
            "encoding": {"x": {"field": x, "type": "ordinal", "sort": list(frame[x]), "title": x},
                         "y": {"field": y, "type": "quantitative", "title": y}}}


def chart(spec_of, frame: pd.DataFrame | None, *args, **kwargs):
    """What a gr.Plot shows for `frame`: spec_of(frame, ...) drawn, or nothing (None) for no frame."""
    return None if frame is None else vega_plot(spec_of(frame, *args, **kwargs))


def lr_frame(rows: list[dict]) -> pd.DataFrame | None:
    points = [{"step": r["step"], "learning rate": r["learning_rate"]} for r in rows if "learning_rate" in r]
    return pd.DataFrame(points) if points else None


REWARD_SERIES = (("rewards/margins", "reward margin"), ("rewards/accuracies", "reward accuracy"))


def reward_frame(rows: list[dict]) -> pd.DataFrame | None:
    """A preference run's reward margins and accuracies (TRL's, on the training rows and on
    the validation rows) as one long frame; None for a run that logs none (LoRA, prompt
    tuning)."""
    points = []
    for r in rows:
        for key, series in REWARD_SERIES:
            for prefix, part in (("", "training"), ("eval_", "validation")):
                if prefix + key in r:
                    points.append({"step": r["step"], "value": r[prefix + key], "series": f"{part} {series}"})
    return pd.DataFrame(points) if points else None
