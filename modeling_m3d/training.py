"""Training-side helpers shared by `examples/train.py` and `examples/evaluate.py`.

None of them defines a model's computation: decoding and scoring a split (FSDP-sharded weights gathered first), the
missing-modality protocol of the paper (Section VI-C and Fig. 9), the optimizer parameter groups of its recipe, the
results tables, the aggregation over seeds (Table III) and the model card. Scripts stay flat by calling them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .configuration_m3d import default_initializer_range
from .scoring import gold_document, m3d_scores

MODALITY_MODES = ("full", "text_missing", "video_missing")
TASKS = ("ner", "coref", "re", "grounding")
TASK_NAMES = {"ner": "Entity", "coref": "Entity chain", "re": "Relation", "grounding": "Grounding"}
_CONLL = ("muc", "b3", "ceafe")
_TEXT_FIELDS = ("tokens", "subtitles", "entities", "chains", "relations")
_VIDEO_FIELDS = ("frames", "groundings")


def assign_modalities(ids: Sequence[str], ratio: float, seed: int) -> dict[str, str]:
    """Cut documents into full / text-missing / video-missing with a fixed seed (paper Section VI-C, Fig. 9).

    `ratio` is the paper's missing-modality ratio: the share of documents with one modality missing, split equally
    between text and video (the default 2/3 gives the thirds of the main experiments). The order of `ids` does not
    matter (they are sorted before the seeded shuffle), and the assignment is nested: a document missing a modality
    at some ratio misses the same one at every larger ratio, so a sweep removes information monotonically.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"missing_modality_ratio must be in [0, 1], got {ratio}")
    ordered = sorted(ids)
    if len(set(ordered)) != len(ordered):
        raise ValueError("document ids must be unique within a split to assign modalities")
    order = np.random.default_rng(seed).permutation(len(ordered))
    per_modality = min(math.floor(ratio * len(ordered) / 2 + 0.5), len(ordered) // 2)
    modes = dict.fromkeys(ordered, "full")
    for rank, index in enumerate(order[: 2 * per_modality]):
        modes[ordered[index]] = MODALITY_MODES[1 + rank % 2]
    return modes


def build_modality_manifest(split_ids: Mapping[str, Sequence[str]], ratio: float, seed: int) -> dict:
    """The manifest `{split: {id: mode}}` for every split, each cut independently with the same seed."""
    return {split: assign_modalities(ids, ratio, seed) for split, ids in split_ids.items()}


def save_manifest(manifest: Mapping, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")


def load_manifest(path: str | Path, split_ids: Mapping[str, Sequence[str]]) -> dict:
    """Read a manifest written by `save_manifest` and check it covers every document of the given splits."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the modality manifest ({err})") from err
    for split, ids in split_ids.items():
        if split not in manifest:
            raise ValueError(f"{path}: the modality manifest has no split {split!r}")
        for doc_id in ids:
            mode = manifest[split].get(doc_id)
            if mode not in MODALITY_MODES:
                raise ValueError(
                    f"{path}: split {split!r}, document {doc_id!r}: field 'mode' is {mode!r}, "
                    f"expected one of {MODALITY_MODES}"
                )
    return manifest


def drop_modality(row: Mapping, mode: str) -> dict:
    """A copy of a schema row (DESIGN §2) with the modality named by `mode` removed, with its annotations.

    A text-missing row loses its tokens, subtitles, entities, chains and relations; a video-missing row loses its
    frames and groundings. The row is both the model's input and the reference it is scored against, so the
    text tasks are scored on documents that have text and grounding on documents that have video.
    """
    if mode not in MODALITY_MODES:
        raise ValueError(f"document {row.get('id')!r}: field 'mode' is {mode!r}, expected one of {MODALITY_MODES}")
    dropped = {"full": (), "text_missing": _TEXT_FIELDS, "video_missing": _VIDEO_FIELDS}[mode]
    return {key: ([] if key in dropped else value) for key, value in row.items()}


class ModalityCollator:
    """`collate_fn` over schema rows: drops each row's assigned modality, then runs the processor.

    With `with_references`, it returns `(batch, references)`, the references being `scoring.gold_document` of the
    rows as the model sees them (see `drop_modality`).
    """

    def __init__(self, processor, modes: Mapping[str, str], with_references: bool = False):
        self.processor, self.modes, self.with_references = processor, modes, with_references

    def __call__(self, rows: Sequence[Mapping]):
        rows = [drop_modality(row, self.modes[row["id"]]) for row in rows]
        batch = self.processor(rows, return_tensors="pt")
        if not self.with_references:
            return batch
        relation_types = self.processor.relation_types
        return batch, [gold_document(row, relation_types=relation_types) for row in rows]


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


def predict_split(accelerator, model, dataloader, protocol: str, progress: bool = True) -> tuple[list, list]:
    """Decode a split with `model.predict` and gather the predictions and references of every process."""
    import torch
    from tqdm.auto import tqdm

    model.eval()
    predictor = accelerator.unwrap_model(model)
    predictions, references = [], []
    with full_parameters(model):
        for batch, gold in tqdm(dataloader, desc="eval", disable=not (progress and accelerator.is_main_process)):
            with torch.no_grad(), accelerator.autocast():
                predicted = predictor.predict(**batch, protocol=protocol)
            predictions += accelerator.gather_for_metrics(predicted, use_gather_object=True)
            references += accelerator.gather_for_metrics(gold, use_gather_object=True)
    return predictions, references


def predict_and_score(accelerator, model, dataloader, protocol: str, progress: bool = True) -> dict:
    """`scoring.m3d_scores` of a split decoded with `predict_split`."""
    return m3d_scores(*predict_split(accelerator, model, dataloader, protocol, progress))


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


def flatten_scores(scores: Mapping[str, float], prefix: str = "") -> dict[str, float]:
    """`scoring.m3d_scores` with `prefix` on every key, plus `coref_precision` and `coref_recall`.

    The coreference F1 is the CoNLL-2012 mean of the MUC, B³ and CEAF-e F1s; its precision and recall here are the
    means of those three metrics' precisions and recalls, so that every task has a P/R/F1 row.
    """
    flat = dict(scores)
    for name in ("precision", "recall"):
        flat.setdefault(f"coref_{name}", sum(scores[f"coref_{group}_{name}"] for group in _CONLL) / len(_CONLL))
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
        aggregate[key] = {"mean": float(values.mean()), "variance": float(values.var()), "values": values.tolist()}
    return aggregate


def model_card(
    flat: Mapping[str, float],
    *,
    model_name: str,
    dataset_name: str,
    lang: str,
    split: str,
    protocol: str,
    missing_modality_ratio: float,
    base_models: Iterable[str] = (),
    description: str = "",
):
    """A `huggingface_hub.ModelCard` whose `model-index` holds the four task scores and their average."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    base_models = list(base_models)
    metrics = [(f"{task}_{name}", TASK_NAMES[task], name) for task in TASKS for name in ("f1", "precision", "recall")]
    results = [
        EvalResult(
            task_type="token-classification",
            task_name="Multimodal information extraction (M3D)",
            dataset_type=dataset_name,
            dataset_name=dataset_name,
            dataset_config=lang,
            dataset_split=split,
            dataset_args={"protocol": protocol, "missing_modality_ratio": missing_modality_ratio},
            metric_type=name,
            metric_name=f"{label} {name}",
            metric_value=round(flat[f"{split}_{key}"], 4),
        )
        for key, label, name in metrics + [("average_f1", "Average", "f1")]
    ]
    data = ModelCardData(
        language=lang,
        license="apache-2.0",
        library_name="transformers",
        tags=["m3d", "multimodal", "information-extraction", "video", "grounding"],
        base_model=base_models or None,
        metrics=["f1", "precision", "recall"],
        model_name=model_name,
        eval_results=results,
    )
    table = results_table(flat, prefix=f"{split}_")
    body = (
        f"{description}\n\nScores on the `{split}` split ({protocol} protocol, missing-modality ratio "
        f"{missing_modality_ratio:.3f}), in %:\n\n```\n{table}\n```"
    )
    return ModelCard.from_template(
        data,
        model_id=model_name,
        model_description=body,
        model_type="M³D: text and frame encoders, DFFM fusion, MMCM, NER / chain / relation / grounding heads",
        finetuned_from=", ".join(base_models) or None,
    )
