"""Blind ratings: SQLite store, pairing, statistics, preference data, a judge and a leaderboard.

Nothing here imports gradio: the tabs that show them are in `tuner/ui/` (rate, compare,
results, judge, corrections, preference, leaderboard).
"""
