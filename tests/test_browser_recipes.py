"""The Train tab's recipes in a real browser: a starter set's recommended settings are
offered, not applied, until asked; Suggest settings fills the sliders and says why."""

from __future__ import annotations

import re

from browser import pick

from tuner import recipes
from tuner.paths import STARTER_DATASETS


def test_recommended_settings_are_offered_then_applied_on_request_and_suggest_explains(app_url, page):
    from playwright.sync_api import expect

    page.goto(app_url)
    pick(page, "dataset-chooser", "starter: company_faq")
    page.get_by_role("tab", name="Train").click()
    recipe = recipes.load(STARTER_DATASETS / "company_faq.recipe.json")
    offer = page.locator("#train-recipe")
    expect(offer).to_contain_text("Recommended for this dataset:")
    expect(offer).to_contain_text("split 70/20/10 by difficulty")
    lr = page.get_by_label("Learning rate")
    expect(lr).to_have_value("0.0002")  # nothing changed without asking
    page.locator("#train-recipe-use").click()
    expect(page.locator("#train-message")).to_contain_text("Using the recommended settings")
    expect(lr).to_have_value(str(recipe.train["learning_rate"]))
    expect(page.get_by_label("number input for LoRA rank (r)")).to_have_value(str(recipe.train["r"]))
    expect(page.locator("#train-targets")).to_contain_text("down_proj")
    assert page.locator("#train-targets input[type=checkbox]:checked").count() == 7
    page.get_by_text("More settings").click()
    expect(page.locator("#train-stratify input, #train-stratify textarea").first).to_have_value("difficulty")

    # Suggest settings derives settings from the rows themselves and says why in one line
    page.get_by_role("tab", name="Dataset").click()
    pick(page, "dataset-chooser", "starter: polite_assistant")
    page.get_by_role("tab", name="Train").click()
    page.locator("#train-suggest").click()
    message = page.locator("#train-message")
    expect(message).to_contain_text(re.compile(r"Suggested: 26 rows of longer replies in a style or format"))
    expect(page.get_by_label("number input for Epochs")).to_have_value("8")


def test_the_train_tab_has_its_own_dataset_picker_beside_start(app_url, page, tmp_path):
    """Start trains the dataset picked beside it (it once trained whatever the Dataset tab
    showed, with no picker of its own)."""
    from playwright.sync_api import expect

    page.goto(app_url)
    expect(page.locator("#dataset-message")).to_contain_text("26 rows")
    page.get_by_role("tab", name="Train").click()
    here = page.locator("#train-dataset input")
    expect(here).to_have_value("starter: polite_assistant")  # follows the Dataset tab's choice
    pick(page, "train-dataset", "starter: formal_email")
    what = page.locator("#train-what")
    expect(what).to_contain_text("Start trains starter: formal_email (the Dataset tab shows "
                                 "starter: polite_assistant)")
    expect(page.locator("#train-recipe")).to_contain_text("Recommended for this dataset")
    page.get_by_label("Max steps (-1: use epochs)").fill("1")
    page.get_by_label("Max steps (-1: use epochs)").press("Tab")
    page.locator("#train-start").click()
    expect(page.locator("#train-message")).to_contain_text("on formal_email.jsonl")
    expect(page.locator("#train-message")).to_contain_text(re.compile(r"Run \S+ completed"), timeout=120_000)
    # a choice on the Dataset tab is followed again
    page.get_by_role("tab", name="Dataset").click()
    pick(page, "dataset-chooser", "starter: company_faq")
    page.get_by_role("tab", name="Train").click()
    expect(here).to_have_value("starter: company_faq")
    expect(what).to_contain_text(re.compile(r"Start trains starter: company_faq on \S"))
