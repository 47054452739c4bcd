"""The Train tab's settings as values: which TrainConfig fields the tab edits, in the order
of its inputs, and the config their values make (and back). The supervised part of the tab
(tuner.ui.train) and its DPO/KTO part (tuner.ui.preference) both read them.
"""

from __future__ import annotations

from dataclasses import fields

from tuner.config import TrainConfig, default_learning_rate

# TrainConfig's fields by name, and the ones the tab edits (those whose metadata names a
# widget), in the order of its inputs: the config declares each setting once
SPEC = {f.name: f for f in fields(TrainConfig)}
FIELDS = [name for name, f in SPEC.items() if f.metadata.get("widget")]
INTS = {name for name in FIELDS if SPEC[name].type == "int"}
FLOATS = {name for name in FIELDS if SPEC[name].type in ("float", "float | None")}
OPTIONAL_TEXT = {name for name in FIELDS if SPEC[name].type == "str | None"}  # an empty box is None


def config_from(model_name: str, dataset: str, values, run_name: str = "") -> TrainConfig:
    settings = dict(zip(FIELDS, values))
    settings["run_name"] = (run_name or "").strip()
    for key in INTS:
        settings[key] = int(settings[key]) if settings[key] is not None else None
    for key in FLOATS:  # an emptied box: the setting's default (0 is a value of ld_alpha's); with none, 0
        empty = settings[key] in (None, "")  # (the learning rate's: refused, named)
        settings[key] = float(SPEC[key].default or 0) if empty else float(settings[key])
    if settings["method"] != "dpo":  # DPO's own settings, hidden for the other methods: DPO's defaults
        settings.update(ld_alpha=SPEC["ld_alpha"].default, rpo_alpha=SPEC["rpo_alpha"].default)
    for key in OPTIONAL_TEXT:
        settings[key] = (settings[key] or "").strip() or None
    settings["target_modules"] = list(settings["target_modules"] or []) or None
    return TrainConfig(base_model=model_name, dataset=dataset, **settings)


def values_of(config: dict) -> list:
    defaults = TrainConfig().to_dict()
    values = {name: config.get(name, defaults[name]) for name in FIELDS}
    if config.get("learning_rate") is None:  # unset: the method's own
        values["learning_rate"] = default_learning_rate(values["method"])
    for name in OPTIONAL_TEXT:
        values[name] = values[name] or ""
    return [values[name] for name in FIELDS]
