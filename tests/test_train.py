"""examples/train.py end to end (embedded default at a reduced size, run from a fresh working folder), resume, two
processes; the training helpers."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_modeling import make_row

from modeling_m3d.configuration_m3d import M3DConfig
from modeling_m3d.modality import (
    MODALITY_MODES,
    assign_modalities,
    build_modality_manifest,
    drop_modality,
    load_manifest,
    save_manifest,
)
from modeling_m3d.schema import TASKS
from modeling_m3d.testing import tiny_model_and_processor
from modeling_m3d.training import (
    RECIPES,
    THRESHOLD_GRID,
    TrainingData,
    aggregate_seeds,
    choose_thresholds,
    describe_recipe,
    full_parameters,
    model_card,
    override_config,
    selection_score,
    trained_tasks,
)

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "examples" / "train.py"
# 8 training documents, global batches of 2: 4 optimizer steps per epoch, 8 in all; checkpoints 3 and 6 are mid-epoch.
SMALL = ["--synthetic_docs", "8", "--num_train_epochs", "2", "--per_device_train_batch_size", "1",
         "--gradient_accumulation_steps", "2", "--per_device_eval_batch_size", "2", "--checkpointing_steps", "3"]  # fmt: skip
# Dropout and VAE sampling off: one and two processes draw different masks otherwise.
NO_NOISE = {"dropout": 0.0, "vae_kl_weight": 0.0,
            "text_config": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
            "vision_config": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}}  # fmt: skip
TASK_KEYS = [f"test_{task}_{name}" for task in TASKS for name in ("precision", "recall", "f1")]


def run(
    command: list[str], cache: Path, timeout: int = 240, cwd: Path = ROOT, **env_vars: str
) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           **env_vars}  # fmt: skip
    # A session of its own: on a timeout the launcher's worker processes are killed with it.
    with subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as process:  # fmt: skip
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    assert process.returncode == 0, stdout[-3000:] + stderr[-6000:]
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def assert_same_weights(first: dict, second: dict, atol: float) -> None:
    assert first.keys() == second.keys()
    worst = max((first[key].float() - second[key].float()).abs().max().item() for key in first)
    assert worst <= atol, f"largest weight difference {worst}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """A run from a fresh working folder with the default --output_dir, as a new user types it."""
    root = tmp_path_factory.mktemp("train")
    result = run([sys.executable, str(TRAIN), *SMALL], root / "cache", cwd=root)
    return root / "m3d-hier", root, result


def test_embedded_default_writes_model_results_card_and_manifest(trained):
    from huggingface_hub import ModelCard
    from transformers import AutoModel, AutoProcessor

    import modeling_m3d  # noqa: F401  (registers the Auto classes)

    output, root, result = trained
    for name in ("model.safetensors", "config.json", "processor_config.json", "tokenizer.json", "README.md",
                 "training_curves.png"):  # fmt: skip
        assert (output / name).is_file(), name
    # the generated data went to the datasets cache, not into the model folder
    assert not list(output.glob("synthetic-*")) and list(
        (root / "cache" / "m3d").glob("synthetic-en-8docs-*")
    )
    results = json.loads((output / "all_results.json").read_text())
    for key in [*TASK_KEYS, "test_average_f1"]:
        assert 0.0 <= results[key] <= 1.0, key
    assert results["test_average_f1"] == pytest.approx(sum(results[f"test_{t}_f1"] for t in TASKS) / 4)
    assert "Average" in result.stdout and "longer than" in result.stderr
    # the default recipe without --text_encoder, with the flags given explicitly in its place, printed and stored
    recipe = results["recipe"]
    assert recipe == {**RECIPES["small"].to_dict(), "num_train_epochs": 2}
    assert f"recipe: {describe_recipe(RECIPES['small'].with_overrides(num_train_epochs=2))}" in result.stdout
    card = ModelCard.load(output / "README.md")
    assert "Training recipe: small (encoder_learning_rate=0.002" in card.text
    metrics = {(r.metric_name, r.dataset_split) for r in card.data.eval_results}
    assert ("Average f1", "test") in metrics and len(metrics) == 13
    # the card names the data the model really saw
    assert {r.dataset_type for r in card.data.eval_results} == {"m3d-synthetic"}
    assert "not the M³D release" in card.text and "8 train, 2 validation, 2 test" in card.text
    manifest = json.loads((output / "modality_manifest.json").read_text())
    assert set(manifest) == {"train", "validation", "test"}
    assert sorted(manifest["train"].values()) == ["full"] * 2 + ["text_missing"] * 3 + ["video_missing"] * 3
    model = AutoModel.from_pretrained(output)
    processor = AutoProcessor.from_pretrained(output)
    assert type(model).__name__ == "M3DModel" and type(processor).__name__ == "M3DProcessor"
    assert model.config.fusion == "dffm"  # the synthetic documents have frames: the paper's model
    # the decoding thresholds chosen on validation, printed, stored in the results and saved with the model
    assert "decoding thresholds chosen on validation (gold_pairs)" in result.stdout
    for name in ("relation_threshold", "grounding_threshold"):
        assert results[name] in THRESHOLD_GRID and getattr(model.config, name) == results[name], name
    # padded to the Longformer's attention window by the processor, so the encoder does not pad and warn
    assert processor.pad_to_multiple_of == max(model.config.text_config.attention_window)


def test_training_log_has_no_warnings_or_bars_between_the_tables(trained):
    _, _, result = trained
    log = result.stdout + result.stderr
    for noise in ("torchvision", "automatically padded", "Writing model shards", "Generating train split"):
        assert noise not in log, noise


def test_saved_files_have_the_umask_mode(trained):
    """safetensors and tempfile write 0600 files; train.py gives them the mode of every other file it writes."""
    output, _, _ = trained
    expected = (output / "config.json").stat().st_mode & 0o777
    for name in ("model.safetensors", "modality_manifest.json", "all_results.json"):
        assert (output / name).stat().st_mode & 0o777 == expected, name


def test_model_card_usage_snippet_runs(trained):
    """The card's Python block, run as written from the folder holding the model."""
    output, _, _ = trained
    text = (output / "README.md").read_text(encoding="utf-8")
    snippet = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'AutoModel.from_pretrained("m3d-hier")' in snippet
    result = subprocess.run([sys.executable, "-c", snippet], cwd=output.parent, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("[")  # the printed entities


def test_resume_mid_epoch_gives_the_weights_of_an_uninterrupted_run(trained):
    """With dropout and VAE sampling on: the checkpoint restores the RNGs and nothing else draws from them."""
    output, root, _ = trained
    final = weights(output / "checkpoint-8")
    resumed = root / "resumed"
    shutil.copytree(output, resumed, ignore=shutil.ignore_patterns("checkpoint-8"))
    state = json.loads((resumed / "checkpoint-6" / "trainer_state.json").read_text())
    # 4 of 8 batches in epoch 1
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 4, 6)
    run([sys.executable, str(TRAIN), "--output_dir", str(resumed), *SMALL,
         "--resume_from_checkpoint", str(resumed / "checkpoint-6")], root / "cache")  # fmt: skip
    assert_same_weights(final, weights(resumed / "checkpoint-8"), atol=0.0)


