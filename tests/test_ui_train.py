"""The Train tab's plain functions: settings round trip, estimate, summaries."""

import json
import re
from pathlib import Path

import pytest

from helpers import POLITE
from tuner.config import TrainConfig, default_learning_rate, optimizer_steps
from tuner.estimate import describe, estimate
from tuner.runs import RunState, explain
from tuner.ui.charts import curve_frame, short_label
from tuner.ui.train import (FIELDS, config_from, small_split_warning, summary_text,
                             trainable_share, values_of)

PROMPT_TUNING_RATE = 3e-2  # measured: prompt tuning's held-out loss at 2e-4, 3e-3 and 3e-2


def test_settings_round_trip_through_the_sliders():
    config = TrainConfig(dataset=str(POLITE), r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                         lr_scheduler_type="cosine", use_rslora=True, max_steps=30, test_fraction=0.1,
                         stratify_by="category", neftune_noise_alpha=5.0)
    values = values_of(json.loads(json.dumps(config.to_dict())))  # as exported to JSON and back
    assert len(values) == len(FIELDS)
    again = config_from(config.base_model, config.dataset, values)
    assert again == config
    plain = TrainConfig(dataset=str(POLITE))  # no stratification: an empty box, and back to None
    assert config_from(plain.base_model, plain.dataset, values_of(plain.to_dict())) == plain
    # DPO's own settings: a DPO run's loaded, then LoRA picked (they are hidden): LoRA starts, with DPO's defaults
    dpo = TrainConfig(dataset=str(POLITE), method="dpo", rpo_alpha=10.0, ld_alpha=0.5)
    values = dict(zip(FIELDS, values_of(dpo.to_dict())))
    assert config_from(dpo.base_model, dpo.dataset, list(values.values())) == dpo
    lora = config_from(dpo.base_model, dpo.dataset, list({**values, "method": "lora"}.values()))
    assert (lora.method, lora.rpo_alpha, lora.ld_alpha) == ("lora", 0.0, 1.0)
    # an emptied box is the setting's default (ld_alpha 0 would drop the longer reply's tail), the
    # learning rate's (no default) 0, which is refused by name
    emptied = config_from(dpo.base_model, dpo.dataset, list({**values, "ld_alpha": None, "beta": ""}.values()))
    assert (emptied.ld_alpha, emptied.beta, emptied.rpo_alpha) == (1.0, 0.1, 10.0)
    with pytest.raises(ValueError, match="learning_rate"):
        config_from(dpo.base_model, dpo.dataset, list({**values, "learning_rate": None}.values()))


def test_the_recipe_line_offers_and_says_how_long():
    from tuner import recipes
    from tuner.paths import STARTER_DATASETS
    from tuner.ui.train import recipe_line

    recipe = recipes.load(STARTER_DATASETS / "company_faq.recipe.json")
    text = recipe_line(recipe, 6.4)
    assert text.startswith("**Recommended for this dataset:** LoRA r=")
    assert "expected ~6 min here" in text and "Use recommended settings" in text
    assert "Suggest settings" in recipe_line(None, None)


def test_estimate_counts_trainable_parameters_like_peft(tiny_llama, tmp_path):
    config = TrainConfig(base_model=str(tiny_llama), dataset=str(POLITE), r=4, target_modules=["q_proj"])
    est = estimate(config, tmp_path, past_runs=[])
    # q_proj is 64×64 in 2 layers: LoRA adds r × (64 + 64) per layer
    assert est["trainable"] == 2 * 4 * (64 + 64)
    assert 0 < est["percent"] < 1 and est["steps"] > 0 and est["seconds"] > 0
    assert "Trainable:" in describe(est) and "rough guess" in describe(est)
    measured = [{"config": {"base_model": str(tiny_llama)}, "summary": {"tokens_per_second": 1000.0}}]
    step_rate = estimate(config, tmp_path, past_runs=measured)
    assert step_rate["tokens_per_second"] == 1000.0 and "measured on this machine" in describe(step_rate)


