
import pytest

from ocrloop.config import OcrloopConfig, apply_overrides, load_config, save_config
from ocrloop.errors import ConfigError


def test_defaults_are_the_plans(tmp_path):
    config = OcrloopConfig()
    assert (config.training.epochs, config.training.batch_size, config.training.learning_rate) == (3, 8, 2e-4)
    assert (config.training.gradient_accumulation_steps, config.training.warmup_steps, config.training.max_grad_norm) == (2, 10, 1.0)
    assert config.loop.new_documents_threshold == 50


def test_round_trip_and_relative_paths_resolve_against_the_file(tmp_path):
    save_config(OcrloopConfig(gpu_price_per_hour_usd=3.5), tmp_path / "ocrloop.yaml")
    loaded = load_config(tmp_path)
    assert loaded.gpu_price_per_hour_usd == 3.5
    assert loaded.dataset_dir == tmp_path.resolve() / "data" / "ocr_documents"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("training: {epochs: -1}\n", "training.epochs"),
        ("training: {epochz: 3}\n", "training.epochz"),
        ("training: {batch_size: many}\n", "training.batch_size"),
        ("loop: [1, 2\n", "malformed YAML"),
        ("- just a list\n", "expected a mapping"),
        ("training:\n  mode: lora3\n", "training.mode"),
    ],
)
def test_bad_yaml_names_the_problem(tmp_path, text, expected):
    (tmp_path / "ocrloop.yaml").write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path)
    message = str(raised.value)
    assert expected in message and "\n" not in message


def test_missing_config_says_how_to_create_one(tmp_path):
    with pytest.raises(ConfigError, match="ocrloop init"):
        load_config(tmp_path)


def test_overrides_are_validated_and_none_keeps_value():
    config = apply_overrides(OcrloopConfig(), {"training.epochs": 1, "training.batch_size": None})
    assert config.training.epochs == 1 and config.training.batch_size == 8
    with pytest.raises(ConfigError, match="training.learning_rate"):
        apply_overrides(OcrloopConfig(), {"training.learning_rate": -1})
    with pytest.raises(ConfigError, match="unknown setting"):
        apply_overrides(OcrloopConfig(), {"training.nope": 1})


def test_set_one_setting_validated_and_atomic(tmp_path):
    from ocrloop.config import set_config_value

    save_config(OcrloopConfig(), tmp_path / "ocrloop.yaml")
    set_config_value(tmp_path, "training.max_steps", "30")
    set_config_value(tmp_path, "training.lora_targets", "[attention, mlp]")
    loaded = load_config(tmp_path)
    assert loaded.training.max_steps == 30 and loaded.training.lora_targets == ["attention", "mlp"]
    before = (tmp_path / "ocrloop.yaml").read_text()
    with pytest.raises(ConfigError, match="training.batch_size"):
        set_config_value(tmp_path, "training.batch_size", "-4")
    with pytest.raises(ConfigError, match="unknown setting 'training.nope'"):
        set_config_value(tmp_path, "training.nope", "1")
    assert (tmp_path / "ocrloop.yaml").read_text() == before  # a refused change writes nothing
