"""Blind ratings: SQLite store, pairing, statistics, and their tabs.

Nothing here imports gradio: the rating views are in `tuner/ui/` (rate, compare, results).
"""