def test_the_estimate_counts_the_whole_run_not_only_its_steps(tiny_llama):
    """The estimate was once half the real time (17 s vs 34 s): it divided the tokens by
    the step rate, leaving out loading, validation passes and checkpoints."""
    config = TrainConfig(base_model=str(tiny_llama), dataset=str(POLITE), validation_fraction=0.2, eval_steps=2)
    step_only = [{"config": {"base_model": str(tiny_llama)}, "summary": {"tokens_per_second": 1000.0}}]
    whole = [{"config": {"base_model": str(tiny_llama)},
              "summary": {"tokens_per_second": 1000.0, "train_tokens": 6000, "train_runtime": 12.0}}]
    from_steps = estimate(config, Path("."), past_runs=step_only)
    from_whole = estimate(config, Path("."), past_runs=whole)
    # the whole run's rate: 6000 tokens in 12 s = 500 tokens/s, overheads included
    assert from_whole["tokens_per_second"] == 500.0
    # the step rate alone gets the overheads added: loading (≥ 3 s), evaluations, checkpoints
    bare = (from_whole["seconds"] * 500.0) / 1000.0  # the same tokens at the step rate
    assert from_steps["seconds"] >= bare + 3.0
    other_method = [{"config": {"base_model": str(tiny_llama), "method": "prompt_tuning"},
                     "summary": {"tokens_per_second": 50.0, "train_tokens": 10, "train_runtime": 1.0}}]
    assert estimate(config, Path("."), past_runs=other_method)["measured"] is False  # another method's speed


def test_curves_and_summary_read_plainly():
    rows = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 2, "eval_loss": 1.7}]
    frame = curve_frame(rows)
    assert sorted(set(frame["series"])) == ["training loss", "validation loss"]
    assert curve_frame([]) is None
    run = {"run_id": "r1", "status": "completed", "summary": {
        "train_runtime": 83.0, "final_loss": 0.9, "best_eval_loss": 1.1, "trainable_params": 10,
        "total_params": 1000, "trainable_percent": 1.0}}
    text = summary_text(run)
    assert "r1 completed" in text and "1:23" in text and "best validation loss 1.1000" in text


def test_progress_line_and_memory_errors_are_explained():
    state = RunState(run_id="r", status="running", step=5, max_steps=10, started=100.0,
                     rows=[{"step": 5, "loss": 1.0, "tokens_per_second": 200.0}])
    line = state.progress_line(now=110.0)
    assert "step 5/10" in line and "elapsed 0:10" in line and "remaining ~0:10" in line and "200 tokens/s" in line
    assert "smaller batch size" in explain(RuntimeError("DefaultCPUAllocator: can't allocate memory"))


def test_a_tiny_trainable_share_is_shown_with_its_count_not_as_zero():
    assert trainable_share(4608, 134_515_008) == "4,608 parameters, 0.0034%"
    assert trainable_share(4_884_480, 139_399_488) == "4,884,480 parameters, 3.50%"
    run = {"run_id": "r1", "status": "completed", "summary": {"trainable_params": 4608, "total_params": 134_515_008}}
    assert "4,608 parameters, 0.0034%" in summary_text(run)


def test_legend_labels_of_two_runs_differ_within_a_few_letters():
    a, b = short_label("20261202-134051-company_faq-562d"), short_label("20261202-134512-company_faq-9f0e")
    assert a == "562d 13:40" and b == "9f0e 13:45"
    assert short_label("my-run") == "my-run"
    assert len(short_label("x" * 40)) <= 32
    assert short_label("crates soft prompt") == "crates soft prompt"


def test_a_split_too_small_to_compare_runs_on_is_warned_about(tmp_path):
    from tuner.config import TrainConfig

    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(8)]
    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = small_split_warning(TrainConfig(dataset=str(small), validation_fraction=0.1, test_fraction=0.2))
    assert "too few to compare runs on" in text and "test" in text
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps(r) + "\n" for r in rows * 10))
    assert small_split_warning(TrainConfig(dataset=str(big), validation_fraction=0.1, test_fraction=0.2)) == ""
    assert small_split_warning(TrainConfig(dataset=str(small), validation_fraction=0, test_fraction=0)) == ""


