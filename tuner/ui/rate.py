"""The blind rating panel (the Compare tab's and the raters' page's) and the raters' page.

Blindness: the browser receives the prompt and the two reply texts; which variant is on
which side lives in SQLite (assignments), and the session's server-side gr.State holds
only the assignment id and the rater's name. Variant names are sent only in the reveal,
after `Store.rate_pair` has committed.
"""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass

import gradio as gr
from starlette.requests import Request
from starlette.responses import JSONResponse

from ratings.scale import RUBRIC, SCORES
from ratings.store import ASPECTS, RatingError, Store
from tuner.access import RateLimiter
from tuner.paths import StorageError
from tuner.ui.access import HF_ROUTES, RATER_API, hf_username, is_https, is_owner, request_address, sign_in_available



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


# what a rater is told once every fine-tuned model of the evaluation is decided (ratings.sequential)
DECIDED_NOTE = ("The owner has an answer for every model; you may stop here, or go on: your ratings still count "
                "in the tables.")

REVEAL_CHOICES = {"after their last pair": "end", "after each pair": "each"}
# what a rater is told on joining, by the evaluation's reveal setting (ratings.store.REVEALS)
REVEAL_PROMISES = {"end": "You will see which model wrote which reply after your last pair.",
                   "each": "You will see which model wrote which reply after each pair you submit."}


def eval_choices(store: Store, open_only: bool = False) -> list[tuple[str, int]]:
    """(label, id) of every evaluation, newest first; `open_only`: those open for rating
    (what the raters' page may show a stranger)."""
    return [(f"#{e['id']} {e['name']} ({e['n_prompts']} prompts × {e['n_variants']} variants)"
             + (" — rating closed" if e.get("closed") else ""), e["id"])
            for e in store.evaluations() if e["open_for_rating"] or not open_only]


def picked_evaluation(store: Store, value) -> int | None:
    """The id of the evaluation a dropdown holds, or None when it holds nothing, or nothing that
    exists (a script may send anything)."""
    try:
        eval_id = int(value)
    except (TypeError, ValueError):
        return None
    return eval_id if store.evaluation(eval_id) is not None else None


@dataclass
class _Panel:
    """The components the panel's buttons fill. The rater's name and pair live on the
    server (tuner/ui/rate.py `rater_api`); the page holds only the opaque id of the pair shown."""
    progress: gr.Markdown
    prompt: gr.Markdown
    replies: list[gr.Textbox]  # A, B
    scores: list[gr.Radio]  # A, B
    aspects: list[list[gr.Radio]]  # A's, then B's, in ASPECTS order
    preference: gr.Radio
    comment: gr.Textbox
    reveal: gr.Markdown
    assignment: gr.Textbox  # hidden: the id of the pair shown (the server checks it is this rater's)

    def answers(self) -> list:
        """The rater's own inputs, cleared with each pair served."""
        return [*self.scores, *self.aspects[0], *self.aspects[1], self.preference, self.comment]

    def served(self) -> list:
        """What serving a pair fills (Start's and Next's outputs), in RATE_JS's order."""
        return [self.progress, self.assignment, self.prompt, *self.replies, *self.answers(), self.reveal]


