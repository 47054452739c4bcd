"""Tuner's engine: models, datasets, training and generation.

Nothing in this package imports gradio except the UI modules (`tuner/ui.py`),
so the engine can be used and tested without a browser.
"""
