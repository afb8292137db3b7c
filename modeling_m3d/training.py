"""Training-side helpers shared by `examples/train.py` and `examples/evaluate.py`.

None of them defines a model's computation: the training recipes (the paper's and the small one), the collator that
applies the missing-modality protocol (`modality`), decoding and scoring a split (FSDP-sharded weights gathered
first), the optimizer parameter groups of a recipe, the results tables, the aggregation over seeds (Table III) and
the model card, the plot of a run's curves, where generated data goes and the file mode of saved weights. Scripts
stay flat by calling them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from .configuration_m3d import default_initializer_range
from .modality import drop_modality
from .schema import PROTOCOLS, TASK_FIELDS, TASK_NAMES, TASKS, reference_document
from .scoring import m3d_scores, score_validated, validate_documents

_CONLL = ("muc", "b3", "ceafe")


@dataclass(frozen=True)
class Recipe:
    """How a model is trained: AdamW with two learning rates, a schedule, clipping, and the configs of what is built
    from scratch.

    Attributes:
        name: the key of `RECIPES`.
        encoder_learning_rate: learning rate of the text and frame encoders (`parameter_groups`).
        learning_rate: learning rate of every other module.
        num_train_epochs, per_device_train_batch_size, max_grad_norm (gradient clipping), warmup_steps,
            weight_decay: as in `transformers.TrainingArguments`.
        lr_scheduler_type: a `transformers.get_scheduler` name.
        text_config: text-encoder config fields, used only when the text encoder is built from a config (no
            pretrained one).
        model_config: `M3DConfig` fields beyond the paper.
    """

    name: str
    encoder_learning_rate: float
    learning_rate: float
    num_train_epochs: int = 20
    per_device_train_batch_size: int = 1
    max_grad_norm: float = 5.0
    warmup_steps: int = 0
    weight_decay: float = 0.0
    lr_scheduler_type: str = "linear"
    text_config: Mapping = field(default_factory=dict)
    model_config: Mapping = field(default_factory=dict)

    def with_overrides(self, **values) -> Recipe:
        """A copy with the given fields replaced, except those given as None (flags left at their default)."""
        return replace(self, **{key: value for key, value in values.items() if value is not None})

    def to_dict(self) -> dict:
        """The recipe as plain JSON-ready values (for all_results.json and trackers)."""
        return asdict(self)


RECIPES = {
    # Section VI-C: AdamW, 5e-6 for the pretrained encoders and 1e-3 for the rest, linear schedule, clipping 5.0,
    # 20 epochs, batch size 1; Eq. 19's NER loss averaged over words, every α of Eq. 24 at 1.
    "paper": Recipe("paper", encoder_learning_rate=5e-6, learning_rate=1e-3),
    # Pretrained encoders on the data at hand (the default with one): the paper's, but the encoders at 5e-5 (5e-6 is
    # for 20 epochs on the whole release: in a few epochs it leaves the encoder nearly untrained), the NER loss
    # summed over each document's words, and α = 2 / 10 / 30 for NER / coreference / relations (the pair losses keep
    # a share once NER is no longer ~300 times smaller), "no relation" weighted 0.1 in the relation loss (most chain
    # pairs have none), and the words around each mention in the chain representations (`relation_context`, Eq.
    # 17). MiniLM-L6, EN dev cut 0, 4 epochs, entity / chain / relation F1 on test: `paper` 66.5 / 75.3 / 23.9;
    # without relation_context 81.0 / 74.7 / 15.9 (α re = 1: 81.2 / 71.5 / 8.0); α = 1 / 10 / 10: 80.7 / 77.1 /
    # 32.8; 2 / 10 / 30: 80.4 / 77.0 / 36.9; with "no relation" at 0.1: 79.9 / 79.2 / 36.9 (three cuts × two seeds
    # in the README: relations +4.6 on test, entities −0.5). The whole pair gradient reaches the encoder: 0.3 of it
    # (`small`'s) lifts entities +0.9 but costs relations -2.4 (six runs, 41 documents).
    "finetune": Recipe(
        "finetune",
        encoder_learning_rate=5e-5,
        learning_rate=1e-3,
        model_config={
            "ner_loss_normalization": "document",
            "loss_weights": {"ner": 2.0, "coref": 10.0, "re": 30.0},
            "relation_none_weight": 0.1,
            "relation_context": 2,
        },
    ),
    # Encoders trained from scratch: 2e-3 throughout (real EN dev data: entity F1 +2 over 1e-3 across three held-out
    # cuts, see README); a small Longformer (2 layers, d_h 128), since the 32-wide one of `modeling_m3d.testing` is
    # sized for unit tests and does not learn real documents; three M3DConfig knobs beyond the paper that make
    # relations and grounding generalise to unseen documents (measured on the synthetic test split, see their
    # docstrings): a wider pair scorer, the words around each mention in the chain representations (Eq. 17) and slot
    # queries with reference points over the patches (Eq. 18); and 0.3 of the pair losses' gradient into the encoder
    # (`pair_gradient_scale`): a from-scratch encoder otherwise learns the pair tasks at the expense of entities (real
    # EN dev data, two seeds × three cuts, 41 held-out documents: entity F1 52.2 -> 53.9, chains and relations
    # -0.1 and -0.3; `text-crf` 53.8; see README).
    "small": Recipe(
        "small",
        encoder_learning_rate=2e-3,
        learning_rate=2e-3,
        text_config={
            "hidden_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 256,
            "attention_window": [16, 16],
        },
        model_config={
            "bilinear_dim": 64,
            "relation_context": 2,
            "grounding_pooling": "slots",
            "pair_gradient_scale": 0.3,
        },
    ),
}


class ModalityCollator:
    """`collate_fn` over schema rows: drops each row's assigned modality, then runs the processor.

    With `with_references`, it returns `(batch, references)`, the references being `schema.reference_document` of
    the rows as the model sees them (see `modality.drop_modality`).
    """

    def __init__(self, processor, modes: Mapping[str, str], with_references: bool = False):
        self.processor, self.modes, self.with_references = processor, modes, with_references

    def __call__(self, rows: Sequence[Mapping]):
        rows = [drop_modality(row, self.modes[row["id"]]) for row in rows]
        batch = self.processor(rows, return_tensors="pt")
        if not self.with_references:
            return batch
        relation_types = self.processor.relation_types
        return batch, [reference_document(row, relation_types) for row in rows]


@contextmanager
def full_parameters(model) -> Iterator[None]:
    """Inside the block, every process holds all the weights of `model`, an FSDP-prepared model or any other.

    FSDP gathers a sharded module's weights only around that module's `forward`. `M3DModel.predict` is not the root's
    `forward`, so the root's own weights (embeddings, fusion, heads) would stay sharded: they are gathered here, with
    `unshard` for FSDP2 (`fully_shard`) and `summon_full_params` for FSDP1 (which needs `use_orig_params=True`: with
    flat parameters, nested units cannot run their `forward` inside it). Nested FSDP2 modules keep gathering around
    their own `forward`. Any other model is left as it is.
    """
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    if isinstance(model, FullyShardedDataParallel):
        with FullyShardedDataParallel.summon_full_params(model, writeback=False):
            yield
    elif isinstance(model, FSDPModule):
        model.unshard()
        try:
            yield
        finally:
            model.reshard()
    else:
        yield


def predict_split(
    accelerator, model, dataloader, protocol: str, progress: bool = True, **thresholds: float
) -> tuple[list, list]:
    """Decode a split with `model.predict` (`thresholds`: its `relation_threshold` and `grounding_threshold`, default
    the config's) and gather the predictions and references of every process."""
    import torch
    from tqdm.auto import tqdm

    model.eval()
    predictor = accelerator.unwrap_model(model)
    predictions, references = [], []
    with full_parameters(model):
        for batch, gold in tqdm(
            dataloader, desc="eval", leave=False, disable=not (progress and accelerator.is_main_process)
        ):
            with torch.no_grad(), accelerator.autocast():
                predicted = predictor.predict(**batch, protocol=protocol, **thresholds)
            predictions += accelerator.gather_for_metrics(predicted, use_gather_object=True)
            references += accelerator.gather_for_metrics(gold, use_gather_object=True)
    return predictions, references


def predict_and_score(accelerator, model, dataloader, protocol: str, progress: bool = True) -> dict:
    """`scoring.m3d_scores` of a split decoded with `predict_split`."""
    return m3d_scores(*predict_split(accelerator, model, dataloader, protocol, progress))


# Candidate decoding thresholds (`choose_thresholds`).
THRESHOLD_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))
_THRESHOLDS = {"re": "relation_threshold", "grounding": "grounding_threshold"}


