"""One run's settings, with every default explained and bad combinations refused.

Field names follow transformers/peft arguments (`r`, `lora_alpha`,
`learning_rate`, `per_device_train_batch_size`, …) so a run.json config reads
the same as the libraries' docs and can be handed to other tools.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from tuner.models import BUNDLED

METHODS = ("lora", "qlora", "prompt_tuning")
SCHEDULERS = ("linear", "cosine", "constant")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
RUN_NAME_MAX = 60


@dataclass
class TrainConfig:
    base_model: str = BUNDLED  # bundled name, local folder or Hub id
    dataset: str = ""  # path to a JSONL chat dataset
    method: str = "lora"  # lora, qlora (4-bit base, CUDA only) or prompt_tuning
    # LoRA
    r: int = 8  # rank of the update: 8 is plenty for style and format
    lora_alpha: int = 16  # the update is scaled by lora_alpha / r; 2 × r is the usual choice
    # 0: dropout's random masks (one per adapted layer and step) took ~40% of a CPU training
    # step of SmolLM2-135M, with the same final and held-out loss (bench/train_speed.py);
    # raise it (0.05-0.1) for many epochs over a few rows
    lora_dropout: float = 0.0
    use_dora: bool = False  # DoRA: magnitude/direction split, a little better, ~2× slower
    use_rslora: bool = False  # rank-stabilised scaling lora_alpha / sqrt(r), for large r
    target_modules: list[str] | None = None  # None: the architecture's attention projections
    # prompt tuning
    num_virtual_tokens: int = 20  # learned soft-prompt length
    prompt_tuning_init_text: str = ""  # start the soft prompt from this text's embeddings
    # optimisation
    learning_rate: float = 2e-4  # LoRA tolerates ~10× full fine-tuning's rate
    num_train_epochs: float = 3.0  # small sets need several passes
    max_steps: int = -1  # > 0 overrides num_train_epochs
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    warmup_steps: int = 0
    weight_decay: float = 0.0
    lr_scheduler_type: str = "linear"  # linear, cosine or constant
    max_seq_length: int = 256  # longer examples are truncated; chat replies here are short
    seed: int = 42
    # auto: bf16 on a GPU that supports it, fp16 on older GPUs; on a CPU bf16 only where its bf16
    # matmuls measure ≥2× fp32's (else fp32). bf16: frozen base in bf16 under autocast, adapter
    # weights, optimizer state and loss in fp32
    precision: str = "auto"
    packing: bool = True  # padding-free batches: no compute spent on pad tokens
    # NEFTune: uniform noise of this scale added to the input embeddings while training (0: off);
    # 5 is the paper's usual value, a regulariser for small sets learnt for many epochs
    neftune_noise_alpha: float = 0.0
    # evaluation and checkpoints
    validation_fraction: float = 0.1  # held out for the validation-loss curve
    test_fraction: float = 0.2  # held out for Compare, never trained on
    # a metadata column (e.g. difficulty, brand): each of its values is split by the fractions on
    # its own, so the held-out rows keep the dataset's mix; None: one seeded shuffle
    stratify_by: str | None = None
    eval_steps: int = 5  # validation loss every this many optimizer steps
    save_steps: int = 10  # a checkpoint every this many steps (and at a stop)
    save_total_limit: int = 2  # checkpoints kept; older ones are deleted
    logging_steps: int = 1  # one chart point per optimizer step
    run_name: str = ""  # the owner's name for the run, shown in every table, chart and export (optional)
    extra: dict = field(default_factory=dict)  # free-form notes carried into run.json

    def __post_init__(self):
        problems = []

        def need(ok: bool, text: str):
            if not ok:
                problems.append(text)

        need(self.method in METHODS, f"method must be one of {', '.join(METHODS)} (got {self.method!r})")
        need(self.r >= 1, f"r must be at least 1 (got {self.r})")
        need(self.lora_alpha >= 1, f"lora_alpha must be at least 1 (got {self.lora_alpha})")
        need(0 <= self.lora_dropout < 1, f"lora_dropout must be in [0, 1) (got {self.lora_dropout})")
        need(not (self.method == "prompt_tuning" and (self.use_dora or self.use_rslora)),
             "use_dora and use_rslora apply to LoRA only: turn them off for prompt tuning")
        need(self.num_virtual_tokens >= 1, f"num_virtual_tokens must be at least 1 (got {self.num_virtual_tokens})")
        need(0 < self.learning_rate <= 0.1, f"learning_rate must be in (0, 0.1] (got {self.learning_rate})")
        need(self.max_steps > 0 or self.num_train_epochs > 0, "set num_train_epochs > 0 or max_steps > 0")
        need(self.per_device_train_batch_size >= 1, "per_device_train_batch_size must be at least 1")
        need(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be at least 1")
        need(self.warmup_steps >= 0, f"warmup_steps must be 0 or more (got {self.warmup_steps})")
        need(0 <= self.weight_decay < 1, f"weight_decay must be in [0, 1) (got {self.weight_decay})")
        need(self.lr_scheduler_type in SCHEDULERS,
             f"lr_scheduler_type must be one of {', '.join(SCHEDULERS)} (got {self.lr_scheduler_type!r})")
        need(self.max_seq_length >= 16, f"max_seq_length must be at least 16 (got {self.max_seq_length})")
        need(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")
        need(0 <= self.validation_fraction < 1 and 0 <= self.test_fraction < 1
             and self.validation_fraction + self.test_fraction < 0.9,
             "validation_fraction + test_fraction must leave at least 10% of the rows to train on")
        need(0 <= self.neftune_noise_alpha <= 50,
             f"neftune_noise_alpha must be in [0, 50] (got {self.neftune_noise_alpha})")
        need(self.stratify_by is None or (isinstance(self.stratify_by, str) and self.stratify_by.strip() != ""),
             "stratify_by must be a metadata column name, or null for an unstratified split")
        need(isinstance(self.run_name, str) and len(self.run_name) <= RUN_NAME_MAX
             and all(c.isprintable() for c in self.run_name),
             f"run_name must be at most {RUN_NAME_MAX} printable characters (got {str(self.run_name)[:80]!r})")
        need(self.eval_steps >= 1, f"eval_steps must be at least 1 (got {self.eval_steps})")
        need(self.save_steps >= 1, f"save_steps must be at least 1 (got {self.save_steps})")
        need(self.save_total_limit >= 1, f"save_total_limit must be at least 1 (got {self.save_total_limit})")
        need(self.logging_steps >= 1, f"logging_steps must be at least 1 (got {self.logging_steps})")
        if self.target_modules is not None:
            need(isinstance(self.target_modules, list) and len(self.target_modules) > 0,
                 "target_modules must be a non-empty list of module names, or null for the default")
        if problems:
            raise ValueError("Invalid training settings: " + "; ".join(problems) + ".")

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown training setting(s): {', '.join(unknown)}. "
                             f"Known: {', '.join(sorted(known))}.")
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)