# In each page's <head>: the panel's buttons call the raters' plain routes (`rater_api`), not
# Gradio's queue. Each answers with what the panel shows; an error is shown, never thrown.
RATE_JS = """
<script>
window.tunerRate = (() => {
  const call = async (action, payload) => {
    try {
      const answer = await fetch(location.origin + '%(api)s' + action, {method: 'POST', credentials: 'same-origin',
        headers: {'Content-Type': 'application/json'}, body: JSON.stringify(payload)});
      let body = {};
      try { body = await answer.json(); } catch (e) {}
      if (!answer.ok) return {error: body.error || body.detail || ('HTTP ' + answer.status)};
      return body;
    } catch (e) { return {error: 'The app cannot be reached (' + e + '); try again.'}; }
  };
  const served = (body) => {
    if (body.error) return ['⚠️ ' + body.error, '', '', '', '', null, null, null, null, null, null, null, null,
                            null, '', ''];
    return [body.progress || '', body.assignment == null ? '' : String(body.assignment), body.prompt || '',
            body.a || '', body.b || '', null, null, null, null, null, null, null, null, null, '', ''];
  };
  return {
    evaluations: async () => {
      try {
        const answer = await fetch(location.origin + '%(api)sevaluations', {credentials: 'same-origin'});
        const body = await answer.json();
        const choices = body.choices || [];
        return {__type__: 'update', choices: choices, value: choices.length ? choices[0][1] : null};
      } catch (e) { return {__type__: 'update', choices: []}; }
    },
    join: async (panel, evaluation, name, code) => served(await call('join', {panel, evaluation, name, code})),
    next: async (evaluation, name) => served(await call('next', {evaluation, name})),
    submit: async (evaluation, name, assignment, a, b, preference, comment, ...aspects) => {
      const body = await call('submit', {evaluation, name, assignment, a, b, preference, comment,
                                         aspects_a: aspects.slice(0, 3), aspects_b: aspects.slice(3, 6)});
      return body.error ? '⚠️ ' + body.error : body.reveal;
    },
    change: async (evaluation, name, assignment, a, b) => {
      const body = await call('change', {evaluation, name, assignment, a, b});
      return body.error ? '⚠️ ' + body.error : body.reveal;
    },
  };
})();
</script>
""" % {"api": RATER_API}


def rating_panel(prefix: str, public: bool):
    """Join (name, invite code) → pairs one at a time → scores → commit → reveal.

    The same panel serves the owner's Compare tab and the raters' page. Its buttons run in
    the page (RATE_JS) and call the raters' plain routes, which read this rater's next pair
    and write this rater's ratings. Identity: a Hugging Face sign-in, else the typed name,
    claimed per evaluation by the browser that first used it (its key is in that browser's
    HttpOnly cookie); the server finds the name from the cookie, never from the page.
    Returns the evaluation dropdown, so the page can fill its choices.
    """
    with gr.Column(elem_classes=["rating-panel"]):
        evaluation, name, code, join = _join_row(prefix, public)
        gr.Markdown(RUBRIC)
        progress = gr.Markdown(elem_id=f"{prefix}-progress")
        prompt = gr.Markdown(elem_id=f"{prefix}-prompt")
        replies, scores, aspects = _sides(prefix)
        preference, comment, submit, change = _answer_row(prefix)
        reveal = gr.Markdown(elem_id=f"{prefix}-reveal")
        next_pair = gr.Button("Next pair", elem_id=f"{prefix}-next")
        assignment = gr.Textbox(visible="hidden", elem_id=f"{prefix}-assignment")
    panel = _Panel(progress, prompt, replies, scores, aspects, preference, comment, reveal, assignment)
    kind = "rater" if public else "owner"
    join.click(None, [evaluation, name, code], panel.served(),
               js=f"(e, n, c) => window.tunerRate.join('{kind}', e, n, c)")
    # the name shown goes along: the server takes it only if this browser holds it (its cookie)
    submit.click(None, [evaluation, name, assignment, *scores, preference, comment, *aspects[0], *aspects[1]],
                 reveal, js="(...v) => window.tunerRate.submit(...v)")
    next_pair.click(None, [evaluation, name], panel.served(), js="(e, n) => window.tunerRate.next(e, n)")
    change.click(None, [evaluation, name, assignment, *scores], reveal, js="(...v) => window.tunerRate.change(...v)")
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