def test_a_named_run_carries_its_name_into_its_id_tables_and_evaluations(tiny_llama, tmp_path):
    from ratings.generation import variants_for
    from tuner.records import new_run_id, run_label
    from tuner.runs import RunManager
    from tuner.ui.train import finished_runs, runs_frame

    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(6)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = TrainConfig(base_model=str(tiny_llama), dataset=str(data), run_name="polite r16 try 2", max_steps=1,
                         test_fraction=0, validation_fraction=0)
    assert "-polite-r16-try-2-" in new_run_id(config)
    manager = RunManager(tmp_path / "runs", tmp_path / "models")
    run_id = manager.start(config)
    assert manager.wait(120).status == "completed"
    run = manager.get(run_id)
    assert run_label(run) == "polite r16 try 2"
    assert runs_frame(manager).iloc[0]["name"] == "polite r16 try 2"
    assert finished_runs(manager)[0][0].startswith(f"polite r16 try 2 · {run_id}")
    _base, variants = variants_for([run])
    assert variants[1].label == f"lora: polite r16 try 2 ({run_id})"
    assert "polite r16 try 2" in summary_text(run)
    import pytest

    with pytest.raises(ValueError, match="run_name"):
        TrainConfig(run_name="x" * 61)
    with pytest.raises(ValueError, match="run_name"):
        TrainConfig(run_name="bad\nname")


def test_the_tabs_inputs_are_the_configs_fields_and_their_ranges_its_checks():
    """The tab once restated the fields, their types and ranges by hand; its learning-rate
    box started at 0, which the config refuses. Now both read each field's metadata."""
    from dataclasses import fields

    import pytest

    from tuner.ui.train import INTS, setting_input

    edited = [f for f in fields(TrainConfig) if f.metadata.get("widget")]
    assert FIELDS == [f.name for f in edited]
    assert INTS == {f.name for f in edited if f.type == "int"}
    for f in edited:
        spec = f.metadata
        assert spec["label"] and spec["help"], f.name
        if "reach" in spec:  # both ends of a slider are settings the config accepts
            low, high, _step = spec["reach"]
            for end in (low, high):
                TrainConfig(**{f.name: end, "test_fraction": 0, "validation_fraction": 0})
        if "above" in spec:  # an open bound is itself refused, by name
            with pytest.raises(ValueError, match=f.name):
                TrainConfig(**{f.name: spec["above"]})
    import gradio as gr

    with gr.Blocks():
        assert setting_input("r").maximum == 64 and setting_input("r").label == "LoRA rank (r)"
        assert setting_input("learning_rate").minimum == 0 and setting_input("max_steps").precision == 0


def test_every_setting_out_of_its_range_is_named_at_once():
    import pytest

    with pytest.raises(ValueError) as refused:
        TrainConfig(r=0, learning_rate=0, lora_dropout=1.0, warmup_steps=-1, neftune_noise_alpha=51,
                    lr_scheduler_type="step", save_total_limit=0, logging_steps=0)
    text = str(refused.value)
    for part in ("r must be at least 1 (got 0)", "learning_rate must be in (0, 0.1] (got 0)",
                 "lora_dropout must be in [0, 1) (got 1.0)", "warmup_steps must be at least 0 (got -1)",
                 "neftune_noise_alpha must be in [0, 50] (got 51)",
                 "lr_scheduler_type must be one of linear, cosine, constant (got 'step')",
                 "save_total_limit must be at least 1 (got 0)", "logging_steps must be at least 1 (got 0)"):
        assert part in text, part
    assert TrainConfig(learning_rate=0.1, neftune_noise_alpha=50).learning_rate == 0.1  # closed ends pass


def _train_handlers(tmp_path):
    """A Train tab over tmp_path: its run manager and its handlers by name."""
    import gradio as gr

    from tuner.runs import RunManager
    from tuner.ui.train import train_tab

    manager = RunManager(tmp_path / "runs", tmp_path / "models")
    with gr.Blocks() as demo:
        picker = gr.Dropdown(["m"], value="m")
        chooser = gr.Dropdown([], allow_custom_value=True)
        train_tab(manager, tmp_path / "datasets", picker, chooser)
    return manager, {f.name: f for f in demo.fns.values()}


