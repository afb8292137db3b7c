"""Zero-shot video LLMs on M³D: the one instruction (English and Chinese) and the parser of their answers.

The paper scores two video LLMs zero-shot (Table III, Video-LLaMA-2 and Video-ChatGPT). `examples/zero_shot.py` asks
any transformers image-text-to-text model for the four outputs at once, as one JSON object:

    {"entities":   [{"text": "Marie Curie", "type": "PER"}, ...],          # every mention, in document order
     "chains":     [[0, 2], [1], ...],                                      # indices into "entities"
     "relations":  [{"subject": 0, "object": 1, "type": "PER-LOC_birth"}],  # indices into "chains"
     "groundings": [{"frame": 0, "type": "PER", "box": [cx, cy, w, h]}]}    # normalised to [0, 1]

`parse_answer` turns an answer into a prediction in the formats of `metrics/m3d` (DESIGN §4) and never raises on
what a model writes: whatever cannot be used is dropped and counted under one of `ISSUES`.

How mention texts become token spans (`MentionLocator`): a text matches where its characters, lower-cased and
without whitespace, equal those of a run of whole document tokens (so "Peter's" finds the tokens `Peter ' s`, and
Chinese mentions their characters). Mentions are placed longest first (ties in answer order), each on the first
match, in document order, that overlaps no mention placed before; so the k-th mention of a repeated text takes the
k-th free occurrence, and "Obama" is not placed inside an earlier "Barack Obama". A mention left without a free
match is dropped (`entity_not_found`). Nested gold mentions (one in the release's ZH test split) cannot be predicted.

Pure Python plus numpy and `json_repair` (the PyPI package that reads the JSON of LLM answers: code fences, prose
around it, trailing commas, truncation): no torch, no model.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from string import Template
from typing import Any

import json_repair
import numpy as np

from .schema import ENTITY_TYPES, GROUNDING_TYPES, RELATION_TYPES, TASK_FIELDS, check_language, join_tokens

# What `parse_answer` drops, by reason (the keys of its counter, and of `dropped_*` in all_results.json).
ISSUES = (
    "no_json",  # no JSON object with any of the four keys in the answer
    "field_invalid",  # one of the four keys holds something other than a list
    "entity_invalid",  # an entity that is not {"text": non-empty string, "type": ...}
    "entity_type_unknown",  # an entity type outside the label set
    "entity_not_found",  # a mention text with no free occurrence in the document
    "chain_member_invalid",  # a chain member that is no index of a placed entity, or one already in a chain
    "relation_invalid",  # a relation that is not {"subject": chain, "object": chain, "type": ...} over kept chains
    "relation_type_unknown",  # a relation type outside the label set
    "grounding_invalid",  # a box that is not {"frame": shown frame, "type": ..., "box": 4 numbers}
    "grounding_type_unknown",  # a box type outside the grounded label set
    "grounding_box_out_of_range",  # a box leaving [0, 1] or with no area
)

_THINK_END = "</think>"
_FENCE = re.compile(r"```[\w-]*[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)

INSTRUCTIONS = {
    "en": Template(
        "$frames\n<subtitles>\n$document\n</subtitles>\n\n"
        "Extract four things as one JSON object:\n"
        '1. "entities": every mention of a person (PER), location (LOC), organization (ORG) or time (TIME) in the '
        "subtitles, names and noun phrases but no pronouns, in order of appearance. Give each as "
        '{"text": the words copied exactly from the subtitles, "type": one of $entity_types}. A name said several '
        "times is listed once per occurrence.\n"
        '2. "chains": the mentions that refer to the same real-world entity, grouped; each chain is a list of '
        'indices into "entities" (from 0), and every entity is in exactly one chain.\n'
        '3. "relations": relations between chains, each as {"subject": chain index, "object": chain index, '
        '"type": one of the relation types below}. A type is named "subject type-object type_relation".\n'
        '4. "groundings": the persons, locations and organizations visible in the frames, each as {"frame": frame '
        'index, "type": one of $grounding_types, "box": [cx, cy, w, h]}, the centre, width and height of the box '
        "as fractions (0 to 1) of the frame's width and height.\n\n"
        "Relation types: $relation_types\n\n"
        'Answer with the JSON object only, keys "entities", "chains", "relations" and "groundings" (an empty list '
        "when there is nothing to report). Example of the format:\n$example"
    ),
    "zh": Template(
        "$frames\n<subtitles>\n$document\n</subtitles>\n\n"
        "请抽取以下四项内容，并作为一个 JSON 对象输出：\n"
        '1. "entities"：字幕中提到的所有人物（PER）、地点（LOC）、组织（ORG）和时间（TIME），包括名称和名词短语，'
        '不包括代词，按出现顺序列出。每一项写作 {"text": 从字幕中原样复制的文字, "type": $entity_types 之一}。'
        "同一名称出现几次就列出几次。\n"
        '2. "chains"：把指向同一个实体的提及归为一组；每条链是 "entities" 中下标（从 0 开始）的列表，'
        "每个实体恰好属于一条链。\n"
        '3. "relations"：链与链之间的关系，每一项写作 {"subject": 链的下标, "object": 链的下标, '
        '"type": 下列关系类型之一}。类型的命名方式为“主语类型-宾语类型_关系”。\n'
        '4. "groundings"：画面中可见的人物、地点和组织，每一项写作 {"frame": 帧的编号, "type": '
        '$grounding_types 之一, "box": [cx, cy, w, h]}，即框的中心坐标、宽和高，以画面宽和高的比例（0 到 1）表示。\n\n'
        "关系类型：$relation_types\n\n"
        '只输出这个 JSON 对象，键为 "entities"、"chains"、"relations" 和 "groundings"（没有内容时写空列表）。'
        "格式示例：\n$example"
    ),
}
_EXAMPLE = (
    '{"entities": [{"text": "%s", "type": "PER"}, {"text": "%s", "type": "LOC"}, {"text": "%s", "type": "PER"}], '
    '"chains": [[0, 2], [1]], "relations": [{"subject": 0, "object": 1, "type": "PER-LOC_birth"}], '
    '"groundings": [{"frame": 0, "type": "PER", "box": [0.5, 0.4, 0.3, 0.6]}]}'
)
EXAMPLES = {
    "en": _EXAMPLE % ("Marie Curie", "Warsaw", "Curie"),
    "zh": _EXAMPLE % ("居里夫人", "华沙", "居里"),
}
NO_SUBTITLES = {"en": "(no subtitles)", "zh": "（无字幕）"}
# What the model is shown: (with frames, without frames) per language.
FRAMES_SHOWN = {
    "en": (
        "You see $num_frames frames of a biography video (numbered 0 to $last_frame, in temporal order) and its "
        "subtitles:",
        "You see the subtitles of a biography video (no frames are shown, so the groundings are empty):",
    ),
    "zh": (
        "你看到一段人物传记视频的 $num_frames 帧画面（按时间顺序编号为 0 到 $last_frame）和它的字幕：",
        "你看到一段人物传记视频的字幕（没有画面，所以 groundings 为空列表）：",
    ),
}


def build_instruction(
    tokens: Sequence[str],
    num_frames: int,
    lang: str,
    *,
    entity_types: Sequence[str] = ENTITY_TYPES,
    relation_types: Sequence[str] = RELATION_TYPES,
    grounding_types: Sequence[str] = GROUNDING_TYPES,
) -> str:
    """The user message of one clip: `INSTRUCTIONS[lang]` filled with its subtitle document (`tokens` joined as
    the release joins them; an empty list says there are none), its frame count and the label sets."""
    frames = Template(FRAMES_SHOWN[check_language(lang)][num_frames == 0])
    return INSTRUCTIONS[lang].substitute(
        frames=frames.substitute(num_frames=num_frames, last_frame=num_frames - 1),
        document=join_tokens(tokens, lang) if tokens else NO_SUBTITLES[lang],
        entity_types=", ".join(entity_types),
        grounding_types=", ".join(grounding_types),
        relation_types=", ".join(relation_types),
        example=EXAMPLES[lang],
    )


def extract_json(answer: str) -> dict | None:
    """The answer's JSON object holding any of the four keys, else None.

    A reasoning model's thoughts (up to the last `</think>`) are skipped. The first code fence that holds a `{`
    is read, else the whole answer; `json_repair` then reads the object even when prose surrounds it, commas
    trail or the answer stops half-way (the open brackets are closed). When it finds several values, the first
    object with one of the four keys is taken.
    """
    answer = answer.rpartition(_THINK_END)[2]
    fenced = [block for block in _FENCE.findall(answer) if "{" in block]
    value = json_repair.loads(fenced[0] if fenced else answer)
    candidates = value if isinstance(value, list) else [value]
    return next(
        (v for v in candidates if isinstance(v, dict) and any(k in v for k in TASK_FIELDS.values())), None
    )


class MentionLocator:
    """Finds mention texts in a document's tokens and places each mention once (see the module docstring).

    Built once per document: the lower-cased tokens concatenated without separators, with, per character, whether
    a token starts there and which token it belongs to.
    """

    def __init__(self, tokens: Sequence[str]):
        lowered = [token.lower() for token in tokens]
        lengths = np.fromiter(map(len, lowered), dtype=np.int64, count=len(lowered))
        starts = np.cumsum(lengths) - lengths
        self.text = "".join(lowered)
        self.token_of_char = np.repeat(np.arange(len(lowered)), lengths)
        self.starts_token = np.zeros(len(self.text) + 1, dtype=bool)
        self.starts_token[starts] = True
        self.starts_token[len(self.text)] = True  # the end of the text closes the last token
        self.taken = np.zeros(len(lowered), dtype=bool)

    def occurrences(self, mention: str) -> list[tuple[int, int]]:
        """Token spans `(start, end)` (end exclusive) whose text is `mention` (case and whitespace ignored), in
        document order."""
        needle = "".join(mention.lower().split())
        if not needle:
            return []
        first = np.fromiter(
            (match.start() for match in re.finditer(f"(?={re.escape(needle)})", self.text)), dtype=np.int64
        )
        last = first + len(needle)
        whole = self.starts_token[first] & self.starts_token[last]
        first, last = first[whole], last[whole]
        return list(
            zip(self.token_of_char[first].tolist(), (self.token_of_char[last - 1] + 1).tolist(), strict=True)
        )

    def place(self, mention: str) -> tuple[int, int] | None:
        """The first occurrence of `mention` that overlaps no mention placed before, now taken; else None."""
        for start, end in self.occurrences(mention):
            if not self.taken[start:end].any():
                self.taken[start:end] = True
                return start, end
        return None


def _label(value: Any, names: Sequence[str]) -> str | None:
    """`value` as one of `names`, compared without case and surrounding spaces; None when it is none of them."""
    if not isinstance(value, str):
        return None
    return {name.lower(): name for name in names}.get(value.strip().lower())


def _index(value: Any, size: int) -> int | None:
    """`value` as an index below `size` (ints, and floats or strings holding one); None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and 0 <= value < size else None


