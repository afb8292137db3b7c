"""Scores of the four M³D tasks and their combination (paper Section VI-B and Table VI).

Every metric of the project is computed here, once: the `evaluate` modules under `metrics/`, the training
loop and the evaluation script all call these functions. Inputs follow DESIGN §4: `predictions` and
`references` are lists with one value per document.

- Entities (`ner_*`): exact span and type.
- Entity chains (`coref_*`): MUC, B³, CEAF-m (φ3) and CEAF-e (φ4) as the CoNLL-2012 reference scorer v8.01
  computes them, and their CoNLL average.
- Relations (`re_*`): chain-level triples; subject and object chains must each share a mention with the
  gold ones and the types must be equal; one-to-one by maximum bipartite matching.
- Grounding (`grounding_*`): same frame, same type and IoU > 0.5, one-to-one by maximum bipartite matching;
  COCO-style average precision when predicted boxes carry a `score`.

Counts are summed over documents before any division (micro averages). The `*_counts` functions return
summable `Counter`s, so a loop can accumulate them batch by batch and call `finalize(task, counts)` at the end.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from .configuration_m3d import ENTITY_TYPES, GROUNDING_TYPES

IOU_THRESHOLD = 0.5
# Relation types whose subject and object may be swapped (the release annotates each in one direction only).
SYMMETRIC_RELATION_TYPES = frozenset(
    {
        "PER-PER_couple",
        "PER-PER_colleague",
        "PER-PER_peer",
        "PER-PER_brother_sister",
        "PER-PER_neighbor",
        "PER-PER_other_relatives",
        "LOC-LOC_nearby",
        "ORG-ORG_nearby",
    }
)
# Precision/recall groups of each task ("" = the task's own precision, recall, f1) and its Table VI errors.
_GROUPS = {"ner": ("",), "coref": ("muc_", "b3_", "ceafe_", "ceafm_"), "re": ("",), "grounding": ("",)}
_ERRORS = {
    "ner": ("boundary", "type"),
    "coref": ("wrong_entity", "missing_entity"),
    "re": ("unrelated", "type"),
    "grounding": ("boundary", "type"),
}
_COCO_RECALL_POINTS = np.linspace(0.0, 1.0, 101)
# The paper's BibTeX entry: the first citation of every metric module (see `metric_info`).
M3D_CITATION = """\
@misc{liu-m3d,
  title = {M$^3$D: A Multimodal, Multilingual and Multitask Dataset for Grounded Document-level Information Extraction},
  author = {Liu, Jiang and Li, Bobo and Yang, Xinran and Yang, Na and Fei, Hao and Zhang, Mingyao and Li, Fei and Ji, Donghong},
}
"""

Mention = tuple[int, int]


# --------------------------------------------------------------------------------------------------------
# Validation: turns one document's value into plain tuples/arrays, or raises naming document and field.
# --------------------------------------------------------------------------------------------------------


def _fail(side: str, doc: int, field: str, problem: str) -> ValueError:
    return ValueError(f"{side} document {doc}, field '{field}': {problem}")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


# Each validator first tries a fast path that accepts only plain, well-formed input (Python ints, lists);
# otherwise the item-by-item path normalises the input (numpy integers, tuples) or raises the error naming
# the document and the field.


def _plain_spans(spans: Iterable[tuple]) -> bool:
    return all(type(span[0]) is int and type(span[1]) is int and 0 <= span[0] < span[1] for span in spans)


def _plain_names(names: Iterable[Any]) -> bool:
    return all(type(name) is str and name for name in names)


def _fields(items: Sequence, keys: tuple[str, ...]) -> list[tuple] | None:
    """The values of `keys` of every dict in `items`, or None when one is not a dict holding them all."""
    try:
        return [tuple(item[key] for key in keys) for item in items]
    except (TypeError, KeyError, IndexError):
        return None


def _items(value: Any, side: str, doc: int, field: str) -> Sequence:
    if not isinstance(value, (list, tuple)):
        raise _fail(side, doc, field, f"expected a list, got {type(value).__name__}")
    return value


def _get(item: Any, key: str, side: str, doc: int, field: str) -> Any:
    if not isinstance(item, Mapping) or key not in item:
        raise _fail(side, doc, field, f"expected a dict with key '{key}', got {item!r}")
    return item[key]


def _type_name(value: Any, side: str, doc: int, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(side, doc, field, f"expected a non-empty type name, got {value!r}")
    return value


def _span(start: Any, end: Any, side: str, doc: int, field: str) -> Mention:
    if not (_is_int(start) and _is_int(end) and 0 <= start < end):
        raise _fail(side, doc, field, f"expected integers 0 <= start < end, got start={start!r}, end={end!r}")
    return int(start), int(end)


def _mention(value: Any, side: str, doc: int, field: str) -> Mention:
    if not isinstance(value, (list, tuple, np.ndarray)) or len(value) != 2:
        raise _fail(side, doc, field, f"expected a mention [start, end], got {value!r}")
    return _span(value[0], value[1], side, doc, field)


def _mentions(chain: Any, side: str, doc: int, field: str) -> list[Mention]:
    try:
        mentions = [(start, end) for start, end in chain] if isinstance(chain, list) else None
    except (TypeError, ValueError):
        mentions = None
    if mentions is None or not _plain_spans(mentions):
        items = _items(chain, side, doc, field)
        mentions = [_mention(mention, side, doc, f"{field}[{j}]") for j, mention in enumerate(items)]
    return mentions


def validate_lengths(predictions: Any, references: Any) -> None:
    """Both sides must be lists with one value per document."""
    for side, value in (("predictions", predictions), ("references", references)):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{side} must be a list with one value per document, got {type(value).__name__}")
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions and references must have one value per document: got {len(predictions)} "
            f"predictions and {len(references)} references"
        )


def _entity(entity: Any, side: str, doc: int, field: str) -> tuple[int, int, str]:
    start, end = _span(
        _get(entity, "start", side, doc, field), _get(entity, "end", side, doc, field), side, doc, field
    )
    return start, end, _type_name(_get(entity, "type", side, doc, field), side, doc, f"{field}.type")


def validate_entities(entities: Any, side: str = "predictions", doc: int = 0) -> set[tuple[int, int, str]]:
    """One document's entities `[{start, end, type}]` as a set of `(start, end, type)` (duplicates dropped)."""
    items = _items(entities, side, doc, "entities")
    spans = _fields(items, ("start", "end", "type"))
    if spans is None or not (_plain_spans(spans) and _plain_names(span[2] for span in spans)):
        spans = [_entity(entity, side, doc, f"entities[{i}]") for i, entity in enumerate(items)]
    return set(spans)


