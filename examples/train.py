#!/usr/bin/env python
"""Train and evaluate the M³D extractor (paper Section V) with 🤗 Accelerate, then save it with its scores.

Runs the same way on one CPU, one or several GPUs (DDP, FSDP, DeepSpeed through `accelerate config`), with
mixed precision, gradient accumulation, trackers and resumable checkpoints:

    python examples/train.py                                      # embedded default: tiny encoders, synthetic data
    accelerate launch examples/train.py --dataset_dir M3D --lang en \\
        --text_encoder allenai/longformer-base-4096 --vision_encoder google/vit-base-patch16-224
    python examples/train.py args.json                            # or args.yaml: the same fields

Writes to --output_dir (default `m3d-hier`, which `AutoModel.from_pretrained("m3d-hier")` loads): the best
epoch's model and processor, all_results.json, a model card (README.md), modality_manifest.json and
training_curves.png (loss and validation F1 by epoch). Generated synthetic data goes to the datasets cache.

Without `--text_encoder`, a WordPiece tokenizer is trained on the training split and the encoders are built from
configs (`modeling_m3d.testing`). The training settings come from a named recipe (`modeling_m3d.training.RECIPES`),
printed at the start and stored in all_results.json and the model card: `--recipe paper` (exactly Section VI-C:
AdamW, learning rate 5e-6 for the encoders and 1e-3 for the rest, linear schedule, clipping 5.0, 20 epochs, batch
size 1); `--recipe finetune`, the default with `--text_encoder`: the same with the encoders at 5e-5, the NER loss
summed over each document's words, α = 2 / 10 / 30 for NER / coreference / relations, "no relation" weighted 0.1
in the relation loss (`relation_none_weight`) and `relation_context=2`;
or `--recipe small`, the default without one: 2e-3 throughout, a 2-layer, 128-wide text encoder when it is built
from a config, and four knobs beyond the paper (among them 0.3 of the pair losses' gradient into the encoder,
`pair_gradient_scale`). Flags given explicitly (`--learning_rate`, `--num_train_epochs`, ...) override the recipe's
values, and the --system's fields, then --config_overrides, are merged into its `model_config` (dict-valued fields
key by key): the recipe recorded is the one trained. The missing-modality thirds are cut with a fixed seed
(written to OUTPUT/modality_manifest.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, set_seed
from huggingface_hub.errors import StrictDataclassError
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoTokenizer,
    HfArgumentParser,
    ViTImageProcessorPil,
    get_scheduler,
)

from modeling_m3d import M3DConfig, M3DModel, M3DProcessor
from modeling_m3d.data import DataArguments, load_splits, modality_manifest
from modeling_m3d.modality import save_manifest
from modeling_m3d.schema import PROTOCOLS, TASKS, join_tokens
from modeling_m3d.scoring import m3d_scores
from modeling_m3d.systems import SYSTEMS, frames_per_row, get_system
from modeling_m3d.testing import build_tokenizer, tiny_config, tiny_image_processor
from modeling_m3d.training import (
    RECIPES,
    ModalityCollator,
    Recipe,
    TrainingData,
    aggregate_seeds,
    apply_thresholds,
    choose_thresholds,
    describe_recipe,
    flatten_scores,
    model_card,
    override_config,
    parameter_groups,
    plot_training_curves,
    predict_and_score,
    predict_split,
    restore_default_mode,
    results_table,
    selection_score,
    synthetic_data_root,
)

logger = get_logger(__name__)


@dataclass
class ModelArguments:
    text_encoder: str | None = field(
        default=None, metadata={"help": "Hub name or local folder of the text encoder; none = tiny encoders."}
    )
    vision_encoder: str | None = field(
        default=None, metadata={"help": "Hub name or local folder of the frame encoder (ViT-like)."}
    )
    vocab_size: int = field(
        default=8000, metadata={"help": "WordPiece vocabulary trained on the training split (EN)."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": 'JSON object of M3DConfig fields over the recipe\'s and the system\'s, dicts merged key by '
            'key, e.g. {"dropout": 0, "loss_weights": {"re": 50}, "text_config": {"hidden_size": 64}} (text_config '
            "and vision_config with tiny encoders only)."
        },
    )
    system: str | None = field(
        default=None,
        metadata={"help": "A system of Table III/IV (modeling_m3d.systems): its M3DConfig fields (under "
                  "--config_overrides) and, for encoders no flag names, the paper's for --lang.",
                  "choices": sorted(SYSTEMS)},
    )  # fmt: skip
    tiny_encoders: bool = field(
        default=False,
        metadata={"help": "With --system: its encoders built from tiny configs (random weights)."},
    )


@dataclass
class TrainArguments:
    output_dir: str = field(
        default="m3d-hier",
        metadata={
            "help": "Folder of the saved model, its scores, card and plots (created; reused if it exists)."
        },
    )
    seed: int = field(
        default=42, metadata={"help": "Seed of the weights' initialisation, dropout and shuffling."}
    )
    seeds: list[int] | None = field(
        default=None,
        metadata={"help": "Several seeds, one run each in OUTPUT/seed-<n>: mean and variance (Table III)."},
    )
    recipe: str | None = field(
        default=None,
        metadata={"help": "paper, finetune or small (modeling_m3d.training.RECIPES); default: finetune with "
                  "--text_encoder, else small.", "choices": sorted(RECIPES)},
    )  # fmt: skip
    num_train_epochs: int | None = field(
        default=None, metadata={"help": "Default: the recipe's (paper: 20)."}
    )
    max_train_steps: int | None = field(
        default=None, metadata={"help": "Stop after this many optimizer steps (overrides the epochs)."}
    )
    per_device_train_batch_size: int | None = field(
        default=None, metadata={"help": "Default: the recipe's (1)."}
    )
    per_device_eval_batch_size: int = field(
        default=4, metadata={"help": "Documents per batch and process when validating and testing."}
    )
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Batches whose gradients add up to one optimizer step."}
    )
    learning_rate: float | None = field(
        default=None, metadata={"help": "Non-encoder modules; default: the recipe's."}
    )
    encoder_learning_rate: float | None = field(default=None, metadata={"help": "Default: the recipe's."})
    weight_decay: float | None = field(default=None, metadata={"help": "Default: the recipe's (0)."})
    warmup_steps: int | None = field(default=None, metadata={"help": "Default: the recipe's (0)."})
    max_grad_norm: float | None = field(default=None, metadata={"help": "Default: the recipe's (5.0)."})
    mixed_precision: Literal["no", "fp16", "bf16"] = field(
        default="no", metadata={"help": "Autocast dtype on GPUs (accelerate's mixed precision)."}
    )
    report_to: str = field(default="none", metadata={"help": "Tracker names (comma-separated), all or none."})
    checkpointing_steps: int | None = field(
        default=None, metadata={"help": "save_state every N optimizer steps."}
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "An OUTPUT/checkpoint-<step> folder to continue from."}
    )
    protocol: str = field(
        default="gold_pairs",
        metadata={
            "help": "How validation and test decode chains and relations: gold_pairs (the paper's: over the gold "
            "mentions and chains) or end_to_end (over the predicted ones).",
            "choices": PROTOCOLS,
        },
    )
    metric_for_best_model: str = field(
        default="average_f1",
        metadata={
            "help": "The validation score that picks the saved epoch (as in TrainingArguments): average_f1 (the "
            "mean F1 of the tasks the model is trained on: all four, only entities for text-crf) or one task's F1.",
            "choices": ("average_f1", *(f"{task}_f1" for task in TASKS)),
        },
    )
    push_to_hub: bool = field(
        default=False, metadata={"help": "Upload the output folder to the Hub at the end."}
    )
    hub_model_id: str | None = field(
        default=None, metadata={"help": "Hub repo id of the upload (default: the output folder's name)."}
    )


class EpochShuffleSampler(Sampler[int]):
    """A permutation that depends only on (seed, epoch): a resumed run sees the batches of an uninterrupted one."""

    def __init__(self, num_rows: int, seed: int):
        self.num_rows, self.seed, self.epoch = num_rows, seed, 0

    def __iter__(self):
        return iter(np.random.default_rng([self.seed, self.epoch]).permutation(self.num_rows).tolist())

    def __len__(self) -> int:
        return self.num_rows


def build_parser() -> HfArgumentParser:
    """The command line: the module docstring as description, one flag per argument field."""
    return HfArgumentParser(
        (ModelArguments, DataArguments, TrainArguments),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def parse_args() -> tuple[ModelArguments, DataArguments, TrainArguments]:
    parser = build_parser()
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        return parser.parse_json_file(sys.argv[1])
    if len(sys.argv) == 2 and sys.argv[1].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(sys.argv[1])
    return parser.parse_args_into_dataclasses()


def resolve_recipe(model_args: ModelArguments, args: TrainArguments) -> Recipe:
    """The named recipe (default: `finetune` with a pretrained text encoder, else `small`) with the flags given
    explicitly in its place, and the M3DConfig fields of the --system, then of --config_overrides, merged into its
    `model_config` (a `text_config` override into its `text_config`): the recipe printed, stored and trained.

    Raises:
        ValueError: an override that is no M3DConfig field or a value the config refuses, or a sub-config override
            with a pretrained text encoder; raised before anything is written.
    """
    name = args.recipe or ("finetune" if model_args.text_encoder else "small")
    recipe = RECIPES[name].with_overrides(
        encoder_learning_rate=args.encoder_learning_rate,
        learning_rate=args.learning_rate,
        num_train_epochs=args.num_train_epochs,
        per_device_train_batch_size=args.per_device_train_batch_size,
        max_grad_norm=args.max_grad_norm,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
    )
    system = get_system(model_args.system) if model_args.system else None
    fields = merged_fields(recipe.model_config, system.config if system else {}, config_overrides(model_args))
    text_config = fields.pop("text_config", {})
    if model_args.text_encoder and (text_config or "vision_config" in fields):
        raise ValueError("--config_overrides: sub-config overrides (text_config, vision_config) need tiny encoders")
    check_model_config(fields)
    return replace(recipe, model_config=fields, text_config={**recipe.text_config, **text_config})


def apply_system(model_args: ModelArguments, lang: str) -> ModelArguments:
    """With --system (and without --tiny_encoders), the paper's encoders for `lang` where no flag names one."""
    if model_args.tiny_encoders and (model_args.text_encoder or model_args.vision_encoder):
        raise ValueError("--tiny_encoders builds the encoders: drop --text_encoder and --vision_encoder")
    if not model_args.system or model_args.tiny_encoders:
        return model_args
    system = get_system(model_args.system)
    return replace(model_args, text_encoder=model_args.text_encoder or system.text_encoder(lang),
                   vision_encoder=model_args.vision_encoder or system.vision_encoder)  # fmt: skip


