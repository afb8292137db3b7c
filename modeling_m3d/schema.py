"""What every stage of M³D shares: label sets, languages, protocols, task names, tokenisation, references.

The builder, the BRAT tool, the synthetic generator, the processor, the model config, scoring, the pipeline and
the video code all import these names from here; nothing else defines them. Pure Python: importing this module
needs neither torch nor a video library.

- Label sets (paper Section IV): four entity types, three grounded (visual) types, and the relation types of
  the release's annotation files (33 in its dev files; the paper counts 34).
- A document's *tokens* are the units its annotation indexes: English `doc.split(" ")` (the release's documents
  keep words and punctuation apart with single spaces), Chinese one per character.
- A *reference* (`reference_document`) is a schema row in the document format below.

A **schema row** (one clip; the `datasets` features of the `M3D` builder): `id`, `lang`, `video_id`, `video_title`
(strings); `tokens` (list of strings; empty = text missing); `subtitles` (list of `{start_time, end_time, text}`,
seconds); `entities` (list of `{start, end, type, chain}`: a token span `[start, end)`, an entity type, the index of
its chain in `chains`); `chains` (list of `{id, type}`, release order); `relations` (list of `{subject, object, type}`,
chain indices, the release's `link2` as subject); `frames` (images in temporal order; empty = video missing);
`groundings` (list of `{frame, type, box}`: an index into `frames`, a grounding type, `(cx, cy, w, h)` in [0, 1]).
Types are names or `ClassLabel` indices.

A **document** (the metric formats; predictions and references alike): `entities` `[{start, end, type}]`; `chains`
`[[[start, end], ...], ...]`; `relations` `[{subject: [[start, end], ...], object: [...], type}]` (chains as their
mention lists); `groundings` `[{frame, type, box}]` (a prediction's box may carry a `score`).
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping, Sequence
from typing import Any

LANGUAGES = ("en", "zh")
ENTITY_TYPES = ("PER", "LOC", "ORG", "TIME")
GROUNDING_TYPES = ("PER", "LOC", "ORG")
RELATION_TYPES = (
    "LOC-LOC_contain",
    "LOC-LOC_nearby",
    "LOC-TIME_disintegrate",
    "LOC-TIME_establish",
    "ORG-LOC_contain",
    "ORG-LOC_located",
    "ORG-LOC_nearby",
    "ORG-ORG_affiliated",
    "ORG-ORG_nearby",
    "ORG-TIME_establish",
    "PER-LOC_birth",
    "PER-LOC_go_to",
    "PER-LOC_leave_for",
    "PER-LOC_located",
    "PER-LOC_residence",
    "PER-LOC_work",
    "PER-ORG_depart",
    "PER-ORG_go_to",
    "PER-ORG_leave_for",
    "PER-ORG_located",
    "PER-ORG_member",
    "PER-PER_brother_sister",
    "PER-PER_colleague",
    "PER-PER_couple",
    "PER-PER_employ",
    "PER-PER_neighbor",
    "PER-PER_other_relatives",
    "PER-PER_parents",
    "PER-PER_peer",
    "PER-TIME_birth_time",
    "PER-TIME_death_time",
    "PER-TIME_depart",
    "PER-TIME_entry",
)
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

# How chains and relations are decoded and scored: "gold_pairs" (the paper's: over the gold entities
# and chains) or "end_to_end" (predicted entities -> predicted chains -> relations between them).
PROTOCOLS = ("gold_pairs", "end_to_end")

# The four tasks, by the names of the metric keys (`ner_*`, `coref_*`, `re_*`, `grounding_*`), the losses
# (`ner_loss`, ...) and the model outputs (`ner_logits`, ...); the document field each one fills; its name in
# the paper's tables.
TASKS = ("ner", "coref", "re", "grounding")
TASK_FIELDS = {"ner": "entities", "coref": "chains", "re": "relations", "grounding": "groundings"}
TASK_NAMES = {"ner": "Entity", "coref": "Entity chain", "re": "Relation", "grounding": "Grounding"}

# Label padding in batches: positions that no loss reads (PyTorch's cross-entropy default `ignore_index`).
IGNORE_INDEX = -100

_WORD_OR_MARK = re.compile(r"\w+|[^\w\s]")


def check_language(lang: Any) -> str:
    """`lang` itself when it is one of `LANGUAGES`; else `ValueError`."""
    if lang not in LANGUAGES:
        raise ValueError(f"unknown language {lang!r}: expected one of {LANGUAGES}")
    return lang


def check_protocol(protocol: Any) -> str:
    """`protocol` itself when it is one of `PROTOCOLS`; else `ValueError`."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: expected one of {PROTOCOLS}")
    return protocol


