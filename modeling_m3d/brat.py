"""Convert between the M³D release layout and BRAT standoff annotation (plus YOLO frame labels).

The paper's annotators labelled text in BRAT and frames in LabelImg (Section III). This module turns a
BRAT folder into the release layout and back, so that annotations can be corrected in BRAT and fed to
the ``datasets`` builder.

BRAT folder layout (what ``export`` writes and ``import`` reads)::

    B/annotation.conf               entity types, relation types (Arg1 = subject, Arg2 = object), Coref
    B/<split>/<video_id>.txt        the document text
    B/<split>/<video_id>.ann        the annotations (below)
    B/<split>/<video_id>.json       sidecar: {"index", "lang", "video_title", "time_sent_pair", "image"}
    B/img/<video_id>/<frame>.<png|jpg> and <frame>.txt   frames and YOLO labels ``<TYPE> cx cy w h``

Annotations (``.ann``), with character offsets into the ``.txt``:

- ``T<n>\\t<TYPE> <start> <end>\\t<text>``: one mention; TYPE in PER/LOC/ORG/TIME.
- ``*\\tCoref T<a> T<b> ...`` (or ``R<n>\\tCoref Arg1:T<a> Arg2:T<b>``): mentions of one entity chain. A
  mention in no Coref group is a chain of its own.
- ``R<n>\\t<relation type> Arg1:T<a> Arg2:T<b>``: a chain-level relation; Arg1 is the subject (release
  ``link2``), Arg2 the object (release ``link1``); the type must be declared in ``annotation.conf``.
- ``#<n>\\tAnnotatorNotes T<a>\\tsent_time=<t0>-<t1>`` (or ``sent_time=null``): the mention's subtitle,
  when it is not the one holding the mention's first token (a few release mentions point elsewhere or
  have none). Other notes are ignored.

How the release metadata survives the round trip: chain ids are ``L0, L1, ...`` in the order of each
chain's lowest T number and mentions keep T-number order (export numbers mentions chain by chain, in
release order); relations keep R-number order; ``time_sent_pair``, ``video_title``, ``image`` and the
document order (``index``) live in the sidecar. Without a sidecar (a document written by hand), every
non-empty line of the ``.txt`` is one subtitle keyed ``<i>-<i+1>`` (line number, not seconds), the title
is empty, ``image`` lists the numeric frame stems in ``B/img/<video_id>/`` and the document comes after
those with an index, by name. EN text is tokenised on whitespace and ZH text into characters (line
breaks dropped); mention offsets must fall on token boundaries.

Usage::

    python dataset_script/import_brat.py --brat_dir B --output_dir OUT --lang en --split dev
    python dataset_script/import_brat.py export --data_dir DIR --output_dir B --lang en
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from itertools import accumulate
from pathlib import Path
from typing import Any

from .release import M3DFormatError, list_frames, read_release_file, record_to_example
from .schema import ENTITY_TYPES, LANGUAGES, RELATION_TYPES, join_tokens, tokenize

SPLITS = ("train", "dev", "test")
COREF = "Coref"
TOKEN_PATTERNS = {"en": re.compile(r"\S+"), "zh": re.compile(r"[^\r\n]")}
ANNOTATION_ID = re.compile(r"([TR#])(\d+)|\*")
SPAN = re.compile(r"(\S+) (\d+) (\d+)")
ARGUMENT = re.compile(r"(Arg[12]):(T\d+)")
SENT_TIME_NOTE = re.compile(r"sent_time=(\S+)")


class AnnLine:
    """One line of a ``.ann`` file, to name it in errors."""

    def __init__(self, path: Path, number: int, text: str) -> None:
        self.path, self.number, self.text = path, number, text
        self.fields = text.split("\t")

    def error(self, field: str, message: str) -> M3DFormatError:
        return M3DFormatError(f"{self.path}: line {self.number} ({self.text!r}): field {field!r}: {message}")


# ----------------------------------------------------------------------------------------------- import


def read_relation_types(conf: Path | None) -> list[str]:
    """Relation types declared in an ``annotation.conf`` (``Coref`` and ``<...>`` excluded); default set if none."""
    if conf is None:
        return list(RELATION_TYPES)
    section, types = None, []
    for line in conf.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section == "relations" and line and not line.startswith(("#", "<")) and line.split()[0] != COREF:
            types.append(line.split()[0])
    return types


def read_brat_document(
    txt_path: str | Path, lang: str, relation_types: list[str], frame_dir: str | Path | None = None
) -> tuple[dict[str, Any], int | None]:
    """One BRAT document (``.txt`` + ``.ann`` + optional sidecar) -> (release record, sidecar index)."""
    txt_path, ann_path = Path(txt_path), Path(txt_path).with_suffix(".ann")
    raw = txt_path.read_text(encoding="utf-8")
    matches = list(TOKEN_PATTERNS[lang].finditer(raw))
    tokens = [match.group() for match in matches]
    doc = join_tokens(tokens, lang)
    sidecar = _sidecar(txt_path, raw, lang, frame_dir)
    holder = _subtitle_of_tokens(sidecar["time_sent_pair"], doc, lang, str(txt_path.with_suffix(".json")))
    token_at = {match.start(): index for index, match in enumerate(matches)}
    token_after = {match.end(): index + 1 for index, match in enumerate(matches)}
    mentions, groups, relations, notes = _read_ann(ann_path, raw, token_at, token_after)
    mention_chain, chains = _chains(mentions, groups, ann_path)
    for mention_id, mention in mentions.items():
        mention["text"] = join_tokens(tokens[mention["start"] : mention["end"]], lang)
        mention["sent_time"] = notes.get(mention_id, holder[mention["start"]])
        if mention["sent_time"] not in (None, *sidecar["time_sent_pair"]):
            raise M3DFormatError(
                f"{ann_path}: note on {mention_id}: field 'sent_time': "
                f"{mention['sent_time']!r} is not a time_sent_pair key"
            )
    record = {
        "doc": doc,
        "time_sent_pair": sidecar["time_sent_pair"],
        "relation": _chain_relations(relations, mentions, mention_chain, relation_types),
        "entityLink": {
            f"L{index}": {
                "len": len(ids),
                "link": [mentions[i] for i in ids],
                "type": mentions[ids[0]]["type"],
            }
            for index, ids in enumerate(chains)
        },
        "image": sidecar["image"],
        "video_id": txt_path.stem,
        "video_title": sidecar["video_title"],
        "lang": lang,
    }
    return record, sidecar.get("index")


def import_brat(brat_dir: str | Path, output_dir: str | Path, lang: str, split: str) -> Path:
    """Read ``brat_dir/<split>/*.txt|.ann`` (+ ``brat_dir/img/``) and write the release layout; return the JSON.

    Every document is read and validated (by the builder's record checks, frames and YOLO labels
    included) before anything is written.
    """
    if lang not in LANGUAGES or split not in SPLITS:
        raise ValueError(
            f"lang must be one of {LANGUAGES} and split one of {SPLITS}; got {lang!r}, {split!r}"
        )
    brat_dir, output_dir = Path(brat_dir), Path(output_dir)
    split_dir, image_dir = brat_dir / split, brat_dir / "img"
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir}: no such BRAT folder")
    conf = next(
        (p for p in (split_dir / "annotation.conf", brat_dir / "annotation.conf") if p.is_file()), None
    )
    relation_types = read_relation_types(conf)
    documents = []
    for txt_path in sorted(split_dir.glob("*.txt")):
        record, index = read_brat_document(txt_path, lang, relation_types, image_dir / txt_path.stem)
        documents.append(((index is None, index or 0, txt_path.name), record))
    records = [record for _, record in sorted(documents, key=lambda item: item[0])]
    for index, record in enumerate(records):
        record_to_example(
            record, lang, image_dir, source=str(split_dir / f"{record['video_id']}.ann"), index=index
        )
    for record in records:
        _copy_frames(image_dir / record["video_id"], output_dir / "img" / record["video_id"])
    target = output_dir / "data" / lang / f"{split}_{lang}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return target


def _read_ann(path: Path, raw: str, token_at: dict[int, int], token_after: dict[int, int]):
    """Mentions by T id, Coref groups, relations (line, subject T, object T) and sent_time notes."""
    mentions: dict[str, dict[str, Any]] = {}
    groups, relations, notes, pending = [], [], {}, []
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []  # no .ann: no annotation
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        line = AnnLine(path, number, text)
        match = ANNOTATION_ID.fullmatch(line.fields[0])
        if match is None:
            raise line.error(
                "id", "only T (mention), R (relation), * (Coref) and # (note) lines are supported"
            )
        if match[1] == "T":
            if line.fields[0] in mentions:
                raise line.error("id", "appears twice")
            mentions[line.fields[0]] = _read_mention(line, raw, token_at, token_after)
        else:
            pending.append((match[1] or "*", line))
    for kind, line in pending:
        if kind == "*":
            groups.append(_read_coref(line, mentions))
        elif kind == "R":
            subject, obj = _read_arguments(line, mentions)
            if line.fields[1].split(" ")[0] == COREF:
                groups.append([subject, obj])
            else:
                relations.append((line, subject, obj))
        else:
            note = _read_note(line, mentions)
            if note is not None:
                notes[note[0]] = None if note[1] == "null" else note[1]
    relations.sort(key=lambda item: int(item[0].fields[0][1:]))
    return mentions, groups, relations, notes


def _read_mention(line: AnnLine, raw: str, token_at: dict[int, int], token_after: dict[int, int]) -> dict:
    if len(line.fields) != 3:
        raise line.error("T", "expected 'T<n>\\t<TYPE> <start> <end>\\t<text>'")
    span = SPAN.fullmatch(line.fields[1])
    if span is None:
        raise line.error("span", "expected '<TYPE> <start> <end>' (discontinuous spans are not supported)")
    kind, start, end = span[1], int(span[2]), int(span[3])
    if kind not in ENTITY_TYPES:
        raise line.error("type", f"{kind!r} is not one of {ENTITY_TYPES}")
    if raw[start:end] != line.fields[2] or start >= end:
        raise line.error(
            "text", f"{line.fields[2]!r} does not match the text at [{start}, {end}): {raw[start:end]!r}"
        )
    if start not in token_at or end not in token_after:
        raise line.error("span", f"offsets [{start}, {end}) do not fall on token boundaries")
    return {"type": kind, "start": token_at[start], "end": token_after[end]}


def _read_coref(line: AnnLine, mentions: dict[str, dict]) -> list[str]:
    parts = line.fields[1].split(" ") if len(line.fields) == 2 else []
    if not parts or parts[0] != COREF:
        raise line.error("type", f"expected '*\\t{COREF} T<a> T<b> ...'")
    for mention_id in parts[1:]:
        if mention_id not in mentions:
            raise line.error("argument", f"names {mention_id!r}, which is not a T line of this file")
    return parts[1:]


def _read_arguments(line: AnnLine, mentions: dict[str, dict]) -> tuple[str, str]:
    parts = line.fields[1].split(" ") if len(line.fields) == 2 else []
    arguments = dict(match.groups() for match in map(ARGUMENT.fullmatch, parts[1:]) if match)
    if len(parts) != 3 or set(arguments) != {"Arg1", "Arg2"}:
        raise line.error("arguments", "expected 'R<n>\\t<type> Arg1:T<a> Arg2:T<b>'")
    for role, mention_id in arguments.items():
        if mention_id not in mentions:
            raise line.error(role, f"names {mention_id!r}, which is not a T line of this file")
    return arguments["Arg1"], arguments["Arg2"]


def _read_note(line: AnnLine, mentions: dict[str, dict]) -> tuple[str, str] | None:
    """(T id, value) of a ``sent_time=<value>`` note; None for any other note."""
    parts = line.fields[1].split(" ") if len(line.fields) == 3 else []
    if len(parts) != 2 or parts[0] != "AnnotatorNotes":
        raise line.error("note", "expected '#<n>\\tAnnotatorNotes <id>\\t<note>'")
    note = SENT_TIME_NOTE.fullmatch(line.fields[2].strip())
    if note is not None and parts[1] not in mentions:
        raise line.error("sent_time", f"annotates {parts[1]!r}, which is not a T line of this file")
    return None if note is None else (parts[1], note[1])


def _chain_relations(
    relations: list[tuple[AnnLine, str, str]],
    mentions: dict[str, dict],
    mention_chain: dict[str, int],
    relation_types: list[str],
) -> list[dict[str, str]]:
    """R lines -> release relations (``link2`` = Arg1's chain, ``link1`` = Arg2's), first occurrence kept."""
    relation = []
    for line, subject, obj in relations:
        kind = line.fields[1].split(" ")[0]
        _check_relation(line, kind, mentions[subject]["type"], mentions[obj]["type"], relation_types)
        entry = {"link1": f"L{mention_chain[obj]}", "link2": f"L{mention_chain[subject]}", "type": kind}
        if entry not in relation:
            relation.append(entry)
    return relation


def _check_relation(line: AnnLine, kind: str, subject: str, obj: str, relation_types: list[str]) -> None:
    if kind not in relation_types:
        raise line.error(
            "type", f"relation type {kind!r} is not declared in annotation.conf ({len(relation_types)} types)"
        )
    if kind.split("_")[0] != f"{subject}-{obj}":
        raise line.error("type", f"{kind!r} links a {subject} subject (Arg1) to a {obj} object (Arg2)")


def _chains(
    mentions: dict[str, dict], groups: list[list[str]], path: Path
) -> tuple[dict[str, int], list[list[str]]]:
    """Chains = connected Coref groups; ordered by their lowest T number, mentions by T number."""
    parent = {mention_id: mention_id for mention_id in mentions}

    def root(mention_id: str) -> str:
        while parent[mention_id] != mention_id:
            mention_id = parent[mention_id]
        return mention_id

    for group in groups:
        for mention_id in group[1:]:
            parent[root(mention_id)] = root(group[0])
    members: dict[str, list[str]] = {}
    for mention_id in sorted(mentions, key=lambda i: int(i[1:])):
        members.setdefault(root(mention_id), []).append(mention_id)
    chains = list(members.values())
    for ids in chains:
        types = {mentions[i]["type"] for i in ids}
        if len(types) > 1:
            raise M3DFormatError(
                f"{path}: field 'Coref': chain {' '.join(ids)} mixes entity types {sorted(types)}"
            )
    return {i: index for index, ids in enumerate(chains) for i in ids}, chains


def _subtitle_of_tokens(pairs: dict[str, str], doc: str, lang: str, source: str) -> list[str]:
    """The ``time_sent_pair`` key holding each token; the subtitles must concatenate to the document."""
    if join_tokens(list(pairs.values()), lang) != doc:
        raise M3DFormatError(
            f"{source}: field 'time_sent_pair': the subtitles do not concatenate to the .txt text"
        )
    return [key for key, sentence in pairs.items() for _ in tokenize(sentence, lang)]


def _sidecar(txt_path: Path, raw: str, lang: str, frame_dir: str | Path | None) -> dict[str, Any]:
    """The document's sidecar, or defaults for a hand-written document: one subtitle per non-empty line."""
    path = txt_path.with_suffix(".json")
    if not path.is_file():
        lines = [join_tokens(TOKEN_PATTERNS[lang].findall(line), lang) for line in raw.splitlines()]
        pairs = {f"{i}-{i + 1}": line for i, line in enumerate(filter(None, lines))}
        return {"time_sent_pair": pairs, "video_title": "", "image": _frame_numbers(frame_dir)}
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise M3DFormatError(f"{path}: malformed JSON at line {error.lineno}: {error.msg}") from error
    expected = {"time_sent_pair": dict, "video_title": str, "image": list, "index": int, "lang": str}
    defaults = {"index": 0, "lang": lang}
    for key, kind in expected.items():
        if not isinstance(sidecar.get(key, defaults.get(key)), kind):
            raise M3DFormatError(f"{path}: field {key!r}: expected {kind.__name__}, got {sidecar.get(key)!r}")
    if sidecar.get("lang", lang) != lang:
        raise M3DFormatError(
            f"{path}: field 'lang': the sidecar says {sidecar['lang']!r}, importing {lang!r}"
        )
    return sidecar


def _frame_numbers(frame_dir: str | Path | None) -> list[int]:
    frames = list_frames(frame_dir) if frame_dir is not None else []
    for frame in frames:
        if not frame.stem.isdigit():
            raise M3DFormatError(f"{frame}: field 'image': frame stems must be frame numbers")
    return [int(frame.stem) for frame in frames]


def _copy_frames(source: Path, target: Path) -> None:
    """Replace ``target`` by a copy of the frame folder ``source`` (nothing when there is none)."""
    if source.is_dir():
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)


# ----------------------------------------------------------------------------------------------- export


def brat_document(
    record: dict[str, Any], lang: str, index: int = 0, source: str = "<record>"
) -> tuple[str, str, dict[str, Any]]:
    """One valid release record -> (``.txt`` text, ``.ann`` text, sidecar); ``source`` names it in errors."""
    source = f"{source} (video_id {record['video_id']!r})"
    tokens = tokenize(record["doc"], lang)
    if "" in tokens:
        raise M3DFormatError(
            f"{source}: field 'doc': an empty token (leading, trailing or double space) "
            "cannot be represented in BRAT"
        )
    separator = 1 if lang == "en" else 0
    starts = [0, *accumulate(len(token) + separator for token in tokens)]
    holder = _subtitle_of_tokens(record["time_sent_pair"], record["doc"], lang, source)
    lines, numbers, notes = [], {}, []
    for chain_id, chain in record["entityLink"].items():
        numbers[chain_id] = []
        for mention in chain["link"]:
            number = len(lines) + 1
            begin, end = starts[mention["start"]], starts[mention["end"]] - separator
            lines.append(f"T{number}\t{mention['type']} {begin} {end}\t{record['doc'][begin:end]}")
            numbers[chain_id].append(number)
            if mention["sent_time"] != holder[mention["start"]]:
                value = "null" if mention["sent_time"] is None else mention["sent_time"]
                notes.append(f"#{len(notes) + 1}\tAnnotatorNotes T{number}\tsent_time={value}")
    lines += [f"*\t{COREF} " + " ".join(f"T{n}" for n in ids) for ids in numbers.values() if len(ids) > 1]
    lines += [
        f"R{k}\t{relation['type']} Arg1:T{numbers[relation['link2']][0]} Arg2:T{numbers[relation['link1']][0]}"
        for k, relation in enumerate(record["relation"], start=1)
    ]
    sidecar = {key: record[key] for key in ("video_title", "time_sent_pair", "image")}
    return (
        record["doc"],
        "".join(f"{line}\n" for line in lines + notes),
        {"index": index, "lang": lang, **sidecar},
    )


def annotation_conf(relation_types: list[str]) -> str:
    """BRAT ``annotation.conf``: the entity types, Coref as an equivalence, nesting allowed, the relation types."""
    relations = [
        f"{kind}\tArg1:{kind.split('_')[0].split('-')[0]}, Arg2:{kind.split('_')[0].split('-')[1]}"
        for kind in relation_types
    ]
    return "\n".join([
        "# M3D annotation scheme. Relations: Arg1 is the subject (release link2), Arg2 the object (link1).",
        "[entities]", *ENTITY_TYPES, "",
        "[relations]",
        f"{COREF}\tArg1:<ENTITY>, Arg2:<ENTITY>, <REL-TYPE>:symmetric-transitive",
        "<OVERLAP>\tArg1:<ENTITY>, Arg2:<ENTITY>, <OVL-TYPE>:<ANY>",
        *relations, "",
        "[events]", "",
        "[attributes]", "",
    ])  # fmt: skip


def export_brat(
    data_dir: str | Path, output_dir: str | Path, lang: str, splits: tuple[str, ...] = SPLITS
) -> Path:
    """Write every split of ``data_dir`` (release layout) present on disk as a BRAT folder; return it.

    ``annotation.conf`` declares the default relation types plus any other type the data uses; frames
    and their YOLO labels are copied to ``output_dir/img/``. Every record is checked before anything is
    written.
    """
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    paths = {split: data_dir / "data" / lang / f"{split}_{lang}.json" for split in splits}
    records = {split: read_release_file(path) for split, path in paths.items() if path.is_file()}
    if not records:
        raise FileNotFoundError(
            f"{data_dir / 'data' / lang}: no {'/'.join(splits)} annotation file for {lang!r}"
        )
    documents = {}
    for split, split_records in records.items():
        for index, record in enumerate(split_records):
            record_to_example(record, lang, source=str(paths[split]), index=index)
        documents[split] = [
            brat_document(r, lang, index, f"{paths[split]}: document {index}")
            for index, r in enumerate(split_records)
        ]
    used = {relation["type"] for rs in records.values() for record in rs for relation in record["relation"]}
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "annotation.conf").write_text(
        annotation_conf(sorted(set(RELATION_TYPES) | used)), encoding="utf-8"
    )
    for split, split_records in records.items():
        (output_dir / split).mkdir(exist_ok=True)
        for record, (text, ann, sidecar) in zip(split_records, documents[split], strict=True):
            stem = output_dir / split / record["video_id"]
            stem.with_suffix(".txt").write_text(text, encoding="utf-8")
            stem.with_suffix(".ann").write_text(ann, encoding="utf-8")
            stem.with_suffix(".json").write_text(
                json.dumps(sidecar, ensure_ascii=False, indent=1), encoding="utf-8"
            )
            _copy_frames(data_dir / "img" / record["video_id"], output_dir / "img" / record["video_id"])
    return output_dir


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True, type=Path)
    parser.add_argument("--lang", required=True, choices=LANGUAGES)
    if argv[:1] == ["export"]:
        parser.prog += " export"
        parser.add_argument("--data_dir", required=True, type=Path, help="a release copy: data/<lang>/, img/")
        args = parser.parse_args(argv[1:])
        print(f"wrote BRAT folder {export_brat(args.data_dir, args.output_dir, args.lang)}")
    else:
        parser.add_argument(
            "--brat_dir", required=True, type=Path, help="holds <split>/, img/, annotation.conf"
        )
        parser.add_argument("--split", required=True, choices=SPLITS)
        args = parser.parse_args(argv)
        print(f"wrote {import_brat(args.brat_dir, args.output_dir, args.lang, args.split)}")