def config_overrides(model_args: ModelArguments) -> dict:
    if not model_args.config_overrides:
        return {}
    overrides = json.loads(model_args.config_overrides)
    if not isinstance(overrides, dict):
        raise ValueError(f"--config_overrides must be a JSON object, got {model_args.config_overrides!r}")
    return overrides


def check_model_config(fields: Mapping) -> None:
    """Refuses a field M3DConfig lacks, or a value its checks (`validate_architecture`, the field types) refuse,
    with the config's own message (huggingface_hub's strict-dataclass errors wrap it)."""
    unknown = sorted(set(fields) - set(M3DConfig().to_dict()))
    if unknown:
        raise ValueError(f"--config_overrides: {unknown} are not M3DConfig fields")
    try:
        M3DConfig(**fields)
    except (StrictDataclassError, TypeError, ValueError) as error:
        raise ValueError(f"--config_overrides: {error.__cause__ or error}") from error


def merged_fields(*layers: Mapping) -> dict:
    """M3DConfig fields set by each layer in turn, later layers winning; a dict-valued field (`loss_weights`) is
    updated key by key, so that `{"loss_weights": {"re": 50}}` over a recipe's keeps the recipe's other weights."""
    fields = {}
    for layer in layers:
        for key, value in layer.items():
            previous = fields.get(key)
            fields[key] = {**previous, **value} if isinstance(value, Mapping) and isinstance(previous, Mapping) else value
    return fields


