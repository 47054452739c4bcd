"""The blind rating panel (the Compare tab's and the raters' page's) and the raters' page.

Blindness: the browser receives the prompt and the two reply texts; which variant is on
which side lives in SQLite (assignments), and the session's server-side gr.State holds
only the assignment id and the rater's name. Variant names are sent only in the reveal,
after `Store.rate_pair` has committed.
"""

from __future__ import annotations

import random

import gradio as gr

from ratings.store import ASPECTS, RatingError, Store, clean_rater
from tuner.access import RateLimiter
from tuner.paths import StorageError
from tuner.ui.access import hf_username, request_address, sign_in_available



RUBRIC = ("**Helpfulness, 1–5:** 5 = usable as is · 4 = small edits · 3 = needs work · "
          "2 = mostly unhelpful · 1 = wrong or harmful. A score of 4 or more counts as a success. "
          "Keys: 1–5 score reply A then reply B, Enter submits.")


SCORES = [1, 2, 3, 4, 5]


# Keys 1-5 fill the first unset score (A, then B) of the visible rating panel;
# Enter submits it. Only when focus is not in a text field.
KEYS_JS = """
<script>
document.addEventListener('keydown', (e) => {
  const t = e.target; if (t && (t.tagName === 'TEXTAREA' || (t.tagName === 'INPUT' && t.type === 'text'))) return;
  const panels = [...document.querySelectorAll('.rating-panel')].filter(p => p.offsetParent !== null);
  if (!panels.length) return;
  const panel = panels[0];
  if (e.key >= '1' && e.key <= '5') {
    for (const side of ['a', 'b']) {
      const group = panel.querySelector(`.score-${side}`);
      if (group && !group.querySelector('input:checked')) {
        const input = group.querySelector(`input[value="${e.key}"]`); if (input) input.click(); return;
      }
    }
  } else if (e.key === 'Enter') {
    const button = panel.querySelector('.rate-submit'); if (button) button.click();
  }
});
</script>
"""


class RaterLimits:
    """Per-rater submissions (a person needs seconds a pair; a script floods) and
    sign-ins per client address. One instance per app, shared by its panels."""

    def __init__(self, submits: tuple[int, float] = (10, 30.0), joins: tuple[int, float] = (30, 600.0)):
        self.submits = RateLimiter(*submits)
        self.joins = RateLimiter(*joins)


REVEAL_CHOICES = {"after their last pair": "end", "after each pair": "each"}


def eval_choices(store: Store, open_only: bool = False) -> list[tuple[str, int]]:
    """(label, id) of every evaluation, newest first; `open_only`: those open for rating
    (what the raters' page may show a stranger)."""
    return [(f"#{e['id']} {e['name']} ({e['n_prompts']} prompts × {e['n_variants']} variants)", e["id"])
            for e in store.evaluations() if e["open_for_rating"] or not open_only]


