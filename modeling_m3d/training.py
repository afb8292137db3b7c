"""Training-side helpers shared by `examples/train.py` and `examples/evaluate.py`.

None of them defines a model's computation: the training recipes (the paper's and the small one), the collator that
applies the missing-modality protocol (`modality`), decoding and scoring a split (FSDP-sharded weights gathered
first), the optimizer parameter groups of a recipe, the results tables, the aggregation over seeds (Table III) and
the model card. Scripts stay flat by calling them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from .configuration_m3d import default_initializer_range
from .modality import drop_modality
from .schema import TASK_NAMES, TASKS, reference_document
from .scoring import m3d_scores

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
    # 20 epochs, batch size 1.
    "paper": Recipe("paper", encoder_learning_rate=5e-6, learning_rate=1e-3),
    # Encoders trained from scratch: 2e-3 throughout (real EN dev data: entity F1 +2 over 1e-3 across three held-out
    # cuts, see README); a small Longformer (2 layers, d_h 128), since the 32-wide one of `modeling_m3d.testing` is
    # sized for unit tests and does not learn real documents; and three M3DConfig knobs beyond the paper that make
    # relations and grounding generalise to unseen documents (measured on the synthetic test split, see their
    # docstrings): a wider pair scorer, the words around each mention in the chain representations (Eq. 17) and slot
    # queries with reference points over the patches (Eq. 18).
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
        model_config={"bilinear_dim": 64, "relation_context": 2, "grounding_pooling": "slots"},
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


def predict_split(accelerator, model, dataloader, protocol: str, progress: bool = True) -> tuple[list, list]:
    """Decode a split with `model.predict` and gather the predictions and references of every process."""
    import torch
    from tqdm.auto import tqdm

    model.eval()
    predictor = accelerator.unwrap_model(model)
    predictions, references = [], []
    with full_parameters(model):
        for batch, gold in tqdm(
            dataloader, desc="eval", disable=not (progress and accelerator.is_main_process)
        ):
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
    recipe: Recipe | None = None,
):
    """A `huggingface_hub.ModelCard` whose `model-index` holds the four task scores and their average; its text
    names the training `recipe` with its values."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    base_models = list(base_models)
    metrics = [
        (f"{task}_{name}", TASK_NAMES[task], name) for task in TASKS for name in ("f1", "precision", "recall")
    ]
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
    if recipe is not None:
        body += f"\n\nTraining recipe: {describe_recipe(recipe)}."
    return ModelCard.from_template(
        data,
        model_id=model_name,
        model_description=body,
        model_type="M³D: text and frame encoders, DFFM fusion, MMCM, NER / chain / relation / grounding heads",
        finetuned_from=", ".join(base_models) or None,
    )
