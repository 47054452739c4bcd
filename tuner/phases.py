"""The phases every training run shares, whatever its method: the precision it trains in,
the base model loaded, the adapter's target modules and its parameter counts, the
Trainer's arguments, its reporting callback and the checkpoint a resumed run continues
from; and what the phases hand on (`Setup`, `Training`) and report through (`RunControl`).

tuner.train runs supervised runs with them (and dispatches DPO and KTO to
tuner.preference, which runs them too); tuner.estimate counts parameters with them.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tuner import models, records
from tuner.config import TrainConfig


@dataclass
class RunControl:
    """How a running recipe talks to whoever started it."""

    stop: threading.Event = field(default_factory=threading.Event)
    update: callable = lambda **changes: None  # RunState fields: status, step, max_steps, message
    append: callable = lambda row: None  # one metrics row, already written to metrics.jsonl


@dataclass
class Setup:
    """What the setup phase hands on: the peft-wrapped model, its tokenizer, the splits."""

    precision: str  # resolved: fp32, bf16 or fp16
    model: object
    tokenizer: object
    parts: dict[str, list[dict]]  # the split rows: train, validation, test
    train_set: object  # encoded datasets.Dataset
    eval_set: object
    dropped: int  # training rows whose assistant reply truncation removed
    targets: list[str]
    trainable: int
    total: int


@dataclass
class Training:
    """What the train phase runs: the Trainer, and how its batches were made."""

    trainer: object
    reporter: object
    packing: bool
    per_example: bool  # packed rows attend per example (tuner.packed_attention)
    checkpoint: Path | None  # what a resumed run continues from
    chunked_loss: bool = False  # the loss in row chunks (tuner.cross_entropy)


# --- precision ------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """How many times faster this CPU multiplies bf16 matrices than fp32 ones,
    measured once per process (~0.2 s) on a matmul of a small model's shape.

    CPU flags do not answer it: on a 2-core AVX-512-BF16 Xeon (no AMX) oneDNN's
    bf16 matmuls ran slower than MKL's fp32 ones and SmolLM2 LoRA steps with a bf16
    base slower still, while an AMD EPYC with the same flags measured bf16 matmuls
    several times faster than fp32 (figures: docs/performance.md). Without native bf16 instructions torch emulates bf16:
    no faster than fp32."""
    import torch

    try:
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    except AttributeError:  # an older torch
        native = False
    if not native:
        return 0.0
    best = {}
    for _ in range(3):  # interleaved, best of three: a busy machine slows both alike
        for dtype in (torch.float32, torch.bfloat16):
            a = torch.randn(1024, 1024, dtype=dtype)
            b = torch.randn(1024, 1536, dtype=dtype)
            torch.matmul(a, b)
            start = time.perf_counter()
            for _ in range(4):
                torch.matmul(a, b)
            best[dtype] = min(best.get(dtype, math.inf), time.perf_counter() - start)
    return best[torch.float32] / best[torch.bfloat16]


def resolve_precision(precision: str) -> str:
    """auto: bf16 on a GPU that supports it, fp16 on an older GPU; on a CPU, bf16
    only where its bf16 matmuls measure at least twice as fast as fp32
    (`cpu_bf16_speedup`), else fp32.

    bf16 means: the frozen base weights are loaded in bf16 (half the memory, bf16
    matmuls), the trainable adapter weights and their optimizer state stay fp32
    (peft's autocast_adapter_dtype), and the step runs under autocast, so the
    adapters' matmuls are bf16 too and the loss is fp32. (Autocast over an fp32
    base re-casts every weight at every step: measured slower than fp32 under
    Trainer, bench/train_step.py; over a bf16 base it casts only the small
    adapters.) Compare on your machine with bench/train_speed.py
    --tuner-set precision=fp32 / precision=bf16.
    """
    import torch

    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_bf16_speedup() >= 2.0 else "fp32"


# --- the model and its adapter --------------------------------------------------------------------
# Module names of attention projections, by architecture; anything else falls
# back to every linear layer but the output head.
ATTENTION_MODULES = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "phi3": ["qkv_proj", "o_proj"],
    "falcon": ["query_key_value", "dense"],
    "gpt_neox": ["query_key_value", "dense"],
    "gpt2": ["c_attn"],
}


def detect_target_modules(model) -> tuple[list[str], list[str]]:
    """(attention projections, all linear layers) of a model, by module name."""
    import torch
    from transformers.pytorch_utils import Conv1D  # GPT-2's projections

    linear = sorted({
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, Conv1D)) and "lm_head" not in name
    })
    family = ATTENTION_MODULES.get(getattr(model.config, "model_type", ""), [])
    attention = [m for m in family if m in linear] or linear
    return attention, linear


def meta_model(location: str):
    """The model's architecture with no weights: for module names and parameter counts."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(location)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def peft_config(config: TrainConfig, targets: list[str], tokenizer_location: str):
    from peft import LoraConfig, PromptTuningConfig, PromptTuningInit

    if config.method == "prompt_tuning":
        text = config.prompt_tuning_init_text.strip()
        return PromptTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=config.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT if text else PromptTuningInit.RANDOM,
            prompt_tuning_init_text=text or None,
            tokenizer_name_or_path=tokenizer_location if text else None)
    return LoraConfig(r=config.r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, use_dora=config.use_dora, use_rslora=config.use_rslora,
                      task_type="CAUSAL_LM")


def count_parameters(config: TrainConfig, location: str) -> tuple[int, int]:
    """(trainable, total) parameters for a config, from a weightless model: instant."""
    from peft import get_peft_model

    model = meta_model(location)
    targets = config.target_modules or detect_target_modules(model)[0]
    peft_model = get_peft_model(model, peft_config(config, targets, location))
    return peft_model.get_nb_trainable_parameters()


