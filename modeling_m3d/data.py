"""The documents a run trains and evaluates on, by role (`train`, `validation`, `test`), and their modality cut.

One place for what `examples/train.py` and `examples/evaluate.py` share: the data arguments, loading a release
folder through the builder (:class:`modeling_m3d.builder.M3D`), a Hub-native copy through `datasets.load_dataset`,
or, when neither is given, a synthetic release generated into a working folder (:mod:`modeling_m3d.synthetic`);
carving held-out documents out of one split; and the missing-modality manifest (:mod:`modeling_m3d.modality`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np

from .builder import M3D
from .modality import build_modality_manifest, load_manifest
from .synthetic import write_synthetic_release

ROLES = ("train", "validation", "test")


@dataclass
class DataArguments:
    """Where the documents come from and how they are cut (command-line flags of the example scripts)."""

    dataset_dir: str | None = field(
        default=None, metadata={"help": "Local release copy (data/<lang>/, img/)."}
    )
    dataset_name: str | None = field(default=None, metadata={"help": "Hub-native copy (folder or repo id)."})
    lang: str = field(default="en", metadata={"help": "Language (dataset configuration): en or zh."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str = field(
        default="validation", metadata={"help": "Split scored after each epoch (picks the saved epoch)."}
    )
    test_split: str = field(
        default="test", metadata={"help": "Split scored once at the end, with the saved model."}
    )
    heldout_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Carve this fraction of the training split out (seeded), half as validation, half as test."
        },
    )
    max_train_docs: int | None = field(
        default=None, metadata={"help": "Keep the first N training documents."}
    )
    max_eval_docs: int | None = field(
        default=None, metadata={"help": "Keep the first N validation and N test documents."}
    )
    synthetic_docs: int = field(
        default=96, metadata={"help": "Training documents of the embedded synthetic data."}
    )
    synthetic_frames: int = field(default=4, metadata={"help": "Frames per document of the synthetic data."})
    missing_modality_ratio: float = field(
        default=2 / 3,
        metadata={"help": "Share of documents missing text or video, half each (paper: thirds)."},
    )
    modality_seed: int = field(default=0, metadata={"help": "Seed of the fixed full/text/video-missing cut."})
    modality_manifest: str | None = field(default=None, metadata={"help": "Reuse this manifest JSON."})
    max_frames: int = field(
        default=8, metadata={"help": "Frames per clip the model sees (evenly subsampled)."}
    )
    cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Cache of the prepared datasets and the generated synthetic data (default: datasets')."
        },
    )


def load_release(args: DataArguments, workdir: str | Path) -> datasets.DatasetDict:
    """The release through the M3D builder, a Hub-native copy (`dataset_name`), or, with neither, a synthetic
    release written to `workdir/synthetic-<lang>-<docs>docs-<frames>frames` (one folder per setting: the builder's
    cache is keyed by the folder's path)."""
    if args.dataset_name:
        return datasets.load_dataset(args.dataset_name, args.lang, cache_dir=args.cache_dir)
    data_dir = args.dataset_dir
    if data_dir is None:
        name = f"synthetic-{args.lang}-{args.synthetic_docs}docs-{args.synthetic_frames}frames"
        data_dir = write_synthetic_release(
            Path(workdir) / name,
            docs=args.synthetic_docs,
            lang=args.lang,
            seed=0,
            frames=args.synthetic_frames,
        )
    builder = M3D(config_name=args.lang, data_dir=str(data_dir), cache_dir=args.cache_dir)
    builder.download_and_prepare()
    return builder.as_dataset()


def load_splits(args: DataArguments, workdir: str | Path) -> dict[str, datasets.Dataset]:
    """The `train`, `validation` and `test` documents (those present), by role, from the `*_split` names;
    with `heldout_fraction`, validation and test are carved out of the training split instead."""
    raw = load_release(args, workdir)
    names = dict(zip(ROLES, (args.train_split, args.eval_split, args.test_split), strict=True))
    if names["train"] not in raw:
        raise ValueError(f"--train_split {names['train']!r} is not in the data (splits: {sorted(raw)})")
    if args.heldout_fraction > 0:
        splits = carve_heldout(raw[names["train"]], args.heldout_fraction, args.modality_seed)
    else:
        splits = {role: raw[name] for role, name in names.items() if name in raw}
    limits = {"train": args.max_train_docs, "validation": args.max_eval_docs, "test": args.max_eval_docs}
    return {
        role: split.select(range(min(len(split), limits[role] or len(split))))
        for role, split in splits.items()
    }


def carve_heldout(split: datasets.Dataset, fraction: float, seed: int) -> dict[str, datasets.Dataset]:
    """Hold out a seeded `fraction` of one split (at least 2 documents), half as validation and half as test (e.g.
    when only the release's dev file is at hand); the rest is `train`. Each part keeps the split's order."""
    order = np.random.default_rng(seed).permutation(len(split))
    heldout = max(2, round(fraction * len(split)))
    parts = {
        "train": order[heldout:],
        "validation": order[: heldout // 2],
        "test": order[heldout // 2 : heldout],
    }
    return {role: split.select(np.sort(indices)) for role, indices in parts.items()}


def modality_manifest(args: DataArguments, splits: Mapping[str, datasets.Dataset]) -> dict:
    """The full / text-missing / video-missing assignment of every document of `splits`: the `modality_manifest`
    file (checked to cover them), else a new cut at `missing_modality_ratio` with `modality_seed`."""
    split_ids = {name: list(split["id"]) for name, split in splits.items()}
    if args.modality_manifest:
        return load_manifest(args.modality_manifest, split_ids)
    return build_modality_manifest(split_ids, args.missing_modality_ratio, args.modality_seed)
