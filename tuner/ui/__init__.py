"""Every Gradio module of Tuner, one per tab or page; app.py composes them.

    widgets     the base-model picker above the tabs
    charts      loss / learning-rate frames and Vega-Lite specs (Train and Results)
    dataset     the Dataset tab: import, edit, filter, split, expand, inspect, export
    train       the Train tab: settings, Start/Stop, live progress, the runs table
    compare     the Compare tab: build an evaluation, automatic checks, rate it
    rate        the blind rating panel and the raters' page (/rate)
    playground  the Playground tab
    results     the Results tab
    export      the Export tab
    access      the owner guard: sign-in, the per-handler check, the ASGI gate

Nothing outside this package and app.py imports gradio (tests/test_layout.py says so).
"""
