"""The training recipe, on transformers' Trainer and peft, in phases read top to
bottom: setup (model, data, peft) → train → save (adapter/) → summary. The phases a
preference run (tuner.preference) shares with it are tuner.phases'.

`train()` runs one run to its end in the calling thread and reports through a
`RunControl` (stop flag, state updates, metric rows). `tuner.runs.RunManager`
runs it in a background thread for the UI; `python -m tuner train` runs it in
the foreground. What it writes in the run folder (`<data root>/runs/<id>/`) is
described, and read back, by tuner.records.
"""

from __future__ import annotations

import gc
import math
import time
from pathlib import Path

from tuner import data as tdata
from tuner import cross_entropy, models, packed_attention, preference, records
from tuner.config import PREFERENCE_METHODS, TrainConfig
from tuner.phases import (RunControl, Setup, Training, detect_target_modules, load_base, peft_config,
                          reporting_callback, resolve_precision, resume_point, skip_adapter_input_casts,
                          training_kwargs)


# Packed rows and the head's kept positions are rounded up to a multiple of this, so
# matmul shapes repeat across steps (see PackCollator); at most 63 pad tokens a row.
PACK_MULTIPLE = 64


def check_machine(config: TrainConfig) -> None:
    """Refuse what this machine cannot do, saying what to change."""
    import importlib.util

    import torch

    if config.method == "qlora":
        if not torch.cuda.is_available():
            raise ValueError("QLoRA loads the base model in 4 bits through bitsandbytes, which needs a "
                             "CUDA GPU; this machine has none. Choose method 'lora' instead.")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError("QLoRA needs the bitsandbytes package: pip install bitsandbytes")
    if resolve_precision(config.precision) == "fp16" and not torch.cuda.is_available():
        raise ValueError("fp16 training needs a GPU; choose precision 'auto' or 'fp32' on a CPU.")