def test_the_handlers_answer_with_their_components_by_name(tmp_path):
    """Start's and the tick's answers are keyed by component: a refused Start touches only the message."""
    from tuner.ui.train import values_of

    manager, handler = _train_handlers(tmp_path)
    values = values_of({"learning_rate": 0})
    refused = handler["on_start"].fn("m", "starter: polite_assistant", "", *values)
    assert list(refused) == [handler["on_start"].outputs[0]]  # the message, nothing else
    assert "learning_rate must be in (0, 0.1] (got 0.0)" in next(iter(refused.values()))
    assert manager.runs() == []
    ticked = handler["on_tick"].fn(None, -1)
    assert set(ticked) <= set(handler["on_tick"].outputs) and len(ticked) >= 3


def test_use_recommended_offers_the_recipes_modules_before_the_models_layers_are_read(tmp_path, tiny_llama):
    """On a first start the bundled model is still being converted when a new user clicks Use
    recommended: the target box had no choices, the recipe's modules were set as its value, and
    Gradio refused every later event of the tab ("'q_proj' is not in the list of choices: []")."""
    use = _train_handlers(tmp_path)[1]["on_use_recipe"]
    targets = next(c for c in use.outputs if getattr(c, "elem_id", None) == "train-targets")
    wanted = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    for model in (str(tmp_path / "not-a-model"), None):  # layers unknown: the recipe's own are offered
        update = use.fn("starter: polite_assistant", model)[targets]
        assert update["value"] == wanted and update["choices"] == wanted
    # with a model whose layers can be read, those are offered, the recipe's chosen among them
    update = use.fn("starter: polite_assistant", str(tiny_llama))[targets]
    assert update["value"] == wanted and set(wanted) <= set(update["choices"])


def test_the_tab_refuses_a_learning_rate_of_0_naming_it(app_url, page):
    """The learning-rate box once went down to 0, which no run can train with."""
    from playwright.sync_api import expect

    page.goto(app_url)
    expect(page.locator("#dataset-message")).to_contain_text("26 rows")  # the starter set chosen
    page.get_by_role("tab", name="Train").click()
    expect(page.locator("#train-estimate")).to_contain_text("Trainable:")
    lr = page.get_by_label("Learning rate")
    lr.fill("0")
    lr.press("Tab")
    expect(page.locator("#train-estimate")).to_contain_text("learning_rate must be in (0, 0.1]")
    page.locator("#train-start").click()
    expect(page.locator("#train-message")).to_contain_text("learning_rate must be in (0, 0.1] (got 0.0)")
    expect(page.locator("#runs-table")).not_to_contain_text("polite_assistant")


# --- Suggest settings and the estimate: one step count -----------------------------------------
def _long_prompts(folder):
    """Rows whose long request truncation leaves no reply room for: the run drops them."""
    from helpers import chat, write_jsonl

    rows = [chat(f"Question {i}: where is the nearest post office?", "Two streets down, on the left.")
            for i in range(40)]
    rows += [chat(" ".join(["Here is the whole story of my day."] * 80) + f" ({i})", "Noted.") for i in range(9)]
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "long-prompts.jsonl", rows)
    return "saved: long-prompts"


def _suggest_and_estimate(tiny_llama, tmp_path):
    import gradio as gr

    from tuner.runs import RunManager
    from tuner.ui.train import train_tab

    manager = RunManager(tmp_path / "runs", tmp_path / "models")
    with gr.Blocks() as demo:
        picker = gr.Dropdown([str(tiny_llama)], value=str(tiny_llama))
        chooser = gr.Dropdown([], allow_custom_value=True)
        train_tab(manager, tmp_path / "datasets", picker, chooser)
    handler = {f.name: f for f in demo.fns.values()}
    suggest, on_estimate = handler["on_suggest"], handler["on_estimate"]
    settings = on_estimate.inputs[2:]  # the tab's settings, in FIELDS' order

    def run(dataset_label, method):
        out = suggest.fn(str(tiny_llama), dataset_label, method)
        message = out[suggest.outputs[0]]
        # an update (the target box gets its choices with its value) reaches the next event as its value
        values = [(v["value"] if isinstance(v, dict) and "__type__" in v else v)
                  for v in (out[component] for component in settings)]
        return message, values, on_estimate.fn(str(tiny_llama), dataset_label, *values)

    return run


