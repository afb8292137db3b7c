"""The missing-modality protocol of the paper (Section VI-C, Fig. 9): which documents lose their text or video.

Each split is cut with a fixed seed into full, text-missing and video-missing documents; the cut is stored as a
manifest `{split: {id: mode}}` (`OUTPUT/modality_manifest.json`) so that evaluation sees the same documents in the
same modality as training. `drop_modality` applies a document's mode to its schema row (DESIGN §2).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .schema import row_id

MODALITY_MODES = ("full", "text_missing", "video_missing")
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
    """Write `manifest` as JSON to `path`, through a temporary file renamed at the end."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, suffix=".tmp", delete=False
    ) as file:
        json.dump(manifest, file, indent=2, sort_keys=True)
    os.replace(file.name, path)


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
        raise ValueError(
            f"document {row_id(row)!r}: field 'mode' is {mode!r}, expected one of {MODALITY_MODES}"
        )
    dropped = {"full": (), "text_missing": _TEXT_FIELDS, "video_missing": _VIDEO_FIELDS}[mode]
    return {key: ([] if key in dropped else value) for key, value in row.items()}