def validate_chains(chains: Any, side: str = "predictions", doc: int = 0) -> list[list[Mention]]:
    """One document's chains `[[[start, end], ...], ...]`, with repeated mentions dropped.

    As in the CoNLL reference scorer, a mention seen earlier in the document (in the same chain or another)
    is dropped; chains left empty disappear.
    """
    seen: set[Mention] = set()
    clusters = []
    for i, chain in enumerate(_items(chains, side, doc, "chains")):
        cluster = []
        for mention in _mentions(chain, side, doc, f"chains[{i}]"):
            if mention not in seen:
                seen.add(mention)
                cluster.append(mention)
        if cluster:
            clusters.append(cluster)
    return clusters


def _argument(chain: Any, side: str, doc: int, field: str) -> frozenset[Mention]:
    mentions = _mentions(chain, side, doc, field)
    if not mentions:
        raise _fail(side, doc, field, "a relation argument needs at least one mention")
    return frozenset(mentions)


def validate_relations(
    relations: Any, side: str = "predictions", doc: int = 0
) -> list[tuple[frozenset[Mention], frozenset[Mention], str]]:
    """One document's relations `[{subject, object, type}]` as `(subject mentions, object mentions, type)`."""
    items = _items(relations, side, doc, "relations")
    fields = _fields(items, ("subject", "object", "type"))
    if fields is None:
        keys = ("subject", "object", "type")
        fields = [
            tuple(_get(item, key, side, doc, f"relations[{i}]") for key in keys)
            for i, item in enumerate(items)
        ]
    return [
        (
            _argument(subject, side, doc, f"relations[{i}].subject"),
            _argument(obj, side, doc, f"relations[{i}].object"),
            _type_name(kind, side, doc, f"relations[{i}].type"),
        )
        for i, (subject, obj, kind) in enumerate(fields)
    ]


def _grounding(item: Any, side: str, doc: int, field: str) -> tuple:
    frame, box = _get(item, "frame", side, doc, field), _get(item, "box", side, doc, field)
    if not _is_int(frame) or frame < 0:
        raise _fail(side, doc, f"{field}.frame", f"expected a frame index >= 0, got {frame!r}")
    if not (
        isinstance(box, (list, tuple, np.ndarray))
        and len(box) == 4
        and all(_is_number(v) for v in box)
        and math.isfinite(sum(box))
        and box[2] >= 0
        and box[3] >= 0
    ):
        raise _fail(side, doc, f"{field}.box", f"expected [cx, cy, w, h], finite, w and h >= 0, got {box!r}")
    score = item.get("score")
    if score is not None and not (_is_number(score) and math.isfinite(score)):
        raise _fail(side, doc, f"{field}.score", f"expected a finite number, got {score!r}")
    return (
        int(frame),
        _type_name(_get(item, "type", side, doc, field), side, doc, f"{field}.type"),
        box,
        score,
    )