def choose_thresholds(predictions: Sequence[Mapping], references: Sequence[Mapping]) -> dict[str, float]:
    """The `M3DConfig` decoding thresholds that maximise the F1 of their task on these documents.

    `predictions` must be decoded with both thresholds at 0 (every relation and grounding, with its `score`); each
    threshold of `THRESHOLD_GRID` keeps the items scoring at least it, and the best F1 wins (ties: the threshold
    nearest 0.5, the config's default). A task without gold items in `references` is left out, its threshold
    unchanged. Returns e.g. `{"relation_threshold": 0.3, "grounding_threshold": 0.55}`.
    """
    chosen = {}
    for task, name in _THRESHOLDS.items():
        key = TASK_FIELDS[task]
        raw = [prediction[key] for prediction in predictions]
        items, gold = validate_documents(task, raw, [reference[key] for reference in references])
        if not any(gold):
            continue
        scores = [[item["score"] for item in document] for document in raw]  # parallel to `items`

        def f1(threshold: float, task=task, items=items, gold=gold, scores=scores) -> float:
            kept = [
                [item for item, score in zip(document, row, strict=True) if score >= threshold]
                for document, row in zip(items, scores, strict=True)
            ]
            return score_validated(task, kept, gold)["f1"]

        chosen[name] = max(THRESHOLD_GRID, key=lambda t, f1=f1: (f1(t), -abs(t - 0.5)))
    return chosen


