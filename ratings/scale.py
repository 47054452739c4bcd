"""The rating scale: helpfulness (and each optional aspect) scored 1–5, and where
success starts. The store checks scores against it, the statistics count
successes by it, and the rating panel and the report say it in words.
"""

from __future__ import annotations

LOWEST, HIGHEST = 1, 5
SCORES = tuple(range(LOWEST, HIGHEST + 1))  # what a rater may give
SUCCESS_AT = 4  # a reply "succeeds" when rated this or more (the Results tab may move it)

# what each score means, highest first: the rubric raters see and the report quotes
MEANINGS = {5: "usable as is", 4: "small edits", 3: "needs work", 2: "mostly unhelpful", 1: "wrong or harmful"}
SPAN = f"{LOWEST}–{HIGHEST}"
IN_WORDS = ", ".join(f"{score} {text}" for score, text in MEANINGS.items())  # "5 usable as is, 4 small edits, …"

RUBRIC = (f"**Helpfulness, {SPAN}:** " + " · ".join(f"{score} = {text}" for score, text in MEANINGS.items())
          + f". A score of {SUCCESS_AT} or more counts as a success. "
          f"Keys: {SPAN} score reply A then reply B, Enter submits.")