def build_model_and_processor(
    model_args: ModelArguments, data_args: DataArguments, recipe: Recipe, train_rows: datasets.Dataset
) -> tuple[M3DModel, M3DProcessor]:
    """Pretrained encoders when named (with their tokenizer and image processor), else a tokenizer trained on the
    training split and encoders built from configs (`modeling_m3d.testing`, the text encoder's widened by the
    recipe's `text_config`; the tiny vision encoder is the --system's kind). The recipe's `model_config`, then the
    system's fields, then --config_overrides (all merged by `resolve_recipe`), set M3DConfig fields."""
    system = get_system(model_args.system) if model_args.system else None
    top_level = dict(recipe.model_config)
    nested = {key: top_level.pop(key) for key in ("vision_config",) if key in top_level}
    if "fusion" not in top_level and not count_frames(train_rows):
        # MiniLM-L6, EN dev file, 4 epochs, cut 0, test entity / chain / relation F1: 78.8 / 76.9 / 25.2 with the
        # DFFM and MMCM, 80.8 / 78.4 / 31.4 without (tiny encoders, three cuts: entity 50.4 -> 53.0); see README.
        top_level["fusion"] = "none"
        logger.warning(
            "no training document has frames: the model is built without the DFFM and MMCM (fusion 'none', the "
            "w/o-DFFM system of Table IV), which on text alone only cost quality; --config_overrides "
            '\'{"fusion": "dffm"}\' keeps them',
            main_process_only=True,
        )
    if model_args.text_encoder is None:
        if model_args.vision_encoder:
            raise ValueError("--vision_encoder needs --text_encoder (tiny encoders are built only as a pair)")
        texts = [join_tokens(tokens, data_args.lang) for tokens in train_rows["tokens"] if tokens]
        tokenizer = build_tokenizer(texts, data_args.lang, vocab_size=model_args.vocab_size)
        nested["text_config"] = dict(recipe.text_config)
        vision_config = system.tiny_vision_config() if system else None
        max_frames = frames_per_row(vision_config, data_args.max_frames)
        config = override_config(
            tiny_config(tokenizer, vision_config, max_frames=max_frames, **top_level), nested
        )
        image_processor = system.tiny_image_processor() if system else tiny_image_processor()
        return M3DModel(config), make_processor(config, tokenizer, image_processor, data_args.lang)
    tokenizer = AutoTokenizer.from_pretrained(model_args.text_encoder, add_prefix_space=True)
    if model_args.vision_encoder:
        vision, image_processor = model_args.vision_encoder, _image_processor(model_args.vision_encoder)
    else:  # a text encoder alone: the frames go through a tiny ViT built from its config
        vision_config = tiny_config(tokenizer).vision_config
        vision, image_processor = (
            AutoModel.from_config(vision_config, add_pooling_layer=False),
            tiny_image_processor(),
        )
    vision_config = AutoConfig.from_pretrained(vision) if isinstance(vision, str) else vision.config
    max_frames = frames_per_row(vision_config, data_args.max_frames)  # a video encoder's clip length
    model = M3DModel.from_encoders_pretrained(
        model_args.text_encoder, vision, max_frames=max_frames, **top_level
    )
    return model, make_processor(model.config, tokenizer, image_processor, data_args.lang)