# The terms of Eq. 24 (`M3DConfig.loss_weights`) that train each task.
_LOSS_TERMS = {"ner": ("ner",), "coref": ("coref",), "re": ("re",), "grounding": ("grounding_type", "grounding_box")}


def trained_tasks(config) -> list[str]:
    """The tasks (`TASKS` order) with a nonzero loss weight (α of Eq. 24) in `config.loss_weights`; all four if
    none has one. `text-crf`, for instance, trains `["ner"]` only."""
    tasks = [task for task in TASKS if any(config.loss_weights[term] for term in _LOSS_TERMS[task])]
    return tasks or list(TASKS)


def selection_score(scores: Mapping[str, float], metric: str, config) -> float:
    """The validation score (`eval_*` keys) that picks the saved epoch: `eval_<metric>`, except `average_f1`, the
    mean F1 of the tasks the model is trained on (`trained_tasks`): untrained heads' scores are noise."""
    if metric != "average_f1":
        return scores[f"eval_{metric}"]
    tasks = trained_tasks(config)
    return sum(scores[f"eval_{task}_f1"] for task in tasks) / len(tasks)


def apply_thresholds(predictions: Sequence[Mapping], thresholds: Mapping[str, float]) -> list[dict]:
    """Documents decoded with both thresholds at 0, keeping only the relations and groundings whose `score` is at
    least `thresholds["relation_threshold"]` and `thresholds["grounding_threshold"]` (what decoding with them
    keeps)."""
    minimum = {TASK_FIELDS[task]: thresholds[name] for task, name in _THRESHOLDS.items()}
    return [
        {
            **document,
            **{
                key: [item for item in document[key] if item["score"] >= value]
                for key, value in minimum.items()
            },
        }
        for document in predictions
    ]


