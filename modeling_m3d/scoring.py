"""Scores of the four M³D tasks and their combination (paper Section VI-B and Table VI).

Every metric of the project is computed here, once: the `evaluate` modules under `metrics/` (their `evaluate`
side is `modeling_m3d.metric_modules`), the training loop and the evaluation script all call these functions.
Inputs follow DESIGN §4: `predictions` and `references` are lists with one value per document. This module
needs only numpy and scipy: neither torch nor a video library nor the model code.

- Entities (`ner_*`): exact span and type.
- Entity chains (`coref_*`): MUC, B³, CEAF-m (φ3) and CEAF-e (φ4) as the CoNLL-2012 reference scorer v8.01
  computes them, repeated mentions included, and their CoNLL average.
- Relations (`re_*`): chain-level triples; subject and object chains must each share a mention with the
  gold ones and the types must be equal; one-to-one by maximum bipartite matching.
- Grounding (`grounding_*`): same frame, same type and IoU > 0.5, one-to-one by maximum bipartite matching;
  COCO-style average precision when predicted boxes carry a `score`.

Each public scorer checks its input once, with `validate_documents`, and scores what it returns; the metric
modules check in `add_batch` and score the stored, checked documents with `score_validated`. Counts are summed
over documents before any division (micro averages). The `*_counts` functions return summable `Counter`s, so a
loop can accumulate them batch by batch and call `finalize(task, counts)` at the end.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from .schema import SYMMETRIC_RELATION_TYPES, TASK_FIELDS, TASKS

IOU_THRESHOLD = 0.5
# Precision/recall groups of each task ("" = the task's own precision, recall, f1) and its Table VI errors.
_GROUPS = {"ner": ("",), "coref": ("muc_", "b3_", "ceafe_", "ceafm_"), "re": ("",), "grounding": ("",)}
_ERRORS = {
    "ner": ("boundary", "type"),
    "coref": ("wrong_entity", "missing_entity"),
    "re": ("unrelated", "type"),
    "grounding": ("boundary", "type"),
}
_COCO_RECALL_POINTS = np.linspace(0.0, 1.0, 101)
# What `validate_documents` and `score_validated` accept besides the four tasks: whole documents.
COMBINED = "m3d"

Mention = tuple[int, int]  # a span (start, end), end exclusive; inputs may give it as a list


# --------------------------------------------------------------------------------------------------------
# Validation: each validator checks one document's value and returns it in the form the maths reads (plain
# ints, floats and strings; what a metric module stores), or raises naming the side, document and field.
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


def _plain_chain(chain: Any) -> bool:
    """Whether `chain` is a list of mentions, each a list or tuple of two Python ints 0 <= start < end."""
    return type(chain) is list and all(
        type(mention) in (list, tuple)
        and len(mention) == 2
        and type(mention[0]) is int
        and type(mention[1]) is int
        and 0 <= mention[0] < mention[1]
        for mention in chain
    )


def _mentions(chain: Any, side: str, doc: int, field: str) -> list[Sequence[int]]:
    """The mentions of `chain`: the list itself when plain, else `(start, end)` tuples of `int`s."""
    if _plain_chain(chain):
        return chain
    items = _items(chain, side, doc, field)
    return [_mention(mention, side, doc, f"{field}[{j}]") for j, mention in enumerate(items)]


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


def _entity(entity: Any, side: str, doc: int, field: str) -> dict[str, Any]:
    start, end = _span(
        _get(entity, "start", side, doc, field), _get(entity, "end", side, doc, field), side, doc, field
    )
    return {
        "start": start,
        "end": end,
        "type": _type_name(_get(entity, "type", side, doc, field), side, doc, f"{field}.type"),
    }


def validate_entities(entities: Any, side: str = "predictions", doc: int = 0) -> list[dict[str, Any]]:
    """One document's entities `[{start, end, type}]`, checked (the dicts themselves when already plain)."""
    items = _items(entities, side, doc, "entities")
    spans = _fields(items, ("start", "end", "type"))
    if spans is not None and _plain_spans(spans) and _plain_names(span[2] for span in spans):
        return list(items)
    return [_entity(entity, side, doc, f"entities[{i}]") for i, entity in enumerate(items)]


