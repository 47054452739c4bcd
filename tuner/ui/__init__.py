"""Every Gradio module of Tuner, one per tab, tab section or page; app.py composes them.

    widgets      the base-model picker above the tabs
    charts       loss / learning-rate frames and Vega-Lite specs (Train and Results)
    dataset      the Dataset tab: import, edit, filter, split, expand, inspect, export
    train        the Train tab: settings, Start/Stop, live progress, the runs table
    train_settings  the Train tab's settings, shared by train and preference (from TrainConfig)
    preference   the Train tab's DPO / KTO part: which evaluation's scores a run learns from
    compare      the Compare tab: build an evaluation, automatic checks, rate it
    rate         the blind rating panel and the raters' page (/rate) with its JSON routes
    playground   the Playground tab
    results      the Results tab
    judge        the Results tab's judge section: a model's scores beside the raters'
    corrections  the Results tab's "Correct low-rated replies" part
    leaderboard  the Leaderboard tab: every rated model of one base model, Bradley–Terry
    export       the Export tab
    access       owner and raters on one server: the ASGI gate, the owner's sign-in, the studio's bar

Nothing outside this package and app.py imports gradio (tests/test_layout.py says so).
"""