def test_the_saved_epoch_is_the_best_by_the_chosen_metric(tmp_path):
    output = tmp_path / "out"
    run([sys.executable, str(TRAIN), *SMALL, "--num_train_epochs", "3", "--metric_for_best_model", "ner_f1",
         "--output_dir", str(output)], tmp_path / "cache")  # fmt: skip
    state = json.loads((output / "checkpoint-12" / "trainer_state.json").read_text())
    scores = [epoch["eval_ner_f1"] for epoch in state["history"]]
    assert len(scores) == 3 and len(set(scores)) > 1  # a choice to make
    assert state["best_epoch"] == scores.index(max(scores)) and state["best_metric"] == max(scores)
    results = json.loads((output / "all_results.json").read_text())
    assert results["best_epoch"] == state["best_epoch"] and results["best_metric"] == state["best_metric"]
    assert results["metric_for_best_model"] == "ner_f1"
    # each epoch is scored at the decoding thresholds best on validation, those the saved model gets at the end
    best = state["history"][state["best_epoch"]]
    for name in ("relation_threshold", "grounding_threshold"):
        assert best[f"eval_{name}"] == results[name], name


def test_average_f1_selects_by_the_tasks_the_model_is_trained_on():
    """text-crf's untrained heads score noise: its `average_f1` selection is by entity F1 alone."""
    from modeling_m3d.systems import get_system

    crf, full = M3DConfig(**get_system("text-crf").config), M3DConfig()
    assert trained_tasks(crf) == ["ner"] and trained_tasks(full) == list(TASKS)
    epochs = [{"eval_ner_f1": 0.5, "eval_coref_f1": 0.9, "eval_re_f1": 0.1, "eval_grounding_f1": 0.0},
              {"eval_ner_f1": 0.6, "eval_coref_f1": 0.4, "eval_re_f1": 0.1, "eval_grounding_f1": 0.0}]  # fmt: skip
    for scores in epochs:
        scores["eval_average_f1"] = sum(scores.values()) / 4
    best = {name: max(range(2), key=lambda e, c=config: selection_score(epochs[e], "average_f1", c))
            for name, config in (("crf", crf), ("full", full))}  # fmt: skip
    assert best == {"crf": 1, "full": 0}
    assert selection_score(epochs[0], "re_f1", crf) == 0.1


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """Two gloo processes with batches of 1 against one process accumulating two batches of 1. (The per-task
    losses are means over a batch's words / pairs / frames, so a batch of 2 rows is not the mean of two batches.)"""
    common = [*SMALL, "--num_train_epochs", "1", "--config_overrides", json.dumps(NO_NOISE)]
    run([sys.executable, str(TRAIN), "--output_dir", str(tmp_path / "single"), *common], tmp_path / "cache")
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "29533",
    ]
    run([*launch, str(TRAIN), "--output_dir", str(tmp_path / "parallel"), *common, "--gradient_accumulation_steps", "1"],
        tmp_path / "cache", timeout=300, ACCELERATE_USE_CPU="1")  # MULTI_CPU with gloo (HF-NOTES §4)  # fmt: skip
    assert_same_weights(weights(tmp_path / "single" / "checkpoint-4"), weights(tmp_path / "parallel" / "checkpoint-4"),
                        atol=1e-6)  # fmt: skip
    # --config_overrides are part of the recipe that all_results.json and the model card record
    recipe = json.loads((tmp_path / "single" / "all_results.json").read_text())["recipe"]
    assert recipe["model_config"] == {**RECIPES["small"].model_config, "dropout": 0.0, "vae_kl_weight": 0.0,
                                      "vision_config": NO_NOISE["vision_config"]}  # fmt: skip
    assert recipe["text_config"] == {**RECIPES["small"].text_config, **NO_NOISE["text_config"]}
    assert "'dropout': 0.0, 'vae_kl_weight': 0.0" in (tmp_path / "single" / "README.md").read_text()


