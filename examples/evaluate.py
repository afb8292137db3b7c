#!/usr/bin/env python
"""Score a saved M³D model on one split: both protocols, then a missing-modality sweep (paper Fig. 9).

    python examples/evaluate.py --model_dir outputs/m3d-tiny --dataset_dir M3D --lang en --split test \\
        --modality_manifest outputs/m3d-tiny/modality_manifest.json

Writes `evaluation.json` and two plots to --output_dir: F1 of each task against the missing-modality ratio
(`missing_ratio.png`) and F1 per relation type (`relation_types.png`). Runs under `accelerate launch` as well.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import matplotlib
import numpy as np
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import AutoModel, AutoProcessor, HfArgumentParser

from modeling_m3d.data import DataArguments, load_splits, modality_manifest
from modeling_m3d.modality import MODALITY_MODES, build_modality_manifest
from modeling_m3d.schema import PROTOCOLS, TASK_NAMES, TASKS
from modeling_m3d.scoring import m3d_scores, relation_scores
from modeling_m3d.training import ModalityCollator, flatten_scores, predict_split, results_table

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


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
    output_dir: str | None = field(default=None, metadata={"help": "Default: <model_dir>/evaluation."})
    sweep_ratios: list[float] = field(default_factory=lambda: [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    sweep_protocol: str = field(
        default="gold_pairs",
        metadata={"help": "Protocol of the sweep and the per-type F1.", "choices": PROTOCOLS},
    )
    per_device_eval_batch_size: int = 4


def decode(
    accelerator, model, processor, rows, modes: dict, protocol: str, batch_size: int
) -> tuple[list, list]:
    """Predictions and references of `rows`, each with its assigned modality dropped."""
    loader = DataLoader(rows, batch_size=batch_size, collate_fn=ModalityCollator(processor, modes, True))
    return predict_split(accelerator, model, accelerator.prepare(loader), protocol, progress=False)


def joined(manifest: dict[str, dict[str, str]], names: list[str]) -> dict[str, str]:
    """The modality of every document of the named splits of a manifest (ids are unique across splits)."""
    return {doc_id: mode for name in names for doc_id, mode in manifest[name].items()}


def relation_type_f1(predictions: list[dict], references: list[dict], relation_types: list[str]) -> dict:
    """F1 of each relation type present in the references, scoring only the relations of that type."""
    per_type = {}
    for name in relation_types:
        kept = [[r for r in doc["relations"] if r["type"] == name] for doc in references]
        if any(kept):
            found = [[r for r in doc["relations"] if r["type"] == name] for doc in predictions]
            per_type[name] = float(relation_scores(found, kept)["f1"])
    return per_type


def plot_sweep(sweep: dict[str, dict], path: Path) -> None:
    ratios = sorted(sweep, key=float)
    figure, axes = plt.subplots(figsize=(6, 4))
    for task in TASKS:
        axes.plot([float(r) for r in ratios], [100 * sweep[r][f"{task}_f1"] for r in ratios], marker="o",
                  label=TASK_NAMES[task])  # fmt: skip
    axes.plot([float(r) for r in ratios], [100 * sweep[r]["average_f1"] for r in ratios], marker="s", color="black",
              label="Average")  # fmt: skip
    axes.set(xlabel="missing modality ratio", ylabel="F1 (%)", title="Effect of the missing modality ratio")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_relation_types(per_type: dict[str, float], path: Path) -> None:
    names = sorted(per_type)
    figure, axes = plt.subplots(figsize=(8, max(3, 0.28 * len(names) + 1)))
    axes.barh(np.arange(len(names)), [100 * per_type[name] for name in names])
    axes.set(yticks=np.arange(len(names)), xlabel="F1 (%)", title="Relation F1 per type", xlim=(0, 100))
    axes.set_yticklabels(names, fontsize=7)
    axes.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    data_args, args = HfArgumentParser((DataArguments, EvalArguments)).parse_args_into_dataclasses()
    logging.basicConfig(level=logging.INFO)
    accelerator = Accelerator()
    model_dir = Path(args.model_dir)
    output_dir = Path(args.output_dir or model_dir / "evaluation")
    output_dir.mkdir(parents=True, exist_ok=True)
    # evaluation only: a full copy per process, whatever wrapped the model in training
    model = accelerator.prepare_model(AutoModel.from_pretrained(model_dir), evaluation_mode=True)
    processor = AutoProcessor.from_pretrained(model_dir)
    with accelerator.main_process_first():
        splits = load_splits(data_args, output_dir)
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