def _submitted(store: Store, limits: RaterLimits, assignment_id, who, eval_id, scores, pref, text,
               aspect_values) -> tuple[str, bool, bool]:
    """What the rater is told after Submit: saved (with the reveal it has earned), or why not;
    whether the ratings were saved; whether the rater has pairs left."""
    if assignment_id is None or who is None:
        return "⚠️ Press Start rating to get a pair first.", False, False
    if not isinstance(text, (str, type(None))) or not isinstance(pref, (str, type(None))):
        return "⚠️ The comment and the preference must be text.", False, False  # (a script's, not the page's)
    allowed, wait = limits.submits.allow(who)
    if not allowed:
        return f"⚠️ Too many ratings too fast; wait {wait:.0f} s and submit again.", False, False
    n = len(ASPECTS)
    try:
        result = store.rate_pair(assignment_id, who, *scores, dict(zip(ASPECTS, aspect_values[:n])),
                                 dict(zip(ASPECTS, aspect_values[n:])), pref or None, text)
    except (RatingError, StorageError) as exc:  # nothing was saved: the pair stays to submit again
        return f"⚠️ {exc}", False, False
    done, total = store.progress(int(eval_id), who)
    # committed: now, and only now, say which reply was which (after each pair, or
    # by default only after the rater's last pair, so no one learns a model's style)
    if store.reveal_of(int(eval_id)) == "each":
        return (f"Saved ({done} of {total} done). **Reply A** was **{result['a_label']}** (you gave "
                f"{result['score_a']}); **Reply B** was **{result['b_label']}** (you gave {result['score_b']}). "
                "Press **Next pair** to go on."), True, done < total
    if done < total:
        return (f"Saved ({done} of {total} done). Which model wrote each reply is shown after your last pair. "
                "Press **Next pair** to go on."), True, True
    return ("Saved: that was your last pair. Thank you!\n\n" + reveal_text(store.rater_reveal(int(eval_id), who)),
            True, False)


def reveal_text(pairs: list[dict]) -> str:
    """A rater's own pairs, revealed: which model wrote Reply A and Reply B, and the scores given."""
    lines = ["**Which model wrote which:**"]
    for i, pair in enumerate(pairs, start=1):
        lines.append(f"- pair {i} (prompt {pair['position']}): A was **{pair['a_label']}** (you gave "
                     f"{pair['score_a']}), B was **{pair['b_label']}** (you gave {pair['score_b']})")
    return "\n".join(lines)


def raters_page() -> None:
    """The page friends get (its own Blocks): rating only, no Python handler at all."""
    # the evaluation, picked below, decides when the models are revealed: the rater is told on joining
    gr.Markdown("# Rate replies\nTwo assistants answered the same prompt. Rate each reply. Which model wrote "
                "which is shown only once your scores are saved, after each pair or after your last pair, as "
                "the evaluation was set up: you are told which when you start.")
    if sign_in_available():
        gr.Markdown(f"[Sign in with Hugging Face]({HF_ROUTES}login?next=/rate/) to rate under your Hugging Face "
                    "name.")
    evaluation = rating_panel("rater", public=True)
    return evaluation


EVALUATIONS_JS = "() => window.tunerRate.evaluations()"


# --- the raters' plain routes ---------------------------------------------------------------
RATER_COOKIE = "tuner_rater"  # HttpOnly: this browser's key to the names it rates under
RATER_COOKIE_DAYS = 365


