"""The training recipe end to end on the tiny presets, on the CPU."""

import json
import shutil

import pytest
import torch
from PIL import Image
from transformers import TrainerCallback

from ocrloop.config import OcrloopConfig, apply_overrides
from ocrloop.data.synth import SynthOptions, synthesize_dataset
from ocrloop.errors import DatasetError
from ocrloop.models import load_model
from ocrloop.models.base import ExampleTooLong
from ocrloop.registry import Registry
from ocrloop.train.finetune import train
from ocrloop.train.trainer import LengthGroupedSampler
from tests.conftest import FAST_RESOLUTION, SMALL_PAGES


@pytest.fixture(scope="module")
def receipts(tmp_path_factory):
    """Four short receipts to overfit, plus one for validation and one for test."""
    root = tmp_path_factory.mktemp("receipts") / "ocr_documents"
    synthesize_dataset(root, SynthOptions(n=6, seed=11, scale=0.3, noise=0.0, categories=("receipt",),
                                          split_fractions=(0.67, 0.17, 0.16)), SMALL_PAGES)
    return root


def _config(dataset, tmp_path, preset, **training):
    base = OcrloopConfig(dataset_dir=dataset, registry_path=tmp_path / "registry.db", models_dir=tmp_path / "models",
                         base_model=preset, data=SMALL_PAGES)
    values = {"training.resolution": FAST_RESOLUTION[preset], "training.batch_size": 2, "training.gradient_accumulation_steps": 1,
              "training.warmup_steps": 0, "training.learning_rate": 3e-3, "training.lora_rank": 8, "training.lora_alpha": 16,
              "training.lora_dropout": 0.0, "training.max_new_tokens": 24, "training.gradient_checkpointing": False,
              "training.lora_targets": ["attention", "mlp"], "training.logging_steps": 1, "training.save_steps": 1000}
    values.update({f"training.{k}": v for k, v in training.items()})
    return apply_overrides(base, values)


@pytest.mark.parametrize(
    ("preset", "mode", "learning_rate", "loss_ratio"),
    [
        # Full fine-tuning memorizes the four receipts quickly. Rank-8 LoRA on a 64-wide random
        # model with frozen random embeddings learns slowly (measured: about -4% in 24 steps), so
        # for LoRA the test only asks that the loss goes down.
        ("tiny-deepseek-ocr-2", "full", 3e-3, 0.75),
        ("tiny-qwen2.5-vl", "full", 3e-3, 0.75),
        ("tiny-deepseek-ocr-2", "lora16", 2e-2, 0.99),
        ("tiny-qwen2.5-vl", "lora16", 2e-2, 0.99),
    ],
)
def test_overfitting_a_few_receipts_lowers_the_loss_and_the_saved_model_reads_the_same(
    tiny_presets, receipts, tmp_path, preset, mode, learning_rate, loss_ratio
):
    config = _config(receipts, tmp_path, preset, max_steps=24, mode=mode, learning_rate=learning_rate, eval_steps=12)
    with Registry(config.registry_path) as registry:
        result = train(config, tmp_path / "out", registry=registry)
        run = registry.run(result.run_id)
        assert run["status"] == "succeeded"
        assert registry.model(result.model_name)["path"] == str((tmp_path / "out").resolve())
    losses = [entry["loss"] for entry in result.card["metrics"]["train_loss_by_epoch"]]
    assert losses[-1] < loss_ratio * losses[0], losses
    card = json.loads((tmp_path / "out" / "run_card.json").read_text())
    assert card["data"]["manifest_hash"] and card["parameters"]["trainable"] > 0
    assert card["metrics"]["final_validation"]["cer"] >= 0
    assert card["speed"]["steps"] == 24 and card["speed"]["samples_per_second"] > 0
    # Every step and every epoch (4 receipts, batch 2: 12 epochs) is timed.
    assert len(card["speed"]["step_seconds"]) == 24 and len(card["speed"]["epoch_seconds"]) == 12
    assert all(seconds > 0 for seconds in card["speed"]["step_seconds"] + card["speed"]["epoch_seconds"])

    reloaded = load_model(str(tmp_path / "out"))
    if mode == "full":
        base = load_model(preset).model.state_dict()
        assert any(not torch.equal(base[k], v) for k, v in reloaded.model.state_dict().items())
    else:  # LoRA weights moved away from their zero initialization
        lora_b = [p for n, p in reloaded.model.named_parameters() if "lora_B" in n]
        assert lora_b and any(p.abs().sum() > 0 for p in lora_b)

    from ocrloop.data.dataset import Dataset

    dataset = Dataset.open(receipts, SMALL_PAGES)
    images = [dataset.load_image(e) for e in dataset.examples("test")]
    first = reloaded.generate(images, resolution=FAST_RESOLUTION[preset], max_new_tokens=24)
    second = load_model(str(tmp_path / "out")).generate(images, resolution=FAST_RESOLUTION[preset], max_new_tokens=24)
    assert first == second


