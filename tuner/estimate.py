"""Before Start: how many parameters a config trains and roughly how long it takes."""

from __future__ import annotations

import functools
from pathlib import Path

from tuner import data as tdata
from tuner import models, recipes
from tuner.config import TrainConfig, optimizer_steps, steps_per_epoch
from tuner.phases import count_parameters, detect_target_modules, meta_model

# Throughput guess when no past run of the model exists: LoRA training costs
# about 4-6 × parameters FLOPs per token; these CPUs sustain ~100 GFLOP/s fp32.
CPU_FLOPS = 1.0e11


@functools.lru_cache(maxsize=8)
def module_choices(location: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(attention preset, all linear layers) for a model folder or Hub id."""
    attention, linear = detect_target_modules(meta_model(location))
    return tuple(attention), tuple(linear)


@functools.lru_cache(maxsize=16)
def _dataset_tokens(dataset: str, mtime: float, location: str, validation_fraction: float,
                    test_fraction: float, seed: int, max_length: int, stratify: str | None = None) -> tuple[int, int]:
    from transformers import AutoTokenizer

    from tuner.chat import encode_example, ensure_chat_template

    tokenizer = AutoTokenizer.from_pretrained(location)
    ensure_chat_template(tokenizer)
    rows = tdata.load_jsonl(Path(dataset)).rows
    train = tdata.splits(rows, validation_fraction, test_fraction, seed, stratify)["train"]
    encoded = [encode_example(r["messages"], tokenizer, max_length) for r in train]
    kept = [e for e in encoded if e is not None]
    return len(kept), sum(len(e["input_ids"]) for e in kept)


def human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


def training_rows(config: TrainConfig, location: str) -> tuple[int, int]:
    """(rows, tokens) a run trains on: the split's training rows that keep a reply after
    truncation to max_seq_length, as the run encodes them with the model's tokenizer."""
    return _dataset_tokens(config.dataset, Path(config.dataset).stat().st_mtime, location,
                           config.validation_fraction, config.test_fraction, config.seed,
                           config.max_seq_length, config.stratify_by)


def estimate(config: TrainConfig, models_dir: Path, past_runs: list[dict]) -> dict:
    source = models.resolve(config.base_model, models_dir)
    trainable, total = count_parameters(config, source.location)
    rows, tokens = training_rows(config, source.location)
    steps = optimizer_steps(config, rows)
    epochs = steps / steps_per_epoch(config, rows) if config.max_steps > 0 else config.num_train_epochs
    speed, whole_run = measured_speed(config, past_runs)
    speed = speed or CPU_FLOPS / (6 * total)
    seconds = tokens * epochs / speed
    if not whole_run:  # a step rate leaves out loading, evaluations and checkpoints
        held = config.validation_fraction / max(0.1, 1 - config.validation_fraction - config.test_fraction)
        seconds += overhead_seconds(config, steps, tokens * held, speed, total)
    return {"trainable": trainable, "total": total, "percent": 100 * trainable / total,
            "train_rows": rows, "steps": steps, "seconds": seconds, "tokens_per_second": speed,
            "measured": speed is not None and bool(past_runs_of(config, past_runs))}


def suggest(dataset: str, base_model: str, models_dir: Path, method: str = "lora",
            modules: list[str] | None = None) -> recipes.Suggestion:
    """Suggest settings (recipes.suggest) whose message counts the steps as the estimate
    does: over the training rows the split leaves and truncation keeps, read with the
    model's tokenizer."""
    rows = tdata.load_jsonl(Path(dataset)).rows
    first = recipes.suggest(rows, modules, method)
    config = TrainConfig.from_dict(dict(first.train, dataset=str(dataset), base_model=base_model))
    kept, _tokens = training_rows(config, models.resolve(base_model, models_dir).location)
    return first if kept == first.train_rows else recipes.suggest(rows, modules, method, train_rows=kept)


def past_runs_of(config: TrainConfig, past_runs: list[dict]) -> list[dict]:
    """Finished past runs of the same base model and method, newest first."""
    return [r for r in past_runs if r.get("config", {}).get("base_model") == config.base_model
            and r.get("config", {}).get("method", "lora") == config.method
            and (r.get("summary") or {}).get("tokens_per_second")]


def measured_speed(config: TrainConfig, past_runs: list[dict]) -> tuple[float | None, bool]:
    """(tokens/s, whether that rate covers the whole run). The newest past run that
    recorded its tokens gives tokens over its whole runtime (loading, evaluations and
    checkpoints included: the step rate alone made estimates half the real time);
    an older run gives only its step rate."""
    runs = past_runs_of(config, past_runs)
    for run in runs:
        s = run["summary"]
        if s.get("train_tokens") and s.get("train_runtime"):
            return s["train_tokens"] / s["train_runtime"], True
    return (runs[0]["summary"]["tokens_per_second"], False) if runs else (None, False)


def overhead_seconds(config: TrainConfig, steps: int, validation_tokens: float, speed: float,
                     total_params: int) -> float:
    """What a step rate leaves out: loading the model (~1 s per 100M parameters from the
    cache, at least 3 s), the validation passes (forward only: ~a third of a training
    token's cost, at the same rate) and the checkpoints (~1 s each)."""
    load = max(3.0, total_params / 1e8)
    evals = steps // max(1, config.eval_steps) + 1 if config.validation_fraction > 0 else 0
    saves = steps // max(1, config.save_steps) + 1
    return load + evals * validation_tokens / (3 * speed) + saves


def describe(est: dict) -> str:
    basis = "measured on this machine's last run" if est["measured"] else "a rough guess until a run is measured"
    minutes = est["seconds"] / 60
    when = f"~{minutes:.0f} min" if minutes >= 1.5 else f"~{est['seconds']:.0f} s"
    return (f"**Trainable:** {human(est['trainable'])} of {human(est['total'])} parameters "
            f"({est['percent']:.2f}%) · {est['train_rows']} training rows · {est['steps']} steps · "
            f"**estimated time {when}** ({est['tokens_per_second']:.0f} tokens/s, {basis})")
