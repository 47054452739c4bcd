"""Recipes beside the starter sets, and suggested settings for any other dataset."""

from __future__ import annotations

import json

import pytest

from helpers import chat
from ratings.checks import parse_checks
from tuner import data as tdata
from tuner import recipes
from tuner.config import TrainConfig
from tuner.paths import STARTER_DATASETS

STARTERS = ("polite_assistant", "formal_email", "company_faq", "customer_support")


@pytest.mark.parametrize("name", STARTERS)
def test_every_starter_recipe_parses_into_a_train_config(name):
    recipe = recipes.load(STARTER_DATASETS / f"{name}.recipe.json", parse_checks)
    config = recipe.config(str(STARTER_DATASETS / f"{name}.jsonl"))
    assert isinstance(config, TrainConfig)
    # the recipe's names are run.json's names: a config built from it keeps every value
    for key, value in recipe.train.items():
        assert config.to_dict()[key] == value
    assert set(recipe.generate) <= set(recipes.GENERATE_KEYS)
    parse_checks(recipe.checks)
    assert recipe.describe() and recipe.about
    from tuner.generate import GenSettings

    GenSettings(**recipe.generate)


def test_the_faq_and_support_recipes_split_by_difficulty_and_by_brand():
    faq = recipes.load(STARTER_DATASETS / "company_faq.recipe.json").train
    assert (faq["validation_fraction"], faq["test_fraction"], faq["stratify_by"]) == (0.2, 0.1, "difficulty")
    support = recipes.load(STARTER_DATASETS / "customer_support.recipe.json").train
    assert (support["validation_fraction"], support["test_fraction"], support["stratify_by"]) == (0.1, 0.1, "brand")


def test_a_saved_version_or_an_import_finds_its_starters_recipe(tmp_path):
    saved = tmp_path / "company_faq-v3.jsonl"
    saved.write_text("")
    assert recipes.for_dataset(saved).name == "company_faq"
    assert recipes.for_dataset(tmp_path / "customer_support.jsonl").name == "customer_support"
    assert recipes.for_dataset(tmp_path / "my_notes.jsonl") is None
    assert recipes.for_dataset(None) is None
    # a recipe beside the file itself wins
    (tmp_path / "my_notes.recipe.json").write_text(json.dumps({"train": {"r": 4}}))
    assert recipes.for_dataset(tmp_path / "my_notes.jsonl").train == {"r": 4}


@pytest.mark.parametrize("values, problem", [
    ({"train": {"r": 0}}, "x.recipe.json: train: Invalid training settings: r must be at least 1"),
    ({"train": {"lora_rank": 4}}, "Unknown training setting\\(s\\): lora_rank"),
    ({"train": {"dataset": "a.jsonl"}}, "must not set dataset"),
    ({"train": {}, "generate": {"tokens": 5}}, "generate: unknown setting\\(s\\) tokens"),
    ({"train": {}, "checks": ["size: 3"]}, "check line 1: 'size: 3' is not a check"),
    ({"train": {}, "extra": 1}, "unknown key\\(s\\) extra"),
    ([], "a recipe is a JSON object"),
])
def test_a_bad_recipe_names_the_file_and_the_field(tmp_path, values, problem):
    path = tmp_path / "x.recipe.json"
    path.write_text(json.dumps(values))
    with pytest.raises(ValueError, match=problem):
        recipes.load(path, parse_checks)
    path.write_text("{oops")
    with pytest.raises(ValueError, match="x.recipe.json: not valid JSON \\(line 1"):
        recipes.load(path)


def _facts(n):
    return [chat(f"What is fact {i}?", f"Fact {i} is {i * 7}.", answer=str(i * 7), difficulty="easy" if i % 2 else "hard")
            for i in range(n)]


def _style(n):
    reply = " ".join(["Thank you for your message, I will gladly help you with this request today."] * 6)
    return [chat(f"Please help with request {i}", reply, category="email") for i in range(n)]


@pytest.mark.parametrize("maker, n, kind", [(_facts, 20, "facts"), (_facts, 600, "facts"),
                                            (_style, 20, "style"), (_style, 600, "style")])