def count_frames(rows: datasets.Dataset) -> int:
    """How many frames the rows hold, read from the Arrow column (no image is decoded)."""
    if "frames" not in rows.column_names or not len(rows):
        return 0
    return pc.sum(pc.list_value_length(rows.with_format("arrow")["frames"])).as_py() or 0


def make_processor(config: M3DConfig, tokenizer, image_processor, lang: str) -> M3DProcessor:
    """A processor with the model's label sets and frame count; it pads the pieces to a multiple of a Longformer's
    attention window, so that the encoder need not pad (and warn) itself."""
    window = getattr(config.text_config, "attention_window", None)
    return M3DProcessor(
        image_processor, tokenizer, entity_types=config.entity_types, relation_types=config.relation_types,
        grounding_types=config.grounding_types, max_frames=config.max_frames, lang=lang,
        pad_to_multiple_of=max(window) if isinstance(window, list) else window,
    )  # fmt: skip


def _image_processor(vision: str):
    """The vision encoder's image processor, PIL backend (frames are PIL images; the default backend needs
    torchvision); ViT defaults when its folder has none."""
    try:
        return AutoImageProcessor.from_pretrained(vision, backend="pil")
    except (OSError, ValueError):
        logger.warning(f"{vision} has no image processor: using ViTImageProcessorPil defaults")
        return ViTImageProcessorPil()


