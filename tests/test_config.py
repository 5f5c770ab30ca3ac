
import pytest

from ocrloop.config import OcrloopConfig, apply_overrides, load_config, save_config, set_config_value
from ocrloop.errors import ConfigError
from tests.conftest import run_cli


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


@pytest.mark.parametrize(("text", "fragment"), [
    ("training:\n  epochs: 1\ntraining:\n  epochs: 2\n", "duplicate key 'training'"),
    ("training:\n  epochs: 1\n  epochs: 2\n", "duplicate key 'epochs'"),
    ("training: " + "[" * 20000 + "]" * 20000 + "\n", "nested too deeply"),
    ("training:\n  epochs: .inf\n", "finite number"),
    ("training:\n  batch_size: 100000000000000000000000\n", "less than or equal to 4096"),
])
def test_hand_edited_yaml_mistakes_are_named(tmp_path, text, fragment):
    (tmp_path / "ocrloop.yaml").write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        load_config(tmp_path)


def test_a_config_name_that_is_a_folder_is_an_error_not_the_defaults(tmp_path):
    (tmp_path / "ocrloop.yaml").mkdir()
    result = run_cli("data", "validate", "-w", str(tmp_path))
    assert result.returncode == 1 and "is not a file" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(("key", "value", "fragment"), [
    ("training.epochs", "inf", "finite number"), ("training.epochs", "1e23", "less than or equal"),
    ("training.batch_size", "1e23", "valid integer"), ("serve.max_pages", "-3", "greater than or equal"),
])
def test_config_set_refuses_unbounded_values(tmp_path, key, value, fragment):
    run_cli("init", str(tmp_path), check=True)
    before = (tmp_path / "ocrloop.yaml").read_text()
    with pytest.raises(ConfigError, match=fragment):
        set_config_value(tmp_path, key, value)
    assert (tmp_path / "ocrloop.yaml").read_text() == before


def test_a_postgresql_registry_address_replaces_the_sqlite_file_and_is_shown_without_its_password():
    from ocrloop.config import OcrloopConfig
    from ocrloop.registry.store import shown_location

    assert OcrloopConfig().registry_location == OcrloopConfig().registry_path
    url = "postgresql://ocrloop:secret@db.internal:5432/ocrloop"
    assert OcrloopConfig(registry_url=url).registry_location == url
    assert shown_location(url) == "postgresql://db.internal:5432/ocrloop"
    with pytest.raises(ValueError, match="registry_url"):
        OcrloopConfig(registry_url="mysql://db/ocrloop")
