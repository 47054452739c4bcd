"""Hugging Face ZeroGPU: a GPU lent to one function call at a time.

On a Space with ZeroGPU hardware (`SPACES_ZERO_GPU=true`, the `spaces` package
installed by the platform) a GPU is attached only while a function decorated with
`@spaces.GPU(duration=…)` runs. The call runs in a forked worker process: its
arguments and its result are pickled across, and nothing it changes in memory comes
back. So a step that needs the GPU is a function of plain values that returns plain
values; training reports through its run folder (metrics.jsonl, read by a relay thread
here) and is told to stop through a file (RUN/stop-requested), not through callbacks
and a threading.Event.

The duration asked for is what each visitor's daily quota is charged (reserved time,
not the time used) and what the scheduler weighs; a call still running at its end is
cut off. Tuner asks for its own estimate plus a margin, at most `max_seconds()`.

Everywhere else (a CPU Space, a GPU Space, a laptop) `on_gpu(fn, …)` is `fn` itself:
the `spaces` package is imported only where ZeroGPU is on.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import threading
from pathlib import Path

STOP_FILE = "stop-requested"
DEFAULT_MAX_SECONDS = 300  # the cap Tuner asks for unless TUNER_ZEROGPU_MAX_S says otherwise
MARGIN = 1.5  # estimates are rough: ask for half as much again (a run cut off mid-way is worse)
MIN_SECONDS = 30
QUOTA_NOTE = ("On this ZeroGPU Space each call reserves the GPU for the duration it asks, and that is what "
              "your daily ZeroGPU quota is charged (at the time of writing 2 min a day without signing in, "
              "3.5 min with a free Hugging Face account, 25 min with PRO; https://huggingface.co/docs/hub/"
              "spaces-zerogpu). A call still running when its duration ends is stopped.")


def enabled(env: dict | None = None) -> bool:
    """True on a ZeroGPU Space: the platform's flag is set and its `spaces` package is there."""
    env = os.environ if env is None else env
    flag = (env.get("SPACES_ZERO_GPU") or "").lower() in ("1", "t", "true")
    return flag and importlib.util.find_spec("spaces") is not None


def max_seconds(env: dict | None = None) -> int:
    env = os.environ if env is None else env
    raw = env.get("TUNER_ZEROGPU_MAX_S", "")
    try:
        value = int(raw) if raw else DEFAULT_MAX_SECONDS
    except ValueError:
        raise ValueError(f"TUNER_ZEROGPU_MAX_S must be a whole number of seconds (got {raw!r})") from None
    if value < MIN_SECONDS:
        raise ValueError(f"TUNER_ZEROGPU_MAX_S must be at least {MIN_SECONDS} s (got {value})")
    return value


def duration_for(estimated_s: float, env: dict | None = None) -> int:
    """Seconds to ask for a step estimated at `estimated_s`: with a margin, rounded up to
    10 s, within [MIN_SECONDS, max_seconds()]."""
    asked = math.ceil(max(MIN_SECONDS, estimated_s * MARGIN) / 10) * 10
    return int(min(asked, max_seconds(env)))


def too_long(estimated_s: float, env: dict | None = None) -> str | None:
    """Why a step estimated at `estimated_s` cannot run within one ZeroGPU call, or None."""
    cap = max_seconds(env)
    if estimated_s * MARGIN <= cap:
        return None
    return (f"This run is estimated at ~{estimated_s / 60:.1f} min; one ZeroGPU call here may last at most "
            f"{cap} s (TUNER_ZEROGPU_MAX_S). Train fewer steps or rows, or run it on a Space with a "
            "dedicated GPU or on your own machine (`python -m tuner train`).")


def generation_seconds(rows: int, max_new_tokens: int, tokens_per_s: float = 400.0, load_s: float = 20.0) -> float:
    """A rough time for generating `rows` replies of up to `max_new_tokens` on a lent GPU:
    loading the model into the worker, then batched decoding (rows of a batch share steps)."""
    steps = max_new_tokens * math.ceil(rows / 20)  # Tuner decodes 20 rows a batch by default
    return load_s + steps * 20 / tokens_per_s