def count_windowed(split: datasets.Dataset, processor: M3DProcessor, limit: int) -> int:
    """Documents whose sub-word pieces exceed the encoder's positions: the model reads them through windows."""
    encoded = processor.tokenizer(list(split["tokens"]), is_split_into_words=True)["input_ids"]
    return sum(len(ids) > limit for ids in encoded)


def save_checkpoint(accelerator: Accelerator, output_dir: Path, state: dict) -> None:
    """`OUTPUT/checkpoint-<global step>/`: accelerate's state plus the loop's counters and the best score so far."""
    path = output_dir / f"checkpoint-{state['global_step']}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        (path / "trainer_state.json").write_text(json.dumps(state, indent=2), encoding="utf-8")


def save_model(accelerator: Accelerator, model, processor: M3DProcessor, output_dir: Path) -> None:
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.save_pretrained(
        output_dir, is_main_process=accelerator.is_main_process, state_dict=accelerator.get_state_dict(model)
    )
    if accelerator.is_main_process:
        for weights in output_dir.glob("*.safetensors"):
            restore_default_mode(weights)
        processor.save_pretrained(output_dir)
    accelerator.wait_for_everyone()


def train(
    accelerator: Accelerator,
    model_args: ModelArguments,
    data_args: DataArguments,
    args: TrainArguments,
    recipe: Recipe,
    seed: int,
    output_dir: Path,
) -> dict:
    """One training run; returns the flat final scores (`test_*` when the test split exists, else `eval_*`)."""
    set_seed(seed)
    output_dir.mkdir(parents=True, exist_ok=True)

    # Data: the release (or synthetic data), the missing-modality manifest, the processor and the model.
    with accelerator.main_process_first():
        splits = load_splits(data_args, synthetic_data_root(data_args.cache_dir))
    manifest = modality_manifest(data_args, splits)
    if accelerator.is_main_process:
        save_manifest(manifest, output_dir / "modality_manifest.json")
        restore_default_mode(output_dir / "modality_manifest.json")
    model, processor = build_model_and_processor(model_args, data_args, recipe, splits["train"])
    limit = model.text_window[0] if model.text_window else math.inf
    for name, split in splits.items():
        logger.info(f"{name}: {len(split)} documents, {count_windowed(split, processor, limit)} longer than "
                    f"{limit} pieces (read through windows)", main_process_only=True)  # fmt: skip

    train_split = splits["train"]
    sampler = EpochShuffleSampler(len(train_split), seed)
    train_dataloader = DataLoader(  # its own generator: iterating never draws from the global RNG (dropout's)
        train_split, sampler=sampler, batch_size=recipe.per_device_train_batch_size, generator=torch.Generator(),
        collate_fn=ModalityCollator(processor, manifest["train"]),
    )  # fmt: skip
    eval_dataloaders = {
        name: DataLoader(
            split,
            batch_size=args.per_device_eval_batch_size,
            generator=torch.Generator(),
            collate_fn=ModalityCollator(processor, manifest[name], with_references=True),
        )  # fmt: skip
        for name, split in splits.items()
        if name != "train"
    }
    optimizer = torch.optim.AdamW(
        parameter_groups(model, recipe.encoder_learning_rate, recipe.learning_rate, recipe.weight_decay)
    )
    steps_per_epoch = math.ceil(
        math.ceil(len(train_dataloader) / accelerator.num_processes) / args.gradient_accumulation_steps
    )
    total_steps = args.max_train_steps or recipe.num_train_epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    # A prepared scheduler steps once per process at each optimizer step (accelerate's convention).
    scheduler = get_scheduler(
        recipe.lr_scheduler_type, optimizer, recipe.warmup_steps * accelerator.num_processes,
        total_steps * accelerator.num_processes,
    )  # fmt: skip
    model, optimizer, train_dataloader, scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, scheduler
    )
    eval_dataloaders = {name: accelerator.prepare(loader) for name, loader in eval_dataloaders.items()}

    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_metric": None, "best_epoch": None,
             "epoch_loss": [0.0, 0], "history": []}  # fmt: skip
    if args.resume_from_checkpoint:
        accelerator.load_state(args.resume_from_checkpoint)
        state = json.loads(
            (Path(args.resume_from_checkpoint) / "trainer_state.json").read_text(encoding="utf-8")
        )
        logger.info(f"Resumed from {args.resume_from_checkpoint} at epoch {state['epoch']}, "
                    f"batch {state['step_in_epoch']}", main_process_only=True)  # fmt: skip

    # Training loop: accumulate, clip, step; checkpoint every N steps; evaluate each epoch, keep the best.
    progress = tqdm(total=total_steps, initial=state["global_step"], desc="train",
                    disable=not accelerator.is_local_main_process)  # fmt: skip
    start = time.time()
    for epoch in range(state["epoch"], epochs):
        model.train()
        sampler.epoch = epoch
        skip = state["step_in_epoch"] if epoch == state["epoch"] else 0
        state.update(epoch=epoch, step_in_epoch=skip)
        if not skip:
            state["epoch_loss"] = [0.0, 0]  # sum and count of this epoch's batch losses (for the curves)
        batches = accelerator.skip_first_batches(train_dataloader, skip) if skip else train_dataloader
        for batch in batches:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            state["step_in_epoch"] += 1
            state["epoch_loss"] = [state["epoch_loss"][0] + loss.item(), state["epoch_loss"][1] + 1]
            if not accelerator.sync_gradients:
                continue
            state["global_step"] += 1
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.4f}", epoch=epoch)
            accelerator.log({"train/loss": loss.item(), "train/lr": scheduler.get_last_lr()[-1]},
                            step=state["global_step"])  # fmt: skip
            if args.checkpointing_steps and state["global_step"] % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, output_dir, state)
            if state["global_step"] >= total_steps:
                break
        state.update(epoch=epoch + 1, step_in_epoch=0)
        total, count = state["epoch_loss"]
        state["history"].append({"epoch": epoch, "train_loss": total / max(count, 1)})
        if "validation" in eval_dataloaders:
            scores = evaluate_epoch(accelerator, model, eval_dataloaders["validation"], args.protocol, state)
            state["history"][-1].update(scores)
            metric = selection_score(scores, args.metric_for_best_model, accelerator.unwrap_model(model).config)
            if state["best_metric"] is None or metric > state["best_metric"]:
                state.update(best_metric=metric, best_epoch=epoch)
                save_model(accelerator, model, processor, output_dir)
    progress.close()
    if args.checkpointing_steps:
        save_checkpoint(accelerator, output_dir, state)
    if state["best_epoch"] is None:
        save_model(accelerator, model, processor, output_dir)
    train_seconds = time.time() - start

    results = final_scores(accelerator, eval_dataloaders, args.protocol, state, output_dir)
    results.update(best_epoch=state["best_epoch"], best_metric=state["best_metric"],
                   metric_for_best_model=args.metric_for_best_model, train_seconds=round(train_seconds, 1), seed=seed,
                   protocol=args.protocol, missing_modality_ratio=data_args.missing_modality_ratio,
                   recipe=recipe.to_dict())  # fmt: skip
    if accelerator.is_main_process:
        plot_training_curves(state["history"], output_dir / "training_curves.png")
        data = training_data(data_args, splits)
        write_outputs(model_args, data, args, recipe, results, output_dir)
    accelerator.free_memory()  # the next seed's run prepares (and checkpoints) only its own objects
    return results