def _field(answer: Mapping, key: str, issues: Counter) -> list:
    value = answer.get(key, [])
    if isinstance(value, list):
        return value
    issues["field_invalid"] += 1
    return []


def _entities(items: list, tokens: Sequence[str], types: Sequence[str], issues: Counter) -> list:
    """Per answer entity, `(start, end, type)` or None when dropped."""
    kept: list[tuple[int, int, str] | None] = [None] * len(items)
    texts = {}
    for i, item in enumerate(items):
        text = item.get("text") if isinstance(item, dict) else None
        if not isinstance(text, str) or not text.strip():
            issues["entity_invalid"] += 1
        elif (label := _label(item.get("type"), types)) is None:
            issues["entity_type_unknown"] += 1
        else:
            texts[i] = (text, label)
    locator = MentionLocator(tokens)
    for i in sorted(texts, key=lambda i: -len("".join(texts[i][0].split()))):  # stable: ties in answer order
        span = locator.place(texts[i][0])
        if span is None:
            issues["entity_not_found"] += 1
        else:
            kept[i] = (*span, texts[i][1])
    return kept


def _chains(items: list, entities: list, issues: Counter) -> tuple[list, list]:
    """The answer's chains as lists of mentions (None for a chain left empty), then the singleton chains of the
    placed entities that no chain claimed (the trained model's chains cover every entity as well)."""
    claimed = [False] * len(entities)
    chains: list[list[list[int]] | None] = []
    for item in items:
        mentions = []
        for member in item if isinstance(item, list) else [item]:
            index = _index(member, len(entities))
            if index is None or entities[index] is None or claimed[index]:
                issues["chain_member_invalid"] += 1
                continue
            claimed[index] = True
            mentions.append(list(entities[index][:2]))
        chains.append(sorted(mentions) or None)
    singletons = [[list(e[:2])] for e, c in zip(entities, claimed, strict=True) if e is not None and not c]
    return chains, singletons