def _plain_groundings(fields: list[tuple]) -> bool:
    return all(
        type(frame) is int
        and frame >= 0
        and type(kind) is str
        and kind
        and type(box) is list
        and len(box) == 4
        and all(type(v) is float or type(v) is int for v in box)
        and math.isfinite(sum(box))
        and box[2] >= 0
        and box[3] >= 0
        and (score is None or (type(score) is float and math.isfinite(score)))
        for frame, kind, box, score in fields
    )


def validate_groundings(groundings: Any, side: str = "predictions", doc: int = 0) -> dict[str, Any]:
    """One document's boxes `[{frame, type, box, score?}]` as arrays `frame`, `type`, `box` (n, 4), `score`.

    `score` is None when the boxes carry no score; a document mixing boxes with and without one is an error.
    """
    items = _items(groundings, side, doc, "groundings")
    fields = _fields(items, ("frame", "type", "box"))
    if fields is not None:
        fields = [(*values, item.get("score")) for values, item in zip(fields, items, strict=True)]
    if fields is None or not _plain_groundings(fields):
        fields = [_grounding(item, side, doc, f"groundings[{i}]") for i, item in enumerate(items)]
    frames, types, boxes, scores = zip(*fields, strict=True) if fields else ((), (), (), ())
    missing = [score is None for score in scores]
    if any(missing) and not all(missing):
        first = missing.index(not missing[0])
        raise _fail(
            side, doc, f"groundings[{first}].score", "either every box of a document has a score or none"
        )
    return {
        "frame": np.asarray(frames, dtype=np.int64),
        "type": np.asarray(types, dtype=object),
        "box": np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        "score": None if any(missing) else np.asarray(scores, dtype=np.float64),
    }


# --------------------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------------------


def _documents(predictions: Sequence, references: Sequence, validate) -> Iterable[tuple[int, Any, Any]]:
    """(document index, validated prediction, validated reference) for each document."""
    validate_lengths(predictions, references)
    for doc, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
        yield doc, validate(prediction, "predictions", doc), validate(reference, "references", doc)


def _tp_counts(tp: int, n_pred: int, n_gold: int) -> dict[str, int]:
    return {
        "recall_num": tp,
        "recall_den": n_gold,
        "precision_num": tp,
        "precision_den": n_pred,
        "predictions": n_pred,
    }


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def finalize(task: str, counts: Mapping[str, float]) -> dict[str, float]:
    """Scores from (summed) counts of `task`: precision, recall and f1 of each group, and Table VI error rates.

    For "coref" the groups are `muc_`, `b3_`, `ceafe_`, `ceafm_`, and `f1` is the CoNLL-2012 average of the MUC,
    B³ and CEAF-e F1s. Error rates are counts over the number of predictions. Nothing divides by zero: 0 then.
    """
    scores = {}
    for group in _GROUPS[task]:
        precision = _ratio(counts[f"{group}precision_num"], counts[f"{group}precision_den"])
        recall = _ratio(counts[f"{group}recall_num"], counts[f"{group}recall_den"])
        scores.update(
            {f"{group}precision": precision, f"{group}recall": recall, f"{group}f1": _f1(precision, recall)}
        )
    if task == "coref":
        scores["f1"] = (scores["muc_f1"] + scores["b3_f1"] + scores["ceafe_f1"]) / 3
    for name in _ERRORS[task]:
        scores[f"error_{name}"] = _ratio(counts[f"error_{name}"], counts["predictions"])
    return scores


def _matched_rows(adjacency: np.ndarray) -> np.ndarray:
    """Rows matched by a maximum-cardinality one-to-one matching of the bipartite graph `adjacency` (P, G)."""
    if (adjacency.sum(0) <= 1).all() and (adjacency.sum(1) <= 1).all():
        return adjacency.any(1)
    rows, cols = linear_sum_assignment(adjacency, maximize=True)
    matched = np.zeros(len(adjacency), dtype=bool)
    matched[rows[adjacency[rows, cols]]] = True
    return matched


# --------------------------------------------------------------------------------------------------------
# Entities
# --------------------------------------------------------------------------------------------------------


