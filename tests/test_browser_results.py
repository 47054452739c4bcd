"""The Results tab in a real browser, over a real store already rated by two raters
and a run folder on disk: the tables, a threshold change, the plots, the exports."""

from __future__ import annotations

import json

import pytest

from browser import ARTIFACTS, assert_chart_drawn, serve
from helpers import filled_store, mark_users

ADAPTER_BYTES = 250_000


def _write_run(runs_dir, run_id: str) -> None:
    """A finished run's folder as tuner.train leaves it: run.json, metrics.jsonl, adapter/."""
    folder = runs_dir / run_id
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * (ADAPTER_BYTES - 100))
    (folder / "adapter" / "adapter_config.json").write_bytes(b"{" + b" " * 98 + b"}")
    config = {"base_model": "tiny", "dataset": "/data/polite_assistant.jsonl", "method": "lora", "r": 8,
              "lora_alpha": 16, "lora_dropout": 0.05, "learning_rate": 0.0002, "num_train_epochs": 3.0,
              "max_steps": -1, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1}
    summary = {"status": "completed", "final_loss": 1.2345, "best_eval_loss": 1.5, "trainable_params": 921600,
               "total_params": 135_436_800, "trainable_percent": 0.6805}
    (folder / "run.json").write_text(json.dumps({"run_id": run_id, "config": config, "status": "completed",
                                                 "summary": summary}), encoding="utf-8")
    rows = [{"step": s, "loss": 3.0 - 0.3 * s} for s in range(1, 6)] + [{"step": 5, "eval_loss": 1.5}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
@mark_users("server")
def served(tiny_llama, tmp_path, patient_expect):
    from tuner.paths import Layout

    home = tmp_path / "home"
    layout = Layout(home)
    store, eval_id = filled_store(layout.ratings_db)
    _write_run(layout.runs, "run-xyz")
    demo, url = serve(home, tiny_llama, seed=5)
    yield url, store, eval_id
    demo.close()


def test_results_tab_tables_threshold_plots_and_report(served, tmp_path, chromium):
    from playwright.sync_api import expect

    url, store, eval_id = served
    ARTIFACTS.mkdir(exist_ok=True)
    with chromium as browser:  # the shared one: an uncaught page error fails the test
        page = browser.new_context(viewport={"width": 1280, "height": 1400}, accept_downloads=True).new_page()
        page.set_default_timeout(30_000)
        page.goto(url)
        page.get_by_role("tab", name="Results").click()

        success = page.locator("#success-table")
        expect(success).to_contain_text("lora: run-xyz")
        expect(success).to_contain_text("2/8")  # base at 4 or more
        expect(success).to_contain_text("7/8")
        expect(page.locator("#results-summary")).to_contain_text(
            "lora: run-xyz scored higher than base (tiny) on 4 of 4 prompts")
        expect(page.locator("#results-summary")).to_contain_text("Krippendorff's alpha (ordinal)")
        expect(page.locator("#per-prompt-table")).to_contain_text("q3")
        expect(page.locator("#paired-table")).to_contain_text("0.12")  # Wilcoxon, 4 of 4: 2/16
        expect(page.locator("#breakdown-table")).to_contain_text("easy")
        expect(page.locator("#metrics-table")).to_contain_text("100%")  # every fine-tuned reply has its answer
        runs = page.locator("#results-runs")
        expect(runs).to_contain_text("0.68%")
        expect(runs).to_contain_text("0.25")  # adapter size on disk, MB
        expect(runs).to_contain_text("r 8, alpha 16")
        # each plot is drawn: visible, with a size, its marks spread over it
        for plot in ("#results-distribution", "#results-success-plot", "#results-loss"):
            assert_chart_drawn(page.locator(plot))
        expect(page.locator("#results-distribution")).to_contain_text("Score distribution per model")
        expect(page.locator("#results-success-plot")).to_contain_text("Success rate (scored 4+)")

        # a lower threshold: the success table changes
        page.locator("#results-threshold").get_by_label("3").check()
        expect(success).to_contain_text("6/8")
        expect(success).to_contain_text("8/8")
        expect(success).not_to_contain_text("2/8")
        expect(page.locator("#results-success-plot")).to_contain_text("Success rate (scored 3+)")  # rebuilt
        assert_chart_drawn(page.locator("#results-success-plot"))

        # each rater's scores on demand
        page.locator("#results-raters").get_by_label("Show each rater's scores").check()
        expect(page.locator("#per-prompt-table")).to_contain_text("lora: run-xyz · Ben")
        page.locator("#results-by").get_by_label("rater").check()
        expect(page.locator("#breakdown-table")).to_contain_text("Ana")
        page.screenshot(path=str(ARTIFACTS / "results-tab.png"), full_page=True)

        # exports: the Markdown report downloads and reads on its own
        page.locator("#results-export").click()
        expect(page.locator("#results-export-note")).to_contain_text("Built 6 files")
        # the next run's data, in TRL's shapes: preference pairs and KTO examples
        expect(page.locator("#results-files")).to_contain_text("evaluation-1-kto")
        link = page.locator("#results-files tr", has_text="evaluation-1-report").locator("a").first
        with page.expect_download() as download:
            link.click()
        saved = tmp_path / "report.md"
        download.value.save_as(saved)
        browser.close()

    report = saved.read_text(encoding="utf-8")
    assert report.startswith("# friends' round")
    assert "a reply succeeds at **3 or more**" in report  # the threshold chosen in the tab
    assert "| base (tiny) | 8 | 6 | 6/8 | 75% |" in report
    assert "| base (tiny) | lora: run-xyz |" in report  # replies side by side
    assert "r 8, alpha 16, dropout 0.05, lr 0.0002, 3.0 epochs" in report