def _relations(items: list, chains: list, types: Sequence[str], issues: Counter) -> list[dict]:
    relations = []
    for item in items:
        ends = [
            _index(item.get(key), len(chains)) if isinstance(item, dict) else None
            for key in ("subject", "object")
        ]
        if None in ends or any(chains[end] is None for end in ends):
            issues["relation_invalid"] += 1
        elif (label := _label(item.get("type"), types)) is None:
            issues["relation_type_unknown"] += 1
        else:
            relations.append({"subject": chains[ends[0]], "object": chains[ends[1]], "type": label})
    return relations


def _box(value: Any) -> list[float] | None:
    if not isinstance(value, list) or len(value) != 4:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return None
    return [float(v) for v in value]


def _groundings(
    items: list, frame_indices: Sequence[int], types: Sequence[str], issues: Counter
) -> list[dict]:
    groundings = []
    for item in items:
        frame = _index(item.get("frame"), len(frame_indices)) if isinstance(item, dict) else None
        box = _box(item.get("box")) if isinstance(item, dict) else None
        if frame is None or box is None:
            issues["grounding_invalid"] += 1
        elif (label := _label(item.get("type"), types)) is None:
            issues["grounding_type_unknown"] += 1
        elif not (all(0.0 <= v <= 1.0 for v in box) and box[2] > 0 and box[3] > 0):
            issues["grounding_box_out_of_range"] += 1
        else:
            groundings.append({"frame": int(frame_indices[frame]), "type": label, "box": box})
    return groundings


