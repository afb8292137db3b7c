"""Reading and validating the M³D release (paper, Sections III-IV).

The release holds one JSON list per language and split, ``data/<lang>/<split>_<lang>.json`` (the
release's ``dev`` is the ``validation`` split), and an image archive ``img/<video_id>/`` of sampled
frames, each with an optional same-stem YOLO label file ``<TYPE> <cx> <cy> <w> <h>``.

:func:`record_to_example` turns one release record into one row of :data:`FEATURES`; the `datasets`
builder (:mod:`modeling_m3d.builder`), the Hub export and the annotation importers all go through it. Bad input
raises :class:`M3DFormatError` naming the file, the record (document index and ``video_id``) and the field.
Label sets, languages and tokenisation come from :mod:`modeling_m3d.schema`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import datasets
import PIL.Image

from .schema import ENTITY_TYPES, GROUNDING_TYPES, check_language, join_tokens, tokenize

RELEASE_SPLITS = {"train": "train", "validation": "dev", "test": "test"}
HOMEPAGE = "https://github.com/solkx/m3d"
RELEASE_URL = "https://raw.githubusercontent.com/solkx/m3d/main"
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")

DESCRIPTION = (
    "M³D is a multimodal, multilingual (English and Chinese) and multitask dataset for grounded "
    "document-level information extraction from biography videos. Each row is one video clip: its "
    "subtitle document with entity mentions, entity chains (coreference) and chain-level relations, "
    "and the frames sampled from the clip with the bounding boxes of the entities that appear in them "
    "(visual grounding)."
)
CITATION = """\
@misc{liu_m3d,
  title  = {M{\\textsuperscript{3}}D: A Multimodal, Multilingual and Multitask Dataset for Grounded
            Document-level Information Extraction},
  author = {Liu, Jiang and Li, Bobo and Yang, Xinran and Yang, Na and Fei, Hao and Zhang, Mingyao
            and Li, Fei and Ji, Donghong},
  howpublished = {\\url{https://github.com/solkx/m3d}}
}
"""

_ENTITY_LABEL = datasets.ClassLabel(names=list(ENTITY_TYPES))
FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "lang": datasets.Value("string"),
        "video_id": datasets.Value("string"),
        "video_title": datasets.Value("string"),
        "tokens": datasets.List(datasets.Value("string")),
        "subtitles": datasets.List(
            {
                "start_time": datasets.Value("float32"),
                "end_time": datasets.Value("float32"),
                "text": datasets.Value("string"),
            }
        ),
        "entities": datasets.List(
            {
                "start": datasets.Value("int32"),
                "end": datasets.Value("int32"),
                "type": _ENTITY_LABEL,
                "chain": datasets.Value("int32"),
            }
        ),
        "chains": datasets.List({"id": datasets.Value("string"), "type": _ENTITY_LABEL}),
        "relations": datasets.List(
            {
                "subject": datasets.Value("int32"),
                "object": datasets.Value("int32"),
                "type": datasets.Value("string"),
            }
        ),
        "frames": datasets.List(datasets.Image()),
        "groundings": datasets.List(
            {
                "frame": datasets.Value("int32"),
                "type": datasets.ClassLabel(names=list(GROUNDING_TYPES)),
                "box": datasets.List(datasets.Value("float32")),
            }
        ),
    }
)

_REQUIRED_KEYS = ("video_id", "video_title", "doc", "time_sent_pair", "entityLink", "relation")
_TIME_SPAN = re.compile(r"\s*(\d+(?:\.\d*)?)\s*-\s*(\d+(?:\.\d*)?)\s*")
_CHAIN_ID = re.compile(r"[A-Za-z_]*(\d+)")
_NUMBER = re.compile(r"\d+(?:\.\d*)?")


class M3DFormatError(ValueError):
    """A release file that does not follow the documented format."""


@dataclass(frozen=True)
class RecordRef:
    """Where a record comes from, to name it in errors."""

    source: str
    index: int
    video_id: str | None = None

    def error(self, field: str, message: str) -> M3DFormatError:
        record = f"document {self.index}"
        if self.video_id is not None:
            record += f" (video_id {self.video_id!r})"
        return M3DFormatError(f"{self.source}: {record}: field {field!r}: {message}")


def release_path(lang: str, split: str) -> str:
    """The release-relative path of one split's annotation file, e.g. ``data/zh/dev_zh.json``."""
    check_language(lang)
    return f"data/{lang}/{RELEASE_SPLITS[split]}_{lang}.json"


def release_sources(lang: str, data_dir: str | Path | None = None) -> dict[str, str]:
    """Split name -> annotation file: under ``data_dir`` when given, else the release's public URL."""
    if data_dir is None:
        return {split: f"{RELEASE_URL}/{release_path(lang, split)}" for split in RELEASE_SPLITS}
    root = Path(data_dir).expanduser().resolve()
    return {split: str(root / release_path(lang, split)) for split in RELEASE_SPLITS}


def read_release_file(path: str | Path, source: str | None = None) -> list[Any]:
    """Load one annotation file: a JSON list with one object per document."""
    source = source or str(path)
    try:
        with open(path, encoding="utf-8") as file:
            records = json.load(file)
    except json.JSONDecodeError as error:
        raise M3DFormatError(
            f"{source}: malformed JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from error
    except UnicodeDecodeError as error:
        raise M3DFormatError(f"{source}: not UTF-8 text: {error}") from error
    if not isinstance(records, list):
        raise M3DFormatError(f"{source}: expected a JSON list of documents, got {type(records).__name__}")
    return records


def iter_examples(
    path: str | Path, lang: str, image_dir: str | Path | None = None, source: str | None = None
) -> Iterator[dict[str, Any]]:
    """Yield the schema rows of one annotation file, in file order; ``video_id`` must be unique."""
    source = source or str(path)
    seen = set()
    for index, record in enumerate(read_release_file(path, source)):
        example = record_to_example(record, lang, image_dir, source=source, index=index)
        if example["id"] in seen:
            raise RecordRef(source, index, example["id"]).error("video_id", "appears twice in this file")
        seen.add(example["id"])
        yield example


def record_to_example(
    record: Any, lang: str, image_dir: str | Path | None = None, source: str = "<record>", index: int = 0
) -> dict[str, Any]:
    """Convert one release record into one row of :data:`FEATURES`.

    Frames come from ``image_dir/<video_id>/`` (none when ``image_dir`` is None or the folder is absent);
    ``source`` and ``index`` only serve to name the record in errors.
    """
    check_language(lang)
    ref = RecordRef(str(source), index)
    if not isinstance(record, dict):
        raise ref.error("<record>", f"expected a JSON object, got {type(record).__name__}")
    video_id = _get(record, "video_id", str, ref, "video_id")
    ref = replace(ref, video_id=video_id)
    missing = [key for key in _REQUIRED_KEYS if key not in record]
    if missing:
        raise ref.error(missing[0], f"missing required key (record has {sorted(record)})")
    if Path(video_id).name != video_id:
        raise ref.error("video_id", "must be a plain folder name")
    if record.get("lang", lang) != lang:
        raise ref.error("lang", f"is {record['lang']!r} in a {lang!r} file")
    tokens = tokenize(_get(record, "doc", str, ref, "doc"), lang)
    entities, chains, chain_index = parse_chains(
        _get(record, "entityLink", dict, ref, "entityLink"), tokens, lang, ref
    )
    frames, groundings = read_frames(Path(image_dir) / video_id, ref) if image_dir is not None else ([], [])
    return {
        "id": video_id,
        "lang": lang,
        "video_id": video_id,
        "video_title": _get(record, "video_title", str, ref, "video_title"),
        "tokens": tokens,
        "subtitles": parse_subtitles(_get(record, "time_sent_pair", dict, ref, "time_sent_pair"), ref),
        "entities": entities,
        "chains": chains,
        "relations": parse_relations(_get(record, "relation", list, ref, "relation"), chain_index, ref),
        "frames": frames,
        "groundings": groundings,
    }


def parse_subtitles(pairs: dict[str, Any], ref: RecordRef) -> list[dict[str, Any]]:
    """``time_sent_pair`` ``{"<t0>-<t1>": sentence}`` (seconds, floats allowed), in the given order."""
    subtitles = []
    for key, text in pairs.items():
        field = f"time_sent_pair[{key!r}]"
        match = _TIME_SPAN.fullmatch(key)
        if match is None:
            raise ref.error(field, "key is not '<start>-<end>' in seconds")
        if not isinstance(text, str):
            raise ref.error(field, f"expected a sentence string, got {type(text).__name__}")
        subtitles.append({"start_time": float(match[1]), "end_time": float(match[2]), "text": text})
    return subtitles


def parse_chains(
    links: dict[str, Any], tokens: list[str], lang: str, ref: RecordRef
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """``entityLink`` -> (entities sorted by (start, end), chains in release order, chain id -> index).

    Chains are ordered by the numeric suffix of their id (``L0``, ``L1``, ...); every mention becomes
    one entity whose ``chain`` indexes the chain list. Nested mentions are kept.
    """
    ids = sorted(links, key=lambda chain_id: (_chain_number(chain_id, ref), chain_id))
    chains, entities = [], []
    for chain_index, chain_id in enumerate(ids):
        field = f"entityLink.{chain_id}"
        chain = links[chain_id]
        if not isinstance(chain, dict):
            raise ref.error(field, f"expected a JSON object, got {type(chain).__name__}")
        chains.append({"id": chain_id, "type": _label(chain, ENTITY_TYPES, ref, field)})
        for position, mention in enumerate(_get(chain, "link", list, ref, f"{field}.link")):
            entity = parse_mention(mention, tokens, lang, ref, f"{field}.link[{position}]")
            entities.append({**entity, "chain": chain_index})
    entities.sort(key=lambda entity: (entity["start"], entity["end"], entity["chain"]))
    return entities, chains, {chain_id: index for index, chain_id in enumerate(ids)}


def parse_mention(mention: Any, tokens: list[str], lang: str, ref: RecordRef, field: str) -> dict[str, Any]:
    """One mention ``{"type", "start", "end", "text"}``: the span must be in range and carry ``text``."""
    if not isinstance(mention, dict):
        raise ref.error(field, f"expected a JSON object, got {type(mention).__name__}")
    start = _get(mention, "start", int, ref, f"{field}.start")
    end = _get(mention, "end", int, ref, f"{field}.end")
    if not 0 <= start < end <= len(tokens):
        raise ref.error(field, f"span [{start}, {end}) is out of range for {len(tokens)} tokens")
    text = _get(mention, "text", str, ref, f"{field}.text")
    covered = join_tokens(tokens[start:end], lang)
    if covered != text:
        raise ref.error(f"{field}.text", f"{text!r} does not match tokens[{start}:{end}] = {covered!r}")
    return {"start": start, "end": end, "type": _label(mention, ENTITY_TYPES, ref, field)}


def parse_relations(
    relations: list[Any], chain_index: dict[str, int], ref: RecordRef
) -> list[dict[str, Any]]:
    """Chain-level relations: ``link2`` is the subject and ``link1`` the object (release README)."""
    parsed = []
    for position, relation in enumerate(relations):
        field = f"relation[{position}]"
        if not isinstance(relation, dict):
            raise ref.error(field, f"expected a JSON object, got {type(relation).__name__}")
        for key in ("link1", "link2"):
            chain_id = _get(relation, key, str, ref, f"{field}.{key}")
            if chain_id not in chain_index:
                raise ref.error(f"{field}.{key}", f"names chain {chain_id!r}, which is not in entityLink")
        parsed.append(
            {
                "subject": chain_index[relation["link2"]],
                "object": chain_index[relation["link1"]],
                "type": _get(relation, "type", str, ref, f"{field}.type"),
            }
        )
    return parsed


def list_frames(frame_dir: str | Path) -> list[Path]:
    """The frames of one clip in temporal order: by the numeric value of the stem, then by name."""
    frame_dir = Path(frame_dir)
    if not frame_dir.is_dir():
        return []
    frames = [
        path for path in frame_dir.iterdir() if path.suffix.lower() in FRAME_SUFFIXES and path.is_file()
    ]
    return sorted(frames, key=_frame_order)


def read_frames(frame_dir: str | Path, ref: RecordRef) -> tuple[list[str], list[dict[str, Any]]]:
    """Frame paths of one clip and their boxes (``frame`` indexes the returned paths).

    Each frame is checked to decode; a frame without a same-stem ``.txt`` label file has no boxes.
    """
    frames = list_frames(frame_dir)
    groundings = []
    for index, frame in enumerate(frames):
        check_image(frame, ref)
        label_file = frame.with_suffix(".txt")
        if label_file.is_file():
            groundings.extend({"frame": index, **box} for box in read_boxes(label_file, ref))
    return [str(frame) for frame in frames], groundings


def read_boxes(label_file: str | Path, ref: RecordRef) -> list[dict[str, Any]]:
    """YOLO lines ``<TYPE> <cx> <cy> <w> <h>``: TYPE a grounding type name, coordinates in [0, 1]."""
    where = replace(ref, source=str(label_file))
    try:
        lines = Path(label_file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise where.error("groundings", f"unreadable label file: {error}") from error
    boxes = []
    for number, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        field = f"groundings (line {number})"
        if len(parts) != 5 or not all(_NUMBER.fullmatch(value) for value in parts[1:]):
            raise where.error(field, f"expected '<TYPE> <cx> <cy> <w> <h>', got {line!r}")
        box = [float(value) for value in parts[1:]]
        if not all(0.0 <= value <= 1.0 for value in box):
            raise where.error(field, f"box {box} is outside [0, 1]")
        boxes.append({"type": _check_name(parts[0], GROUNDING_TYPES, where, field), "box": box})
    return boxes


def check_image(path: str | Path, ref: RecordRef) -> None:
    """Decode one frame (JPEGs at reduced scale) so that an unreadable image fails the build, not training."""
    try:
        with PIL.Image.open(path) as image:
            image.draft("RGB", (64, 64))
            image.load()
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as error:
        raise replace(ref, source=str(path)).error("frames", f"unreadable image: {error}") from error


def _get(mapping: dict[str, Any], key: str, kind: type, ref: RecordRef, field: str) -> Any:
    if key not in mapping:
        raise ref.error(field, "missing required key")
    value = mapping[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ref.error(field, f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def _label(mapping: dict[str, Any], names: tuple[str, ...], ref: RecordRef, field: str) -> str:
    return _check_name(_get(mapping, "type", str, ref, f"{field}.type"), names, ref, f"{field}.type")


def _check_name(value: str, names: tuple[str, ...], ref: RecordRef, field: str) -> str:
    if value not in names:
        raise ref.error(field, f"{value!r} is not one of {list(names)}")
    return value


def _chain_number(chain_id: str, ref: RecordRef) -> int:
    match = _CHAIN_ID.fullmatch(chain_id)
    if match is None:
        raise ref.error(f"entityLink.{chain_id}", "chain id has no numeric suffix (expected L0, L1, ...)")
    return int(match[1])


def _frame_order(path: Path) -> tuple[float, str]:
    return (float(path.stem) if _NUMBER.fullmatch(path.stem) else float("inf"), path.name)