def validate_chains(chains: Any, side: str = "predictions", doc: int = 0) -> list[list[Sequence[int]]]:
    """One document's chains `[[[start, end], ...], ...]`, checked; repeats are kept.

    What a repeated mention means is decided by the scorer (see `coref_counts`), not here.
    """
    return [
        _mentions(chain, side, doc, f"chains[{i}]")
        for i, chain in enumerate(_items(chains, side, doc, "chains"))
    ]


def _argument(chain: Any, side: str, doc: int, field: str) -> list[Sequence[int]]:
    mentions = _mentions(chain, side, doc, field)
    if not mentions:
        raise _fail(side, doc, field, "a relation argument needs at least one mention")
    return mentions


def validate_relations(relations: Any, side: str = "predictions", doc: int = 0) -> list[dict[str, Any]]:
    """One document's relations `[{subject, object, type}]`, checked (the dicts themselves when plain)."""
    items = _items(relations, side, doc, "relations")
    keys = ("subject", "object", "type")
    fields = _fields(items, keys)
    if fields is not None and all(
        subject and obj and _plain_chain(subject) and _plain_chain(obj) and type(kind) is str and kind
        for subject, obj, kind in fields
    ):
        return list(items)
    if fields is None:
        fields = [
            tuple(_get(item, key, side, doc, f"relations[{i}]") for key in keys)
            for i, item in enumerate(items)
        ]
    return [
        {
            "subject": _argument(subject, side, doc, f"relations[{i}].subject"),
            "object": _argument(obj, side, doc, f"relations[{i}].object"),
            "type": _type_name(kind, side, doc, f"relations[{i}].type"),
        }
        for i, (subject, obj, kind) in enumerate(fields)
    ]


def _grounding(item: Any, side: str, doc: int, field: str) -> dict[str, Any]:
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
    return {
        "frame": int(frame),
        "type": _type_name(_get(item, "type", side, doc, field), side, doc, f"{field}.type"),
        "box": [float(v) for v in box],
        "score": None if score is None else float(score),
    }


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


def validate_groundings(groundings: Any, side: str = "predictions", doc: int = 0) -> list[dict[str, Any]]:
    """One document's boxes `[{frame, type, box, score?}]`, each with a `score` key (None where absent).

    Either every box of a document has a score or none: mixing them is an error.
    """
    items = _items(groundings, side, doc, "groundings")
    fields = _fields(items, ("frame", "type", "box"))
    if fields is not None:
        fields = [(*values, item.get("score")) for values, item in zip(fields, items, strict=True)]
    if fields is not None and _plain_groundings(fields):
        boxes = [item if "score" in item else {**item, "score": None} for item in items]
    else:
        boxes = [_grounding(item, side, doc, f"groundings[{i}]") for i, item in enumerate(items)]
    missing = [box["score"] is None for box in boxes]
    if any(missing) and not all(missing):
        first = missing.index(not missing[0])
        raise _fail(
            side, doc, f"groundings[{first}].score", "either every box of a document has a score or none"
        )
    return boxes


_VALIDATORS: dict[str, Callable[[Any, str, int], Any]] = {
    "ner": validate_entities,
    "coref": validate_chains,
    "re": validate_relations,
    "grounding": validate_groundings,
}


def validate_document(document: Any, side: str = "predictions", doc: int = 0) -> dict[str, Any]:
    """One combined document `{entities, chains, relations, groundings}`, each value checked by its task's
    validator; all four keys are required."""
    for field in TASK_FIELDS.values():
        if not isinstance(document, Mapping) or document.get(field) is None:
            raise _fail(side, doc, field, f"missing from the document {type(document).__name__}")
    return {field: _VALIDATORS[task](document[field], side, doc) for task, field in TASK_FIELDS.items()}


