"""Blind ratings: SQLite store, pairing, statistics, and their tabs.

Only `ratings/ui.py` imports gradio.
"""