def parameter_groups(model, encoder_lr: float, head_lr: float, weight_decay: float = 0.0) -> list[dict]:
    """AdamW groups of the paper's recipe: pretrained encoders at `encoder_lr`, every other module at `head_lr`.

    An encoder is any `PreTrainedModel` nested inside `model` (the text and vision backbones).
    """
    from transformers import PreTrainedModel

    encoder_ids = {
        id(param)
        for module in model.modules()
        if isinstance(module, PreTrainedModel) and module is not model
        for param in module.parameters()
    }
    trainable = [param for param in model.parameters() if param.requires_grad]
    groups = [
        {"params": [p for p in trainable if id(p) in encoder_ids], "lr": encoder_lr},
        {"params": [p for p in trainable if id(p) not in encoder_ids], "lr": head_lr},
    ]
    return [dict(group, weight_decay=weight_decay) for group in groups if group["params"]]


def override_config(config, overrides: Mapping):
    """A new config of the same class with `overrides` merged in; a dict value updates that sub-config's fields.

    An `initializer_range` that was the default for the old text width is derived again from the new one.
    """
    merged = config.to_dict()
    if "initializer_range" not in overrides and config.initializer_range == default_initializer_range(
        config.text_config.hidden_size
    ):
        merged["initializer_range"] = None
    for key, value in overrides.items():
        if key not in merged:
            raise ValueError(f"config override {key!r} is not a field of {type(config).__name__}")
        merged[key] = {**merged[key], **value} if isinstance(value, Mapping) else value
    return type(config).from_dict(merged)


def describe_recipe(recipe: Recipe) -> str:
    """One line: the recipe's name, then each of its values, e.g. `small (encoder_learning_rate=0.002, ...)`."""
    values = ", ".join(f"{key}={value}" for key, value in recipe.to_dict().items() if key != "name")
    return f"{recipe.name} ({values})"


def flatten_scores(scores: Mapping[str, float], prefix: str = "") -> dict[str, float]:
    """`scoring.m3d_scores` with `prefix` on every key, plus `coref_precision` and `coref_recall`.

    The coreference F1 is the CoNLL-2012 mean of the MUC, B³ and CEAF-e F1s; its precision and recall here are the
    means of those three metrics' precisions and recalls, so that every task has a P/R/F1 row.
    """
    flat = dict(scores)
    for name in ("precision", "recall"):
        flat.setdefault(
            f"coref_{name}", sum(scores[f"coref_{group}_{name}"] for group in _CONLL) / len(_CONLL)
        )
    return {f"{prefix}{key}": float(value) for key, value in flat.items()}


def results_table(flat: Mapping[str, float], prefix: str = "") -> str:
    """A fixed-width P/R/F1 table (in %) of the four tasks and their average F1."""
    lines = [f"{'task':<14}{'P':>8}{'R':>8}{'F1':>8}"]
    for task in TASKS:
        cells = [100 * flat[f"{prefix}{task}_{name}"] for name in ("precision", "recall", "f1")]
        lines.append(f"{TASK_NAMES[task]:<14}" + "".join(f"{cell:8.2f}" for cell in cells))
    lines.append(f"{'Average':<14}{'':>16}{100 * flat[f'{prefix}average_f1']:8.2f}")
    return "\n".join(lines)


def aggregate_seeds(results: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float | list[float]]]:
    """Mean and variance of every score over seeds, as Table III reports them (population variance, ddof=0)."""
    if not results:
        raise ValueError("no seed results to aggregate")
    keys = [key for key in results[0] if all(key in result for result in results)]
    aggregate = {}
    for key in keys:
        values = np.asarray([result[key] for result in results], dtype=float)
        aggregate[key] = {
            "mean": float(values.mean()),
            "variance": float(values.var()),
            "values": values.tolist(),
        }
    return aggregate


PROTOCOL_MEANINGS = {
    "gold_pairs": "the paper's protocol: entities are predicted, but chains are predicted over the gold mentions and "
    "relations between the gold chains, so the chain and relation scores do not pay for entity errors",
    "end_to_end": "every output is predicted from the input alone (entities, then chains over them, then relations "
    "between those chains), as when the model is used",
}