def rating_panel(store: Store, rng: random.Random, prefix: str, public: bool, secret: str | None = None,
                 limits: RaterLimits | None = None):
    """Join (name, invite code) → pairs one at a time → scores → commit → reveal.

    The same panel serves the owner's Compare tab and the raters' page. Its
    handlers only read this rater's next pair and write this rater's ratings.
    Identity: a Hugging Face sign-in, else the typed name, which belongs to the
    browser that first used it (its key is kept in that browser's storage);
    the name then lives in server-side state, never taken from the browser.
    Returns the evaluation dropdown, so the page can refresh its choices.
    """
    limits = limits or RaterLimits()
    with gr.Column(elem_classes=["rating-panel"]):
        with gr.Row():
            # built empty (names are the owner's until the page's load lists the open ones); any
            # value is let through to the handler, which checks it is an open evaluation
            evaluation = gr.Dropdown([], value=None, allow_custom_value=True, label="Evaluation",
                                     elem_id=f"{prefix}-eval", scale=2)
            name = gr.Textbox(label="Your name", elem_id=f"{prefix}-name", scale=2,
                              info="On a Space you can sign in with Hugging Face instead." if public else None)
            code = gr.Textbox(label="Invite code (if the owner set one)", elem_id=f"{prefix}-code", scale=1,
                              type="password")
            join = gr.Button("Start rating", elem_id=f"{prefix}-start", scale=1)
        gr.Markdown(RUBRIC)
        progress = gr.Markdown(elem_id=f"{prefix}-progress")
        prompt = gr.Markdown(elem_id=f"{prefix}-prompt")
        with gr.Row():
            sides = []
            for side in ("a", "b"):
                with gr.Column():
                    reply = gr.Textbox(label=f"Reply {side.upper()}", lines=8, interactive=False,
                                       elem_id=f"{prefix}-reply-{side}")
                    score = gr.Radio(SCORES, label=f"Helpfulness of reply {side.upper()}",
                                     elem_id=f"{prefix}-score-{side}", elem_classes=[f"score-{side}"])
                    with gr.Accordion("More (optional): adherence, tone, clarity", open=False):
                        aspects = [gr.Radio(SCORES, label=f"{aspect.capitalize()} ({side.upper()})")
                                   for aspect in ASPECTS]
                    sides.append((reply, score, aspects))
        with gr.Row():
            preference = gr.Radio(["A", "B", "tie"], label="Which reply is better? (optional)",
                                  elem_id=f"{prefix}-preference", scale=1)
            comment = gr.Textbox(label="Comment (optional)", elem_id=f"{prefix}-comment", scale=2)
        with gr.Row():
            submit = gr.Button("Submit ratings", variant="primary", elem_id=f"{prefix}-submit",
                               elem_classes=["rate-submit"], scale=3)
            change = gr.Button("Change my scores", elem_id=f"{prefix}-change", size="sm", scale=1)
        reveal = gr.Markdown(elem_id=f"{prefix}-reveal")
        next_pair = gr.Button("Next pair", elem_id=f"{prefix}-next")
    rater = gr.State(None)  # server-side: set by join, never taken from the browser afterwards
    # this browser's proof of the names it has used; encrypted with the app's secret
    keys = gr.BrowserState({}, storage_key="tuner-rater-keys", secret=secret)
    eval_state = gr.State(None)
    assignment = gr.State(None)  # server-side: the browser never sees the mapping
    (reply_a, score_a, aspects_a), (reply_b, score_b, aspects_b) = sides
    clearable = [score_a, score_b, *aspects_a, *aspects_b, preference, comment]

    def serve(eval_id, who):
        blank = [None, "", "", ""] + [None] * len(clearable) + [""]
        if eval_id is None or who is None:
            return ["⚠️ Choose an evaluation, enter your name and press Start rating.", *blank]
        try:
            pair = store.next_pair(int(eval_id), who, rng)
        except (RatingError, StorageError) as exc:
            return [f"⚠️ {exc}", *blank]
        if pair is None:
            done, total = store.progress(int(eval_id), who)
            return [f"✅ {who}, you have rated all {total} pairs of this evaluation. Thank you!", *blank]
        flags = f" · flagged: **{', '.join(pair['flags'])}**" if pair["flags"] else ""
        heading = f"**Task:** {pair['task']}{flags}\n\n**Prompt:** {pair['prompt']}" if pair["task"] else \
            f"**Prompt:** {pair['prompt']}{flags}"
        return [f"{who} · pair {pair['done'] + 1} of {pair['total']}", pair["assignment_id"], heading,
                pair["reply_a"], pair["reply_b"]] + [None] * len(clearable) + [""]

    def on_join(eval_id, typed_name, invite, known_keys, request: gr.Request):
        # a Hugging Face sign-in (on a Space with hf_oauth) names the rater; else the typed name
        signed_in = hf_username(request)
        known_keys = known_keys if isinstance(known_keys, dict) else {}
        client = request_address(request)  # on a Space: the proxy's X-Forwarded-For entry
        try:
            allowed, wait = limits.joins.allow(client)
            if not allowed:
                raise RatingError(f"Too many sign-ins from this address; try again in {wait:.0f} s.")
            if eval_id is None:
                raise RatingError("Choose an evaluation first.")
            try:  # the list is filled by the page; a script may send anything
                eval_id = int(eval_id)
            except (TypeError, ValueError):
                raise RatingError("Choose an evaluation from the list.") from None
            if not store.is_open(eval_id):
                raise RatingError("That evaluation is not open for rating: choose one from the list.")
            if public:  # the owner's own panel (Compare, owner-only) needs no invite code
                store.check_invite(eval_id, invite)
            name = clean_rater(signed_in or typed_name)
            who, key = store.claim_rater(name, known_keys.get(name), signed_in=bool(signed_in))
            store.join(eval_id, who, client)
        except RatingError as exc:
            return [None, None, gr.skip(), f"⚠️ {exc}", None, "", "", ""] + [None] * len(clearable) + [""]
        if key:
            known_keys = {**known_keys, who: key}
        return [who, eval_id, known_keys] + serve(eval_id, who)

    def on_submit(assignment_id, who, eval_id, a, b, pref, text, *aspect_values):
        if assignment_id is None or who is None:
            return "⚠️ Press Start rating to get a pair first.", gr.update()
        allowed, wait = limits.submits.allow(who)
        if not allowed:
            return f"⚠️ Too many ratings too fast; wait {wait:.0f} s and submit again.", gr.update()
        n = len(ASPECTS)
        try:
            result = store.rate_pair(assignment_id, who, a, b, dict(zip(ASPECTS, aspect_values[:n])),
                                     dict(zip(ASPECTS, aspect_values[n:])), pref or None, text)
        except (RatingError, StorageError) as exc:  # nothing was saved: the pair stays to submit again
            return f"⚠️ {exc}", gr.update()
        done, total = store.progress(int(eval_id), who)
        # committed: now, and only now, say which reply was which (after each pair, or
        # by default only after the rater's last pair, so no one learns a model's style)
        if store.reveal_of(int(eval_id)) == "each":
            return (f"Saved ({done} of {total} done). **Reply A** was **{result['a_label']}** (you gave "
                    f"{result['score_a']}); **Reply B** was **{result['b_label']}** (you gave {result['score_b']}). "
                    "Press **Next pair** to go on.", gr.update())
        if done < total:
            return (f"Saved ({done} of {total} done). Which model wrote each reply is shown after your last pair. "
                    "Press **Next pair** to go on.", gr.update())
        return "Saved: that was your last pair. Thank you!\n\n" + reveal_text(store.rater_reveal(int(eval_id), who)), \
            gr.update()

    def on_change(assignment_id, who, eval_id, a, b):
        if assignment_id is None or who is None:
            return "⚠️ Rate a pair first; then you can change its scores."
        try:
            changed = store.change_scores(assignment_id, who, a, b)
        except (RatingError, StorageError) as exc:
            return f"⚠️ {exc}"
        return (f"Changed your scores for this pair: Reply A {changed['old_a']} → {changed['score_a']}, "
                f"Reply B {changed['old_b']} → {changed['score_b']} (the change is recorded).")

    serve_outputs = [progress, assignment, prompt, reply_a, reply_b, *clearable, reveal]
    # Raters' events skip Gradio's queue (the page POSTs them straight to /gradio_api/run/…):
    # each is a few ms of SQLite, the queue's bookkeeping and event stream cost more than
    # that, and its default of 4 at a time would make 25 friends pressing Submit together
    # wait their turn. Simultaneous submissions still share one commit (Store.grouped).
    fast = {"queue": False}
    join.click(on_join, [evaluation, name, code, keys], [rater, eval_state, keys, *serve_outputs],
               api_name=f"{prefix}_join", **fast)
    submit.click(on_submit, [assignment, rater, eval_state, score_a, score_b, preference, comment,
                             *aspects_a, *aspects_b], [reveal, assignment], api_name=f"{prefix}_submit", **fast)
    next_pair.click(serve, [eval_state, rater], serve_outputs, api_name=f"{prefix}_next", **fast)
    change.click(on_change, [assignment, rater, eval_state, score_a, score_b], reveal, api_name=f"{prefix}_change",
                 **fast)
    return evaluation


def reveal_text(pairs: list[dict]) -> str:
    """A rater's own pairs, revealed: which model wrote Reply A and Reply B, and the scores given."""
    lines = ["**Which model wrote which:**"]
    for i, pair in enumerate(pairs, start=1):
        lines.append(f"- pair {i} (prompt {pair['position']}): A was **{pair['a_label']}** (you gave "
                     f"{pair['score_a']}), B was **{pair['b_label']}** (you gave {pair['score_b']})")
    return "\n".join(lines)


def raters_page(store: Store, rng: random.Random, secret: str | None = None, limits: RaterLimits | None = None):
    """The page friends get: rating only."""
    gr.Markdown("# Rate replies\nTwo assistants answered the same prompt. Rate each reply; "
                "you will see which model wrote which after you submit.")
    if sign_in_available():
        gr.LoginButton()
    evaluation = rating_panel(store, rng, "rater", public=True, secret=secret, limits=limits)
    def rater_evaluations():
        evals = eval_choices(store, open_only=True)
        return gr.update(choices=evals, value=evals[0][1] if evals else None)

    return rater_evaluations, evaluation