def evaluate_epoch(accelerator: Accelerator, model, loader, protocol: str, state: dict) -> dict[str, float]:
    """The flat validation scores (`eval_*`) of the epoch just trained, printed and logged. Relations and groundings
    are decoded at the thresholds best on validation (`choose_thresholds`; the config's for a task without gold
    items), as the saved model will be (`calibrate_thresholds`): the epoch is chosen by the scores it is used with."""
    predictions, references = predict_split(
        accelerator, model, loader, protocol, relation_threshold=0.0, grounding_threshold=0.0
    )
    config = accelerator.unwrap_model(model).config
    thresholds = {
        "relation_threshold": config.relation_threshold,
        "grounding_threshold": config.grounding_threshold,
        **choose_thresholds(predictions, references),
    }
    scores = {
        **flatten_scores(m3d_scores(apply_thresholds(predictions, thresholds), references), "eval_"),
        **{f"eval_{name}": value for name, value in thresholds.items()},
    }
    if accelerator.is_main_process:  # above the progress bar, which is drawn again below
        tqdm.write(
            f"epoch {state['epoch'] - 1} (validation, {protocol}, thresholds {thresholds})\n"
            f"{results_table(scores, 'eval_')}"
        )
    accelerator.log(scores, step=state["global_step"])
    return scores