@dataclass(frozen=True)
class TrainingData:
    """Where a run's documents came from, for the model card: `kind` is `synthetic` (generated by
    `modeling_m3d.synthetic`), `release` (a local copy of the M³D release read by the builder) or `hub` (a Hub-native
    copy, `location` its folder or repo id); `documents` counts each role's documents (`train`, `validation`,
    `test`); `splits` names the split each role was read from."""

    kind: Literal["synthetic", "release", "hub"]
    lang: str
    documents: Mapping[str, int]
    splits: Mapping[str, str]
    location: str | None = None
    heldout_fraction: float = 0.0
    frames_per_document: int | None = None

    @property
    def dataset_id(self) -> str:
        """The model-index `dataset.type`: `m3d`, a Hub copy's id, or `m3d-synthetic`."""
        return {"synthetic": "m3d-synthetic", "release": "m3d"}.get(self.kind) or str(self.location)

    @property
    def dataset_title(self) -> str:
        """The model-index `dataset.name`."""
        if self.kind == "synthetic":
            return "Synthetic M3D-format data (modeling_m3d.synthetic)"
        return "M3D" if self.kind == "release" else f"M3D (Hub copy {self.location})"

    def describe(self) -> str:
        """A paragraph of Markdown: the source, the documents of each role and how the roles were cut."""
        counts = ", ".join(f"{self.documents[role]} {role}" for role in ("train", "validation", "test")
                           if role in self.documents)  # fmt: skip
        if self.kind == "synthetic":
            source = (
                f"**Generated synthetic documents, not the M³D release**: `modeling_m3d.synthetic` writes made-up "
                f"{self.lang.upper()} subtitles whose entities, chains and relations follow fixed templates, and "
                f"frames showing coloured shapes ({self.frames_per_document} per document) as the boxes to ground. "
                f"Scores on them show that the pipeline runs and learns, not how the model does on real videos."
            )
        elif self.kind == "release":
            source = f"The M³D release ({self.lang.upper()} configuration), read from `{self.location}` by the builder."
        else:
            source = f"The Hub-native copy of M³D `{self.location}`, configuration `{self.lang}`."
        if self.heldout_fraction > 0:
            cut = (f"All documents come from the release split `{self.splits['train']}`: a seeded "
                   f"{self.heldout_fraction:g} of it was held out, half as validation and half as test.")  # fmt: skip
        else:
            cut = "Roles read from the splits " + ", ".join(
                f"`{role}` = `{name}`" for role, name in self.splits.items()
            )
            cut += "."
        return f"{source}\n\nDocuments: {counts}. {cut}"