@pytest.mark.parametrize("preset", list(FAST_RESOLUTION))
def test_resume_continues_from_the_last_checkpoint(tiny_presets, receipts, tmp_path, preset):
    from safetensors.torch import load_file

    config = _config(receipts, tmp_path, preset, max_steps=4, save_steps=2)
    train(config, tmp_path / "run")
    straight = load_file(tmp_path / "run" / "adapter_model.safetensors")
    # As if killed between step 2 and step 4: only checkpoint-2 survives, no finished model.
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "checkpoint-4")
    for name in ("ocrloop_model.json", "run_card.json", "adapter_model.safetensors"):
        (tmp_path / "run" / name).unlink()
    resumed = train(config, tmp_path / "run", resume=True)
    assert resumed.card["speed"]["steps"] == 4
    again = load_file(tmp_path / "run" / "adapter_model.safetensors")
    # Resuming restores adapter, optimizer, schedule and data order: the same weights as straight through.
    assert all(torch.allclose(straight[k], again[k], atol=1e-6) for k in straight)


def test_training_ends_at_the_first_validation_that_reads_well_enough(tiny_presets, receipts, tmp_path):
    # Any CER is at most 100 (10,000 %): the first validation ends it, and it is the final one. A tiny random model
    # reads no page at 0.
    stopped = train(_config(receipts, tmp_path, "tiny-qwen2.5-vl", max_steps=6, eval_steps=2, stop_at_validation_cer=100),
                    tmp_path / "stopped")
    assert stopped.card["speed"]["steps"] == 2
    assert [v["step"] for v in stopped.card["metrics"]["validation"]] == [2]
    assert stopped.card["metrics"]["final_validation"]["cer"] == stopped.card["metrics"]["validation"][0]["cer"]
    full = train(_config(receipts, tmp_path, "tiny-qwen2.5-vl", max_steps=6, eval_steps=2, stop_at_validation_cer=0.0),
                 tmp_path / "full")
    assert full.card["speed"]["steps"] == 6
    assert [v["step"] for v in full.card["metrics"]["validation"]] == [2, 4, 6]  # 6: the read after the last step


def test_a_time_budget_ends_training_early_and_the_run_card_says_where(tiny_presets, receipts, tmp_path):
    # A budget of 10 ms is spent before the first cut (at a tenth of the 200 steps), whatever the machine's speed.
    result = train(_config(receipts, tmp_path, "tiny-qwen2.5-vl", max_steps=200, max_train_seconds=0.01, logging_steps=10),
                   tmp_path / "run")
    speed = result.card["speed"]
    assert speed["steps"] == 20
    assert speed["time_budget"] == {"seconds": 0.01, "planned_steps": 200, "cuts": [{"at_step": 20, "end": 20}]}
    assert result.card["metrics"]["final_validation"] is not None  # the model was still read and saved
    assert (tmp_path / "run" / "ocrloop_model.json").is_file()


class SamplerSeen(TrainerCallback):
    """Keeps the sampler behind the training data loader the Trainer built (accelerate wraps the loader, not it)."""

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.sampler = train_dataloader.batch_sampler.sampler
        self.batches = [list(batch) for batch in train_dataloader.batch_sampler]