def load_base(config: TrainConfig, source: models.ModelSource, precision: str):
    """(model, tokenizer) of the base model, in the precision (or 4 bits) the run trains over."""
    import torch
    from peft import prepare_model_for_kbit_training

    from tuner.chat import ensure_chat_template

    load_kwargs = {}
    if precision == "bf16" and config.method != "qlora":
        # frozen base weights in bf16; get_peft_model keeps the adapters in fp32
        load_kwargs["dtype"] = torch.bfloat16
    if config.method == "qlora":
        from transformers import BitsAndBytesConfig

        load_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    model, tokenizer = models.load(source, **load_kwargs)
    ensure_chat_template(tokenizer)
    model.config.use_cache = False  # a KV cache in training also disables packed-sequence masks
    if config.method == "qlora":
        model = prepare_model_for_kbit_training(model)
    return model, tokenizer


# --- the trainer ----------------------------------------------------------------------------------
def training_kwargs(config: TrainConfig, run_dir: Path, precision: str, has_eval: bool, packing: bool) -> dict:
    """TrainingArguments' values for a run (TRL's DPOConfig and KTOConfig take the same)."""
    import torch

    return dict(
        output_dir=str(records.checkpoints_dir(run_dir)),
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        lr_scheduler_type=config.lr_scheduler_type,
        logging_steps=config.logging_steps,
        logging_nan_inf_filter=False,  # a NaN must reach the callback, not be averaged away
        eval_strategy="steps" if has_eval else "no",
        prediction_loss_only=True,  # evaluation needs the loss, not every logit kept in memory
        eval_steps=config.eval_steps if has_eval else None,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        neftune_noise_alpha=config.neftune_noise_alpha or None,
        # autocast: the adapters' matmuls in bf16/fp16 too (the base weights already are), the
        # loss in fp32. On a CPU with AMX (oneDNN bf16 matmuls several times fp32's) this is the fast path;
        # where bf16 is not faster, auto precision picks fp32 and there is no autocast
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_pin_memory=False,
        # padded batches waste least when examples of similar length share a batch
        train_sampling_strategy="random" if packing else "group_by_length",
    )


def skip_adapter_input_casts(model) -> None:
    """Under autocast, turn off peft's cast of every LoRA input to the adapters' dtype.

    Autocast already gives each matmul its dtype; peft's own cast of every LoRA input to
    the fp32 adapter weights' dtype would only add copies, undone by autocast (measured:
    see docs/performance.md). The adapters' weights and their optimizer state stay fp32.
    Not for DoRA (its weight norm would be taken in bf16 and stop matching the fp32
    magnitude it started from) nor QLoRA (4-bit layers need their casts)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False


# what a metrics row keeps of the trainer's logs: the losses and the schedule, and for preference
# runs TRL's reward margins and accuracies (on the training and the validation rows)
_REWARDS = ("rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected", "kl")
LOGGED_KEYS = ("loss", "eval_loss", "learning_rate", "grad_norm", *_REWARDS, *(f"eval_{k}" for k in _REWARDS))


def reporting_callback(control: RunControl, run_dir: Path, counter, started_tokens: int = 0):
    from transformers import TrainerCallback

    class Reporter(TrainerCallback):
        """Metrics rows to metrics.jsonl and the RunState; stop and NaN checks."""

        def __init__(self):
            self.diverged = False
            self.tokens_seen = started_tokens
            self.last = (time.perf_counter(), started_tokens)
            self.loop = [None, None]  # when the training loop began and ended: the steps' own time
            self.began_at = (0, 0.0)  # the step and epoch it began at (a resumed run's checkpoint's)

        def on_train_begin(self, args, state, control_, **kw):
            self.loop[0] = time.perf_counter()
            self.began_at = (state.global_step, state.epoch or 0.0)
            # the step this process starts from, and when: the remaining time is measured from them
            control.update(status="running", max_steps=state.max_steps, step=state.global_step, message="",
                           first_step=state.global_step, first_step_at=time.time())

        def on_train_end(self, args, state, control_, **kw):
            self.loop[1] = time.perf_counter()

        def on_step_end(self, args, state, control_, **kw):
            control.update(step=state.global_step)
            if control.stop.is_set():
                control_.should_training_stop = True
                control_.should_save = True  # what was trained is kept as a checkpoint too

        def on_log(self, args, state, control_, logs=None, **kw):
            logs = logs or {}
            row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
            for key in LOGGED_KEYS:
                if key in logs:
                    row[key] = float(logs[key])
            if "loss" not in row and "eval_loss" not in row:
                return
            if "loss" in row:
                # TRL's trainers count the tokens they saw (num_tokens); Tuner's collators count theirs
                now = time.perf_counter()
                tokens = counter.tokens if counter is not None else int(logs.get("num_tokens", 0))
                if now > self.last[0] and tokens > self.last[1]:
                    row["tokens_per_second"] = round((tokens - self.last[1]) / (now - self.last[0]), 1)
                self.last = (now, tokens)
                self.tokens_seen = tokens
                if not math.isfinite(row["loss"]):
                    self.diverged = True
                    control_.should_training_stop = True
            if state.is_world_process_zero:
                records.append_metrics(run_dir, row)
                control.append(row)

    return Reporter()


def resume_point(run_dir: Path) -> Path:
    """The checkpoint a resumed run continues from; the metrics logged after it are dropped."""
    checkpoint = records.last_complete_checkpoint(run_dir)
    if checkpoint is None:
        raise ValueError(f"run {run_dir.name} has no complete checkpoint to resume from")
    records.truncate_metrics(run_dir, records.checkpoint_step(checkpoint))
    return checkpoint
