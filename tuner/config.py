"""One run's settings, with every default explained and bad combinations refused.

Field names follow transformers/peft arguments (`r`, `lora_alpha`,
`learning_rate`, `per_device_train_batch_size`, …) so a run.json config reads
the same as the libraries' docs and can be handed to other tools.

Each setting is declared once, as peft's LoraConfig declares its own: its
`metadata` holds the label and help the Train tab shows, the widget it is
edited with, and the range `__post_init__` enforces, so the tab's sliders and
the check cannot disagree. The keys: `label`, `help`, `widget` (slider, number,
checkbox, radio, dropdown, text or modules; none: not edited on the tab),
`choices`, the bounds `at_least`/`above` and `at_most`/`below` (inclusive/
exclusive), and a slider's `reach` (low, high, step), which lies inside them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from tuner.models import BUNDLED

METHODS = ("lora", "qlora", "prompt_tuning", "dpo", "kto")
PREFERENCE_METHODS = ("dpo", "kto")  # trained on preferences (tuner.preference), with LoRA's adapter settings
SCHEDULERS = ("linear", "cosine", "constant")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
RUN_NAME_MAX = 60
# the learning rate a method starts from when none is set. LoRA tolerates a rate well above full
# fine-tuning's; prompt tuning trains only a few embeddings in front of a frozen model, which at
# LoRA's rate barely move: its rate is peft's examples', the best of those measured on the
# starter sets (the held-out loss after the same steps, tiny model and SmolLM2 alike)
LEARNING_RATES = {"prompt_tuning": 3e-2}
LORA_LEARNING_RATE = 2e-4


def default_learning_rate(method: str) -> float:
    """The learning rate a run of `method` gets when none is set."""
    return LEARNING_RATES.get(method, LORA_LEARNING_RATE)


def setting(default, label: str = "", help: str = "", widget: str | None = None, **spec):
    """A field whose label, help, widget and range live in its metadata (see the module's doc)."""
    return field(default=default, metadata=dict(label=label, help=help, widget=widget, **spec))


@dataclass
class TrainConfig:
    base_model: str = BUNDLED  # bundled name, local folder or Hub id
    dataset: str = ""  # path to a JSONL chat dataset
    # lora, qlora (4-bit base, CUDA only), prompt_tuning, or preference tuning: dpo, kto
    method: str = setting("lora", "Method", "LoRA trains small low-rank updates; prompt tuning trains only a "
                          "soft prompt; DPO and KTO train LoRA on the raters' preferences.", "radio",
                          choices=METHODS)
    # LoRA
    # 8 is plenty for style and format
    r: int = setting(8, "LoRA rank (r)", "rank of the update", "slider", at_least=1, reach=(1, 64, 1))
    # 2 × r is the usual choice
    lora_alpha: int = setting(16, "LoRA alpha (lora_alpha)", "the update is scaled by lora_alpha / r", "slider",
                              at_least=1, reach=(1, 128, 1))
    # 0: dropout's random masks (one per adapted layer and step) took a large share of a CPU
    # training step of SmolLM2-135M (bench/train_speed.py; measured: see docs/performance.md),
    # and 0 gave the same final and held-out loss;
    # raise it (0.05-0.1) for many epochs over a few rows
    lora_dropout: float = setting(0.0, "LoRA dropout", "above 0 regularises, but on a CPU costs ~40% more time a "
                                  "step", "slider", at_least=0, below=1, reach=(0.0, 0.5, 0.01))
    # off: a little better, but slower (measured: see docs/performance.md)
    use_dora: bool = setting(False, "DoRA (use_dora)", "DoRA: the update split into magnitude and direction",
                             "checkbox")
    # off: it pays only for large r
    use_rslora: bool = setting(False, "rsLoRA (use_rslora)", "rank-stabilised scaling lora_alpha / sqrt(r)",
                               "checkbox")
    # None: the architecture's attention projections
    target_modules: list[str] | None = setting(None, "Modules", "the layers LoRA adapts", "modules")
    # prompt tuning
    # 20: about a sentence of soft prompt
    num_virtual_tokens: int = setting(20, "Virtual tokens (num_virtual_tokens)", "learned soft-prompt length",
                                      "slider", at_least=1, reach=(1, 100, 1))
    # empty: a random start
    prompt_tuning_init_text: str = setting("", "Initial text (prompt_tuning_init_text, optional)",
                                           "start the soft prompt from this text's embeddings", "text")
    # preference tuning (dpo, kto)
    # a finished LoRA run's folder whose adapter the run continues (SFT → DPO; it is also the
    # reference model); None: a new adapter over the base, the base as reference
    init_adapter: str | None = None
    # 0.1: TRL's default; higher keeps the run closer to its reference model
    beta: float = setting(0.1, "β (beta)", "how far from its start the preference run may move: higher keeps "
                          "it closer", "number", above=0, at_most=10)
    # DPO against pairs that differ mostly in length (ratings.preferences.length_skew): 1 is standard
    # DPO; below 1 the tokens past the shorter reply's length count that much (TRL's ld_alpha, LD-DPO),
    # so the run learns less of "shorter" or "longer"
    ld_alpha: float = setting(1.0, "DPO: weight of the longer reply's extra tokens (ld_alpha)",
                              "1: standard DPO; below 1 the tokens past the shorter reply's length count less "
                              "(LD-DPO)", "number", at_least=0, at_most=1)
    # 0: standard DPO; > 0 adds the chosen replies' SFT loss at this weight (RPO: TRL's loss_type
    # ["sigmoid", "sft"]), which keeps the run writing what the chosen replies write
    rpo_alpha: float = setting(0.0, "DPO: weight of an SFT term on the chosen replies (rpo_alpha)",
                               "0: standard DPO; > 0 also trains on the chosen replies as written (RPO): 10 "
                               "kept the replies' length on the formal-email bench", "number",
                               at_least=0, at_most=100)
    # optimisation
    # None: the method's own (default_learning_rate); 0.1 is far past any rate that trains
    learning_rate: float | None = setting(None, "Learning rate", "the optimizer's peak step size (prompt tuning "
                                          "needs a far higher one than LoRA)", "number", above=0, at_most=0.1)
    # small sets need several passes (with max_steps > 0 it may be 0)
    num_train_epochs: float = setting(3.0, "Epochs", "passes over the training rows", "slider", reach=(1, 20, 1))
    # -1: num_train_epochs decides
    max_steps: int = setting(-1, "Max steps (-1: use epochs)", "> 0 overrides num_train_epochs", "number")
    # 4: a small set still gets several optimizer steps an epoch
    per_device_train_batch_size: int = setting(4, "Batch size", "rows in each forward pass", "slider",
                                               at_least=1, reach=(1, 32, 1))
    # 1: every batch is a step
    gradient_accumulation_steps: int = setting(1, "Gradient accumulation", "batches summed into one optimizer "
                                               "step", "slider", at_least=1, reach=(1, 16, 1))
    # 0: none, as transformers' default
    warmup_steps: int = setting(0, "Warmup steps", "steps the learning rate rises over", "number", at_least=0)
    # 0: off, as transformers' default
    weight_decay: float = setting(0.0, "Weight decay", "AdamW's decoupled weight decay", "number",
                                  at_least=0, below=1)
    # linear, cosine or constant
    lr_scheduler_type: str = setting("linear", "LR schedule", "how the learning rate falls after warmup",
                                     "dropdown", choices=SCHEDULERS)
    # longer examples are truncated; chat replies here are short
    max_seq_length: int = setting(256, "Max sequence length", "tokens kept of each example", "slider",
                                  at_least=16, reach=(32, 2048, 32))
    # 42: any fixed seed makes a run repeatable
    seed: int = setting(42, "Seed", "seeds the split, the adapter's start and the batches' order", "number")
    # auto: bf16 on a GPU that supports it, fp16 on older GPUs; on a CPU bf16 only where its bf16
    # matmuls measure ≥2× fp32's (else fp32). bf16: frozen base in bf16 under autocast, adapter
    # weights, optimizer state and loss in fp32
    precision: str = setting("auto", "Precision", "the number format of the frozen base", "dropdown",
                             choices=PRECISIONS)
    # on: no compute spent on pad tokens
    packing: bool = setting(True, "Padding-free packing", "padding-free batches", "checkbox")
    # NEFTune: uniform noise of this scale added to the input embeddings while training (0: off);
    # 5 is the paper's usual value, a regulariser for small sets learnt for many epochs
    neftune_noise_alpha: float = setting(0.0, "NEFTune noise (0: off, 5: usual)", "the scale of the noise "
                                         "added to the input embeddings", "number", at_least=0, at_most=50)
    # evaluation and checkpoints
    # 0.1: enough rows for a validation-loss curve
    validation_fraction: float = setting(0.1, "Validation share", "held out for the validation-loss curve",
                                         "slider", at_least=0, below=1, reach=(0.0, 0.4, 0.05))
    # 0.2: enough rows to compare runs on
    test_fraction: float = setting(0.2, "Test share (held out for Compare)", "held out for Compare, never "
                                   "trained on", "slider", at_least=0, below=1, reach=(0.0, 0.4, 0.05))
    # a metadata column (e.g. difficulty, brand): each of its values is split by the fractions on
    # its own, so the held-out rows keep the dataset's mix; None: one seeded shuffle
    stratify_by: str | None = setting(None, "Stratify the split by (a metadata column, optional)",
                                      "split each of this column's values on its own", "text")
    # 5: a few points on a short run's validation curve
    eval_steps: int = setting(5, "Eval every N steps", "validation loss every this many optimizer steps",
                              "number", at_least=1)
    # 10: a killed run loses at most 10 steps (a stop saves one too)
    save_steps: int = setting(10, "Checkpoint every N steps", "a checkpoint every this many steps", "number",
                              at_least=1)
    # 2: the last and one before it, should the last be cut short
    save_total_limit: int = setting(2, "Checkpoints kept (save_total_limit)", "checkpoints kept; older ones are "
                                    "deleted", "number", at_least=1)
    # 1: one chart point per optimizer step
    logging_steps: int = setting(1, help="training loss logged every this many steps", at_least=1)
    # the owner's name for the run, shown in every table, chart and export (optional)
    run_name: str = setting("", "Run name (optional; shown in every table, chart and export)",
                            f"at most {RUN_NAME_MAX} printable characters")
    extra: dict = field(default_factory=dict)  # free-form notes carried into run.json

    def __post_init__(self):
        if self.learning_rate is None:
            self.learning_rate = default_learning_rate(self.method)
        problems = [p for f in fields(self) if (p := out_of_range(f, getattr(self, f.name)))]

        def need(ok: bool, text: str):
            if not ok:
                problems.append(text)

        need(not (self.method == "prompt_tuning" and (self.use_dora or self.use_rslora)),
             "use_dora and use_rslora apply to LoRA only: turn them off for prompt tuning")
        need(self.init_adapter is None or self.method in PREFERENCE_METHODS,
             "init_adapter (continue from a run's adapter) applies to preference tuning (dpo, kto) only")
        need(self.method == "dpo" or (self.ld_alpha == 1.0 and self.rpo_alpha == 0.0),
             "ld_alpha and rpo_alpha apply to DPO only: leave them at 1 and 0 for other methods")
        need(self.method != "kto" or self.per_device_train_batch_size >= 2,
             "KTO needs a batch size of at least 2 (its KL estimate pairs each prompt with another row's reply)")
        need(self.max_steps > 0 or self.num_train_epochs > 0, "set num_train_epochs > 0 or max_steps > 0")
        need(self.validation_fraction + self.test_fraction < 0.9,
             "validation_fraction + test_fraction must leave at least 10% of the rows to train on")
        need(self.stratify_by is None or (isinstance(self.stratify_by, str) and self.stratify_by.strip() != ""),
             "stratify_by must be a metadata column name, or null for an unstratified split")
        need(isinstance(self.run_name, str) and len(self.run_name) <= RUN_NAME_MAX
             and all(c.isprintable() for c in self.run_name),
             f"run_name must be at most {RUN_NAME_MAX} printable characters (got {str(self.run_name)[:80]!r})")
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


def steps_per_epoch(config: TrainConfig, train_rows: int) -> int:
    """Optimizer steps in one pass over `train_rows` rows, as transformers' Trainer counts them
    in one process: batches of per_device_train_batch_size (the last one short), summed
    gradient_accumulation_steps at a time (the last group short), at least one. Packing joins
    each batch's rows into one sequence, so it leaves the count as it is."""
    batches = math.ceil(max(0, train_rows) / config.per_device_train_batch_size)
    return max(1, math.ceil(batches / config.gradient_accumulation_steps))


def optimizer_steps(config: TrainConfig, train_rows: int) -> int:
    """The optimizer steps a run takes over `train_rows` training rows (the rows the split
    leaves to train on, less those truncation empties): max_steps when set, else the epochs'.
    The one count the estimate, Suggest settings and the Trainer share."""
    if config.max_steps > 0:
        return config.max_steps
    return math.ceil(config.num_train_epochs * steps_per_epoch(config, train_rows))


def out_of_range(f, value) -> str:
    """What is wrong with `value` for the field `f` by its metadata's choices and bounds; "" if nothing."""
    spec = f.metadata
    if "choices" in spec:
        return "" if value in spec["choices"] else \
            f"{f.name} must be one of {', '.join(spec['choices'])} (got {value!r})"
    low, high = spec.get("at_least", spec.get("above")), spec.get("at_most", spec.get("below"))
    if low is None and high is None:
        return ""
    ok = ((low is None or (value > low if "above" in spec else value >= low))
          and (high is None or (value < high if "below" in spec else value <= high)))
    if ok:
        return ""
    if high is None:
        return f"{f.name} must be at least {low} (got {value})"
    return (f"{f.name} must be in {'(' if 'above' in spec else '['}{low}, {high}{')' if 'below' in spec else ']'} "
            f"(got {value})")