def test_pages_of_about_one_length_are_batched_together_when_asked(tiny_presets, receipts, tmp_path):
    grouped, plain = SamplerSeen(), SamplerSeen()
    result = train(_config(receipts, tmp_path, "tiny-qwen2.5-vl", max_steps=2, group_by_length=True), tmp_path / "grouped",
                   callbacks=[grouped])
    train(_config(receipts, tmp_path, "tiny-qwen2.5-vl", max_steps=2), tmp_path / "plain", callbacks=[plain])
    assert isinstance(grouped.sampler, LengthGroupedSampler) and not isinstance(plain.sampler, LengthGroupedSampler)
    assert sorted(i for batch in grouped.batches for i in batch) == list(range(len(grouped.sampler)))
    assert result.card["speed"]["steps"] == 2


def test_merged_weights_read_like_the_adapter(tiny_presets, receipts, tmp_path):
    result = train(_config(receipts, tmp_path, "tiny-qwen2.5-vl", max_steps=3, merge=True), tmp_path / "run")
    metrics = result.card["metrics"]
    assert metrics["merged_validation"]["cer"] == pytest.approx(metrics["final_validation"]["cer"], abs=1e-9)
    merged = json.loads((tmp_path / "run" / "merged" / "ocrloop_model.json").read_text())
    assert merged["kind"] == "merged" and merged["base_model"] is None
    assert load_model(str(tmp_path / "run" / "merged")).family.name == "qwen2.5-vl"


def test_too_long_examples_fail_before_training_and_the_run_is_recorded_as_failed(tiny_presets, receipts, tmp_path):
    config = _config(receipts, tmp_path, "tiny-qwen2.5-vl", max_steps=2, max_seq_length=64)
    with Registry(config.registry_path) as registry:
        with pytest.raises(ExampleTooLong, match=r"train/receipt_.*page 1: \d+ tokens .* exceed max_seq_length=64"):
            train(config, tmp_path / "run", registry=registry)
        (run,) = registry.runs()
        assert run["status"] == "failed" and "ExampleTooLong" in run["error"]
    assert not (tmp_path / "run" / "ocrloop_model.json").exists()