def bio_to_spans(tags: Sequence[str]) -> list[dict[str, Any]]:
    """Entity spans `{start, end, type}` (end exclusive) of a BIO tag sequence, strict IOB2.

    A chunk starts at `B-X` and runs over the following `I-X`; an `I-X` that does not continue a chunk of
    type X starts nothing (seqeval's `mode="strict", scheme=IOB2`).
    """
    if not len(tags):
        return []
    prefixes, separators, types = np.char.partition(np.asarray(tags, dtype=str), "-").T
    valid = np.where(prefixes == "O", separators == "", np.isin(prefixes, ["B", "I"]) & (types != ""))
    if not valid.all():
        raise ValueError(f"tag {int(valid.argmin())} is not a BIO tag: {tags[int(valid.argmin())]!r}")
    in_chunk = prefixes != "O"
    continues = np.zeros(len(tags), dtype=bool)
    continues[1:] = (prefixes[1:] == "I") & in_chunk[:-1] & (types[1:] == types[:-1])
    # end of the chunk started at i = first j > i that does not continue it
    positions = np.arange(1, len(tags) + 1)
    breaks = np.where(np.append(continues[1:], False), len(tags), positions)
    ends = np.minimum.accumulate(breaks[::-1])[::-1]
    return [
        {"start": int(i), "end": int(ends[i]), "type": str(types[i])} for i in np.flatnonzero(prefixes == "B")
    ]


def ner_counts(predictions: Sequence, references: Sequence) -> Counter:
    """Summable entity counts; Table VI errors: predicted span matches no gold span / span right, type wrong."""
    counts = Counter()
    for _, pred, gold in _documents(predictions, references, validate_entities):
        tp = len(pred & gold)
        gold_spans = {(start, end) for start, end, _ in gold}
        boundary = sum((start, end) not in gold_spans for start, end, _ in pred)
        counts.update(_tp_counts(tp, len(pred), len(gold)))
        counts.update({"error_boundary": boundary, "error_type": len(pred) - tp - boundary})
    return counts


def ner_scores(predictions: Sequence, references: Sequence) -> dict[str, float]:
    """Exact span-and-type precision, recall, f1 (micro) of entities `[{start, end, type}]` per document."""
    return finalize("ner", ner_counts(predictions, references))


# --------------------------------------------------------------------------------------------------------
# Entity chains
# --------------------------------------------------------------------------------------------------------


def _ceaf(similarity: np.ndarray, gold: np.ndarray, pred: np.ndarray) -> float:
    """Best one-to-one alignment score of chains (Luo 2005) from the nonzero similarities of (gold, pred)."""
    if len(np.unique(gold)) == len(gold) and len(np.unique(pred)) == len(pred):
        return float(similarity.sum())
    dense = np.zeros((gold.max() + 1, pred.max() + 1))
    dense[gold, pred] = similarity
    rows, cols = linear_sum_assignment(dense, maximize=True)
    return float(dense[rows, cols].sum())


def _coref_document(pred: list[list[Mention]], gold: list[list[Mention]]) -> dict[str, float]:
    gold_of = {mention: g for g, chain in enumerate(gold) for mention in chain}
    overlap = Counter((gold_of[m], p) for p, chain in enumerate(pred) for m in chain if m in gold_of)
    g_idx = np.fromiter((g for g, _ in overlap), dtype=np.int64, count=len(overlap))
    p_idx = np.fromiter((p for _, p in overlap), dtype=np.int64, count=len(overlap))
    common = np.fromiter(overlap.values(), dtype=np.float64, count=len(overlap))
    gold_sizes = np.array([len(chain) for chain in gold], dtype=np.float64)
    pred_sizes = np.array([len(chain) for chain in pred], dtype=np.float64)
    n_gold, n_pred = gold_sizes.sum(), pred_sizes.sum()
    # MUC: sum over chains of |K| - |partitions of K| = common mentions - nonzero (gold, pred) pairs, both ways
    muc = common.sum() - len(overlap)
    phi4 = 2 * common / (gold_sizes[g_idx] + pred_sizes[p_idx])
    ceafe, ceafm = (_ceaf(s, g_idx, p_idx) if len(overlap) else 0.0 for s in (phi4, common))
    # Table VI: a predicted chain inside one gold chain is right (same size) or misses entities; else wrong
    inside = common == pred_sizes[p_idx]
    exact = int((inside & (common == gold_sizes[g_idx])).sum())
    return {
        "muc_recall_num": muc, "muc_recall_den": n_gold - len(gold),
        "muc_precision_num": muc, "muc_precision_den": n_pred - len(pred),
        "b3_recall_num": float((common**2 / gold_sizes[g_idx]).sum()), "b3_recall_den": n_gold,
        "b3_precision_num": float((common**2 / pred_sizes[p_idx]).sum()), "b3_precision_den": n_pred,
        "ceafe_recall_num": ceafe, "ceafe_recall_den": len(gold),
        "ceafe_precision_num": ceafe, "ceafe_precision_den": len(pred),
        "ceafm_recall_num": ceafm, "ceafm_recall_den": n_gold,
        "ceafm_precision_num": ceafm, "ceafm_precision_den": n_pred,
        "predictions": len(pred),
        "error_wrong_entity": len(pred) - int(inside.sum()),
        "error_missing_entity": int(inside.sum()) - exact,
    }  # fmt: skip