def final_scores(
    accelerator: Accelerator, loaders: dict, protocol: str, state: dict, output_dir: Path
) -> dict:
    """Scores of the best epoch's weights on the test split, else on validation. The saved model is loaded again and
    prepared for evaluation only (a full copy per process), whatever wraps or shards the training model. Its
    decoding thresholds are first chosen on validation (`calibrate_thresholds`)."""
    split = "test" if "test" in loaders else "validation"
    if split not in loaders:
        return {}
    best = accelerator.prepare_model(M3DModel.from_pretrained(output_dir), evaluation_mode=True)
    thresholds = (
        calibrate_thresholds(accelerator, best, loaders["validation"], protocol, output_dir)
        if "validation" in loaders
        else {}
    )
    prefix = "test_" if split == "test" else "eval_"
    results = flatten_scores(predict_and_score(accelerator, best, loaders[split], protocol), prefix)
    accelerator.print(
        f"{split} ({protocol}, best epoch {state['best_epoch']})\n{results_table(results, prefix)}"
    )
    return {**results, **thresholds}


def calibrate_thresholds(accelerator: Accelerator, model, loader, protocol: str, output_dir: Path) -> dict:
    """The relation and grounding thresholds that maximise their validation F1 (`choose_thresholds`), set in the
    model's config and saved with it (config.json); tasks without gold items in validation keep theirs."""
    predictions, references = predict_split(
        accelerator, model, loader, protocol, relation_threshold=0.0, grounding_threshold=0.0
    )
    thresholds = choose_thresholds(predictions, references)
    config = accelerator.unwrap_model(model).config
    for name, value in thresholds.items():
        setattr(config, name, value)
    if accelerator.is_main_process:
        config.save_pretrained(output_dir)
    accelerator.print(
        f"decoding thresholds chosen on validation ({protocol}): {thresholds or 'none to choose'}"
    )
    return thresholds


def training_data(data_args: DataArguments, splits: dict[str, datasets.Dataset]) -> TrainingData:
    """What the model card says about the documents of the run."""
    kind = "hub" if data_args.dataset_name else "release" if data_args.dataset_dir else "synthetic"
    names = {"train": data_args.train_split, "validation": data_args.eval_split, "test": data_args.test_split}
    return TrainingData(
        kind=kind, lang=data_args.lang, documents={role: len(split) for role, split in splits.items()},
        splits={role: names[role] for role in splits}, location=data_args.dataset_name or data_args.dataset_dir,
        heldout_fraction=data_args.heldout_fraction,
        frames_per_document=data_args.synthetic_frames if kind == "synthetic" else None,
    )  # fmt: skip