class _Refused(Exception):
    """A request the routes answer with `status` and a message that says why."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def rater_api(api, store: Store, rng: random.Random, limits: RaterLimits | None = None) -> None:
    """The raters' actions as plain JSON routes on the FastAPI app (`api`), under RATER_API:
    evaluations (GET), join, next, submit and change (POST). Each is a few ms of SQLite; the
    name comes from this browser's cookie (or its Hugging Face sign-in), never from the body.
    The gate in front (tuner/ui/access.py) has already capped the body, refused other sites
    and limited the address."""
    routes = _RaterRoutes(store, rng, limits or RaterLimits())
    api.add_api_route(RATER_API + "evaluations", routes.evaluations, methods=["GET"], include_in_schema=False)
    for name in ("join", "next", "submit", "change"):
        api.add_api_route(RATER_API + name, routes.answered(getattr(routes, name)), methods=["POST"],
                          include_in_schema=False, name=f"rater_{name}")


class _RaterRoutes:
    def __init__(self, store: Store, rng: random.Random, limits: RaterLimits):
        self.store, self.rng, self.limits = store, rng, limits

    def all_decided(self, eval_id: int) -> bool:
        """Whether every fine-tuned model of the evaluation is decided: the store's answer, which it
        keeps and works out again only when a decision can have changed (Store.undecided_variants)."""
        base, undecided = self.store.undecided_variants(eval_id)
        return base is not None and len(self.store.variants(eval_id)) > 1 and not undecided

    def answered(self, handler):
        """A route: the body read here, then `handler(request, body)` in a worker thread (SQLite
        blocks; the server's event loop must not), its refusals answered with their message."""
        from starlette.concurrency import run_in_threadpool

        async def route(request: Request):
            try:
                body = await self.body_of(request)
                return await run_in_threadpool(handler, request, body)
            except _Refused as exc:
                return JSONResponse({"error": str(exc)}, status_code=exc.status)
            except (RatingError, StorageError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=409)
        return route

    # -- reading a request
    @staticmethod
    async def body_of(request: Request) -> dict:
        try:
            body = await request.json()
        except (ValueError, RecursionError):
            raise _Refused("Send the request as a JSON object (not nested deeply).") from None
        if not isinstance(body, dict):
            raise _Refused("Send the request as a JSON object.")
        return body

    def evaluation_of(self, body: dict) -> int:
        value = body.get("evaluation")
        if value is None or value == "":
            raise _Refused("Choose an evaluation first.")
        if not _whole(value):
            raise _Refused("Choose an evaluation from the list.")
        eval_id = int(value)
        if not self.store.is_open(eval_id):
            raise _Refused("That evaluation is not open for rating: choose one from the list.")
        return eval_id

    def assignment_of(self, body: dict, eval_id: int) -> int | None:
        value = body.get("assignment")
        if value in (None, ""):
            return None
        if not _whole(value) or self.store.evaluation_of_assignment(int(value)) != eval_id:
            raise _Refused("That pair was not served to you in this evaluation; press Next pair.")
        return int(value)

    def rater(self, request: Request, eval_id: int, body: dict) -> str:
        name = body.get("name")
        who = self.store.rater_of(eval_id, request.cookies.get(RATER_COOKIE), hf_username(request),
                                  name if isinstance(name, str) else None)
        if who is None and RATER_COOKIE not in request.cookies and not hf_username(request):
            raise _Refused("This browser sent no rater cookie: it may refuse cookies inside another site's page "
                           "(the Space's page on huggingface.co). Open the raters' link on its own, in a tab of "
                           "its own, and Press Start rating there.")
        if who is None:
            raise _Refused("Press Start rating first (with your name) to get a pair.")
        return who

    # -- answers
    def serve(self, eval_id: int, who: str, joining: bool = False) -> dict:
        """The rater's next pair; `joining`: also say when the models are revealed."""
        pair = self.store.next_pair(eval_id, who, self.rng)
        if pair is None:
            done, total = self.store.progress(eval_id, who)
            return _pair_answer(f"✅ {who}, you have rated all {total} pairs of this evaluation. Thank you!")
        lines = [f"{who} · pair {pair['done'] + 1} of {pair['total']}"]
        if joining:
            lines.append(REVEAL_PROMISES[self.store.reveal_of(eval_id)])
        if self.all_decided(eval_id):
            lines.append(DECIDED_NOTE)
        return _pair_answer("\n\n".join(lines), pair)

    def evaluations(self):
        return {"choices": eval_choices(self.store, open_only=True)}

    def join(self, request: Request, body: dict):
        allowed, wait = self.limits.joins.allow(request_address(request))
        if not allowed:
            raise _Refused(f"Too many sign-ins from this address; try again in {wait:.0f} s.", 429)
        eval_id = self.evaluation_of(body)
        owner_panel = body.get("panel") == "owner" and is_owner(request)
        if not owner_panel:  # the owner's own panel needs no code
            code = body.get("code")
            self.store.check_invite(eval_id, code if isinstance(code, str) else None)
        signed_in, typed = hf_username(request), body.get("name")
        if not signed_in and not isinstance(typed, str):
            raise _Refused("Type your name (text).")
        key, new_key = request.cookies.get(RATER_COOKIE), None
        if not isinstance(key, str) or not 20 <= len(key) <= 100:
            key = new_key = secrets.token_urlsafe(32)
        # the owner's panel is not counted against the owner's address (raters may share it)
        client = "owner's panel" if owner_panel else request_address(request)
        who = self.store.admit(eval_id, signed_in or typed, key, client, signed_in=bool(signed_in), owner=owner_panel)
        response = JSONResponse(self.serve(eval_id, who, joining=True))
        if new_key:
            # inside the Space's page (another site's frame) only a partitioned SameSite=None cookie is
            # kept; other sites' requests are refused by the gate's origin check
            same_site = "SameSite=None; Secure; Partitioned" if is_https(request) else "SameSite=Strict"
            response.headers.append("set-cookie", f"{RATER_COOKIE}={new_key}; Path=/; "
                                    f"Max-Age={RATER_COOKIE_DAYS * 86400}; HttpOnly; {same_site}")
        return response

    def next(self, request: Request, body: dict):
        eval_id = self.evaluation_of(body)
        return JSONResponse(self.serve(eval_id, self.rater(request, eval_id, body)))

    def submit(self, request: Request, body: dict):
        eval_id = self.evaluation_of(body)
        who = self.rater(request, eval_id, body)
        aspects = [*_listed(body.get("aspects_a")), *_listed(body.get("aspects_b"))]
        text, saved, more = _submitted(self.store, self.limits, self.assignment_of(body, eval_id), who, eval_id,
                                       (body.get("a"), body.get("b")), body.get("preference"),
                                       body.get("comment"), aspects)
        if saved and self.all_decided(eval_id) and more:  # (after the last pair: nothing to stop)
            text += "\n\n" + DECIDED_NOTE
        return JSONResponse({"reveal": text})

    def change(self, request: Request, body: dict):
        eval_id = self.evaluation_of(body)
        who = self.rater(request, eval_id, body)
        assignment_id = self.assignment_of(body, eval_id)
        if assignment_id is None:
            return JSONResponse({"reveal": "⚠️ Rate a pair first; then you can change its scores."})
        try:
            changed = self.store.change_scores(assignment_id, who, body.get("a"), body.get("b"))
        except (RatingError, StorageError) as exc:
            return JSONResponse({"reveal": f"⚠️ {exc}"})
        return JSONResponse({"reveal": f"Changed your scores for this pair: Reply A {changed['old_a']} → "
                                       f"{changed['score_a']}, Reply B {changed['old_b']} → {changed['score_b']} "
                                       "(the change is recorded)."})


def _whole(value) -> bool:
    """A whole number as a script might send it (an int or its digits), within reason."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return False
    text = str(value).strip()
    return text.isascii() and text.isdigit() and len(text) <= 12


def _pair_answer(note: str, pair: dict | None = None) -> dict:
    return {"progress": note, "assignment": pair["assignment_id"] if pair else None,
            "prompt": _heading(pair) if pair else "", "a": pair["reply_a"] if pair else "",
            "b": pair["reply_b"] if pair else ""}


def _listed(value) -> list:
    """Three aspect scores from a body (anything else: none given)."""
    return list(value)[:len(ASPECTS)] + [None] * (len(ASPECTS) - len(value)) if isinstance(value, list) \
        else [None] * len(ASPECTS)
