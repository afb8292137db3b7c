#!/usr/bin/env python
"""Score a model saved by train.py on a split: both protocols, then a missing-modality sweep (paper Fig. 9).

    python examples/evaluate.py --model_dir m3d-hier                     # the default run's model and data
    python examples/evaluate.py --model_dir m3d-en --dataset_dir M3D --lang en --split test \\
        --modality_manifest m3d-en/modality_manifest.json

The data flags are train.py's: give the ones the model was trained with, so that --split names the same
documents. Writes to --output_dir (default MODEL_DIR/evaluation) `evaluation.json` and two plots: F1 of each
task against the missing-modality ratio (`missing_ratio.png`) and relation F1 per type (`relation_types.png`,
types without any example in the split marked as such). Runs under `accelerate launch` as well.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import matplotlib
import numpy as np
import transformers
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import AutoModel, AutoProcessor, HfArgumentParser

from modeling_m3d.data import DataArguments, load_splits, modality_manifest
from modeling_m3d.modality import MODALITY_MODES, build_modality_manifest
from modeling_m3d.schema import PROTOCOLS, TASK_NAMES, TASKS
from modeling_m3d.scoring import m3d_scores, relation_scores
from modeling_m3d.training import (
    ModalityCollator,
    flatten_scores,
    predict_split,
    results_table,
    synthetic_data_root,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NO_DATA = {"color": "0.55", "style": "italic"}  # text style of relation types without examples


@dataclass
class EvalArguments:
    model_dir: str = field(metadata={"help": "A folder written by train.py (model, processor, manifest)."})
    split: str = field(
        default="test",
        metadata={
            "help": "train, validation or test (see train.py's split flags), or several joined by +, as in "
            "datasets: validation+test."
        },
    )
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of evaluation.json and the plots. Default: MODEL_DIR/evaluation."},
    )
    sweep_ratios: list[float] = field(
        default_factory=lambda: [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
        metadata={"help": "Missing-modality ratios of the sweep: the share of documents scored without their "
                  "subtitles or frames (half each)."},
    )  # fmt: skip
    sweep_protocol: str = field(
        default="gold_pairs",
        metadata={"help": "Protocol of the sweep and the per-type F1: gold_pairs (the paper's) or end_to_end.",
                  "choices": PROTOCOLS},
    )  # fmt: skip
    per_device_eval_batch_size: int = field(default=4, metadata={"help": "Documents per batch and process."})


def decode(
    accelerator, model, processor, rows, modes: dict, protocol: str, batch_size: int
) -> tuple[list, list]:
    """Predictions and references of `rows`, each with its assigned modality dropped."""
    loader = DataLoader(rows, batch_size=batch_size, collate_fn=ModalityCollator(processor, modes, True))
    return predict_split(accelerator, model, accelerator.prepare(loader), protocol, progress=False)


def joined(manifest: dict[str, dict[str, str]], names: list[str]) -> dict[str, str]:
    """The modality of every document of the named splits of a manifest (ids are unique across splits)."""
    return {doc_id: mode for name in names for doc_id, mode in manifest[name].items()}


def relation_type_f1(
    predictions: list[dict], references: list[dict], relation_types: list[str]
) -> dict[str, float | None]:
    """F1 of each relation type, scoring only the relations of that type; None for a type with no example in the
    references (its F1 is undefined, unlike a 0 for a type the model misses)."""
    per_type = {}
    for name in relation_types:
        kept = [[r for r in doc["relations"] if r["type"] == name] for doc in references]
        found = [[r for r in doc["relations"] if r["type"] == name] for doc in predictions]
        per_type[name] = float(relation_scores(found, kept)["f1"]) if any(kept) else None
    return per_type


def plot_sweep(sweep: dict[str, dict], path: Path) -> None:
    ratios = sorted(sweep, key=float)
    figure, axes = plt.subplots(figsize=(7.5, 4))
    for task in TASKS:
        axes.plot([float(r) for r in ratios], [100 * sweep[r][f"{task}_f1"] for r in ratios], marker="o",
                  label=TASK_NAMES[task])  # fmt: skip
    axes.plot([float(r) for r in ratios], [100 * sweep[r]["average_f1"] for r in ratios], marker="s", color="black",
              label="Average")  # fmt: skip
    axes.set(xlabel="missing modality ratio", ylabel="F1 (%)", title="Effect of the missing modality ratio")
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))  # beside the axes, over no data point
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_relation_types(per_type: dict[str, float | None], path: Path) -> None:
    """Horizontal bars of F1 per relation type, each labelled with its value; a type with no example in the split
    gets no bar but a grey "no examples in this split", so that it does not read as an F1 of 0."""
    names = sorted(per_type)
    scored = [per_type[name] is not None for name in names]
    figure, axes = plt.subplots(figsize=(8, max(3, 0.28 * len(names) + 1)))
    heights = [100 * per_type[name] if ok else 0.0 for name, ok in zip(names, scored, strict=True)]
    axes.barh(np.arange(len(names)), heights, color="tab:blue")
    for row, (height, ok) in enumerate(zip(heights, scored, strict=True)):
        label, style = (f"{height:.1f}", {"color": "black"}) if ok else ("no examples in this split", NO_DATA)
        axes.text(height + 1, row, label, va="center", fontsize=7, **style)
    axes.set(yticks=np.arange(len(names)), xlabel="F1 (%)", title="Relation F1 per type", xlim=(0, 110))
    axes.set_yticklabels(names, fontsize=7)
    for tick, ok in zip(axes.get_yticklabels(), scored, strict=True):
        tick.set_color("black" if ok else NO_DATA["color"])
    axes.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def build_parser() -> HfArgumentParser:
    """The command line: the module docstring as description, one flag per argument field."""
    return HfArgumentParser(
        (DataArguments, EvalArguments),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main() -> None:
    data_args, args = build_parser().parse_args_into_dataclasses()
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    datasets.utils.logging.set_verbosity_warning()
    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights"
    accelerator = Accelerator()
    model_dir = Path(args.model_dir)
    output_dir = Path(args.output_dir or model_dir / "evaluation")
    output_dir.mkdir(parents=True, exist_ok=True)
    # evaluation only: a full copy per process, whatever wrapped the model in training
    model = accelerator.prepare_model(AutoModel.from_pretrained(model_dir), evaluation_mode=True)
    processor = AutoProcessor.from_pretrained(model_dir)
    with accelerator.main_process_first():
        splits = load_splits(data_args, synthetic_data_root(data_args.cache_dir))
    names = args.split.split("+")
    missing = [name for name in names if name not in splits]
    if missing:
        raise ValueError(f"--split {args.split!r}: {missing} not in the data (splits: {sorted(splits)})")
    rows = datasets.concatenate_datasets([splits[name] for name in names])
    split_ids = {name: list(splits[name]["id"]) for name in names}
    modes = joined(modality_manifest(data_args, {name: splits[name] for name in names}), names)

    report = {"split": args.split, "documents": len(rows), "protocols": {}, "missing_ratio_sweep": {}}
    batch_size = args.per_device_eval_batch_size
    for protocol in PROTOCOLS:
        predictions, references = decode(accelerator, model, processor, rows, modes, protocol, batch_size)
        report["protocols"][protocol] = flatten_scores(m3d_scores(predictions, references))
        accelerator.print(f"{args.split} ({protocol})\n{results_table(report['protocols'][protocol])}")
        if protocol == args.sweep_protocol:
            report["relation_type_f1"] = relation_type_f1(predictions, references, processor.relation_types)
    for ratio in args.sweep_ratios:
        swept = joined(build_modality_manifest(split_ids, ratio, data_args.modality_seed), names)
        decoded = decode(accelerator, model, processor, rows, swept, args.sweep_protocol, batch_size)
        counts = {f"documents_{mode}": list(swept.values()).count(mode) for mode in MODALITY_MODES}
        report["missing_ratio_sweep"][f"{ratio:g}"] = {**counts, **flatten_scores(m3d_scores(*decoded))}
    if accelerator.is_main_process:
        (output_dir / "evaluation.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        plot_sweep(report["missing_ratio_sweep"], output_dir / "missing_ratio.png")
        plot_relation_types(report["relation_type_f1"], output_dir / "relation_types.png")
        accelerator.print(f"wrote {output_dir / 'evaluation.json'} and the plots")


if __name__ == "__main__":
    main()
