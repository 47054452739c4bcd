"""Automatic metrics against values worked out by hand."""

import math

import pandas as pd
import pytest

from ratings import metrics


def test_normalize_follows_squad():
    assert metrics.normalize("  The Answer: Tampere, Finland! ") == "answer tampere finland"
    assert metrics.normalize("ＡＮ Apple") == "apple"  # full-width letters (NFKC), article dropped
    assert metrics.normalize(None) == ""


def test_exact_match_and_answer_contained():
    assert metrics.exact_match("Tampere, Finland.", "tampere finland")
    assert not metrics.exact_match("It is in Tampere, Finland.", "Tampere, Finland")
    assert metrics.contains_answer("It is in Tampere, Finland.", "Tampere, Finland")
    assert metrics.contains_answer("It was founded in 2014.", "2014")
    assert not metrics.contains_answer("It was founded in 20145.", "2014")  # whole words only
    assert not metrics.contains_answer("anything", "")


def test_bleu_by_hand():
    assert metrics.bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100)
    # "a b c d" against "a b c e": precisions 3/4, 2/3, 1/2 and 0/1, which sacrebleu's default
    # exp smoothing turns into 1/2; equal lengths, no brevity penalty: (3/4 · 2/3 · 1/2 · 1/2)^(1/4)
    assert metrics.bleu(["a b c d"], ["a b c e"]) == pytest.approx(100 * 0.125 ** 0.25, abs=1e-6)
    assert math.isnan(metrics.bleu([], []))


def test_rouge_l_by_hand():
    # LCS of "the cat on the mat" in "the cat sat on the mat" is 5 tokens: P = 5/5, R = 5/6
    f1 = 2 * 1 * (5 / 6) / (1 + 5 / 6)
    assert metrics.rouge_l("the cat on the mat", "the cat sat on the mat") == pytest.approx(100 * f1)
    assert metrics.rouge_l("nothing shared", "the cat sat") == 0


def _replies():
    return pd.DataFrame([
        {"position": 1, "category": "easy", "label": "base", "reply": "I think 1999.", "reference": "2014",
         "latency_s": 1.0, "new_tokens": 4},
        {"position": 1, "category": "easy", "label": "lora", "reply": "It was 2014.", "reference": "2014",
         "latency_s": 2.0, "new_tokens": 5},
        {"position": 2, "category": "hard", "label": "base", "reply": "Tampere, Finland",
         "reference": "Tampere, Finland.", "latency_s": 3.0, "new_tokens": 6},
        {"position": 2, "category": "hard", "label": "lora", "reply": "Helsinki", "reference": "Tampere, Finland.",
         "latency_s": 4.0, "new_tokens": 7},
        {"position": 3, "category": None, "label": "base", "reply": "Hello", "reference": None,
         "latency_s": 5.0, "new_tokens": 8},
        {"position": 3, "category": None, "label": "lora", "reply": "Hi there", "reference": "",
         "latency_s": 6.0, "new_tokens": 9},
    ])


def test_automatic_table_per_model():
    table = metrics.automatic_table(_replies()).set_index("model")
    assert list(table.index) == ["base", "lora"]
    assert table.loc["base", ["replies", "with reference"]].tolist() == [3, 2]  # no reference on prompt 3
    assert table.loc["base", "exact match"] == 0.5 and table.loc["base", "answer contained"] == 0.5
    assert table.loc["lora", "exact match"] == 0 and table.loc["lora", "answer contained"] == 0.5
    assert table.loc["base", "mean latency (s)"] == 3.0  # over every reply, (1 + 3 + 5) / 3
    assert table.loc["lora", "mean new tokens"] == 7.0
    rouge = (metrics.rouge_l("I think 1999.", "2014") + metrics.rouge_l("Tampere, Finland", "Tampere, Finland.")) / 2
    assert table.loc["base", "ROUGE-L"] == pytest.approx(rouge, abs=1e-3)
    bleu = metrics.bleu(["I think 1999.", "Tampere, Finland"], ["2014", "Tampere, Finland."])
    assert table.loc["base", "BLEU"] == pytest.approx(bleu, abs=1e-3)


def test_automatic_table_per_category():
    table = metrics.automatic_table(_replies(), "category")
    assert list(zip(table["category"], table["model"])) == [("easy", "base"), ("easy", "lora"), ("hard", "base"),
                                                           ("hard", "lora"), ("(none)", "base"), ("(none)", "lora")]
    easy_lora = table.iloc[1]
    assert easy_lora["answer contained"] == 1 and easy_lora["exact match"] == 0
    none = table.iloc[4]
    assert none["with reference"] == 0 and math.isnan(none["BLEU"]) and none["mean latency (s)"] == 5.0
    assert metrics.automatic_table(_replies().iloc[:0]).empty


def test_adapter_bytes_sums_every_file(tmp_path):
    adapter = tmp_path / "adapter"
    (adapter / "nested").mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"x" * 100)
    (adapter / "nested" / "extra.json").write_bytes(b"y" * 23)
    assert metrics.adapter_bytes(adapter) == 123
    assert metrics.adapter_bytes(tmp_path / "missing") is None


def test_run_table_links_each_variant_to_its_run(tmp_path):
    run_dir = tmp_path / "runs" / "r1"
    (run_dir / "adapter").mkdir(parents=True)
    (run_dir / "adapter" / "w.bin").write_bytes(b"z" * 500_000)
    lora = {"path": str(run_dir), "config": {"method": "lora", "r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
                                             "use_dora": True, "learning_rate": 1e-4, "num_train_epochs": 2.0,
                                             "max_steps": -1, "per_device_train_batch_size": 4,
                                             "gradient_accumulation_steps": 2, "dataset": "/x/polite.jsonl"},
            "summary": {"trainable_percent": 1.3612, "trainable_params": 1843200, "final_loss": 0.91,
                        "best_eval_loss": 1.2}}
    variants = [{"name": "base", "label": "base (m)", "kind": "base"},
                {"name": "r1", "label": "lora: r1", "kind": "lora"},
                {"name": "gone", "label": "lora: gone", "kind": "lora"}]
    table = metrics.run_table(variants, {"r1": lora, "gone": None}).set_index("model")
    row = table.loc["lora: r1"]
    assert row["settings"] == "r 16, alpha 32, dropout 0.0, DoRA, lr 0.0001, 2.0 epochs, batch 4×2"
    assert (row["trainable"], row["adapter (MB)"], row["dataset"]) == ("1.36%", 0.5, "polite.jsonl")
    assert row["final loss"] == 0.91 and row["best val loss"] == 1.2
    assert table.loc["lora: gone", "settings"] == "run not found"
    assert table.loc["base (m)", "method"] == "base" and table.loc["base (m)", "trainable"] == ""


def test_settings_text_for_prompt_tuning_and_max_steps():
    text = metrics.settings_text({"method": "prompt_tuning", "num_virtual_tokens": 20, "learning_rate": 0.003,
                                  "max_steps": 40, "per_device_train_batch_size": 2})
    assert text == "20 virtual tokens, lr 0.003, 40 steps, batch 2×1"
    dpo = {"method": "dpo", "r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "learning_rate": 0.0005,
           "num_train_epochs": 1, "per_device_train_batch_size": 4, "beta": 0.1}
    assert metrics.settings_text(dpo) == "r 8, alpha 16, dropout 0.05, lr 0.0005, β 0.1, 1 epochs, batch 4×1"
    assert ", β 0.1, rpo_alpha 10, ld_alpha 0.5," in metrics.settings_text({**dpo, "rpo_alpha": 10.0, "ld_alpha": 0.5})