def tokenize(doc: str, lang: str) -> list[str]:
    """The tokens of a release document: EN `doc.split(" ")`, ZH one per character; `""` has none."""
    check_language(lang)
    if not doc:
        return []
    return doc.split(" ") if lang == "en" else list(doc)


def join_tokens(tokens: Sequence[str], lang: str) -> str:
    """Inverse of `tokenize`: the document (or a mention's text) over `tokens`."""
    return ("" if check_language(lang) == "zh" else " ").join(tokens)


def tokenize_text(text: str, lang: str) -> list[str]:
    """Raw text (a subtitle line, a user's document) to tokens as the release makes them: EN words and
    punctuation marks apart (`Peter's` -> `Peter ' s`), ZH one per non-space character."""
    if check_language(lang) == "en":
        return _WORD_OR_MARK.findall(text)
    return [character for character in text if not character.isspace()]


def row_id(row: Mapping[str, Any], index: int | None = None) -> str:
    """A row's name in messages: its `id`, else its `video_id`, else `#index`."""
    return str(row.get("id", row.get("video_id", f"#{index}" if index is not None else "?")))


def label_name(value: Any, names: Sequence[str] | None, where: str) -> str:
    """A type given as a name, or as a `ClassLabel` index into `names`, as its name."""
    if isinstance(value, str):
        return value
    if _is_index(value, len(names) if names is not None else 0):
        return names[value]
    raise ValueError(f"{where}: {value!r} is not a type name or an index of {list(names or [])}")


def _is_index(value: Any, size: int) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and 0 <= value < size


def _index(value: Any, size: int, where: str) -> int:
    if not _is_index(value, size):
        raise ValueError(f"{where}: {value!r} is not an index below {size}")
    return int(value)


def reference_document(
    row: Mapping[str, Any],
    relation_types: Sequence[str] | None = None,
    *,
    entity_types: Sequence[str] = ENTITY_TYPES,
    grounding_types: Sequence[str] = GROUNDING_TYPES,
) -> dict[str, list]:
    """A schema row as its reference document `{entities, chains, relations, groundings}` (formats above).

    Integer types (`ClassLabel`) are named by `entity_types` / `grounding_types`, integer relation types by
    `relation_types`; string types pass through. Chains list their entities' mentions `[start, end]` in entity
    order; chains without a mention are left out. Raises `ValueError` naming the record and the field.
    """
    record = f"record {row_id(row)!r}"
    chains: list[list[list[int]]] = [[] for _ in row.get("chains") or ()]
    entities = []
    for i, entity in enumerate(row.get("entities") or ()):
        where = f"{record}, field 'entities[{i}]"
        chain = _index(entity["chain"], len(chains), f"{where}.chain'")
        start, end = int(entity["start"]), int(entity["end"])
        entities.append(
            {"start": start, "end": end, "type": label_name(entity["type"], entity_types, f"{where}.type'")}
        )
        chains[chain].append([start, end])
    relations = []
    for i, relation in enumerate(row.get("relations") or ()):
        where = f"{record}, field 'relations[{i}]"
        ends = {}
        for key in ("subject", "object"):
            ends[key] = chains[_index(relation[key], len(chains), f"{where}.{key}'")]
            if not ends[key]:
                raise ValueError(f"{where}.{key}': chain {relation[key]} has no mention")
        relations.append({**ends, "type": label_name(relation["type"], relation_types, f"{where}.type'")})
    groundings = [
        {
            "frame": int(box["frame"]),
            "type": label_name(box["type"], grounding_types, f"{record}, field 'groundings[{i}].type'"),
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