def write_outputs(
    model_args, data: TrainingData, args, recipe: Recipe, results: dict, output_dir: Path
) -> None:
    """all_results.json, the model card (when there are scores) and the Hub upload (--push_to_hub)."""
    (output_dir / "all_results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    for split, prefix in (("test", "test_"), ("validation", "eval_")):
        if prefix + "average_f1" in results:
            write_card(model_args, data, args, recipe, results, split, output_dir, prefix)
            break
    if args.push_to_hub:
        push(args, output_dir)


def flat_config(
    model_args: ModelArguments, data_args: DataArguments, args: TrainArguments, recipe: Recipe
) -> dict:
    """Run arguments and the recipe's values (`recipe_*`) as tracker hyper-parameters (scalars only)."""
    merged = {**asdict(model_args), **asdict(data_args), **asdict(args)}
    merged.update({f"recipe_{key}": value for key, value in recipe.to_dict().items()})
    return {
        key: value if isinstance(value, (int, float, str, bool)) else str(value)
        for key, value in merged.items()
    }


def write_card(
    model_args,
    data: TrainingData,
    args,
    recipe: Recipe,
    results: dict,
    split: str,
    output_dir: Path,
    prefix: str,
) -> None:
    """OUTPUT/README.md: the model card of `modeling_m3d.training.model_card` for the scores of `split`."""
    card = model_card(
        {key.replace(prefix, f"{split}_", 1): value for key, value in results.items()},
        model_name=args.hub_model_id or output_dir.name,
        config=M3DModel.config_class.from_pretrained(output_dir),
        data=data,
        split=split,
        protocol=args.protocol,
        missing_modality_ratio=results["missing_modality_ratio"],
        encoders=(model_args.text_encoder, model_args.vision_encoder),
        recipe=recipe,
    )
    card.save(output_dir / "README.md")


def push(args: TrainArguments, output_dir: Path) -> None:
    from huggingface_hub import upload_folder

    repo_id = args.hub_model_id or output_dir.name
    upload_folder(repo_id=repo_id, folder_path=output_dir, ignore_patterns=["checkpoint-*"])


def main() -> None:
    model_args, data_args, args = parse_args()
    try:
        model_args = apply_system(model_args, data_args.lang)
        recipe = resolve_recipe(model_args, args)
    except ValueError as error:  # a bad flag: argparse's usage error (exit status 2), before anything is written
        build_parser().error(str(error))
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    datasets.utils.logging.set_verbosity_warning()
    datasets.disable_progress_bars()  # bars of a few seconds' work, between the log lines
    transformers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.disable_progress_bar()  # "Writing model shards" at every saved epoch
    accelerator = build_accelerator(args)
    accelerator.print(f"recipe: {describe_recipe(recipe)}")
    accelerator.init_trackers("m3d", config=flat_config(model_args, data_args, args, recipe))
    output_dir = Path(args.output_dir)
    if not args.seeds:
        train(accelerator, model_args, data_args, args, recipe, args.seed, output_dir)
    else:
        runs = [train(accelerator, model_args, data_args, args, recipe, seed, output_dir / f"seed-{seed}")
                for seed in args.seeds]  # fmt: skip
        if accelerator.is_main_process:
            write_seed_results(runs, output_dir)
    accelerator.print(f"saved in {output_dir}/: the model (AutoModel.from_pretrained({str(output_dir)!r}) after "
                      "`import modeling_m3d`), all_results.json, README.md (model card), training_curves.png")  # fmt: skip
    accelerator.wait_for_everyone()  # no process tears the process group down while another still works
    accelerator.end_training()


def build_accelerator(args: TrainArguments) -> Accelerator:
    """The Accelerator of a run (also `examples/reproduce.py`'s, shared by its runs), checked for FSDP."""
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to.split(","),
        project_dir=args.output_dir,
        kwargs_handlers=[
            DistributedDataParallelKwargs(find_unused_parameters=True)
        ],  # a missing modality idles modules
    )
    check_fsdp(accelerator)
    return accelerator


def check_fsdp(accelerator: Accelerator) -> None:
    """Validation decodes with `predict`, outside FSDP's forward hooks (`training.full_parameters`): under FSDP1 this
    needs the original parameters; fail before training rather than at the first validation."""
    if accelerator.distributed_type != DistributedType.FSDP or accelerator.is_fsdp2:
        return
    if not accelerator.state.fsdp_plugin.use_orig_params:
        raise ValueError(
            "FSDP1 with flat parameters cannot decode between epochs: set `fsdp_use_orig_params: true` in the "
            "accelerate config, or use `fsdp_version: 2`."
        )


def write_seed_results(runs: list[dict], output_dir: Path) -> None:
    """`seeds_results.json`: mean and variance of every score over the seeds (Table III)."""
    scores = [
        {key: value for key, value in run.items() if key.endswith(("precision", "recall", "f1"))}
        for run in runs
    ]
    aggregate = aggregate_seeds(scores)
    (output_dir / "seeds_results.json").write_text(json.dumps(aggregate, indent=2), encoding="utf-8")
    for key, value in aggregate.items():
        print(f"{key}: {100 * value['mean']:.2f} (variance {10000 * value['variance']:.2f})")


if __name__ == "__main__":
    main()