def on_gpu(fn, duration):
    """`fn` to run inside `@spaces.GPU(duration=duration)` on ZeroGPU (duration: seconds, or a
    function of fn's arguments giving them); `fn` itself elsewhere."""
    if not enabled():
        return fn
    import spaces  # present on ZeroGPU Spaces only

    return spaces.GPU(duration=duration)(fn)


def in_forked_process(fn, seconds):
    """What a ZeroGPU call does, without the GPU: `fn` runs in a forked process, its
    arguments and its result pickled across, cut off after `seconds` (TimeoutError).
    For trying the ZeroGPU path on any Linux machine (and for the tests)."""
    import multiprocessing
    import pickle

    def call(*args, **kwargs):
        context = multiprocessing.get_context("fork")
        receive, send = context.Pipe(duplex=False)
        payload = pickle.dumps((args, kwargs))  # as ZeroGPU sends them: refused here if they cannot cross

        def child():
            try:
                a, k = pickle.loads(payload)
                send.send(("ok", fn(*a, **k)))
            except BaseException as exc:  # noqa: BLE001 (everything goes back to the caller)
                send.send(("error", exc))

        worker = context.Process(target=child, daemon=True)
        worker.start()
        send.close()
        limit = seconds(*args, **kwargs) if callable(seconds) else seconds
        if not receive.poll(limit):
            worker.terminate()
            worker.join(5)
            raise TimeoutError(f"the GPU call ran past its {limit} s and was stopped")
        try:
            kind, value = receive.recv()
        except EOFError:  # it died (killed, out of memory) or its error could not be pickled
            worker.join(5)
            raise RuntimeError(f"the GPU worker ended without an answer (exit code {worker.exitcode})") from None
        worker.join(5)
        if kind == "error":
            raise value
        return value

    return call


# --- training across the process boundary ------------------------------------------------------
class StopFile:
    """A stop flag a forked worker can see: set() writes RUN/stop-requested, is_set() looks
    for it (the training callback asks once a step)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / STOP_FILE

    def set(self) -> None:
        self.path.touch()

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def is_set(self) -> bool:
        return self.path.exists()


class MetricsRelay:
    """Follows RUN/metrics.jsonl from this process while another one trains and hands each
    new row to `append` (as the in-process callback would), and a set `stop` on to the
    run's StopFile. `close()` reads what is left."""

    def __init__(self, run_dir: Path, append, update, stop: threading.Event, every: float = 0.5):
        self.metrics = Path(run_dir) / "metrics.jsonl"
        self.stop_file = StopFile(run_dir)
        self.append, self.update, self.stop, self.every = append, update, stop, every
        # rows already in the file (a resumed run's, up to its checkpoint) are the caller's already
        self._offset, self._inode, self._last_step, self._skip_through = 0, None, -1, None
        with contextlib.suppress(FileNotFoundError):
            stat = self.metrics.stat()
            self._offset, self._inode = stat.st_size, stat.st_ino
            self._last_step = max((json.loads(line).get("step", -1) for line in
                                   self.metrics.read_text().splitlines() if line.strip()), default=-1)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="zerogpu-metrics", daemon=True)

    def start(self) -> MetricsRelay:
        self._thread.start()
        return self

    def _follow(self) -> None:
        while not self._done.wait(self.every):
            self.read()
            if self.stop.is_set():
                self.stop_file.set()

    def read(self) -> None:
        try:
            with self.metrics.open("rb") as f:
                stat = os.fstat(f.fileno())
                if stat.st_ino != self._inode or stat.st_size < self._offset:
                    # new, or replaced (a resumed run's rows cut back to its checkpoint): read it
                    # from the start, leaving out the steps delivered already
                    if self._inode is not None:
                        self._skip_through = self._last_step
                    self._inode, self._offset = stat.st_ino, 0
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        complete = chunk[:chunk.rfind(b"\n") + 1]  # a row still being written waits for the next read
        self._offset += len(complete)
        for line in complete.decode("utf-8", "replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if not isinstance(row, dict):
                continue
            step = row.get("step")
            if isinstance(step, int) and self._skip_through is not None and step <= self._skip_through:
                continue
            self.append(row)
            if isinstance(step, int):
                self._last_step = max(self._last_step, step)
                self.update(status="running", step=step)

    def close(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.read()
