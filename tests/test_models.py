import time

import pytest

from tuner import models
from tuner.chat import IGNORE, encode_example
from tuner.paths import data_root


def test_data_root_prefers_env_then_space_volume_then_local(tmp_path):
    assert data_root({"TUNER_HOME": str(tmp_path / "h")}) == (tmp_path / "h").resolve()
    volume = tmp_path / "data"
    volume.mkdir()
    assert data_root({}, space_volume=volume) == (volume / "tuner").resolve()
    assert data_root({}, space_volume=tmp_path / "absent").name == ".tuner"


def test_hub_id_fails_fast_with_a_clear_message_when_hub_unreachable(tmp_path):
    if models.hub_reachable():
        pytest.skip("the Hub is reachable here; this test is about machines where it is not")
    start = time.perf_counter()
    with pytest.raises(models.ModelUnavailable, match="Hugging Face Hub cannot be reached"):
        models.resolve(models.EXAMPLE_HUB_ID, tmp_path)
    assert time.perf_counter() - start < 30  # not the minute of retries


def test_bad_names_are_explained(tmp_path):
    with pytest.raises(models.ModelUnavailable, match="No model chosen"):
        models.resolve("", tmp_path)
    with pytest.raises(models.ModelUnavailable, match="neither"):
        models.resolve("not a model", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(models.ModelUnavailable, match="no config.json"):
        models.resolve(str(tmp_path / "empty"), tmp_path)


def test_local_folder_resolves_and_is_offered(tiny_llama, tmp_path):
    source = models.resolve(str(tiny_llama), tmp_path)
    assert source.kind == "local"
    assert models.choices(tmp_path)[0] == models.BUNDLED


def test_bundled_model_is_converted_once_and_named(bundled_models_dir):
    folder = bundled_models_dir / models.BUNDLED
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    source = models.resolve(models.BUNDLED, bundled_models_dir)  # second time: no conversion
    assert source.location == str(folder) and source.kind == "bundled"
    assert not list(bundled_models_dir.glob(".*converting*"))


def test_loss_mask_covers_only_assistant_tokens(tiny_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello friend"}, {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "Goodbye now"}]
    enc = encode_example(messages, tok, max_length=256)
    learned = tok.decode([t for t, label in zip(enc["input_ids"], enc["labels"]) if label != IGNORE])
    assert "Hello friend" in learned and "Goodbye now" in learned
    assert "Hi there" not in learned and "Be kind" not in learned and "Bye<" not in learned
    assert encode_example(messages, tok, max_length=8) is None  # truncated before any reply