def test_a_dataset_with_errors_is_refused_unless_asked(tiny_presets, receipts, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(receipts, broken)
    annotations = json.loads((broken / "annotations.json").read_text())
    (broken / annotations[0]["image"]).write_bytes(b"")
    with pytest.raises(DatasetError, match="1 validation error"):
        train(_config(broken, tmp_path, "tiny-qwen2.5-vl", max_steps=1), tmp_path / "run")
    result = train(_config(broken, tmp_path, "tiny-qwen2.5-vl", max_steps=1, skip_invalid=True), tmp_path / "run2")
    assert result.card["data"]["train_pages"] == len([a for a in annotations if a["image"].startswith("train/")]) - (
        1 if annotations[0]["image"].startswith("train/") else 0)


def test_the_same_seed_gives_the_same_adapter(tiny_presets, receipts, tmp_path):
    for name in ("a", "b"):
        train(_config(receipts, tmp_path, "tiny-qwen2.5-vl", max_steps=2), tmp_path / name)
    from safetensors.torch import load_file

    first = load_file(tmp_path / "a" / "adapter_model.safetensors")
    second = load_file(tmp_path / "b" / "adapter_model.safetensors")
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_a_checkpoint_cut_off_by_a_crash_is_skipped_on_resume(tiny_presets, receipts, tmp_path):
    config = _config(receipts, tmp_path, "tiny-qwen2.5-vl", max_steps=4, save_steps=2)
    train(config, tmp_path / "run")
    (tmp_path / "run" / "checkpoints" / "checkpoint-4" / "trainer_state.json").write_text('{"global_st')  # half-written
    (tmp_path / "run" / "ocrloop_model.json").unlink()
    result = train(config, tmp_path / "run", resume=True)
    assert result.card["speed"]["steps"] == 4
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text().startswith("{")


@pytest.mark.parametrize("cudnn_attention", [False, True])
def test_cudnn_attention_is_left_out_of_training_unless_asked(tiny_presets, receipts, tmp_path, monkeypatch, cudnn_attention):
    import ocrloop.train.trainer as trainer  # the training step lives there

    seen: list[bool] = []
    loss = trainer.labelled_token_loss

    def recording(*args, **kwargs):
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return loss(*args, **kwargs)

    monkeypatch.setattr(trainer, "labelled_token_loss", recording)
    before = torch.backends.cuda.cudnn_sdp_enabled()
    train(_config(receipts, tmp_path, "tiny-qwen2.5-vl", max_steps=2, cudnn_attention=cudnn_attention), tmp_path / "out")
    assert seen == [cudnn_attention] * 2
    assert torch.backends.cuda.cudnn_sdp_enabled() == before  # the choice ends with the run


def test_a_page_no_model_can_take_is_refused_by_name_and_skipped_when_asked(tiny_presets, receipts, tmp_path):
    hostile = tmp_path / "hostile"
    shutil.copytree(receipts, hostile)
    annotations = json.loads((hostile / "annotations.json").read_text())
    thin = next(a for a in annotations if a["image"].startswith("train/"))
    Image.new("RGB", (1, 4000), "white").save(hostile / thin["image"])  # Qwen2.5-VL's processor raises above 200:1
    with pytest.raises(DatasetError, match="1 validation error"):
        train(_config(hostile, tmp_path, "tiny-qwen2.5-vl", max_steps=1), tmp_path / "run")
    result = train(_config(hostile, tmp_path, "tiny-qwen2.5-vl", max_steps=1, skip_invalid=True), tmp_path / "run2")
    assert result.card["data"]["train_pages"] == sum(a["image"].startswith("train/") for a in annotations) - 1


def test_a_compiled_step_on_the_hf_backend_trains_like_the_eager_one(tiny_presets, receipts, tmp_path):
    """training.compile on the hf backend: the Trainer runs the model through torch.compile (forward and backward),
    which fuses the casts, LoRA's scaling and the norms that make an eager step thousands of launches; the run takes
    the same steps. The experts' LoRA of DeepSeek-OCR-2, with gradient checkpointing, is what the two-GPU bench
    trains."""
    from torch._dynamo.utils import counters

    losses = {}
    for compiled in (False, True):
        compiled_before = counters["stats"]["unique_graphs"]
        result = train(_config(receipts, tmp_path, "tiny-deepseek-ocr-2", max_steps=3, compile=compiled,
                               lora_targets=["attention", "mlp", "experts"], gradient_checkpointing=True),
                       tmp_path / str(compiled))
        assert (counters["stats"]["unique_graphs"] > compiled_before) == compiled
        losses[compiled] = result.card["metrics"]["loss_by_step"]
        # The run card says how much was compiled and where the graph broke (a GPU run's answer to "why so many
        # kernels"); an eager run has nothing to say.
        summary = result.card["speed"]["compile"]
        if compiled:
            assert summary["graphs"] == counters["stats"]["unique_graphs"] - compiled_before > 0
            assert summary["graph_breaks"] >= sum(summary["graph_break_reasons"].values()) > 0
            # The experts' LoRA runs beside the grouped GEMMs (models.expert_lora): none of the breaks peft's
            # parametrized expert weights cause (the class's __delattr__, set_ on the weight, its factors' proxy).
            assert not any(word in reason for reason in summary["graph_break_reasons"]
                           for word in ("delattr", "set_", "LoraFactorsProxy", "parametriz")), summary
            # Nor the input-embedding hooks' requires_grad_ (models.loading.checkpoint_activations takes them off).
            assert not any("requires_grad" in reason for reason in summary["graph_break_reasons"]), summary
        else:
            assert summary is None
    eager, compiled = losses[False], losses[True]
    assert [step for step, _ in compiled] == [step for step, _ in eager] == [1, 2, 3]
    assert all(abs(a - b) < 1e-3 * abs(b) for (_, a), (_, b) in zip(compiled, eager))