def coref_counts(predictions: Sequence, references: Sequence) -> Counter:
    """Summable MUC, B³, CEAF-e and CEAF-m numerators/denominators; Table VI chain errors."""
    counts = Counter()
    for _, pred, gold in _documents(predictions, references, validate_chains):
        counts.update(_coref_document(pred, gold))
    return counts


def coref_scores(predictions: Sequence, references: Sequence) -> dict[str, float]:
    """MUC (Vilain et al. 1995), B³ (Bagga and Baldwin 1998), CEAF-e/φ4 and CEAF-m/φ3 (Luo 2005), micro-averaged.

    Each document's value is a list of chains, a chain a list of mentions `[start, end]`. Definitions of the
    CoNLL-2012 reference scorer v8.01: singletons count, mentions of one side only count in the denominators,
    repeated mentions are dropped. `f1` is the CoNLL average of the MUC, B³ and CEAF-e F1s.
    """
    return finalize("coref", coref_counts(predictions, references))


# --------------------------------------------------------------------------------------------------------
# Relations
# --------------------------------------------------------------------------------------------------------


def _index(chains: Iterable[frozenset[Mention]]) -> dict[Mention, set[int]]:
    index: dict[Mention, set[int]] = defaultdict(set)
    for k, chain in enumerate(chains):
        for mention in chain:
            index[mention].add(k)
    return index


def _touching(chain: frozenset[Mention], index: Mapping[Mention, set[int]]) -> set[int]:
    return set().union(*(index.get(mention, ()) for mention in chain))


def _relation_document(pred: list, gold: list, symmetric: frozenset[str]) -> dict[str, int]:
    by_subject, by_object = _index(g[0] for g in gold), _index(g[1] for g in gold)
    adjacency = np.zeros((len(pred), len(gold)), dtype=bool)
    related = np.zeros(len(pred), dtype=bool)
    for p, (subject, obj, relation_type) in enumerate(pred):
        forward = _touching(subject, by_subject) & _touching(obj, by_object)
        backward = _touching(subject, by_object) & _touching(obj, by_subject)
        related[p] = bool(forward or backward)
        candidates = forward | backward if relation_type in symmetric else forward
        for k in candidates:
            adjacency[p, k] = gold[k][2] == relation_type
    matched = _matched_rows(adjacency)
    return {
        **_tp_counts(int(matched.sum()), len(pred), len(gold)),
        "error_unrelated": int((~related).sum()),
        "error_type": int((related & ~adjacency.any(1)).sum()),
    }


def relation_counts(
    predictions: Sequence, references: Sequence, symmetric_types: Iterable[str] | None = None
) -> Counter:
    """Summable relation counts; Table VI errors: no gold relation between the two chains (either direction) /
    a gold relation between them, but none of the predicted type and direction."""
    symmetric = SYMMETRIC_RELATION_TYPES if symmetric_types is None else frozenset(symmetric_types)
    counts = Counter()
    for _, pred, gold in _documents(predictions, references, validate_relations):
        counts.update(_relation_document(pred, gold, symmetric))
    return counts


def relation_scores(
    predictions: Sequence, references: Sequence, symmetric_types: Iterable[str] | None = None
) -> dict[str, float]:
    """Chain-level relation precision, recall, f1 (paper Section VI-B).

    A predicted `{subject, object, type}` (subject and object are chains: lists of mentions `[start, end]`)
    can match a gold relation when its subject chain shares a mention with the gold subject chain, its
    object chain with the gold object chain, and the types are equal; for `symmetric_types` (default
    `SYMMETRIC_RELATION_TYPES`) subject and object may also be swapped. Each gold relation is matched at most
    once: true positives are a maximum bipartite matching per document (edges only join equal types, so it
    is the union of the matchings per type).
    """
    return finalize("re", relation_counts(predictions, references, symmetric_types))


