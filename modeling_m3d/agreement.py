"""Inter-annotator agreement between two annotations of the same clips (paper Section III, Step 6).

The paper had two groups annotate the same clips and reports Cohen's κ of 78.18%. This module compares two
lists of schema rows (DESIGN §2), A and B, clip by clip (clips are matched by `id`) and scores, per task:

- entities: Cohen's κ over tokens labelled BIO-by-type (`O`, `B-PER`, `I-PER`, ...; scikit-learn's
  `cohen_kappa_score`), and the exact span-and-type F1 of B against A;
- entity chains: MUC, B³, CEAF-e and their mean (the CoNLL F1) of B's chains against A's;
- relations and groundings: F1 of B against A with the project's matching rules (relations: subject and
  object chains each share a mention, equal types; groundings: same frame, same type, IoU > 0.5).

All F1s come from `modeling_m3d.scoring`, with B in the place of the predictions and A in the place of the
references. F1 is symmetric, so swapping A and B changes nothing but precision and recall, which trade
places: `precision` is the share of B's items that A also has, `recall` the share of A's items that B has.

What has no score: a task that neither set annotates in the clips compared (F1 would be 0/0) scores None and
is left out of the means; so is MUC when neither set links two mentions (every chain a singleton: MUC counts
links); κ is None where there are no tokens. When both sets give every token the same single label, κ is 1
(chance agreement is then 1 as well, and κ's formula 0/0; the agreement is perfect).

Raises `ValueError` naming the clip when a clip's tokens or number of frames differ between the sets, or when
an `id` appears twice in one set.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import cohen_kappa_score

from .schema import ENTITY_TYPES, TASK_FIELDS, TASKS, label_name, reference_document, row_id
from .scoring import coref_scores, grounding_scores, ner_scores, relation_scores

OUTSIDE = "O"
# Each task's scorer: (predictions, references) -> scores with `f1`. B stands for the predictions, A for the
# references.
SCORERS: dict[str, Callable[[Sequence, Sequence], dict[str, float]]] = {
    "ner": ner_scores,
    "coref": coref_scores,
    "re": relation_scores,
    "grounding": grounding_scores,
}
# The scores reported per task (besides κ for entities and the item counts).
REPORTED = {
    "ner": ("precision", "recall", "f1"),
    "coref": ("muc_f1", "b3_f1", "ceafe_f1", "f1"),
    "re": ("precision", "recall", "f1"),
    "grounding": ("precision", "recall", "f1"),
}
_COREF_PARTS = ("muc_f1", "b3_f1", "ceafe_f1")


def bio_tags(row: Mapping[str, Any]) -> list[str]:
    """The BIO-by-type tag of each of the row's tokens (`O`, `B-PER`, `I-PER`, ...).

    Nested mentions: every token takes the tag of the longest mention covering it (the first of equal length,
    in the row's entity order), so a nested mention gives way to the one around it and only the outer one is
    labelled, as the processor's BIO labels do (`processing_m3d.bio_labels`). Raises `ValueError` naming the
    record when a mention lies outside the tokens.
    """
    n_tokens = len(row.get("tokens") or ())
    entities = list(row.get("entities") or ())
    tags = np.full(n_tokens, OUTSIDE, dtype=object)
    if not entities:
        return tags.tolist()
    spans = np.array([[int(e["start"]), int(e["end"])] for e in entities], dtype=np.int64)  # (E, 2)
    bad = (spans[:, 0] < 0) | (spans[:, 0] >= spans[:, 1]) | (spans[:, 1] > n_tokens)
    if bad.any():
        i = int(bad.argmax())
        raise ValueError(
            f"record {row_id(row)!r}, field 'entities[{i}]': span [{spans[i, 0]}, {spans[i, 1]}) is not "
            f"within its {n_tokens} tokens"
        )
    types = np.array(
        [
            label_name(e["type"], ENTITY_TYPES, f"record {row_id(row)!r}, field 'entities[{i}].type'")
            for i, e in enumerate(entities)
        ],
        dtype=object,
    )
    tokens = np.arange(n_tokens)
    cover = (spans[:, :1] <= tokens) & (tokens < spans[:, 1:])  # (E, T)
    best = np.where(cover, (spans[:, 1] - spans[:, 0])[:, None], -1).argmax(axis=0)  # (T,)
    prefix = np.where(tokens == spans[best, 0], "B-", "I-").astype(object)
    return np.where(cover.any(axis=0), prefix + types[best], tags).tolist()


def token_kappa(tags_a: Sequence[str], tags_b: Sequence[str]) -> float | None:
    """Cohen's κ of two equally long tag sequences; None when they are empty, 1 when both use one same tag."""
    if len(tags_a) != len(tags_b):
        raise ValueError(f"tag sequences differ in length: {len(tags_a)} and {len(tags_b)}")
    if not tags_a:
        return None
    if len(set(tags_a) | set(tags_b)) == 1:  # chance agreement is 1 too: κ is 0/0, the agreement perfect
        return 1.0
    return float(cohen_kappa_score(tags_a, tags_b))


def pair_clips(
    rows_a: Sequence[Mapping[str, Any]], rows_b: Sequence[Mapping[str, Any]]
) -> tuple[list[tuple[Mapping, Mapping]], list[str], list[str]]:
    """(pairs of A's and B's row of each clip in both sets, in A's order; ids only in A; ids only in B).

    Raises `ValueError` naming the clip when its tokens or its number of frames differ between the sets (the
    annotations would index different units), or when an id appears twice in one set.
    """
    by_id_a, by_id_b = _by_id(rows_a, "A"), _by_id(rows_b, "B")
    pairs = []
    for clip, row_a in by_id_a.items():
        row_b = by_id_b.get(clip)
        if row_b is None:
            continue
        tokens_a, tokens_b = list(row_a.get("tokens") or ()), list(row_b.get("tokens") or ())
        if tokens_a != tokens_b:
            raise ValueError(
                f"clip {clip!r}: the text differs between the sets ({_first_difference(tokens_a, tokens_b)})"
            )
        frames_a, frames_b = len(row_a.get("frames") or ()), len(row_b.get("frames") or ())
        if frames_a != frames_b:
            raise ValueError(f"clip {clip!r}: set A has {frames_a} frames, set B {frames_b}")
        pairs.append((row_a, row_b))
    only_a = [clip for clip in by_id_a if clip not in by_id_b]
    only_b = [clip for clip in by_id_b if clip not in by_id_a]
    return pairs, only_a, only_b


def task_agreement(task: str, documents_a: Sequence[dict], documents_b: Sequence[dict]) -> dict[str, Any]:
    """One task's scores (`REPORTED[task]`) of B's documents against A's, and the number of items `a`, `b`.

    Documents are `reference_document` values. Every score is None when neither set has an item of the task;
    for chains, MUC is None (and left out of `f1`, the mean) when neither set links two mentions.
    """
    field = TASK_FIELDS[task]
    counts = {
        side: sum(len(d[field]) for d in docs) for side, docs in (("a", documents_a), ("b", documents_b))
    }
    if not counts["a"] and not counts["b"]:
        return {**dict.fromkeys(REPORTED[task]), **counts}
    values = SCORERS[task]([d[field] for d in documents_b], [d[field] for d in documents_a])
    scores = {name: values[name] for name in REPORTED[task]}
    if task == "coref":
        if not any(_links(d["chains"]) for d in (*documents_a, *documents_b)):
            scores["muc_f1"] = None
        scores["f1"] = _mean(scores[name] for name in _COREF_PARTS)
    return {**scores, **counts}


def agreement(rows_a: Sequence[Mapping[str, Any]], rows_b: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The agreement of two annotations of the same clips, as a JSON-ready dict.

    Keys: `clips` (`compared`, and the ids and counts of the clips `only_in_a` and `only_in_b`, which are not
    scored), `tasks` (`ner` with `kappa`, `coref`, `re`, `grounding`: see `task_agreement`), `overall`
    (`kappa`, and `average_f1`, the mean of the task F1s that have a score) and `per_clip`: one entry per
    compared clip with its `kappa`, `<task>_f1` and `average_f1`, lowest `average_f1` first (then lowest κ),
    so that the clips to discuss come first; clips with nothing to score come last. Raises `ValueError` when no
    clip is in both sets, and as `pair_clips` does.
    """
    pairs, only_a, only_b = pair_clips(rows_a, rows_b)
    if not pairs:
        raise ValueError(f"no clip is in both sets (A has {len(rows_a)} clips, B {len(rows_b)})")
    documents_a = [reference_document(a) for a, _ in pairs]
    documents_b = [reference_document(b) for _, b in pairs]
    tags = [(bio_tags(a), bio_tags(b)) for a, b in pairs]
    kappa = token_kappa(*(list(itertools.chain.from_iterable(t[side] for t in tags)) for side in (0, 1)))
    tasks = {task: task_agreement(task, documents_a, documents_b) for task in TASKS}
    tasks["ner"] = {"kappa": kappa, **tasks["ner"]}
    per_clip = [
        _clip_agreement(row_id(a), token_kappa(*clip_tags), doc_a, doc_b)
        for (a, _), clip_tags, doc_a, doc_b in zip(pairs, tags, documents_a, documents_b, strict=True)
    ]
    per_clip.sort(key=lambda clip: (_or_inf(clip["average_f1"]), _or_inf(clip["kappa"]), clip["id"]))
    return {
        "clips": {
            "compared": len(pairs),
            "only_in_a": {"count": len(only_a), "ids": only_a},
            "only_in_b": {"count": len(only_b), "ids": only_b},
        },
        "tasks": tasks,
        "overall": {"kappa": kappa, "average_f1": _mean(tasks[task]["f1"] for task in TASKS)},
        "per_clip": per_clip,
    }


def _clip_agreement(clip: str, kappa: float | None, document_a: dict, document_b: dict) -> dict[str, Any]:
    f1 = {f"{task}_f1": task_agreement(task, [document_a], [document_b])["f1"] for task in TASKS}
    return {"id": clip, "kappa": kappa, **f1, "average_f1": _mean(f1.values())}


def _by_id(rows: Sequence[Mapping[str, Any]], side: str) -> dict[str, Mapping[str, Any]]:
    by_id: dict[str, Mapping[str, Any]] = {}
    for index, row in enumerate(rows):
        clip = row_id(row, index)
        if clip in by_id:
            raise ValueError(f"set {side}: clip {clip!r} appears twice")
        by_id[clip] = row
    return by_id


def _first_difference(tokens_a: list[str], tokens_b: list[str]) -> str:
    if len(tokens_a) != len(tokens_b):
        return f"{len(tokens_a)} tokens in A, {len(tokens_b)} in B"
    i = int(np.flatnonzero(np.array(tokens_a, dtype=object) != np.array(tokens_b, dtype=object))[0])
    return f"token {i} is {tokens_a[i]!r} in A, {tokens_b[i]!r} in B"


def _links(chains: Sequence[Sequence[Sequence[int]]]) -> bool:
    """Whether some chain holds two different mentions."""
    return any(len({tuple(mention) for mention in chain}) > 1 for chain in chains)


def _mean(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if present else None


def _or_inf(value: float | None) -> float:
    return math.inf if value is None else value