def accepts_logits_to_keep(model) -> bool:
    """Whether the (peft-wrapped) causal LM slices hidden states before its head
    (`logits_to_keep`) and its loss takes pre-shifted targets (`shift_labels`)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        accepts = "logits_to_keep" in inspect.signature(base.forward).parameters
        loss_params = inspect.signature(base.loss_function).parameters
    except (AttributeError, ValueError, TypeError):
        return False
    return accepts and "shift_labels" in loss_params


def encode_rows(rows: list[dict], tokenizer, max_length: int):
    from datasets import Dataset

    from tuner.chat import encode_example

    encoded = [encode_example(r["messages"], tokenizer, max_length) for r in rows]
    kept = [e for e in encoded if e is not None]
    return Dataset.from_list(kept), len(encoded) - len(kept)


def train(config: TrainConfig, run_dir: Path, control: RunControl | None = None,
          models_dir: Path | None = None, resume: bool = False) -> dict:
    """The recipe, in phases: setup → train → save → summary. Returns the run's
    summary; raises on setup errors."""
    import torch

    control = control or RunControl()
    run_dir = Path(run_dir)
    check_machine(config)
    started = time.perf_counter()
    models_dir = models_dir or run_dir.parent.parent / "models"
    if config.method in PREFERENCE_METHODS:  # DPO or KTO on TRL's trainers, the same phases
        setup = preference.set_up(config, run_dir, models_dir, control)
        training = preference.make_trainer(config, run_dir, setup, control, resume)
    else:
        setup = set_up(config, run_dir, models_dir, control)
        training = make_trainer(config, run_dir, setup, control, resume)
    try:
        training.trainer.train(resume_from_checkpoint=str(training.checkpoint) if training.checkpoint else None)
    except torch.OutOfMemoryError as exc:
        del training, setup  # the model and its optimizer state, before the cache is emptied
        raise out_of_memory(exc) from None
    if training.per_example:
        packed_attention.restore_sdpa(setup.model)
    if training.trainer.is_world_process_zero():
        save_adapter(run_dir, setup)
    summary = summarize(config, run_dir, setup, training, control, started)
    del training, setup
    gc.collect()
    return summary


# --- setup: model, data, peft ----------------------------------------------------------------
def set_up(config: TrainConfig, run_dir: Path, models_dir: Path, control: RunControl) -> Setup:
    """The base model with its adapter added, and the dataset split, held out and encoded."""
    from peft import get_peft_model

    source = models.resolve(config.base_model, models_dir)
    precision = resolve_precision(config.precision)
    model, tokenizer = load_base(config, source, precision)
    parts, train_set, eval_set, dropped = load_splits(config, run_dir, tokenizer)
    targets = config.target_modules or detect_target_modules(model)[0]
    # autocast_adapter_dtype: the adapters are fp32 even over a bf16 base, so their updates are not rounded away
    model = get_peft_model(model, peft_config(config, targets, source.location), autocast_adapter_dtype=True)
    trainable, total = model.get_nb_trainable_parameters()
    control.update(message=f"training {trainable:,} of {total:,} parameters")
    return Setup(precision, model, tokenizer, parts, train_set, eval_set, dropped, targets, trainable, total)


def load_splits(config: TrainConfig, run_dir: Path, tokenizer):
    """(parts, train_set, eval_set, dropped): the dataset split as configured, its held-out
    rows written to the run folder, the training and validation rows encoded."""
    rows = tdata.load_jsonl(Path(config.dataset)).rows
    parts = tdata.splits(rows, config.validation_fraction, config.test_fraction, config.seed, config.stratify_by)
    if not parts["train"]:
        raise ValueError(f"{Path(config.dataset).name}: no training rows left after the split")
    records.write_held_out(run_dir, parts)
    train_set, dropped = encode_rows(parts["train"], tokenizer, config.max_seq_length)
    if len(train_set) == 0:
        raise ValueError("every example lost its assistant reply to truncation: raise max_seq_length")
    eval_set, _ = encode_rows(parts["validation"], tokenizer, config.max_seq_length)
    return parts, train_set, eval_set, dropped


# --- train ---------------------------------------------------------------------------------------
def make_trainer(config: TrainConfig, run_dir: Path, setup: Setup, control: RunControl, resume: bool) -> Training:
    """The Trainer over the set-up model and rows; for a resumed run, the checkpoint it continues from."""
    from transformers import PrinterCallback, Trainer

    collator, packing, per_example = make_collator(config, setup.model, setup.tokenizer)
    if setup.precision in ("bf16", "fp16") and config.method != "qlora" and not config.use_dora:
        skip_adapter_input_casts(setup.model)
    chunked_loss = cross_entropy.use_for_training(setup.model)  # on a CPU: the loss without fp32 logits
    has_eval = len(setup.eval_set) > 0
    reporter = reporting_callback(control, run_dir, collator)
    trainer = Trainer(model=setup.model, args=training_arguments(config, run_dir, setup.precision, has_eval, packing),
                      train_dataset=setup.train_set, eval_dataset=setup.eval_set if has_eval else None,
                      data_collator=collator, callbacks=[reporter])
    trainer.remove_callback(PrinterCallback)  # the chart and metrics.jsonl show the logs
    return Training(trainer, reporter, packing, per_example, resume_point(run_dir) if resume else None,
                    chunked_loss)


def make_collator(config: TrainConfig, model, tokenizer):
    """(collator, packing, per_example): how rows become batches."""
    from tuner.chat import PackCollator, PadCollator

    # prompt tuning prepends virtual tokens to each row and ignores position_ids,
    # so packed examples would see each other: it trains on padded batches
    packing = config.packing and config.method != "prompt_tuning"
    # packed rows: attention per example (no total × total mask), see tuner.packed_attention
    per_example = packing and packed_attention.use_for_packed_training(model)
    # logits and loss on the assistant's tokens only, where the model can slice before its head
    collator = (PackCollator(labelled_logits_only=accepts_logits_to_keep(model), boundaries=per_example,
                             multiple_of=PACK_MULTIPLE, pad_token_id=tokenizer.pad_token_id)
                if packing else PadCollator(tokenizer.pad_token_id))
    return collator, packing, per_example


def training_arguments(config: TrainConfig, run_dir: Path, precision: str, has_eval: bool, packing: bool):
    from transformers import TrainingArguments

    return TrainingArguments(**training_kwargs(config, run_dir, precision, has_eval, packing))


def out_of_memory(exc: Exception) -> MemoryError:
    """The error to raise for a step that ran out of memory, once what it held is freed."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return MemoryError(f"out of memory ({exc}); try a smaller batch size or max sequence length")


# --- save ------------------------------------------------------------------------------------------
def save_adapter(run_dir: Path, setup: Setup) -> None:
    """adapter/: the trained adapter and the tokenizer it was trained with. Main process only."""

    def save(folder: Path) -> None:
        # a preference run's model also holds TRL's frozen copy of its start ("ref"): not saved
        setup.model.save_pretrained(folder, selected_adapters=["default"])
        setup.tokenizer.save_pretrained(folder)

    records.write_adapter(run_dir, save)