def model_card(
    flat: Mapping[str, float],
    *,
    model_name: str,
    config,
    data: TrainingData,
    split: str,
    protocol: str,
    missing_modality_ratio: float,
    encoders: tuple[str | None, str | None] = (None, None),
    recipe: Recipe | None = None,
):
    """A `huggingface_hub.ModelCard` a Hub user can act on, built from this module's own template (no empty
    sections): what the model is, the data it saw, the scores with the protocol and missing-modality ratio behind
    them (also in the `model-index`), how to load and run it, and its limitations.

    Args:
        flat: scores with `<split>_` keys (`flatten_scores`), e.g. `test_ner_f1`.
        model_name: the folder or Hub repo id users load.
        config: the model's `M3DConfig`.
        data: where the documents came from (`TrainingData`).
        split: the split scored (`test` or `validation`).
        protocol: one of `schema.PROTOCOLS`.
        missing_modality_ratio: share of the scored documents that lost their text or their frames.
        encoders: the text and frame encoders' pretrained names or folders; None = built from a config.
        recipe: the training recipe.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    if protocol not in PROTOCOLS:
        raise ValueError(f"model_card: unknown protocol {protocol!r}: expected one of {PROTOCOLS}")
    metrics = [
        (f"{task}_{name}", TASK_NAMES[task], name) for task in TASKS for name in ("f1", "precision", "recall")
    ]
    results = [
        EvalResult(
            task_type="token-classification",
            task_name="Multimodal information extraction (M3D)",
            dataset_type=data.dataset_id,
            dataset_name=data.dataset_title,
            dataset_config=data.lang,
            dataset_split=split,
            dataset_args={"protocol": protocol, "missing_modality_ratio": round(missing_modality_ratio, 4)},
            metric_type=name,
            metric_name=f"{label} {name}",
            metric_value=round(flat[f"{split}_{key}"], 4),
        )
        for key, label, name in metrics + [("average_f1", "Average", "f1")]
    ]
    base_models = [name for name in encoders if name and not Path(name).exists()]
    card_data = ModelCardData(
        language=data.lang,
        license="apache-2.0",
        library_name="transformers",
        tags=["m3d", "multimodal", "information-extraction", "video", "grounding"]
        + (["synthetic-data"] if data.kind == "synthetic" else []),
        base_model=base_models or None,
        metrics=["f1", "precision", "recall"],
        model_name=model_name,
        eval_results=results,
    )
    sections = [
        f"# {model_name}",
        _card_model(config, encoders, recipe),
        "## Training data\n\n" + data.describe(),
        _card_scores(flat, split, protocol, missing_modality_ratio, data),
        _card_usage(model_name, data.lang),
        _card_limitations(data, encoders),
    ]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def _encoder_line(role: str, name: str | None, sub_config) -> str:
    size = f"{sub_config.num_hidden_layers} layers, width {sub_config.hidden_size}"
    if name:
        return f"- {role} encoder: `{name}` ({sub_config.model_type}, {size}), pretrained, then fine-tuned"
    return f"- {role} encoder: a {sub_config.model_type} ({size}) built from a config, trained from scratch"


def _card_model(config, encoders: tuple[str | None, str | None], recipe: Recipe | None) -> str:
    fusion = {"dffm": "the denoised feature fusion module (DFFM, a VAE-denoised cross-attention in both directions)",
              "none": "no fusion (each modality alone)", "one_stream": "a one-stream (concatenated) transformer",
              "two_stream": "a two-stream cross-attention fusion"}[config.fusion]  # fmt: skip
    mmcm = "with" if config.uses_mmcm else "without"
    lines = [
        "## Model",
        "",
        "The hierarchical M³D extractor (Section V of *M³D: A Multimodal, Multilingual and Multitask Dataset for "
        "Grounded Document-level Information Extraction*): from a clip's frames and its subtitles it extracts typed "
        "entity mentions, their coreference chains, the relations between chains and typed boxes in the frames.",
        "",
        _encoder_line("Text", encoders[0], config.text_config),
        _encoder_line("Frame", encoders[1], config.vision_config),
        f"- Fusion of the low, middle and high layer features: {fusion}, {mmcm} the missing-modality construction "
        f"module (MMCM); CRF entity tagger, bilinear chain and relation scorers, box head; at most "
        f"{config.max_frames} frames per clip",
    ]
    if recipe is not None:
        lines.append(f"- Training recipe: {describe_recipe(recipe)}.")
    return "\n".join(lines)


def _card_scores(
    flat: Mapping[str, float], split: str, protocol: str, ratio: float, data: TrainingData
) -> str:
    return (
        f"## Scores\n\nOn the `{split}` documents ({data.documents[split]}) of the data above, in %, with the `{protocol}` protocol "
        f"({PROTOCOL_MEANINGS[protocol]}). Missing-modality ratio {ratio:.3f}: that share of the documents was scored "
        f"without its subtitles or without its frames (half each, the seeded cut in `modality_manifest.json`), as in "
        f"the paper; the rest had both.\n\n```\n{results_table(flat, prefix=f'{split}_')}\n```"
    )


_USAGE_TEXT = {
    "en": 'tokens = "Marie Curie was born in Warsaw in 1867 . She moved to Paris .".split()',
    "zh": 'tokens = list("居里夫人1867年出生在华沙。她后来搬到巴黎。")',
}


def _card_usage(model_name: str, lang: str) -> str:
    return f"""## How to use

