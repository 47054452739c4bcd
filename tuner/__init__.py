"""Tuner's engine: models, datasets, training and generation.

Nothing in this package imports gradio except the UI package (`tuner/ui/`),
so the engine can be used and tested without a browser.
"""