@pytest.mark.parametrize(("dataset", "method"), [("starter: polite_assistant", "lora"),
                                                 ("starter: formal_email", "prompt_tuning"),
                                                 ("starter: company_faq", "lora"),
                                                 ("long prompts", "lora"), ("long prompts", "prompt_tuning")])
def test_suggest_settings_and_the_estimate_count_the_same_steps(tiny_llama, tmp_path, dataset, method):
    """The message once said 176 steps and the estimate 184 (the message guessed 70% of the
    rows; the run trains the split's rows that truncation leaves), and prompt tuning was switched
    to LoRA without a word."""
    if dataset == "long prompts":
        dataset = _long_prompts(tmp_path / "datasets")
    message, values, estimate_text = _suggest_and_estimate(tiny_llama, tmp_path)(dataset, method)
    said = re.search(r"\((\d+) steps over (\d+) training rows\)", message)
    estimated = re.search(r"(\d+) training rows · (\d+) steps", estimate_text)
    assert said and estimated, (message, estimate_text)
    assert (said.group(1), said.group(2)) == (estimated.group(2), estimated.group(1))
    settings = dict(zip(FIELDS, values))
    assert settings["method"] == method  # prompt tuning stays prompt tuning
    if method == "prompt_tuning":
        assert "prompt tuning (as chosen)" in message and "LoRA" not in message
        assert settings["learning_rate"] == default_learning_rate("prompt_tuning")


def test_the_step_count_is_the_trainers(tiny_llama, tmp_path):
    """The estimate's steps are the steps the Trainer takes: short last batch and accumulation group."""
    from helpers import chat, write_jsonl
    from tuner.train import train

    dataset = write_jsonl(tmp_path / "d.jsonl", [chat(f"Q{i}?", f"A{i}.") for i in range(9)])
    config = TrainConfig(base_model=str(tiny_llama), dataset=str(dataset), per_device_train_batch_size=2,
                         gradient_accumulation_steps=2, num_train_epochs=1.5, test_fraction=0,
                         validation_fraction=0, save_steps=100)
    expected = estimate(config, tmp_path / "models", [])["steps"]
    assert expected == optimizer_steps(config, 9) == 5  # 5 batches → 3 steps an epoch, × 1.5
    (tmp_path / "run").mkdir()
    assert train(config, tmp_path / "run", models_dir=tmp_path / "models")["max_steps"] == expected


@pytest.mark.parametrize(("rows", "batch", "accumulation", "epochs", "max_steps", "steps"),
                         [(9, 2, 2, 1.5, -1, 5), (8, 4, 1, 3, -1, 6), (1, 4, 4, 2, -1, 2), (100, 8, 3, 1, -1, 5),
                          (100, 8, 3, 1, 7, 7)])
def test_optimizer_steps_by_hand(rows, batch, accumulation, epochs, max_steps, steps):
    config = TrainConfig(per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                         num_train_epochs=epochs, max_steps=max_steps)
    assert optimizer_steps(config, rows) == steps


def test_prompt_tuning_has_its_own_default_learning_rate():
    from tuner.ui.train import rate_for_method

    chosen = default_learning_rate("prompt_tuning")
    assert chosen == PROMPT_TUNING_RATE and TrainConfig(method="prompt_tuning").learning_rate == chosen
    assert TrainConfig().learning_rate == TrainConfig(method="lora").learning_rate == 2e-4
    assert TrainConfig(method="prompt_tuning", learning_rate=1e-3).learning_rate == 1e-3  # a set rate is kept
    assert TrainConfig.from_dict({"method": "prompt_tuning"}).to_dict()["learning_rate"] == chosen
    assert values_of({"method": "prompt_tuning"})[FIELDS.index("learning_rate")] == chosen
    # picking the method by hand moves a default rate to the method's, never a rate the owner set
    assert rate_for_method("prompt_tuning", 2e-4) == chosen and rate_for_method("lora", chosen) == 2e-4
    assert rate_for_method("lora", 5e-4) != 2e-4