def validate_documents(task: str, predictions: Any, references: Any) -> tuple[list, list]:
    """Both sides of `task` (one of `TASKS`, or `COMBINED` for whole documents), checked document by document.

    Returns `(predictions, references)` in the form the maths reads, each value as its task's validator
    returns it: entities and relations as dicts, mentions as pairs `[start, end]` of ints (lists or tuples),
    every box with a `score` key.
    Raises `ValueError` naming the side, the document index and the field.
    """
    validate = validate_document if task == COMBINED else _VALIDATORS.get(task)
    if validate is None:
        raise ValueError(f"unknown task {task!r}: expected one of {(*TASKS, COMBINED)}")
    validate_lengths(predictions, references)
    return (
        [validate(value, "predictions", doc) for doc, value in enumerate(predictions)],
        [validate(value, "references", doc) for doc, value in enumerate(references)],
    )


# --------------------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------------------


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


def _ner_counts(predictions: Sequence[list], references: Sequence[list]) -> Counter:
    counts = Counter()
    for pred_entities, gold_entities in zip(predictions, references, strict=True):
        pred = {(entity["start"], entity["end"], entity["type"]) for entity in pred_entities}
        gold = {(entity["start"], entity["end"], entity["type"]) for entity in gold_entities}
        tp = len(pred & gold)
        gold_spans = {(start, end) for start, end, _ in gold}
        boundary = sum((start, end) not in gold_spans for start, end, _ in pred)
        counts.update(_tp_counts(tp, len(pred), len(gold)))
        counts.update({"error_boundary": boundary, "error_type": len(pred) - tp - boundary})
    return counts


def ner_counts(predictions: Sequence, references: Sequence) -> Counter:
    """Summable entity counts (an entity repeated in a document counts once); Table VI errors: predicted span
    matches no gold span / span right, type wrong."""
    return _ner_counts(*validate_documents("ner", predictions, references))


def ner_scores(predictions: Sequence, references: Sequence) -> dict[str, float]:
    """Exact span-and-type precision, recall, f1 (micro) of entities `[{start, end, type}]` per document."""
    return score_validated("ner", *validate_documents("ner", predictions, references))


# --------------------------------------------------------------------------------------------------------
# Entity chains, as the CoNLL-2012 reference scorer v8.01 (`CorScorer.pm`) reads them, repeats included
# --------------------------------------------------------------------------------------------------------