def parse_answer(
    answer: str,
    tokens: Sequence[str],
    frame_indices: Sequence[int],
    *,
    entity_types: Sequence[str] = ENTITY_TYPES,
    relation_types: Sequence[str] = RELATION_TYPES,
    grounding_types: Sequence[str] = GROUNDING_TYPES,
) -> tuple[dict[str, list], Counter]:
    """One model answer as a prediction `{entities, chains, relations, groundings}` of `metrics/m3d`, and a counter
    of what was dropped, by `ISSUES` name. Never raises on the answer's content.

    Args:
        answer: the generated text.
        tokens: the document's tokens (the release's units, as in the schema's `tokens`); empty without text.
        frame_indices: the row frame index of each frame shown to the model, in the order shown: the answer's
            frame k is the row's frame `frame_indices[k]`; empty without video.
        entity_types, relation_types, grounding_types: the label sets; types are matched without case.
    """
    issues: Counter = Counter()
    found = extract_json(answer)
    if found is None:
        issues["no_json"] += 1
        found = {}
    entities = _entities(_field(found, "entities", issues), tokens, entity_types, issues)
    chains, singletons = _chains(_field(found, "chains", issues), entities, issues)
    prediction = {
        "entities": sorted(
            ({"start": start, "end": end, "type": label} for start, end, label in filter(None, entities)),
            key=lambda entity: (entity["start"], entity["end"]),
        ),
        "chains": [chain for chain in chains if chain] + singletons,
        "relations": _relations(_field(found, "relations", issues), chains, relation_types, issues),
        "groundings": _groundings(
            _field(found, "groundings", issues), frame_indices, grounding_types, issues
        ),
    }
    return prediction, issues
