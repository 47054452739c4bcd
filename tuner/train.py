"""In-process LoRA training: one run at a time, in one background thread.

The recipe reads top to bottom: setup (model, data, peft) → train (transformers'
Trainer) → save (adapter, written atomically) → cleanup. The thread talks to
the UI through one `RunState` object: a TrainerCallback writes rows under a
lock, the UI's timer reads a snapshot. Run state lives on the server, so a
page reload shows the live run.

A run folder (`<data root>/runs/<id>/`) holds:
    run.json       the config, and at the end a summary (status, times, losses)
    metrics.jsonl  one JSON object per log event (step, epoch, loss, learning_rate)
    adapter/       the peft adapter
"""

from __future__ import annotations

import copy
import gc
import json
import math
import os
import shutil
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

from tuner import data as tdata
from tuner import models
from tuner.paths import atomic_write_json

FINISHED = ("completed", "stopped")  # a run whose adapter can be used
ENDED = FINISHED + ("failed", "diverged", "interrupted")

# Module names of attention projections, by architecture family; anything else
# falls back to every Linear layer but the output head.
ATTENTION_MODULES = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "phi3": ["qkv_proj", "o_proj"],
    "falcon": ["query_key_value", "dense"],
    "gpt2": ["c_attn", "c_proj"],
    "gpt_neox": ["query_key_value", "dense"],
}


@dataclass
class TrainConfig:
    """One run's settings. Names follow transformers/peft arguments."""

    base_model: str = models.BUNDLED  # bundled name, local folder or Hub id
    dataset: str = ""  # path to a JSONL chat dataset
    r: int = 8  # LoRA rank: capacity of the update; 8 is plenty for style/format
    lora_alpha: int = 16  # update scale is lora_alpha / r; 2 × r is the common choice
    lora_dropout: float = 0.05  # regularises the small datasets this app is for
    target_modules: list[str] | None = None  # None: the architecture's attention projections
    learning_rate: float = 2e-4  # LoRA tolerates ~10× full fine-tuning's rate
    num_train_epochs: float = 3.0  # small sets need several passes
    max_steps: int = -1  # > 0 overrides num_train_epochs
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_seq_length: int = 256  # longer examples are truncated; chat replies here are short
    test_fraction: float = 0.2  # held out for Compare, never trained on
    seed: int = 42
    precision: str = "auto"  # auto: bf16 on a GPU that supports it, else fp32 (see resolve_precision)
    logging_steps: int = 1  # one chart point per optimizer step

    def __post_init__(self):
        problems = []
        if self.r < 1:
            problems.append(f"r must be at least 1 (got {self.r})")
        if self.lora_alpha < 1:
            problems.append(f"lora_alpha must be at least 1 (got {self.lora_alpha})")
        if not 0 <= self.lora_dropout < 1:
            problems.append(f"lora_dropout must be in [0, 1) (got {self.lora_dropout})")
        if not 0 < self.learning_rate <= 0.1:
            problems.append(f"learning_rate must be in (0, 0.1] (got {self.learning_rate})")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            problems.append("set num_train_epochs > 0 or max_steps > 0")
        if self.per_device_train_batch_size < 1:
            problems.append("per_device_train_batch_size must be at least 1")
        if self.gradient_accumulation_steps < 1:
            problems.append("gradient_accumulation_steps must be at least 1")
        if self.max_seq_length < 16:
            problems.append(f"max_seq_length must be at least 16 (got {self.max_seq_length})")
        if not 0 <= self.test_fraction < 1:
            problems.append(f"test_fraction must be in [0, 1) (got {self.test_fraction})")
        if self.precision not in ("auto", "bf16", "fp32"):
            problems.append(f"precision must be auto, bf16 or fp32 (got {self.precision!r})")
        if problems:
            raise ValueError("Invalid training settings: " + "; ".join(problems) + ".")

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown training setting(s): {', '.join(unknown)}")
        return cls(**values)


def detect_target_modules(model) -> tuple[list[str], list[str]]:
    """(attention projections, all linear layers) of a model, by module name."""
    import torch

    linear = sorted({
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head")
    })
    # GPT-2 uses Conv1D for its projections
    try:
        from transformers.pytorch_utils import Conv1D

        linear = sorted(set(linear) | {
            name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, Conv1D)
        })
    except ImportError:
        pass
    family = ATTENTION_MODULES.get(getattr(model.config, "model_type", ""), [])
    attention = [m for m in family if m in linear] or linear
    return attention, linear


def resolve_precision(precision: str) -> str:
    """auto: bf16 on a GPU that supports it; fp32 on a CPU.

    On the 2-core AVX-512-BF16 machines this project runs on, Trainer's CPU bf16
    autocast measured *slower* than fp32 for SmolLM2-135M LoRA at the default
    settings (3.5 s vs 2.1-2.5 s per step, bench/train_step.py), so auto keeps
    fp32 there; bf16 stays available by name.
    """
    import torch

    if precision != "auto":
        return precision
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