def _chain_entries(
    chains: Sequence[Sequence[Sequence[int]]], ids: dict[Mention, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(chain index (n,), mention id (n,)) of each of the n entries of `chains`, in order.

    `ids` maps each span `(start, end)` to its id; a span seen for the first time gets the next one.
    """
    chain_index = [c for c, chain in enumerate(chains) for _ in chain]
    mention_ids = [ids.setdefault((start, end), len(ids)) for chain in chains for start, end in chain]
    return np.array(chain_index, dtype=np.int64), np.array(mention_ids, dtype=np.int64)


def _incidence(chain: np.ndarray, mention: np.ndarray, n_chains: int, n_mentions: int) -> np.ndarray:
    """(chains, mentions) number of entries of each mention id in each chain; chains without one dropped."""
    flat = np.bincount(chain * n_mentions + mention, minlength=n_chains * n_mentions)
    counts = flat.reshape(n_chains, n_mentions)
    return counts[counts.any(1)]


def _key_and_response(pred: Sequence, gold: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Key (gold) and response (predicted) incidence matrices (chains, mention ids) of one document.

    As `IdentifMentions` of the reference scorer: a span has one id on both sides. Key chains keep every
    entry, repeats included. Walking the response chains in order, an entry whose span is a key mention and
    was seen earlier in the response (in this chain or an earlier one) is removed; spans that are no key
    mention (invented) keep every entry. Chains left empty are dropped on both sides.
    """
    ids: dict[Mention, int] = {}
    key_chain, key_ids = _chain_entries(gold, ids)
    n_key_mentions = len(ids)  # key mentions have the ids below, invented ones the ids from here on
    response_chain, response_ids = _chain_entries(pred, ids)
    first = np.zeros(len(response_ids), dtype=bool)
    first[np.unique(response_ids, return_index=True)[1]] = True
    kept = first | (response_ids >= n_key_mentions)
    key = _incidence(key_chain, key_ids, len(gold), len(ids))
    response = _incidence(response_chain[kept], response_ids[kept], len(pred), len(ids))
    return key, response


def _best_alignment(similarity: np.ndarray) -> float:
    """Total similarity of the best one-to-one alignment of key (rows) and response chains (Luo 2005)."""
    rows, cols = linear_sum_assignment(similarity, maximize=True)
    return float(similarity[rows, cols].sum())


def _coref_document(pred: Sequence, gold: Sequence) -> dict[str, float]:
    """MUC, B³, CEAF-e and CEAF-m numerators and denominators, and Table VI chain errors, of one document."""
    key, response = _key_and_response(pred, gold)
    key_sizes, response_sizes = key.sum(1), response.sum(1)  # entries, repeats included
    holds = key > 0
    # K(m), the key chain of mention m, is the last key chain holding it (the scorer indexes key mentions so)
    holds_last = holds & (np.cumsum(holds[::-1], axis=0)[::-1] == 1)  # (K, mention ids)
    response_in_key = response @ holds.T  # (R, K): entries of R whose mention is in K
    response_of_key = response @ holds_last.T  # (R, K): entries m of R with K(m) = K
    key_in_response = key @ (response > 0).T  # (K, R): entries of K whose mention is in R
    # MUC: each entry of R whose key chain K(m) holds a later entry of R is a correct link
    muc = int(np.maximum(response_of_key - 1, 0).sum())
    # B³: each entry m of R adds c/|R| and c/|K(m)|, c = entries of R in K(m); summed over the m of each (R, K)
    b3 = response_of_key * response_in_key
    # CEAF: φ3 = |K ∩ R| counted in K's entries, φ4 = 2 |K ∩ R| / (|K| + |R|)
    phi4 = 2 * key_in_response / (key_sizes[:, None] + response_sizes[None, :])
    ceafe, ceafm = _best_alignment(phi4), _best_alignment(key_in_response)
    # Table VI: a predicted chain inside one gold chain is right (the same mentions) or misses some; else wrong
    inside = response_in_key == response_sizes[:, None]
    exact = inside & (key_in_response.T == key_sizes[None, :])
    n_inside, n_exact = int(inside.any(1).sum()), int(exact.any(1).sum())
    n_key, n_response = int(key_sizes.sum()), int(response_sizes.sum())
    return {
        "muc_recall_num": muc, "muc_recall_den": n_key - len(key),
        "muc_precision_num": muc, "muc_precision_den": n_response - len(response),
        "b3_recall_num": float((b3 / key_sizes[None, :]).sum()), "b3_recall_den": n_key,
        "b3_precision_num": float((b3 / response_sizes[:, None]).sum()), "b3_precision_den": n_response,
        "ceafe_recall_num": ceafe, "ceafe_recall_den": len(key),
        "ceafe_precision_num": ceafe, "ceafe_precision_den": len(response),
        "ceafm_recall_num": ceafm, "ceafm_recall_den": n_key,
        "ceafm_precision_num": ceafm, "ceafm_precision_den": n_response,
        "predictions": len(response),
        "error_wrong_entity": len(response) - n_inside,
        "error_missing_entity": n_inside - n_exact,
    }  # fmt: skip


def _coref_counts(predictions: Sequence[list], references: Sequence[list]) -> Counter:
    counts = Counter()
    for pred, gold in zip(predictions, references, strict=True):
        counts.update(_coref_document(pred, gold))
    return counts


def coref_counts(predictions: Sequence, references: Sequence) -> Counter:
    """Summable MUC, B³, CEAF-e and CEAF-m numerators/denominators; Table VI chain errors.

    Per document, as the CoNLL-2012 reference scorer v8.01 (`IdentifMentions`, `MUCScorer`, `BCUBED`, `CEAF`):
    - a span repeated in the key keeps one id and stays in every key chain where it appears; |K| counts every
      entry; K(m), the key chain of a mention m, is the last key chain holding it (none for an invented m);
    - in the response, an entry whose span is a key mention already seen in the response (in this chain or
      an earlier one) is removed; a span that is no key mention keeps every entry; empty chains are dropped.
    MUC correct links = Σ over (R, K) of max(n - 1, 0), n the entries m of R with K(m) = K; key and response
    links Σ (|K| - 1), Σ (|R| - 1). B³: each entry m of R adds c/|R| to precision and c/|K(m)| to recall, c
    being the entries of R whose mention is in K(m); denominators Σ |R|, Σ |K|. CEAF aligns chains one to
    one, with φ3 = |K ∩ R| (the entries of K whose mention is in R) and φ4 = 2 |K ∩ R| / (|K| + |R|).
    """
    return _coref_counts(*validate_documents("coref", predictions, references))


def coref_scores(predictions: Sequence, references: Sequence) -> dict[str, float]:
    """MUC (Vilain et al. 1995), B³ (Bagga and Baldwin 1998), CEAF-e/φ4 and CEAF-m/φ3 (Luo 2005), micro-averaged.

    Each document's value is a list of chains, a chain a list of mentions `[start, end]`. Definitions of the
    CoNLL-2012 reference scorer v8.01: singletons count, mentions of one side only count in the denominators,
    repeated mentions as `coref_counts` says. `f1` is the CoNLL average of the MUC, B³ and CEAF-e F1s.
    """
    return score_validated("coref", *validate_documents("coref", predictions, references))


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


def _triples(relations: Sequence[Mapping]) -> list[tuple[frozenset[Mention], frozenset[Mention], str]]:
    return [
        (frozenset(map(tuple, r["subject"])), frozenset(map(tuple, r["object"])), r["type"])
        for r in relations
    ]


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


def _relation_counts(
    predictions: Sequence[list], references: Sequence[list], symmetric_types: Iterable[str] | None
) -> Counter:
    symmetric = SYMMETRIC_RELATION_TYPES if symmetric_types is None else frozenset(symmetric_types)
    counts = Counter()
    for pred, gold in zip(predictions, references, strict=True):
        counts.update(_relation_document(_triples(pred), _triples(gold), symmetric))
    return counts


def relation_counts(
    predictions: Sequence, references: Sequence, symmetric_types: Iterable[str] | None = None
) -> Counter:
    """Summable relation counts; Table VI errors: no gold relation between the two chains (either direction) /
    a gold relation between them, but none of the predicted type and direction."""
    return _relation_counts(*validate_documents("re", predictions, references), symmetric_types)


def relation_scores(
    predictions: Sequence, references: Sequence, symmetric_types: Iterable[str] | None = None
) -> dict[str, float]:
    """Chain-level relation precision, recall, f1 (paper Section VI-B).

    A predicted `{subject, object, type}` (subject and object are chains: lists of mentions `[start, end]`)
    can match a gold relation when its subject chain shares a mention with the gold subject chain, its
    object chain with the gold object chain, and the types are equal; for `symmetric_types` (default
    `schema.SYMMETRIC_RELATION_TYPES`) subject and object may also be swapped. Each gold relation is matched
    at most once: true positives are a maximum bipartite matching per document (edges only join equal types,
    so it is the union of the matchings per type).
    """
    return score_validated("re", *validate_documents("re", predictions, references), symmetric_types)


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


def _box_arrays(boxes: Sequence[Mapping]) -> dict[str, Any]:
    """A document's validated boxes as arrays `frame` (n,), `type` (n,), `box` (n, 4) and `score` (n,) or None."""
    return {
        "frame": np.array([box["frame"] for box in boxes], dtype=np.int64),
        "type": np.array([box["type"] for box in boxes], dtype=object),
        "box": np.array([box["box"] for box in boxes], dtype=np.float64).reshape(-1, 4),
        "score": np.array([box["score"] for box in boxes], dtype=np.float64)
        if boxes and boxes[0]["score"] is not None
        else None,
    }


def _grounding_pass(
    predictions: Sequence[list], references: Sequence[list]
) -> tuple[Counter, dict[str, float]]:
    """Summable counts, and the average precisions when the predicted boxes carry scores (else {})."""
    counts, gold_types, detections, scored = Counter(), Counter(), [], None
    for doc, (pred_boxes, gold_boxes) in enumerate(zip(predictions, references, strict=True)):
        pred, gold = _box_arrays(pred_boxes), _box_arrays(gold_boxes)
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
    return _grounding_pass(*validate_documents("grounding", predictions, references))[0]


def _grounding_scores(predictions: Sequence[list], references: Sequence[list]) -> dict[str, float]:
    counts, average_precisions = _grounding_pass(predictions, references)
    return {**finalize("grounding", counts), **average_precisions}


def grounding_scores(predictions: Sequence, references: Sequence) -> dict[str, float]:
    """Visual grounding precision, recall, f1 of boxes `[{frame, type, box, score?}]` (box = cx, cy, w, h).

    A prediction is correct when frame and type are equal and IoU > 0.5 (paper Section VI-B, after Yu et al.);
    one-to-one by a maximum bipartite matching per document. When the predicted boxes carry a `score`, also
    the average precision at IoU 0.5 of each type, `ap50_<type>` (COCO: greedy matching in decreasing score
    per document, precision made non-increasing and read at 101 recall points), and `map50`, their mean over
    the types that have gold boxes.
    """
    return score_validated("grounding", *validate_documents("grounding", predictions, references))


# --------------------------------------------------------------------------------------------------------
# Combined, and scoring checked documents
# --------------------------------------------------------------------------------------------------------


def _m3d_scores(
    predictions: Sequence[dict], references: Sequence[dict], symmetric_types: Iterable[str] | None
) -> dict[str, float]:
    def field(documents: Sequence[dict], task: str) -> list:
        return [document[TASK_FIELDS[task]] for document in documents]

    per_task = {
        task: score_validated(task, field(predictions, task), field(references, task), symmetric_types)
        for task in TASKS
    }
    scores = {f"{task}_{name}": value for task, values in per_task.items() for name, value in values.items()}
    scores["average_f1"] = sum(values["f1"] for values in per_task.values()) / len(per_task)
    return scores


def m3d_scores(
    predictions: Sequence, references: Sequence, symmetric_types: Iterable[str] | None = None
) -> dict[str, float]:
    """The four task scores of documents `{entities, chains, relations, groundings}` in one flat dict.

    Keys are `ner_*`, `coref_*`, `re_*`, `grounding_*` (each task's scores, including its Table VI error
    rates `<task>_error_*`), and `average_f1`, the mean of the four task F1s.
    """
    return score_validated(COMBINED, *validate_documents(COMBINED, predictions, references), symmetric_types)


def score_validated(
    task: str, predictions: list, references: list, symmetric_types: Iterable[str] | None = None
) -> dict[str, float]:
    """The scores of `task` (one of `TASKS`, or `COMBINED`) of documents already checked by
    `validate_documents(task, ...)`, or in the form it returns (what a metric module stores after checking
    it in `add_batch`): nothing is checked again. `symmetric_types` is read by "re" and `COMBINED` only.
    """
    if task == "ner":
        return finalize("ner", _ner_counts(predictions, references))
    if task == "coref":
        return finalize("coref", _coref_counts(predictions, references))
    if task == "re":
        return finalize("re", _relation_counts(predictions, references, symmetric_types))
    if task == "grounding":
        return _grounding_scores(predictions, references)
    if task == COMBINED:
        return _m3d_scores(predictions, references, symmetric_types)
    raise ValueError(f"unknown task {task!r}: expected one of {(*TASKS, COMBINED)}")