def test_suggest_settings_for_small_large_fact_and_style_datasets(maker, n, kind):
    rows = maker(n)
    s = recipes.suggest(rows)
    config = TrainConfig.from_dict(dict(s.train, dataset="x.jsonl"))  # always a valid config
    steps = config.num_train_epochs * -(-round(n * 0.7) // config.per_device_train_batch_size)
    if kind == "facts":
        assert "short factual replies" in s.why and s.generate["repetition_penalty"] == 1.0
        assert s.generate["max_new_tokens"] <= 48
        assert steps >= 150 or config.num_train_epochs == 12  # many passes, capped for a tiny set
    else:
        assert "style or format" in s.why and (steps >= 40 or config.num_train_epochs == 8)
        assert s.generate["max_new_tokens"] >= 96  # room for the ~84-word replies
    if n < 50:
        assert config.num_train_epochs >= 6  # a tiny set needs many passes
        assert steps >= 20
    else:
        assert config.num_train_epochs <= 4  # a large one gets its steps from its rows
    assert config.target_modules == recipes.ALL_LINEAR
    assert "\n" not in s.why and s.why.startswith(f"{n} rows")
    stratify = {"facts": "difficulty", "style": None}[kind]
    assert config.stratify_by == stratify


def test_suggest_refuses_an_empty_dataset():
    with pytest.raises(ValueError, match="no rows"):
        recipes.suggest([])


def test_max_new_tokens_follows_the_references(smollm2_tokenizer):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer)
    short = ["2014", "Tampere, Finland", "Pebble"] * 10
    assert recipes.max_new_tokens_for(short) == 32
    long = [" ".join(["word"] * 100)] * 20
    with_tokenizer = recipes.max_new_tokens_for(long, tokenizer)
    assert with_tokenizer >= 100 * 4 / 3 and with_tokenizer % 16 == 0
    assert recipes.max_new_tokens_for([]) == 96
    assert recipes.max_new_tokens_for([" ".join(["w"] * 5000)]) == 512


def test_stratified_split_of_the_training_engine_keeps_each_difficultys_share():
    rows = tdata.load_jsonl(STARTER_DATASETS / "company_faq.jsonl").rows
    parts = tdata.splits(rows, 0.2, 0.1, seed=42, stratify="difficulty")
    assert sum(len(p) for p in parts.values()) == len(rows)
    for level in ("easy", "medium", "hard"):
        total = sum(r["difficulty"] == level for r in rows)
        test = sum(r["difficulty"] == level for r in parts["test"])
        assert abs(test - total * 0.1) < 1
    assert parts == tdata.splits(rows, 0.2, 0.1, seed=42, stratify="difficulty")
    assert parts["test"] != tdata.splits(rows, 0.2, 0.1, seed=7, stratify="difficulty")["test"]


def test_a_recipe_describes_unset_fields_by_train_configs_defaults():
    d = TrainConfig()
    text = recipes.Recipe("x", {}).describe()
    assert text.startswith(f"LoRA r={d.r}, alpha {d.lora_alpha}, attention")
    assert f"lr {d.learning_rate:g}" in text and f"{d.num_train_epochs:g} epochs" in text


def test_the_engine_never_imports_the_ratings_layer():
    import ast

    root = STARTER_DATASETS.parent / "tuner"
    for path in root.rglob("*.py"):
        if path.name.startswith("ui") or "ui" in path.relative_to(root).parts[:-1]:
            continue  # the Gradio modules compose both layers
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "ratings" or n.startswith("ratings.") for n in names), path


def test_suggest_keeps_prompt_tuning_with_its_own_learning_rate():
    """Suggest keeps prompt tuning (it once switched it to LoRA without a word)."""
    from tuner.config import default_learning_rate

    rows = _style(40)
    s = recipes.suggest(rows, method="prompt_tuning")
    config = TrainConfig.from_dict(dict(s.train, dataset="x.jsonl"))
    assert config.method == "prompt_tuning" and config.learning_rate == default_learning_rate("prompt_tuning")
    assert "target_modules" not in s.train and "prompt tuning (as chosen)" in s.why and "LoRA" not in s.why
    assert recipes.suggest(rows, method="qlora").train["method"] == "qlora"
    lora = recipes.suggest(rows)
    assert lora.train["method"] == "lora" and "LoRA r=16" in lora.why
    with pytest.raises(ValueError, match="evaluation's scores"):
        recipes.suggest(rows, method="dpo")


def test_the_suggested_step_count_is_the_splits_training_rows():
    rows = tdata.load_jsonl(STARTER_DATASETS / "company_faq.jsonl").rows
    s = recipes.suggest(rows)
    config = TrainConfig.from_dict(dict(s.train, dataset="x.jsonl"))
    train_rows = len(tdata.splits(rows, config.validation_fraction, config.test_fraction, config.seed,
                                  config.stratify_by)["train"])
    assert s.train_rows == train_rows and f"({s.steps} steps over {train_rows} training rows)" in s.why
    assert s.steps == config.num_train_epochs * -(-train_rows // config.per_device_train_batch_size)
    assert recipes.suggest(rows, train_rows=train_rows - 9).train_rows == train_rows - 9  # as counted by the caller


def test_a_prompt_tuning_recipe_describes_its_own_default_rate():
    from tuner.config import default_learning_rate

    text = recipes.Recipe("x", {"method": "prompt_tuning"}).describe()
    assert f"lr {default_learning_rate('prompt_tuning'):g}" in text