# --------------------------------------------------------------------------------------------------------
# Grounding
# --------------------------------------------------------------------------------------------------------


def box_iou(boxes1: np.ndarray | Sequence, boxes2: np.ndarray | Sequence) -> np.ndarray:
    """Pairwise IoU (N, M) of boxes `(cx, cy, w, h)`; 0 where the union is empty (degenerate boxes)."""
    a = np.asarray(boxes1, dtype=np.float64).reshape(-1, 4)[:, None]
    b = np.asarray(boxes2, dtype=np.float64).reshape(-1, 4)[None]
    width = np.minimum(a[..., 0] + a[..., 2] / 2, b[..., 0] + b[..., 2] / 2) - np.maximum(
        a[..., 0] - a[..., 2] / 2, b[..., 0] - b[..., 2] / 2
    )
    height = np.minimum(a[..., 1] + a[..., 3] / 2, b[..., 1] + b[..., 3] / 2) - np.maximum(
        a[..., 1] - a[..., 3] / 2, b[..., 1] - b[..., 3] / 2
    )
    intersection = np.clip(width, 0, None) * np.clip(height, 0, None)
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - intersection
    return np.divide(intersection, union, out=np.zeros_like(union), where=union > 0)


def _greedy_by_score(admissible: np.ndarray, iou: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """COCO matching: in decreasing score, each box takes the free admissible gold box of highest IoU."""
    if (admissible.sum(0) <= 1).all() and (admissible.sum(1) <= 1).all():
        return admissible.any(1)
    matched, taken = np.zeros(len(admissible), dtype=bool), np.zeros(admissible.shape[1], dtype=bool)
    for p in np.argsort(-scores, kind="mergesort"):
        free = admissible[p] & ~taken
        if free.any():
            taken[np.where(free, iou[p], -1.0).argmax()] = matched[p] = True
    return matched


def _average_precision(scores: np.ndarray, matched: np.ndarray, n_gold: int) -> float:
    """COCO-style AP: precision made non-increasing, read at 101 recall points (0 where recall is not reached)."""
    if not n_gold or not len(scores):
        return 0.0
    order = np.argsort(-scores, kind="mergesort")
    tp = np.cumsum(matched[order])
    recall, precision = tp / n_gold, tp / np.arange(1, len(tp) + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    at = np.searchsorted(recall, _COCO_RECALL_POINTS, side="left")
    return float(np.where(at < len(precision), precision[np.minimum(at, len(precision) - 1)], 0.0).mean())


def _average_precisions(detections: list[tuple[np.ndarray, ...]], gold_types: Counter) -> dict[str, float]:
    """`ap50_<type>` from (types, scores, matched) of each document's boxes, and `map50` over types with gold."""
    types, scores, matched = (np.concatenate(column) for column in zip(*detections, strict=True))
    names = sorted(set(types) | set(gold_types))
    ap = {
        f"ap50_{n}": _average_precision(scores[types == n], matched[types == n], gold_types[n]) for n in names
    }
    with_gold = [ap[f"ap50_{name}"] for name in names if gold_types[name]]
    ap["map50"] = float(np.mean(with_gold)) if with_gold else 0.0
    return ap


def _grounding_pass(predictions: Sequence, references: Sequence) -> tuple[Counter, dict[str, float]]:
    """Summable counts, and the average precisions when the predicted boxes carry scores (else {})."""
    counts, gold_types, detections, scored = Counter(), Counter(), [], None
    for doc, pred, gold in _documents(predictions, references, validate_groundings):
        iou = box_iou(pred["box"], gold["box"])
        boundary = (pred["frame"][:, None] == gold["frame"][None]) & (iou > IOU_THRESHOLD)
        admissible = boundary & (pred["type"][:, None] == gold["type"][None])
        near = boundary.any(1)
        counts.update(_tp_counts(int(_matched_rows(admissible).sum()), len(iou), iou.shape[1]))
        counts.update(
            {"error_boundary": int((~near).sum()), "error_type": int((near & ~admissible.any(1)).sum())}
        )
        gold_types.update(gold["type"])
        if len(iou):
            scored = pred["score"] is not None if scored is None else scored
            if scored != (pred["score"] is not None):
                raise _fail(
                    "predictions", doc, "groundings", "boxes of some documents carry a score, others not"
                )
            if scored:
                detections.append(
                    (pred["type"], pred["score"], _greedy_by_score(admissible, iou, pred["score"]))
                )
    return counts, _average_precisions(detections, gold_types) if scored else {}


def grounding_counts(predictions: Sequence, references: Sequence) -> Counter:
    """Summable grounding counts; Table VI errors: no gold box of the frame has IoU > 0.5 / one has, but
    none of the predicted type."""
    return _grounding_pass(predictions, references)[0]


def grounding_scores(predictions: Sequence, references: Sequence) -> dict[str, float]:
    """Visual grounding precision, recall, f1 of boxes `[{frame, type, box, score?}]` (box = cx, cy, w, h).

    A prediction is correct when frame and type are equal and IoU > 0.5 (paper Section VI-B, after Yu et al.);
    one-to-one by a maximum bipartite matching per document. When the predicted boxes carry a `score`, also
    the average precision at IoU 0.5 of each type, `ap50_<type>` (COCO: greedy matching in decreasing score
    per document, precision made non-increasing and read at 101 recall points), and `map50`, their mean over
    the types that have gold boxes.
    """
    counts, average_precisions = _grounding_pass(predictions, references)
    return {**finalize("grounding", counts), **average_precisions}


# --------------------------------------------------------------------------------------------------------
# Combined
# --------------------------------------------------------------------------------------------------------

_DOCUMENT_KEYS = {"ner": "entities", "coref": "chains", "re": "relations", "grounding": "groundings"}


def _task_lists(documents: Sequence, side: str) -> dict[str, list]:
    for doc, document in enumerate(documents):
        for key in _DOCUMENT_KEYS.values():
            if not isinstance(document, Mapping) or document.get(key) is None:
                raise _fail(side, doc, key, f"missing from the document {type(document).__name__}")
    return {task: [document[key] for document in documents] for task, key in _DOCUMENT_KEYS.items()}


def m3d_scores(
    predictions: Sequence, references: Sequence, symmetric_types: Iterable[str] | None = None
) -> dict[str, float]:
    """The four task scores of documents `{entities, chains, relations, groundings}` in one flat dict.

    Keys are `ner_*`, `coref_*`, `re_*`, `grounding_*` (each task's scores, including its Table VI error
    rates `<task>_error_*`), and `average_f1`, the mean of the four task F1s.
    """
    validate_lengths(predictions, references)
    pred, gold = _task_lists(predictions, "predictions"), _task_lists(references, "references")
    per_task = {
        "ner": ner_scores(pred["ner"], gold["ner"]),
        "coref": coref_scores(pred["coref"], gold["coref"]),
        "re": relation_scores(pred["re"], gold["re"], symmetric_types),
        "grounding": grounding_scores(pred["grounding"], gold["grounding"]),
    }
    scores = {f"{task}_{name}": value for task, values in per_task.items() for name, value in values.items()}
    scores["average_f1"] = sum(values["f1"] for values in per_task.values()) / len(per_task)
    return scores


# --------------------------------------------------------------------------------------------------------
# References from dataset rows, and the metric modules' input features
# --------------------------------------------------------------------------------------------------------


def _label(value: Any, names: Sequence[str] | None, record: str, field: str) -> str:
    if isinstance(value, str):
        return value
    if _is_int(value) and names is not None and 0 <= value < len(names):
        return names[value]
    raise ValueError(
        f"record {record!r}, field '{field}': {value!r} is not a type name or an index of {names}"
    )


def _index_of(value: Any, size: int, record: str, field: str) -> int:
    if not _is_int(value) or not 0 <= value < size:
        raise ValueError(f"record {record!r}, field '{field}': {value!r} is not an index below {size}")
    return int(value)


def gold_document(
    row: Mapping[str, Any],
    relation_types: Sequence[str] | None = None,
    *,
    entity_types: Sequence[str] = ENTITY_TYPES,
    grounding_types: Sequence[str] = GROUNDING_TYPES,
) -> dict[str, list]:
    """The combined reference `{entities, chains, relations, groundings}` of a dataset row (DESIGN §2).

    Integer types (ClassLabel) are named by `entity_types` / `grounding_types`, integer relation types by
    `relation_types`; string types pass through. Chains list their entities' mentions in entity order.
    """
    record = str(row.get("id", row.get("video_id", "?")))
    chains: list[list[list[int]]] = [[] for _ in row.get("chains") or ()]
    entities = []
    for i, entity in enumerate(row.get("entities") or ()):
        chain = _index_of(entity["chain"], len(chains), record, f"entities[{i}].chain")
        start, end = int(entity["start"]), int(entity["end"])
        entities.append(
            {
                "start": start,
                "end": end,
                "type": _label(entity["type"], entity_types, record, f"entities[{i}].type"),
            }
        )
        chains[chain].append([start, end])
    relations = []
    for i, relation in enumerate(row.get("relations") or ()):
        ends = {}
        for key in ("subject", "object"):
            ends[key] = chains[_index_of(relation[key], len(chains), record, f"relations[{i}].{key}")]
            if not ends[key]:
                raise ValueError(
                    f"record {record!r}, field 'relations[{i}].{key}': chain {relation[key]} has no mention"
                )
        relations.append(
            {**ends, "type": _label(relation["type"], relation_types, record, f"relations[{i}].type")}
        )
    groundings = [
        {
            "frame": int(box["frame"]),
            "type": _label(box["type"], grounding_types, record, f"groundings[{i}].type"),
            "box": [float(v) for v in box["box"]],
        }
        for i, box in enumerate(row.get("groundings") or ())
    ]
    return {
        "entities": entities,
        "chains": [c for c in chains if c],
        "relations": relations,
        "groundings": groundings,
    }


_VALIDATORS = {
    "ner": validate_entities,
    "coref": validate_chains,
    "re": validate_relations,
    "grounding": validate_groundings,
}
_MODULE_TASKS = {f"m3d_{task}": task for task in _DOCUMENT_KEYS}  # metric module name -> task


def _scored(boxes: Sequence) -> list:
    return [box if "score" in box else {**box, "score": None} for box in boxes]


def metric_inputs(name: str, predictions: Sequence, references: Sequence) -> dict[str, list]:
    """Checked `add_batch` inputs of the metric module `name`, every box carrying a `score` key (None if absent).

    evaluate 0.4.6 checks a batch's first document itself and fails with a bare `KeyError` on a missing key
    (an absent optional `score` included): this raises the clear error first, naming document and field.
    """
    validate_lengths(predictions, references)
    batch = {}
    for side, documents in (("predictions", predictions), ("references", references)):
        lists = _task_lists(documents, side) if name == "m3d" else {_MODULE_TASKS[name]: documents}
        for task, values in lists.items():
            for doc, value in enumerate(values):
                _VALIDATORS[task](value, side, doc)
        if name == "m3d":
            batch[side] = [
                {**document, "groundings": _scored(document["groundings"])} for document in documents
            ]
        else:
            batch[side] = (
                [_scored(value) for value in documents] if name == "m3d_grounding" else list(documents)
            )
    return batch


class CheckedInputsMixin:
    """For the `evaluate.Metric` of the metric modules: checks and completes inputs with `metric_inputs`.

    Set `module_name` on the class (m3d_ner, m3d_coref, m3d_re, m3d_grounding or m3d).
    """

    module_name: str

    def add_batch(self, *, predictions=None, references=None, **kwargs) -> None:
        """Add a batch of documents (checked with `metric_inputs`)."""
        super().add_batch(**metric_inputs(self.module_name, predictions, references), **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs) -> None:
        """Add one document (checked with `metric_inputs`)."""
        self.add_batch(predictions=[prediction], references=[reference], **kwargs)


def metric_features(name: str):
    """`datasets.Features` of the metric module `name` (m3d_ner, m3d_coref, m3d_re, m3d_grounding or m3d).

    Boxes and scores are float64: float32 rounding would move IoUs across the 0.5 threshold.
    """
    import datasets

    chain = datasets.List(datasets.List(datasets.Value("int32")))
    per_task = {
        "ner": datasets.List(
            {
                "start": datasets.Value("int32"),
                "end": datasets.Value("int32"),
                "type": datasets.Value("string"),
            }
        ),
        "coref": datasets.List(chain),
        "re": datasets.List({"subject": chain, "object": chain, "type": datasets.Value("string")}),
        "grounding": datasets.List(
            {
                "frame": datasets.Value("int32"),
                "type": datasets.Value("string"),
                "box": datasets.List(datasets.Value("float64")),
                "score": datasets.Value("float64"),
            }
        ),
    }
    if name == "m3d":
        value = {_DOCUMENT_KEYS[task]: feature for task, feature in per_task.items()}
    else:
        value = per_task[_MODULE_TASKS[name]]
    return datasets.Features({"predictions": value, "references": value})


def metric_info(name: str, description: str, inputs_description: str, citation: str = "", **kwargs):
    """The `evaluate.MetricInfo` of the metric module `name`: its `metric_features`, and `citation` after the
    paper's (`M3D_CITATION`). Further `kwargs` go to `MetricInfo` (e.g. `reference_urls`)."""
    import evaluate

    return evaluate.MetricInfo(
        description=description,
        citation=M3D_CITATION + citation,
        inputs_description=inputs_description,
        features=metric_features(name),
        **kwargs,
    )