def _predict_sharded(rank: int, store: str, version: int) -> None:
    """One of two gloo processes: the tiny model sharded as accelerate shards it (the classes in `_no_split_modules`
    wrapped, then the root) decodes, under `full_parameters`, exactly what the unsharded model decodes."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model, processor = tiny_model_and_processor()
    batch = processor([make_row(0), make_row(3)], return_tensors="pt")
    decode = {"protocol": "end_to_end", "grounding_threshold": 0.0}
    expected = model.eval().predict(**batch, **decode)
    # a comparison of substance
    assert all(document["entities"] and document["groundings"] for document in expected)
    units = {type(module) for module in model.modules() if type(module).__name__ in model._no_split_modules}
    if version == 2:
        for module in [module for module in model.modules() if type(module) in units]:
            fully_shard(module)
        sharded = fully_shard(model)
        with pytest.raises(RuntimeError):  # the root's weights are DTensor shards outside forward
            model.predict(**batch, **decode)
    else:
        sharded = FullyShardedDataParallel(
            model,
            auto_wrap_policy=ModuleWrapPolicy(units),
            device_id=torch.device("cpu"),
            use_orig_params=True,
        )
    with full_parameters(sharded):
        assert model.predict(**batch, **decode) == expected
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("version", [2, 1])
def test_full_parameters_lets_predict_decode_an_fsdp_sharded_model(tmp_path, version):
    torch.multiprocessing.spawn(_predict_sharded, args=(str(tmp_path / "store"), version), nprocs=2)


# ----------------------------------------------------------------------------------------------- helpers


def test_modality_assignment_is_deterministic_nested_and_in_thirds():
    ids = [f"video_{i}_1" for i in range(30)]
    modes = assign_modalities(ids, 2 / 3, seed=0)
    assert modes == assign_modalities(list(reversed(ids)), 2 / 3, seed=0)
    assert modes != assign_modalities(ids, 2 / 3, seed=1)
    assert sorted(modes.values()) == ["full"] * 10 + ["text_missing"] * 10 + ["video_missing"] * 10
    assert set(assign_modalities(ids, 0.0, 0).values()) == {"full"}
    assert sorted(assign_modalities(ids, 1.0, 0).values()) == ["text_missing"] * 15 + ["video_missing"] * 15
    smaller, larger = assign_modalities(ids, 0.4, 0), assign_modalities(ids, 0.8, 0)
    assert all(larger[i] == mode for i, mode in smaller.items() if mode != "full")
    with pytest.raises(ValueError, match="unique"):
        assign_modalities(["a", "a"], 0.5, 0)


def test_manifest_round_trip_and_errors(tmp_path):
    split_ids = {"train": ["a", "b", "c"], "test": ["d", "e", "f"]}
    manifest = build_modality_manifest(split_ids, 2 / 3, seed=3)
    path = tmp_path / "manifest.json"
    save_manifest(manifest, path)
    assert load_manifest(path, split_ids) == manifest
    with pytest.raises(ValueError, match=r"manifest.json.*split 'test'.*document 'g'.*'mode'"):
        load_manifest(path, {"test": ["d", "g"]})
    with pytest.raises(ValueError, match="no split 'validation'"):
        load_manifest(path, {"validation": ["a"]})


def test_drop_modality_removes_the_modality_and_its_annotations():
    row = {"id": "v", "tokens": ["Ann"], "subtitles": [{"text": "Ann"}], "entities": [{"start": 0}],
           "chains": [{"id": "L0"}], "relations": [], "frames": ["img"], "groundings": [{"frame": 0}]}  # fmt: skip
    text_missing = drop_modality(row, "text_missing")
    assert text_missing["tokens"] == text_missing["entities"] == text_missing["chains"] == []
    assert text_missing["frames"] == ["img"] and row["tokens"] == ["Ann"]
    video_missing = drop_modality(row, "video_missing")
    assert video_missing["frames"] == video_missing["groundings"] == [] and video_missing["tokens"] == ["Ann"]
    assert drop_modality(row, "full") == row
    with pytest.raises(ValueError, match="document 'v'"):
        drop_modality(row, "audio_missing")
    assert MODALITY_MODES == ("full", "text_missing", "video_missing")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--config_overrides", '{"pair_gradient_scale": 2}'], "pair_gradient_scale` must be in \\[0, 1\\]"),
        (["--config_overrides", '{"no_such_field": 1}'], "no_such_field"),
        (["--config_overrides", "{not json"], "Expecting property name"),
        (["--tiny_encoders", "--text_encoder", "folder"], "--tiny_encoders builds the encoders"),
    ],
)
def test_a_bad_flag_is_a_usage_error_before_anything_is_written(flags, message, tmp_path):
    """What `resolve_recipe` and `apply_system` refuse ends train.py as argparse does (exit status 2, `error:` and
    the message, no traceback), before the output folder exists."""
    output_dir = tmp_path / "out"
    command = [sys.executable, str(TRAIN), "--output_dir", str(output_dir), *flags]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert re.search(f"train.py: error: .*{message}", result.stderr)
    assert not output_dir.exists()


def test_recipes_name_the_papers_settings_and_flags_override_them():
    paper = RECIPES["paper"]
    assert (paper.encoder_learning_rate, paper.learning_rate, paper.num_train_epochs) == (5e-6, 1e-3, 20)
    assert (paper.per_device_train_batch_size, paper.max_grad_norm, paper.lr_scheduler_type) == (
        1,
        5.0,
        "linear",
    )
    assert paper.text_config == paper.model_config == {}
    small = RECIPES["small"]
    assert (
        small.encoder_learning_rate == small.learning_rate == 2e-3 and small.text_config["hidden_size"] == 128
    )
    assert small.model_config["pair_gradient_scale"] == 0.3  # the from-scratch encoder learns entities first
    overridden = small.with_overrides(learning_rate=1e-4, num_train_epochs=None)
    assert overridden.learning_rate == 1e-4 and overridden.num_train_epochs == small.num_train_epochs
    assert overridden.name == "small" and small.learning_rate == 2e-3
    assert describe_recipe(paper).startswith("paper (encoder_learning_rate=5e-06, learning_rate=0.001,")
    finetune = RECIPES["finetune"]
    assert (finetune.encoder_learning_rate, finetune.learning_rate, finetune.num_train_epochs) == (
        5e-5,
        1e-3,
        20,
    )
    assert finetune.model_config == {
        "ner_loss_normalization": "document",
        "loss_weights": {"ner": 2.0, "coref": 10.0, "re": 30.0},
        "relation_none_weight": 0.1,
        "relation_context": 2,
    }


def test_thresholds_maximise_the_validation_f1_of_their_task():
    peer = {"subject": [[0, 1]], "object": [[2, 3]], "type": "PER-PER_peer"}
    wrong = {"subject": [[2, 3]], "object": [[0, 1]], "type": "PER-LOC_go_to"}
    box = {"frame": 0, "type": "PER", "box": [0.5, 0.5, 0.2, 0.2]}
    references = [{"relations": [peer], "groundings": []}, {"relations": [], "groundings": []}]
    predictions = [
        {
            "relations": [{**peer, "score": 0.8}, {**wrong, "score": 0.6}],
            "groundings": [{**box, "score": 0.9}],
        },
        {"relations": [{**wrong, "score": 0.3}], "groundings": []},
    ]
    # F1 is 1 for thresholds in (0.6, 0.8]: the one nearest the default 0.5 wins; no gold box, no grounding choice
    assert choose_thresholds(predictions, references) == {"relation_threshold": 0.65}
    references[1]["groundings"] = [box]
    predictions[1]["groundings"] = [{**box, "score": 0.2}, {**box, "box": [0.1, 0.1, 0.1, 0.1], "score": 0.7}]
    assert choose_thresholds(predictions, references)["grounding_threshold"] == 0.2


def test_seed_aggregation_and_model_card():
    from huggingface_hub import ModelCard

    aggregate = aggregate_seeds([{"test_ner_f1": 0.5}, {"test_ner_f1": 0.7}])
    assert aggregate["test_ner_f1"]["mean"] == pytest.approx(0.6)
    assert aggregate["test_ner_f1"]["variance"] == pytest.approx(0.01)
    flat = {f"test_{t}_{n}": 0.5 for t in TASKS for n in ("precision", "recall", "f1")}
    model, _ = tiny_model_and_processor()
    data = TrainingData(kind="release", lang="en", documents={"train": 164, "validation": 20, "test": 21},
                        splits={"train": "validation"}, location="../shared/m3d", heldout_fraction=0.2)  # fmt: skip
    card = model_card({**flat, "test_average_f1": 0.5}, model_name="m3d-en", config=model.config, data=data,
                      split="test", protocol="end_to_end", missing_modality_ratio=0.0,
                      encoders=("allenai/longformer-base-4096", None), recipe=RECIPES["paper"])  # fmt: skip
    parsed = ModelCard(str(card)).data
    assert len(parsed.eval_results) == 13 and {r.dataset_split for r in parsed.eval_results} == {"test"}
    assert {r.dataset_type for r in parsed.eval_results} == {"m3d"}
    assert parsed.eval_results[0].dataset_args == {"protocol": "end_to_end", "missing_modality_ratio": 0.0}
    assert parsed.base_model == ["allenai/longformer-base-4096"]
    assert f"Training recipe: {describe_recipe(RECIPES['paper'])}." in card.text
    assert (
        "`allenai/longformer-base-4096` (longformer" in card.text
        and "seeded 0.2 of it was held out" in card.text
    )
    assert (
        "test` documents (21)" in card.text and "end_to_end` protocol (every output is predicted" in card.text
    )
    assert "More Information Needed" not in card.text and "synthetic" not in card.text.lower()
    assert "DFFM" in card.text and "with the missing-modality construction module" in card.text
    # without the DFFM there is no MMCM (it generates the DFFM's keys), whatever `use_mmcm` says
    unfused = override_config(model.config, {"fusion": "none"})
    card = model_card({**flat, "test_average_f1": 0.5}, model_name="m3d-en", config=unfused, data=data,
                      split="test", protocol="end_to_end", missing_modality_ratio=0.0)  # fmt: skip
    assert unfused.use_mmcm and "no fusion (each modality alone), without the missing-modality" in card.text
    with pytest.raises(ValueError, match="unknown protocol"):
        model_card({**flat, "test_average_f1": 0.5}, model_name="x", config=model.config, data=data, split="test",
                   protocol="gold", missing_modality_ratio=0.0)  # fmt: skip


def test_config_override_derives_the_initializer_range_of_the_new_width():
    from modeling_m3d.configuration_m3d import default_initializer_range
    from modeling_m3d.testing import build_tokenizer, tiny_config

    tokenizer = build_tokenizer(None, "en")
    wider = override_config(tiny_config(tokenizer), {"text_config": {"hidden_size": 128}, "dropout": 0.0})
    assert wider.text_config.hidden_size == 128 and wider.dropout == 0.0
    assert wider.initializer_range == pytest.approx(default_initializer_range(128))
    chosen = override_config(
        tiny_config(tokenizer, initializer_range=0.5), {"text_config": {"hidden_size": 128}}
    )
    assert chosen.initializer_range == 0.5
    with pytest.raises(ValueError, match="'hidden'"):
        override_config(wider, {"hidden": 3})