The code is in the `modeling_m3d` package (`pip install -e .` in the project's repository); importing it registers
the model with the Auto classes. Without it, `trust_remote_code=True` runs the code files saved next to the weights.

```python
import modeling_m3d  # or pass trust_remote_code=True to both from_pretrained calls
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{model_name}")
processor = AutoProcessor.from_pretrained("{model_name}")
{_USAGE_TEXT[lang]}
row = {{"id": "clip-0", "lang": "{lang}", "tokens": tokens, "frames": []}}  # frames: PIL images or image paths
batch = processor([row], return_tensors="pt")
document = model.predict(**batch, protocol="end_to_end")[0]
print(document["entities"], document["relations"])
```

Rows are in the format of `modeling_m3d.schema` (the `M3D` builder's); `document` holds word spans into `tokens`."""


def _card_limitations(data: TrainingData, encoders: tuple[str | None, str | None]) -> str:
    lines = ["## Limitations", ""]
    if data.kind == "synthetic":
        lines.append("- Trained on generated documents only: a smoke test of the pipeline, not an extractor. On "
                     "real subtitles its entities are mostly wrong (e.g. place names tagged as TIME).")  # fmt: skip
    if encoders[0] is None:
        lines.append("- No pretraining: its tokenizer and text encoder were trained from scratch on the training "
                     "documents alone.")  # fmt: skip
    lines += [
        f"- One language: the processor refuses rows whose `lang` is not `{data.lang}`.",
        "- Grounding needs frames in training: the public release's annotation files come without them (the "
        "image archive is a manual download), and a model trained on those files alone scores 0 on grounding.",
    ]
    return "\n".join(lines)


def plot_training_curves(history: Sequence[Mapping[str, float]], path: str | Path) -> None:
    """A PNG of a run's curves by epoch: the mean training loss (left) and, where the run validated, each task's
    validation F1 and their average in % (right). `history` holds one mapping per epoch with `epoch`, `train_loss`
    and optionally `eval_<task>_f1` / `eval_average_f1` keys (the `history` of `examples/train.py`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [entry["epoch"] for entry in history]
    figure, (loss_axes, f1_axes) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axes.plot(epochs, [entry["train_loss"] for entry in history], marker="o")
    loss_axes.set(xlabel="epoch", ylabel="mean training loss", title="Training loss")
    validated = [entry for entry in history if "eval_average_f1" in entry]
    for key, label in [
        *((f"eval_{task}_f1", TASK_NAMES[task]) for task in TASKS),
        ("eval_average_f1", "Average"),
    ]:
        f1_axes.plot([entry["epoch"] for entry in validated], [100 * entry[key] for entry in validated], marker="o",
                     label=label, color="black" if label == "Average" else None)  # fmt: skip
    f1_axes.set(xlabel="epoch", ylabel="F1 (%)", ylim=(-2, 102), title="Validation F1")
    for axes in (loss_axes, f1_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if validated:
        f1_axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    else:
        f1_axes.text(0.5, 0.5, "no validation split", ha="center", va="center", transform=f1_axes.transAxes)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def restore_default_mode(path: str | Path) -> None:
    """Give a file written through a temporary file the mode a plain `open` would have: `0o666` minus the umask.

    safetensors (since 0.8.1) and `tempfile` create their temporary files with mode 0600 and rename them into place,
    so `model.safetensors` (and any file saved that way) would be readable by its owner alone, unlike the files
    around it.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def synthetic_data_root(cache_dir: str | None = None) -> Path:
    """Where generated synthetic releases are written: `<cache_dir>/m3d`, by default under the `datasets` cache
    (`HF_DATASETS_CACHE`, e.g. `~/.cache/huggingface/datasets/m3d`), never inside a model folder."""
    import datasets

    return Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "m3d"