@dataclass
class RunState:
    """What the UI shows of the current run; written by the training thread."""

    run_id: str = ""
    status: str = "idle"  # idle, starting, running, then one of ENDED
    message: str = ""
    step: int = 0
    max_steps: int = 0
    started: float = 0.0
    ended: float = 0.0
    rows: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    def progress_line(self, now: float | None = None) -> str:
        if self.status == "idle":
            return "No run yet."
        now = now or time.time()
        elapsed = (self.ended or now) - self.started if self.started else 0.0
        text = f"Run {self.run_id}: {self.status}"
        if self.max_steps:
            text += f" · step {self.step}/{self.max_steps}"
        text += f" · elapsed {_clock(elapsed)}"
        if self.status == "running" and self.step and self.max_steps:
            remaining = elapsed / self.step * (self.max_steps - self.step)
            text += f" · remaining ~{_clock(remaining)}"
        if self.message:
            text += f" · {self.message}"
        return text


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class RunBusy(RuntimeError):
    pass


def new_run_id(config: TrainConfig) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    name = tdata.slug(Path(config.dataset).stem) if config.dataset else "run"
    return f"{stamp}-{name}-{os.urandom(2).hex()}"


class Trainer:
    """Starts, stops and reports on the one training run this process allows."""

    def __init__(self, runs_dir: Path, models_dir: Path):
        self.runs_dir = Path(runs_dir)
        self.models_dir = Path(models_dir)
        self._lock = threading.Lock()
        self._state = RunState()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the UI's side -------------------------------------------------------
    def snapshot(self) -> RunState:
        with self._lock:
            return copy.deepcopy(self._state)

    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, config: TrainConfig) -> str:
        if not config.dataset or not Path(config.dataset).is_file():
            raise ValueError(f"Dataset file not found: {config.dataset or '(none chosen)'}")
        with self._lock:
            if self.busy():
                raise RunBusy(
                    f"Run {self._state.run_id} is still {self._state.status}: "
                    "stop it or wait for it to finish before starting another."
                )
            run_id = new_run_id(config)
            self._state = RunState(run_id=run_id, status="starting", started=time.time(),
                                   message="loading model and data")
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, args=(config, run_id),
                                            name=f"train-{run_id}", daemon=True)
            self._thread.start()
        return run_id

    def stop(self) -> bool:
        if not self.busy():
            return False
        self._stop.set()
        self._update(message="stopping after this step")
        return True

    def runs(self) -> list[dict]:
        """Every run on disk, newest first; one left 'running' by a process that
        died is reported as interrupted."""
        live = self.snapshot().run_id if self.busy() else None
        records = list_runs(self.runs_dir)
        for record in records:
            if record.get("status") in ("running", "starting") and record["run_id"] != live:
                record["status"] = "interrupted"
        return records

    def wait(self, timeout: float | None = None) -> RunState:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.snapshot()

    # --- the training thread's side -------------------------------------------
    def _update(self, **changes) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self._state, key, value)

    def _append(self, row: dict, metrics_file: Path) -> None:
        with self._lock:
            self._state.rows.append(row)
        with open(metrics_file, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    def _run(self, config: TrainConfig, run_id: str) -> None:
        run_dir = self.runs_dir / run_id
        run_dir.mkdir(parents=True)
        record = {"run_id": run_id, "config": asdict(config), "status": "running",
                  "started_at": datetime.now(timezone.utc).isoformat()}
        atomic_write_json(run_dir / "run.json", record)
        try:
            summary = train(config, run_dir, self._stop, self._update, self._append)
            status = summary["status"]
            message = summary.get("message", "")
        except Exception as exc:  # the app must outlive any training error
            status, summary = "failed", {}
            message = _explain(exc)
            (run_dir / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
        finally:
            gc.collect()
        record.update(status=status, summary=summary, message=message,
                      ended_at=datetime.now(timezone.utc).isoformat())
        atomic_write_json(run_dir / "run.json", record)
        self._update(status=status, message=message, summary=summary, ended=time.time())


def _explain(exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if "out of memory" in str(exc).lower():
        text += " — try a smaller batch size or max sequence length."
    return text


class _Reporter:
    """TrainerCallback: metrics rows to RunState and metrics.jsonl; stop and NaN checks."""

    def __new__(cls, *args, **kwargs):
        from transformers import TrainerCallback

        # subclass lazily so importing this module does not import transformers
        class Callback(TrainerCallback):
            def __init__(self, stop, update, append, metrics_file):
                self.stop, self.update, self.append = stop, update, append
                self.metrics_file = metrics_file
                self.diverged = False

            def on_train_begin(self, args, state, control, **kw):
                self.update(status="running", max_steps=state.max_steps, message="")

            def on_step_end(self, args, state, control, **kw):
                self.update(step=state.global_step)
                if self.stop.is_set():
                    control.should_training_stop = True

            def on_log(self, args, state, control, logs=None, **kw):
                logs = logs or {}
                row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
                for key in ("loss", "eval_loss", "learning_rate", "grad_norm"):
                    if key in logs:
                        row[key] = float(logs[key])
                if "loss" in row or "eval_loss" in row:
                    self.append(row, self.metrics_file)
                loss = row.get("loss")
                if loss is not None and not math.isfinite(loss):
                    self.diverged = True
                    control.should_training_stop = True

        return Callback(*args, **kwargs)


def build_dataset(rows: list[dict], tokenizer, max_length: int):
    from datasets import Dataset

    from tuner.chat import encode_example

    encoded = [encode_example(r["messages"], tokenizer, max_length) for r in rows]
    kept = [e for e in encoded if e is not None]
    return Dataset.from_list(kept), len(encoded) - len(kept)


def train(config: TrainConfig, run_dir: Path, stop: threading.Event, update, append,
          models_dir: Path | None = None) -> dict:
    """The recipe. Returns the run's summary; raises on setup errors."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer as HFTrainer
    from transformers import PrinterCallback, TrainingArguments

    from tuner.chat import PadCollator, ensure_chat_template

    # setup
    source = models.resolve(config.base_model, models_dir or run_dir.parent.parent / "models")
    model, tokenizer = models.load(source)
    ensure_chat_template(tokenizer)
    loaded = tdata.load_jsonl(Path(config.dataset))
    train_rows, _test_rows = tdata.split(loaded.rows, config.test_fraction, config.seed)
    if not train_rows:
        raise ValueError(f"{Path(config.dataset).name}: no training rows left after the split")
    dataset, dropped = build_dataset(train_rows, tokenizer, config.max_seq_length)
    if len(dataset) == 0:
        raise ValueError("every example lost its assistant reply to truncation: raise max_seq_length")
    train_tokens = sum(len(ids) for ids in dataset["input_ids"])
    attention, _linear = detect_target_modules(model)
    targets = config.target_modules or attention
    model = get_peft_model(model, LoraConfig(
        r=config.r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=targets, task_type="CAUSAL_LM"))
    trainable, total = model.get_nb_trainable_parameters()
    precision = resolve_precision(config.precision)
    args = TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        logging_steps=config.logging_steps,
        seed=config.seed,
        bf16=precision == "bf16",
        use_cpu=not torch.cuda.is_available(),
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_pin_memory=False,
    )
    reporter = _Reporter(stop, update, append, run_dir / "metrics.jsonl")
    trainer = HFTrainer(model=model, args=args, train_dataset=dataset,
                        data_collator=PadCollator(tokenizer.pad_token_id), callbacks=[reporter])
    trainer.remove_callback(PrinterCallback)  # the chart and metrics.jsonl show the logs
    # train
    result = trainer.train()
    # save: built aside, then renamed, so adapter/ is whole or absent
    tmp = run_dir / ".adapter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, run_dir / "adapter")
    status = "diverged" if reporter.diverged else ("stopped" if stop.is_set() else "completed")
    summary = {
        "status": status,
        "train_runtime": round(result.metrics.get("train_runtime", 0.0), 2),
        "global_step": result.global_step,
        "final_loss": _last_loss(run_dir / "metrics.jsonl"),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": round(100 * trainable / total, 4),
        "precision": precision,
        "target_modules": list(targets),
        "train_examples": len(dataset),
        "train_tokens": train_tokens,
        # mean useful (non-padding) tokens per optimizer step over an epoch
        "train_tokens_per_step": round(train_tokens / math.ceil(
            len(dataset) / (config.per_device_train_batch_size * config.gradient_accumulation_steps)), 1),
        "dropped_examples": dropped,
        "base_model": config.base_model,
    }
    if reporter.diverged:
        summary["message"] = "the loss became NaN or infinite: lower the learning rate"
    # cleanup
    del trainer, model
    gc.collect()
    return summary


def _last_loss(metrics_file: Path) -> float | None:
    last = None
    if metrics_file.is_file():
        for line in metrics_file.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if "loss" in row:
                last = row["loss"]
    return last


def list_runs(runs_dir: Path) -> list[dict]:
    """Every run's run.json, newest first."""
    runs = []
    for path in sorted(Path(runs_dir).glob("*/run.json"), reverse=True):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        record["path"] = str(path.parent)
        runs.append(record)
    return runs


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