# --- summary ---------------------------------------------------------------------------------------
def tokens_per_epoch(setup: Setup) -> int | None:
    """The encoded training rows' tokens; None for a preference run (TRL encodes its own rows)."""
    if "input_ids" not in setup.train_set.column_names:
        return None
    return sum(len(x) for x in setup.train_set["input_ids"])


def train_tokens(setup: Setup, training: Training, from_epoch: float = 0.0) -> int:
    """The tokens this process trained on: the encoded training rows × the epochs it did (a
    resumed run's from its checkpoint's epoch on), or for a preference run the tokens its
    trainer counted (TRL counts from zero in each process)."""
    per_epoch = tokens_per_epoch(setup)
    if per_epoch is None:
        return training.reporter.tokens_seen
    return round(per_epoch * max(0.0, (training.trainer.state.epoch or 0) - from_epoch))


def segment_figures(setup: Setup, training: Training, runtime: float) -> dict:
    """What this process trained (records.finish_segment keeps it with the run's other
    segments): from which step and epoch to which, in how long, on how many tokens."""
    state = training.trainer.state
    from_step, from_epoch = training.reporter.began_at  # (the checkpoint itself may be rotated out by now)
    began, ended = training.reporter.loop
    return {"from_step": from_step, "to_step": state.global_step, "from_epoch": from_epoch,
            "to_epoch": round(state.epoch or 0.0, 4), "train_runtime": runtime,
            "loop_runtime": round(ended - began, 2) if began and ended else None,
            "train_tokens": train_tokens(setup, training, from_epoch), "tokens_per_epoch": tokens_per_epoch(setup)}


def summarize(config: TrainConfig, run_dir: Path, setup: Setup, training: Training, control: RunControl,
              started: float) -> dict:
    """The run's summary, for run.json: how it ended, its losses and speed, what it trained on."""
    metrics = records.read_metrics(run_dir)
    losses = [m["loss"] for m in metrics if "loss" in m]
    evals = [m["eval_loss"] for m in metrics if "eval_loss" in m and math.isfinite(m["eval_loss"])]
    speeds = [m["tokens_per_second"] for m in metrics if "tokens_per_second" in m]
    state = training.trainer.state
    diverged = training.reporter.diverged
    segment = segment_figures(setup, training, round(time.perf_counter() - started, 2))
    summary = {
        "status": "diverged" if diverged else ("stopped" if control.stop.is_set() else "completed"),
        # this process's time (loading, evaluations and checkpoints included) and tokens; in
        # run.json the sums over every segment of a stopped and resumed run (records.finish_segment)
        "train_runtime": segment["train_runtime"],
        "global_step": state.global_step,
        "max_steps": state.max_steps,
        "final_loss": losses[-1] if losses else None,
        "best_eval_loss": min(evals) if evals else None,
        "trainable_params": setup.trainable,
        "total_params": setup.total,
        "trainable_percent": round(100 * setup.trainable / setup.total, 4),
        "tokens_per_second": round(sum(speeds) / len(speeds), 1) if speeds else None,
        # the training split's tokens × the epochs done: with train_runtime the rate an estimate needs
        "train_tokens": segment["train_tokens"],
        "precision": setup.precision,
        # processes that trained together (accelerate launch / torchrun: data parallel), 1 alone
        "world_size": training.trainer.args.world_size,
        "packing": training.packing,
        # attention of packed rows: per example (tuner.packed_attention) with its kernel, or the model's own
        "attention": (f"per example ({', '.join(sorted(packed_attention.kernels_used)) or 'no forward pass'})"
                      if training.per_example
                      else getattr(setup.model.get_base_model().config, "_attn_implementation", None)),
        # the causal-LM loss (DPO and KTO: TRL's log-probabilities): in row chunks (tuner.cross_entropy),
        # or transformers' own (TRL's fused LM head)
        "loss": (preference.scoring_paths() if config.method in ("dpo", "kto")
                 else "chunked" if training.chunked_loss else "transformers"),
        "method": config.method,
        "target_modules": list(setup.targets) if config.method != "prompt_tuning" else [],
        "train_examples": len(setup.train_set),
        "validation_examples": len(setup.eval_set),
        "test_examples": len(setup.parts["test"]),
        "dropped_examples": setup.dropped,
        "base_model": config.base_model,
        "segment": segment,
    }
    if diverged:
        summary["message"] = "the loss became NaN or infinite: lower the learning rate or add warmup"
    return summary
