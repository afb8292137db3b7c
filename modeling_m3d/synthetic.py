"""Generate a small synthetic M³D release that carries a learnable signal in all four tasks.

The output follows the release layout (``DIR/data/<lang>/{train,dev,test}_<lang>.json`` and
``DIR/img/<video_id>/<frame>.png`` with same-stem YOLO ``.txt`` labels) and the record format of the
real annotation files, so every reader of the release (the ``datasets`` builder, the BRAT tools, the
processor) can be exercised without the real data:

- **NER**: each entity type has its own surface forms (person names, place names, organisation names,
  years for TIME).
- **Coreference**: every document has several chains whose mentions repeat a name or use an alias
  (first name for a person, a short form for an organisation), as in the paper's entity chains.
- **Relations**: each relation is expressed by one sentence ``<subject> <cue> <object>`` whose cue words
  determine the relation type; other sentences mention entities, alone or in pairs, without a cue.
- **Grounding**: frames show PER, LOC and ORG entities as a filled circle, square and triangle in a
  type-specific colour; the YOLO label of each frame gives their boxes.

The output is a function of the arguments only (same arguments, same bytes). Label sets and tokenisation come
from :mod:`modeling_m3d.schema`; ``dataset_script/make_synthetic.py`` is the command line over
:func:`write_synthetic_release`.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .schema import GROUNDING_TYPES, check_language, join_tokens, tokenize_text

SPLITS = ("train", "dev", "test")

# Relation type -> (EN template, ZH template). ``{S}`` is the subject (release ``link2``), ``{O}`` the
# object (release ``link1``); the text between them is the cue that determines the type.
RELATION_TEMPLATES: dict[str, tuple[str, str]] = {
    "LOC-LOC_contain": ("{S} contains {O} .", "{S}包含{O}。"),
    "LOC-LOC_nearby": ("{S} lies near {O} .", "{S}靠近{O}。"),
    "LOC-TIME_disintegrate": ("{S} was abandoned in {O} .", "{S}废弃于{O}。"),
    "LOC-TIME_establish": ("{S} was settled in {O} .", "{S}建于{O}。"),
    "ORG-LOC_contain": ("{S} owns land in {O} .", "{S}的土地遍布{O}。"),
    "ORG-LOC_located": ("{S} is based in {O} .", "{S}总部位于{O}。"),
    "ORG-LOC_nearby": ("{S} stands close to {O} .", "{S}紧挨着{O}。"),
    "ORG-ORG_affiliated": ("{S} is a branch of {O} .", "{S}隶属于{O}。"),
    "ORG-ORG_nearby": ("{S} sits beside {O} .", "{S}毗邻{O}。"),
    "ORG-TIME_establish": ("{S} was founded in {O} .", "{S}成立于{O}。"),
    "PER-LOC_birth": ("{S} was born in {O} .", "{S}出生在{O}。"),
    "PER-LOC_go_to": ("{S} travelled to {O} .", "{S}前往{O}。"),
    "PER-LOC_leave_for": ("{S} set off for {O} .", "{S}动身去{O}。"),
    "PER-LOC_located": ("{S} was staying in {O} .", "{S}当时身在{O}。"),
    "PER-LOC_residence": ("{S} lived in {O} .", "{S}居住在{O}。"),
    "PER-LOC_work": ("{S} worked in {O} .", "{S}工作在{O}。"),
    "PER-ORG_depart": ("{S} quit {O} .", "{S}离开了{O}。"),
    "PER-ORG_go_to": ("{S} visited {O} .", "{S}参观了{O}。"),
    "PER-ORG_leave_for": ("{S} headed off to {O} .", "{S}奔赴{O}。"),
    "PER-ORG_located": ("{S} was seen at {O} .", "{S}现身于{O}。"),
    "PER-ORG_member": ("{S} joined {O} .", "{S}加入了{O}。"),
    "PER-PER_brother_sister": ("{S} is the sibling of {O} .", "{S}的兄妹是{O}。"),
    "PER-PER_colleague": ("{S} worked alongside {O} .", "{S}的同事是{O}。"),
    "PER-PER_couple": ("{S} married {O} .", "{S}的配偶是{O}。"),
    "PER-PER_employ": ("{S} hired {O} .", "{S}雇佣了{O}。"),
    "PER-PER_neighbor": ("{S} lived next door to {O} .", "{S}的邻居是{O}。"),
    "PER-PER_other_relatives": ("{S} is a cousin of {O} .", "{S}的表亲是{O}。"),
    "PER-PER_parents": ("{S} is the child of {O} .", "{S}的父母是{O}。"),
    "PER-PER_peer": ("{S} studied with {O} .", "{S}的同学是{O}。"),
    "PER-TIME_birth_time": ("{S} came into the world in {O} .", "{S}生于{O}。"),
    "PER-TIME_death_time": ("{S} died in {O} .", "{S}死于{O}。"),
    "PER-TIME_depart": ("{S} retired in {O} .", "{S}退休于{O}。"),
    "PER-TIME_entry": ("{S} started the job in {O} .", "{S}入职于{O}。"),
}

# Sentences that mention one entity (``{X}``) or two (``{X}``, ``{Y}``) without any relation cue.
FILLER_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "en": {
        "PER": ("{X} smiled at the camera .", "Everyone remembered {X} .", "The crowd cheered for {X} ."),
        "LOC": ("The streets of {X} were quiet .", "Rain fell over {X} .", "Many tourists visit {X} ."),
        "ORG": ("Reporters wrote about {X} .", "The logo of {X} appeared on screen .", "{X} made the news ."),
        "TIME": ("Things changed in {X} .", "The winter of {X} was harsh .", "Prices rose in {X} ."),
        "PAIR": ("{X} and {Y} appeared in the same photo .", "The film shows {X} and then {Y} ."),
    },
    "zh": {
        "PER": ("{X}对着镜头微笑。", "大家都记得{X}。", "人群为{X}欢呼。"),
        "LOC": ("{X}的街道很安静。", "雨落在{X}。", "很多游客来到{X}。"),
        "ORG": ("记者报道了{X}。", "屏幕上出现了{X}的标志。", "{X}上了新闻。"),
        "TIME": ("{X}一切都变了。", "{X}的冬天很冷。", "{X}物价上涨。"),
        "PAIR": ("{X}和{Y}出现在同一张照片里。", "影片先展示了{X}，然后是{Y}。"),
    },
}

# Surface forms. PER: (first names, surnames) -> full name with the first name as alias;
# ORG: (full name, alias); LOC: one name; TIME: a year (EN "1934", ZH "1934年").
NAMES = {
    "en": {
        "PER_FIRST": (
            "Peter",
            "Anna",
            "Maria",
            "John",
            "Grace",
            "Oliver",
            "Sofia",
            "Henry",
            "Clara",
            "Lucas",
            "Emma",
            "Victor",
            "Helen",
            "Arthur",
            "Nora",
            "Samuel",
            "Alice",
            "Daniel",
        ),
        "PER_LAST": (
            "Walker",
            "Bennett",
            "Morales",
            "Fischer",
            "Novak",
            "Okafor",
            "Larsen",
            "Moreau",
            "Tanaka",
            "Keller",
            "Duarte",
            "Brennan",
        ),
        "LOC": (
            "Leeds",
            "Lisbon",
            "Kyoto",
            "Denver",
            "Nairobi",
            "Oslo",
            "Buenos Aires",
            "Perth",
            "Quebec",
            "Naples",
            "Cape Town",
            "Dublin",
            "Seville",
            "Krakow",
            "New Orleans",
            "Manila",
        ),
        "ORG": (
            ("Yorkshire Evening News", "Evening News"),
            ("Northern Rail Company", "Northern Rail"),
            ("Royal Academy of Music", "Royal Academy"),
            ("United Steel Works", "United Steel"),
            ("Harbor City Bank", "Harbor Bank"),
            ("Atlas Film Studio", "Atlas"),
            ("Blue River Hospital", "Blue River"),
            ("National Science Museum", "Science Museum"),
            ("Pacific Trade Union", "Trade Union"),
            ("Green Valley College", "Green Valley"),
        ),
        "TIME_SUFFIX": "",
    },
    "zh": {
        "PER_FIRST": (
            "建国",
            "秀英",
            "志强",
            "丽华",
            "文杰",
            "美玲",
            "海涛",
            "晓明",
            "春梅",
            "国栋",
            "雪峰",
            "婉清",
            "子豪",
            "思远",
        ),
        "PER_LAST": ("王", "李", "张", "刘", "陈", "杨", "赵", "黄", "周", "吴", "徐", "孙"),
        "LOC": (
            "北京",
            "上海",
            "广州",
            "深圳",
            "成都",
            "杭州",
            "南京",
            "武汉",
            "西安",
            "重庆",
            "天津",
            "苏州",
            "青岛",
            "昆明",
            "哈尔滨",
            "厦门",
        ),
        "ORG": (
            ("北京大学", "北大"),
            ("清华大学", "清华"),
            ("中国银行", "中行"),
            ("人民日报社", "人民日报"),
            ("上海电影制片厂", "上影厂"),
            ("中央电视台", "央视"),
            ("协和医院", "协和"),
            ("复旦大学", "复旦"),
            ("南方钢铁厂", "南钢"),
            ("国家博物馆", "国博"),
        ),
        "TIME_SUFFIX": "年",
    },
}

TYPE_WEIGHTS = {"PER": 0.4, "LOC": 0.25, "ORG": 0.2, "TIME": 0.15}
SHAPE_COLOURS = {"PER": (220, 40, 40), "LOC": (40, 170, 60), "ORG": (40, 80, 220)}
MIN_BOX, MAX_BOX = 0.2, 0.45
SLOT = re.compile(r"\{([SOXY])\}")


@dataclass
class Chain:
    """One entity chain: its type and surface forms (the first is the full form, used first)."""

    type: str
    forms: tuple[str, ...]
    mentions: list[dict] = field(default_factory=list)


def _sample_chains(rng: random.Random, lang: str) -> list[Chain]:
    """4–8 chains with distinct surface forms; the first is always a person."""
    names = NAMES[lang]
    count = rng.randint(4, 8)
    types = ["PER"] + rng.choices(list(TYPE_WEIGHTS), weights=list(TYPE_WEIGHTS.values()), k=count - 1)
    firsts = rng.sample(names["PER_FIRST"], types.count("PER"))
    locs = rng.sample(names["LOC"], types.count("LOC"))
    orgs = rng.sample(names["ORG"], types.count("ORG"))
    years = rng.sample(range(1890, 2021), types.count("TIME"))
    chains = []
    for entity_type in types:
        if entity_type == "PER":
            first = firsts.pop()
            last = rng.choice(names["PER_LAST"])
            forms = (f"{first} {last}" if lang == "en" else f"{last}{first}", first)
        elif entity_type == "LOC":
            forms = (locs.pop(),)
        elif entity_type == "ORG":
            forms = orgs.pop()
        else:
            forms = (f"{years.pop()}{names['TIME_SUFFIX']}",)
        chains.append(Chain(entity_type, forms))
    return chains


def _sample_relations(rng: random.Random, chains: list[Chain]) -> list[tuple[int, int, str]]:
    """(subject, object, type) triples, at most one per unordered chain pair."""
    candidates = []
    for subject, subject_chain in enumerate(chains):
        for obj, object_chain in enumerate(chains):
            prefix = f"{subject_chain.type}-{object_chain.type}_"
            types = [name for name in RELATION_TEMPLATES if name.startswith(prefix)]
            if subject != obj and types:
                candidates.append((subject, obj, types))
    rng.shuffle(candidates)
    wanted = rng.randint(max(1, len(chains) // 2), len(chains))
    relations, used = [], set()
    for subject, obj, types in candidates:
        pair = frozenset((subject, obj))
        if pair not in used and len(relations) < wanted:
            used.add(pair)
            relations.append((subject, obj, rng.choice(types)))
    return relations


def _plan_sentences(rng: random.Random, chains: list[Chain], relations, lang: str) -> list[tuple[str, dict]]:
    """Sentence templates with their slot -> chain index bindings, in document order."""
    templates = FILLER_TEMPLATES[lang]
    plan = [
        (RELATION_TEMPLATES[kind][lang == "zh"], {"S": subject, "O": obj}) for subject, obj, kind in relations
    ]
    related = {index for subject, obj, _ in relations for index in (subject, obj)}
    for index, chain in enumerate(chains):
        extra = rng.randint(index not in related, 3 if chain.type == "PER" else 2)
        plan += [(rng.choice(templates[chain.type]), {"X": index}) for _ in range(extra)]
    for _ in range(rng.randint(0, 2)):
        first, second = rng.sample(range(len(chains)), 2)
        plan.append((rng.choice(templates["PAIR"]), {"X": first, "Y": second}))
    rng.shuffle(plan)
    return plan


def _render(rng: random.Random, plan, chains: list[Chain], lang: str) -> tuple[list[list[str]], list[list]]:
    """Tokens of each sentence and, per sentence, its mentions as (chain, start, end) in sentence tokens.

    A chain's first mention uses its full form; later ones pick any of its forms (aliases).
    """
    seen: set[int] = set()
    sentences, mentions = [], []
    for template, slots in plan:
        tokens, spans = [], []
        for position, piece in enumerate(SLOT.split(template)):
            if position % 2 == 0:
                tokens += tokenize_text(piece, lang)
                continue
            index = slots[piece]
            form = chains[index].forms[0] if index not in seen else rng.choice(chains[index].forms)
            seen.add(index)
            spans.append((index, len(tokens), len(tokens) + len(tokenize_text(form, lang))))
            tokens += tokenize_text(form, lang)
        sentences.append(tokens)
        mentions.append(spans)
    return sentences, mentions


def _subtitles(rng: random.Random, sentences, sentence_mentions, chains: list[Chain], lang: str):
    """Group sentences into timed subtitles (1–2 sentences, ~3 tokens a second); fill the chains' mentions.

    Returns the document tokens and ``time_sent_pair``.
    """
    tokens: list[str] = []
    time_sent_pair: dict[str, str] = {}
    clock, index = 0, 0
    while index < len(sentences):
        group = range(index, min(len(sentences), index + rng.randint(1, 2)))
        duration = sum(max(1, len(sentences[i]) // 3) for i in group)
        key = f"{clock}-{clock + duration}"
        time_sent_pair[key] = join_tokens([join_tokens(sentences[i], lang) for i in group], lang)
        for i in group:
            for chain, start, end in sentence_mentions[i]:
                text = join_tokens(sentences[i][start:end], lang)
                chains[chain].mentions.append(
                    {
                        "type": chains[chain].type,
                        "start": len(tokens) + start,
                        "end": len(tokens) + end,
                        "text": text,
                        "sent_time": key,
                    }
                )
            tokens += sentences[i]
        clock += duration
        index = group.stop
    return tokens, time_sent_pair


def _make_record(rng: random.Random, video_id: str, frames: list[int], lang: str) -> dict:
    """One release record (same key order as the release files)."""
    chains = _sample_chains(rng, lang)
    relations = _sample_relations(rng, chains)
    sentences, sentence_mentions = _render(rng, _plan_sentences(rng, chains, relations, lang), chains, lang)
    tokens, time_sent_pair = _subtitles(rng, sentences, sentence_mentions, chains, lang)
    return {
        "doc": join_tokens(tokens, lang),
        "time_sent_pair": time_sent_pair,
        "relation": [
            {"link1": f"L{obj}", "link2": f"L{subject}", "type": kind} for subject, obj, kind in relations
        ],
        "entityLink": {
            f"L{i}": {"len": len(c.mentions), "link": c.mentions, "type": c.type}
            for i, c in enumerate(chains)
        },
        "image": frames,
        "video_id": video_id,
        "video_title": f"The story of {chains[0].forms[0]}"
        if lang == "en"
        else f"{chains[0].forms[0]}的故事",
        "lang": lang,
    }


def _sample_boxes(rng: random.Random, types: list[str], size: int) -> list[tuple[str, int, int, int, int]]:
    """0–3 non-overlapping pixel boxes (type, x0, y0, x1, y1), each side at least ``MIN_BOX`` of the image."""
    boxes: list[tuple[str, int, int, int, int]] = []
    low, high = int(np.ceil(MIN_BOX * size)), int(MAX_BOX * size)
    for _ in range(rng.randint(0, 3) if types else 0):
        for _attempt in range(20):
            width, height = rng.randint(low, high), rng.randint(low, high)
            x0, y0 = rng.randint(0, size - width), rng.randint(0, size - height)
            box = (rng.choice(types), x0, y0, x0 + width, y0 + height)
            if all(box[3] <= b[1] or b[3] <= box[1] or box[4] <= b[2] or b[4] <= box[2] for b in boxes):
                boxes.append(box)
                break
    return boxes


def _draw_frame(rng: random.Random, boxes, size: int) -> Image.Image:
    """Plain, lightly noisy background with one filled shape per box (circle PER, square LOC, triangle ORG)."""
    noise = np.random.default_rng(rng.getrandbits(32)).integers(-12, 13, size=(size, size, 3))
    background = rng.randint(190, 235)
    image = Image.fromarray((background + noise).clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for entity_type, x0, y0, x1, y1 in boxes:
        colour, corners = SHAPE_COLOURS[entity_type], (x0, y0, x1 - 1, y1 - 1)
        if entity_type == "PER":
            draw.ellipse(corners, fill=colour)
        elif entity_type == "LOC":
            draw.rectangle(corners, fill=colour)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=colour)
    return image


def _write_frames(rng: random.Random, folder: Path, frames: list[int], types: list[str], size: int) -> None:
    """Frames ``<n>.png`` with YOLO labels ``<n>.txt`` (``TYPE cx cy w h``, normalised)."""
    folder.mkdir(parents=True, exist_ok=True)
    for number in frames:
        boxes = _sample_boxes(rng, types, size)
        _draw_frame(rng, boxes, size).save(folder / f"{number}.png")
        lines = [
            f"{t} {(x0 + x1) / 2 / size:.7f} {(y0 + y1) / 2 / size:.7f} {(x1 - x0) / size:.7f} {(y1 - y0) / size:.7f}"
            for t, x0, y0, x1, y1 in boxes
        ]
        (folder / f"{number}.txt").write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def write_synthetic_release(
    output_dir: str | Path,
    docs: int,
    lang: str = "en",
    seed: int = 0,
    frames: int = 4,
    image_size: int = 64,
    eval_docs: int | None = None,
) -> Path:
    """Write a synthetic release (train: ``docs`` records; dev and test: ``eval_docs`` each) under ``output_dir``.

    Frame numbers are increasing but irregular, so frame order must come from their numeric value.
    EN and ZH releases may share one ``output_dir``: their video ids differ. An existing frame folder of
    a generated video id is replaced.
    """
    check_language(lang)
    if docs < 1 or frames < 0 or image_size < 16:
        raise ValueError(
            f"need docs >= 1, frames >= 0 and image_size >= 16; got {docs}, {frames}, {image_size}"
        )
    output_dir = Path(output_dir)
    eval_docs = max(2, docs // 4) if eval_docs is None else eval_docs
    data_dir = output_dir / "data" / lang
    data_dir.mkdir(parents=True, exist_ok=True)
    video = 1000 if lang == "zh" else 0
    for split, count in zip(SPLITS, (docs, eval_docs, eval_docs), strict=True):
        records = []
        for index in range(count):
            rng = random.Random(f"m3d-synthetic/{lang}/{seed}/{split}/{index}")
            video_id = f"video_{video + index // 5}_{index % 5}"
            numbers = sorted(rng.sample(range(1, 40 * max(frames, 1)), frames))
            record = _make_record(rng, video_id, numbers, lang)
            shutil.rmtree(output_dir / "img" / video_id, ignore_errors=True)
            if frames:
                types = sorted(
                    {chain["type"] for chain in record["entityLink"].values()} & set(GROUNDING_TYPES)
                )
                _write_frames(rng, output_dir / "img" / video_id, numbers, types, image_size)
            records.append(record)
        video += (count + 4) // 5
        (data_dir / f"{split}_{lang}.json").write_text(
            json.dumps(records, ensure_ascii=False), encoding="utf-8"
        )
    return output_dir
