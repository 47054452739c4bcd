"""The blind rating panel (the Compare tab's and the raters' page's) and the raters' page.

Blindness: the browser receives the prompt and the two reply texts; which variant is on
which side lives in SQLite (assignments), and the session's server-side gr.State holds
only the assignment id and the rater's name. Variant names are sent only in the reveal,
after `Store.rate_pair` has committed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import gradio as gr

from ratings.scale import RUBRIC, SCORES
from ratings.store import ASPECTS, RatingError, Store
from tuner.access import RateLimiter
from tuner.paths import StorageError
from tuner.ui.access import direct, hf_username, request_address, sign_in_available



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
# what a rater is told on joining, by the evaluation's reveal setting (ratings.store.REVEALS)
REVEAL_PROMISES = {"end": "You will see which model wrote which reply after your last pair.",
                   "each": "You will see which model wrote which reply after each pair you submit."}


def eval_choices(store: Store, open_only: bool = False) -> list[tuple[str, int]]:
    """(label, id) of every evaluation, newest first; `open_only`: those open for rating
    (what the raters' page may show a stranger)."""
    return [(f"#{e['id']} {e['name']} ({e['n_prompts']} prompts × {e['n_variants']} variants)", e["id"])
            for e in store.evaluations() if e["open_for_rating"] or not open_only]


@dataclass
class _Panel:
    """The components the panel's handlers share: what serving a pair fills, and the
    rater's server-side state."""
    progress: gr.Markdown
    prompt: gr.Markdown
    replies: list[gr.Textbox]  # A, B
    scores: list[gr.Radio]  # A, B
    aspects: list[list[gr.Radio]]  # A's, then B's, in ASPECTS order
    preference: gr.Radio
    comment: gr.Textbox
    reveal: gr.Markdown
    rater: gr.State  # server-side: set by join, never taken from the browser afterwards
    chosen: gr.State  # the evaluation joined
    assignment: gr.State  # server-side: the browser never sees the mapping

    def answers(self) -> list:
        """The rater's own inputs, cleared with each pair served."""
        return [*self.scores, *self.aspects[0], *self.aspects[1], self.preference, self.comment]

    def served(self) -> list:
        """What serving a pair fills (Start's and Next's outputs)."""
        return [self.progress, self.assignment, self.prompt, *self.replies, *self.answers(), self.reveal]

    def shown(self, note: str, pair: dict | None = None) -> dict:
        """`note` above `pair`; without one, an empty pair (nothing to submit)."""
        texts = [pair["reply_a"], pair["reply_b"]] if pair else ["", ""]
        return {self.progress: note, self.assignment: pair["assignment_id"] if pair else None,
                self.prompt: _heading(pair) if pair else "", **dict(zip(self.replies, texts)),
                **dict.fromkeys(self.answers()), self.reveal: ""}


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
        evaluation, name, code, join = _join_row(prefix, public)
        gr.Markdown(RUBRIC)
        progress = gr.Markdown(elem_id=f"{prefix}-progress")
        prompt = gr.Markdown(elem_id=f"{prefix}-prompt")
        replies, scores, aspects = _sides(prefix)
        preference, comment, submit, change = _answer_row(prefix)
        reveal = gr.Markdown(elem_id=f"{prefix}-reveal")
        next_pair = gr.Button("Next pair", elem_id=f"{prefix}-next")
    rater = gr.State(None)
    # this browser's proof of the names it has used; encrypted with the app's secret
    keys = gr.BrowserState({}, storage_key="tuner-rater-keys", secret=secret)
    panel = _Panel(progress, prompt, replies, scores, aspects, preference, comment, reveal,
                   rater=rater, chosen=gr.State(None), assignment=gr.State(None))
    serve = _server(store, rng, panel)
    # Raters' events skip Gradio's queue (the page POSTs them straight to /gradio_api/run/…):
    # each is a few ms of SQLite, the queue's bookkeeping and event stream cost more than
    # that, and its default of 4 at a time would make 25 friends pressing Submit together
    # wait their turn. Simultaneous submissions still share one commit (Store.grouped).
    fast = {"queue": False}
    # ...and Gradio's per-component pre- and postprocessing (each a hop to a worker thread: 15
    # for a submission and its Next pair): these inputs are scores, a choice and a comment,
    # checked here on the server (ratings.store.check_score), the outputs text
    raw = {**fast, "preprocess": False, "postprocess": False}
    # ...and Submit, Next and Change (`direct`) are run by the gate in front of Gradio itself,
    # with the same session state (tuner.ui.access.OwnerGate._direct): server CPU per
    # submission with its Next pair 7.7 -> 4.6 ms, p95 under 25 raters 69 -> 25 ms (2-core Xeon)
    join.click(_joiner(store, limits, public, panel, keys, serve), [evaluation, name, code, keys],
               [panel.rater, panel.chosen, keys, *panel.served()], api_name=f"{prefix}_join", **fast)
    mine = [panel.assignment, panel.rater, panel.chosen]
    submit.click(direct(_submitter(store, limits, panel)), [*mine, *scores, preference, comment, *aspects[0], *aspects[1]],
                 [reveal, panel.assignment], api_name=f"{prefix}_submit", **raw)
    next_pair.click(direct(serve), [panel.chosen, panel.rater], panel.served(), api_name=f"{prefix}_next", **raw)
    change.click(direct(_changer(store)), [*mine, *scores], reveal, api_name=f"{prefix}_change", **raw)
    return evaluation


def _join_row(prefix: str, public: bool):
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
    return evaluation, name, code, join


def _sides(prefix: str):
    """Reply A and reply B side by side, each with its score and the optional aspects."""
    replies, scores, aspects = [], [], []
    with gr.Row():
        for side in ("a", "b"):
            with gr.Column():
                replies.append(gr.Textbox(label=f"Reply {side.upper()}", lines=8, interactive=False,
                                          elem_id=f"{prefix}-reply-{side}"))
                scores.append(gr.Radio(SCORES, label=f"Helpfulness of reply {side.upper()}",
                                       elem_id=f"{prefix}-score-{side}", elem_classes=[f"score-{side}"]))
                with gr.Accordion("More (optional): adherence, tone, clarity", open=False):
                    aspects.append([gr.Radio(SCORES, label=f"{aspect.capitalize()} ({side.upper()})")
                                    for aspect in ASPECTS])
    return replies, scores, aspects


def _answer_row(prefix: str):
    with gr.Row():
        preference = gr.Radio(["A", "B", "tie"], label="Which reply is better? (optional)",
                              elem_id=f"{prefix}-preference", scale=1)
        comment = gr.Textbox(label="Comment (optional)", elem_id=f"{prefix}-comment", scale=2)
    with gr.Row():
        submit = gr.Button("Submit ratings", variant="primary", elem_id=f"{prefix}-submit",
                           elem_classes=["rate-submit"], scale=3)
        change = gr.Button("Change my scores", elem_id=f"{prefix}-change", size="sm", scale=1)
    return preference, comment, submit, change


def _heading(pair: dict) -> str:
    flags = f" · flagged: **{', '.join(pair['flags'])}**" if pair["flags"] else ""
    return f"**Task:** {pair['task']}{flags}\n\n**Prompt:** {pair['prompt']}" if names_a_task(pair) else \
        f"**Prompt:** {pair['prompt']}{flags}"


def names_a_task(pair: dict) -> bool:
    """Whether the pair's task says something its prompt does not: a prompt given without a
    task is named by its own first words (tuner.prompts), which would only repeat it."""
    task, prompt = " ".join(str(pair.get("task") or "").split()), " ".join(str(pair.get("prompt") or "").split())
    if not task or task == prompt:
        return False
    return not (task.endswith("…") and prompt.startswith(task[:-1].rstrip()))


def _server(store: Store, rng: random.Random, panel: _Panel):
    def serve(eval_id, who):
        if eval_id is None or who is None:
            return panel.shown("⚠️ Choose an evaluation, enter your name and press Start rating.")
        try:
            pair = store.next_pair(int(eval_id), who, rng)
        except (RatingError, StorageError) as exc:
            return panel.shown(f"⚠️ {exc}")
        if pair is None:
            done, total = store.progress(int(eval_id), who)
            return panel.shown(f"✅ {who}, you have rated all {total} pairs of this evaluation. Thank you!")
        return panel.shown(f"{who} · pair {pair['done'] + 1} of {pair['total']}", pair)

    return serve


def _joiner(store: Store, limits: RaterLimits, public: bool, panel: _Panel, keys: gr.BrowserState, serve):
    def on_join(eval_id, typed_name, invite, known_keys, request: gr.Request):
        known_keys = known_keys if isinstance(known_keys, dict) else {}
        try:
            who, eval_id, key = _admit(store, limits, public, eval_id, typed_name, invite, known_keys, request)
        except RatingError as exc:
            return {panel.rater: None, panel.chosen: None, **panel.shown(f"⚠️ {exc}")}
        if key:
            known_keys = {**known_keys, who: key}
        served = serve(eval_id, who)
        if served[panel.assignment] is not None:  # a pair to rate: say when the models are revealed
            served[panel.progress] += "\n\n" + REVEAL_PROMISES[store.reveal_of(eval_id)]
        return {panel.rater: who, panel.chosen: eval_id, keys: known_keys, **served}

    return on_join


def _admit(store: Store, limits: RaterLimits, public: bool, eval_id, typed_name, invite, known_keys: dict,
           request: gr.Request) -> tuple[str, int, str | None]:
    """(rater, evaluation, a new key for this browser or None), or RatingError saying why not."""
    # a Hugging Face sign-in (on a Space with hf_oauth) names the rater; else the typed name
    signed_in = hf_username(request)
    client = request_address(request)  # on a Space: the proxy's X-Forwarded-For entry
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
    who, key = store.claim_rater(signed_in or typed_name, known_keys, signed_in=bool(signed_in))
    store.join(eval_id, who, client)
    return who, eval_id, key


def _submitter(store: Store, limits: RaterLimits, panel: _Panel):
    def on_submit(assignment_id, who, eval_id, a, b, pref, text, *aspect_values):
        return {panel.reveal: _submitted(store, limits, assignment_id, who, eval_id, (a, b), pref, text,
                                         aspect_values)}

    return on_submit


def _submitted(store: Store, limits: RaterLimits, assignment_id, who, eval_id, scores, pref, text,
               aspect_values) -> str:
    """What the rater is told after Submit: saved (with the reveal it has earned), or why not."""
    if assignment_id is None or who is None:
        return "⚠️ Press Start rating to get a pair first."
    if not isinstance(text, (str, type(None))) or not isinstance(pref, (str, type(None))):
        return "⚠️ The comment and the preference must be text."  # (sent by a script, not the page)
    allowed, wait = limits.submits.allow(who)
    if not allowed:
        return f"⚠️ Too many ratings too fast; wait {wait:.0f} s and submit again."
    n = len(ASPECTS)
    try:
        result = store.rate_pair(assignment_id, who, *scores, dict(zip(ASPECTS, aspect_values[:n])),
                                 dict(zip(ASPECTS, aspect_values[n:])), pref or None, text)
    except (RatingError, StorageError) as exc:  # nothing was saved: the pair stays to submit again
        return f"⚠️ {exc}"
    done, total = store.progress(int(eval_id), who)
    # committed: now, and only now, say which reply was which (after each pair, or
    # by default only after the rater's last pair, so no one learns a model's style)
    if store.reveal_of(int(eval_id)) == "each":
        return (f"Saved ({done} of {total} done). **Reply A** was **{result['a_label']}** (you gave "
                f"{result['score_a']}); **Reply B** was **{result['b_label']}** (you gave {result['score_b']}). "
                "Press **Next pair** to go on.")
    if done < total:
        return (f"Saved ({done} of {total} done). Which model wrote each reply is shown after your last pair. "
                "Press **Next pair** to go on.")
    return "Saved: that was your last pair. Thank you!\n\n" + reveal_text(store.rater_reveal(int(eval_id), who))


def _changer(store: Store):
    def on_change(assignment_id, who, eval_id, a, b):
        if assignment_id is None or who is None:
            return "⚠️ Rate a pair first; then you can change its scores."
        try:
            changed = store.change_scores(assignment_id, who, a, b)
        except (RatingError, StorageError) as exc:
            return f"⚠️ {exc}"
        return (f"Changed your scores for this pair: Reply A {changed['old_a']} → {changed['score_a']}, "
                f"Reply B {changed['old_b']} → {changed['score_b']} (the change is recorded).")

    return on_change


def reveal_text(pairs: list[dict]) -> str:
    """A rater's own pairs, revealed: which model wrote Reply A and Reply B, and the scores given."""
    lines = ["**Which model wrote which:**"]
    for i, pair in enumerate(pairs, start=1):
        lines.append(f"- pair {i} (prompt {pair['position']}): A was **{pair['a_label']}** (you gave "
                     f"{pair['score_a']}), B was **{pair['b_label']}** (you gave {pair['score_b']})")
    return "\n".join(lines)


def raters_page(store: Store, rng: random.Random, secret: str | None = None, limits: RaterLimits | None = None):
    """The page friends get: rating only."""
    # the evaluation, picked below, decides when the models are revealed: the rater is told on joining
    gr.Markdown("# Rate replies\nTwo assistants answered the same prompt. Rate each reply. Which model wrote "
                "which is shown only once your scores are saved, after each pair or after your last pair, as "
                "the evaluation was set up: you are told which when you start.")
    if sign_in_available():
        gr.LoginButton()
    evaluation = rating_panel(store, rng, "rater", public=True, secret=secret, limits=limits)
    def rater_evaluations():
        evals = eval_choices(store, open_only=True)
        return gr.update(choices=evals, value=evals[0][1] if evals else None)

    return rater_evaluations, evaluation
