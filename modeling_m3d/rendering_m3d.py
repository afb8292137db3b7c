"""Self-contained HTML views of one clip's extraction, in the manner of the paper's case study (Table V).

A view shows the clip's subtitle lines with their times, each entity span highlighted by its type, the mentions
of one chain sharing a colour and a chain number (`#k`); the relations as "subject chain — type → object chain",
hovering a chain or a relation outlining its mentions (inline CSS, no script, so it also works where a page
inserts the HTML without running scripts, as Gradio does); and the frames, inlined as JPEG data URIs, with the
grounded boxes drawn and labelled by type and score. A timeline (inline SVG) places each chain's mentions at
their subtitle times and each grounded type at its frames' times.

```python
from modeling_m3d.rendering_m3d import M3DRendering

view = M3DRendering(row, extraction, frame_times=[0.5, 1.5])
view  # a notebook displays it (`_repr_html_`)
view.save("clip.html")
```

`row` is a schema row (`modeling_m3d.schema`: `tokens`, `subtitles`, `frames`, `lang`, `id`); `extraction` is a
document of the metric format (`modeling_m3d.schema`, relations as mention lists, as `reference_document` gives
the gold one), the processor's `post_process_extraction` output (with `subject_chain` / `object_chain`), or the
`"m3d-extraction"` pipeline's output (chains of `{start, end, text}`, relations by chain index). All text is
HTML-escaped.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .schema import GROUNDING_TYPES, join_tokens, row_id, tokenize

# Background tints of the entity types (and box colours of the grounded ones).
TYPE_COLOURS = {"PER": "#ffc078", "LOC": "#8ce99a", "ORG": "#74c0fc", "TIME": "#e599f7"}
OTHER_TYPE_COLOUR = "#ced4da"
# Chain colours, dark enough for white chain numbers and for text on white; cycled past ten chains.
CHAIN_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b",
                 "#e7298a", "#1b7f86", "#595959", "#7a7a00", "#d95f02")  # fmt: skip
FRAME_MAX_SIDE = 320  # pixels of an inlined frame's longer side
TIMELINE_WIDTH, TIMELINE_LABEL, TIMELINE_ROW = 760, 200, 20  # SVG pixels

Mention = tuple[int, int]


@dataclass(frozen=True)
class Extraction:
    """An extraction in one shape: entities `(start, end, type)`, chains as mention lists, relations as
    `(subject chain, object chain, type)`, groundings `{frame, type, box, score}` (score None when absent)."""

    entities: list[tuple[int, int, str]]
    chains: list[list[Mention]]
    relations: list[tuple[int, int, str]]
    groundings: list[dict[str, Any]]

    def to_document(self) -> dict[str, list]:
        """The document format of `modeling_m3d.schema` (relations as mention lists), for `scoring`."""
        chains = [[list(mention) for mention in chain] for chain in self.chains]
        return {
            "entities": [{"start": s, "end": e, "type": t} for s, e, t in self.entities],
            "chains": chains,
            "relations": [
                {"subject": chains[s], "object": chains[o], "type": t} for s, o, t in self.relations
            ],
            "groundings": [
                {key: value for key, value in box.items() if value is not None} for box in self.groundings
            ],
        }


def _mention(value: Any, where: str) -> Mention:
    """`[start, end]` or `{"start", "end", ...}` as `(start, end)`."""
    try:
        start, end = (value["start"], value["end"]) if isinstance(value, Mapping) else value
        return int(start), int(end)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{where}: {value!r} is not a mention [start, end] or {{start, end}}") from err


def _chain_index(
    relation: Mapping, key: str, chain_of: Mapping[Mention, int], chains: int, where: str
) -> int:
    """The chain a relation's subject or object names: `<key>_chain`, an index, or a mention list."""
    value = relation.get(f"{key}_chain", relation.get(key))
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < chains:
            return value
        raise ValueError(f"{where}.{key}': chain {value} does not exist ({chains} chains)")
    if isinstance(value, Sequence) and value:
        first = _mention(value[0], f"{where}.{key}[0]'")
        if first in chain_of:
            return chain_of[first]
    raise ValueError(f"{where}.{key}': {value!r} names no chain of the extraction")


def normalize_extraction(extraction: Mapping[str, Any], where: str = "extraction") -> Extraction:
    """Any of the three extraction shapes (module docstring) as an `Extraction`; a `ValueError` names the field
    that is neither."""
    try:
        entities = [
            (*_mention(e, f"{where}, field 'entities[{i}]'"), str(e["type"]))
            for i, e in enumerate(extraction.get("entities") or ())
        ]
        chains = [
            [_mention(m, f"{where}, field 'chains[{c}][{j}]'") for j, m in enumerate(chain)]
            for c, chain in enumerate(extraction.get("chains") or ())
        ]
        chain_of = {mention: c for c, chain in enumerate(chains) for mention in chain}
        relations = [
            (
                _chain_index(r, "subject", chain_of, len(chains), f"{where}, field 'relations[{i}]"),
                _chain_index(r, "object", chain_of, len(chains), f"{where}, field 'relations[{i}]"),
                str(r["type"]),
            )
            for i, r in enumerate(extraction.get("relations") or ())
        ]
        groundings = [
            {
                "frame": int(g["frame"]),
                "type": str(g["type"]),
                "box": [float(v) for v in g["box"]],
                "score": None if g.get("score") is None else float(g["score"]),
            }  # fmt: skip
            for g in extraction.get("groundings") or ()
        ]
    except (KeyError, TypeError) as err:
        raise ValueError(f"{where}: not an extraction ({type(err).__name__}: {err})") from err
    return Extraction(entities, chains, relations, groundings)


# ----------------------------------------------------------------------------------------------- helpers


def _escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _type_class(entity_type: str) -> str:
    """A CSS class for a type: only the known type names become class names (nothing from input)."""
    return f"m3d-type-{entity_type}" if entity_type in TYPE_COLOURS else "m3d-type-other"


def chain_colour(chain: int) -> str:
    return CHAIN_COLOURS[chain % len(CHAIN_COLOURS)]


def format_seconds(seconds: float) -> str:
    """`75.25` → `1:15.2`."""
    minutes, rest = divmod(max(0.0, float(seconds)), 60)
    return f"{int(minutes)}:{rest:04.1f}"


def frame_data_uri(frame: Any, where: str) -> str:
    """A frame (PIL image, `{"bytes"|"path"}` dict of an undecoded `datasets` image, or a path) as a JPEG data URI,
    its longer side at most `FRAME_MAX_SIDE` pixels."""
    try:
        if isinstance(frame, Image.Image):
            image = frame.copy()
        elif isinstance(frame, Mapping):
            source = io.BytesIO(frame["bytes"]) if frame.get("bytes") else frame["path"]
            image = Image.open(source)
        else:
            image = Image.open(frame)
        image = image.convert("RGB")
    except (OSError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{where}: cannot read the frame as an image ({err})") from err
    image.thumbnail((FRAME_MAX_SIDE, FRAME_MAX_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def subtitle_lines(row: Mapping[str, Any]) -> list[tuple[int, int, float | None, float | None]]:
    """The row's tokens cut into its subtitle lines: `(first token, end token, start s, end s)` per line.

    The release's and the video path's subtitles, tokenised, give the document's tokens in order; when they do
    not (text given without subtitles, or edited), the whole document is one line without times.
    """
    tokens, lang = list(row.get("tokens") or ()), row.get("lang") or "en"
    subtitles = list(row.get("subtitles") or ())
    pieces = [tokenize(str(s["text"]), lang) for s in subtitles]
    if not subtitles or [t for piece in pieces for t in piece] != tokens:
        return [(0, len(tokens), None, None)] if tokens else []
    ends = np.cumsum([len(piece) for piece in pieces])
    starts = ends - [len(piece) for piece in pieces]
    return [
        (int(a), int(b), float(s["start_time"]), float(s["end_time"]))
        for a, b, s in zip(starts, ends, subtitles, strict=True)
        if b > a
    ]


def _outer_spans(entities: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Entities sorted by start, longest first, without those inside or across an earlier one (a nested
    mention is listed by its chain, not highlighted twice)."""
    kept, reach = [], -1
    for start, end, entity_type in sorted(entities, key=lambda e: (e[0], -e[1])):
        if start >= reach:
            kept.append((start, end, entity_type))
            reach = end
    return kept


# ----------------------------------------------------------------------------------------------- view


@dataclass
class M3DRendering:
    """One clip's extraction as HTML: `html()` (a fragment with its own scoped style), `timeline_html()`,
    `page()` (a whole document), `save(path)`, and `_repr_html_` for notebooks.

    Args:
        row: the schema row the extraction is of (`tokens`, `subtitles`, `frames`, `lang`, `id`).
        extraction: its extraction or gold document (module docstring).
        frame_times: seconds of each of the row's frames, for captions and the timeline (None: unknown).
        title: a heading (default: the row's id).
    """

    row: Mapping[str, Any]
    extraction: Mapping[str, Any]
    frame_times: Sequence[float] | None = None
    title: str | None = None

    def __post_init__(self) -> None:
        self.where = f"record {row_id(self.row)!r}"
        self.parsed = normalize_extraction(self.extraction, self.where)
        self.tokens = list(self.row.get("tokens") or ())
        self.lang = self.row.get("lang") or "en"
        self.frames = list(self.row.get("frames") or ())
        self._check_ranges()
        digest = json.dumps([self.title, row_id(self.row), self.parsed.to_document()], default=str)
        self.uid = "m3d-" + hashlib.sha1(digest.encode("utf-8")).hexdigest()[:10]
        self.chain_of = {m: c for c, chain in enumerate(self.parsed.chains) for m in chain}

    def _check_ranges(self) -> None:
        for i, (start, end, _) in enumerate(self.parsed.entities):
            if not 0 <= start < end <= len(self.tokens):
                raise ValueError(
                    f"{self.where}, field 'entities[{i}]': span [{start}, {end}) outside the "
                    f"{len(self.tokens)} tokens"
                )
        for i, box in enumerate(self.parsed.groundings):
            if not 0 <= box["frame"] < len(self.frames):
                raise ValueError(
                    f"{self.where}, field 'groundings[{i}].frame': {box['frame']} is not one of the "
                    f"{len(self.frames)} frames"
                )

    def span_text(self, mention: Mention) -> str:
        return join_tokens(self.tokens[mention[0] : mention[1]], self.lang)

    # ------------------------------------------------------------------------------------------- parts

    def _style(self) -> str:
        scope = f"#{self.uid}"
        types = "".join(
            f"{scope} .{_type_class(t)}{{--m3d-type:{colour}}}"
            for t, colour in [*TYPE_COLOURS.items(), ("other", OTHER_TYPE_COLOUR)]
        )
        hover = "".join(
            f"{scope}:has([data-chain='{c}']:hover) .m3d-entity[data-chain='{c}'],"
            f"{scope}:has(.m3d-relation[data-subject='{c}']:hover) .m3d-entity[data-chain='{c}'],"
            f"{scope}:has(.m3d-relation[data-object='{c}']:hover) .m3d-entity[data-chain='{c}']"
            "{outline:3px solid var(--m3d-chain);outline-offset:1px}"
            for c in range(len(self.parsed.chains))
        )
        return (
            f"<style>{scope}{{font-family:system-ui,sans-serif;line-height:1.9;color:#212529}}"
            f"{scope} h3{{margin:.3em 0}}{scope} h4{{margin:.6em 0 .2em}}"
            f"{scope} .m3d-line{{margin:0}}{scope} .m3d-time{{color:#868e96;font-size:.8em;margin-right:.6em;"
            "font-variant-numeric:tabular-nums}"
            f"{scope} .m3d-entity{{background:var(--m3d-type);border-bottom:3px solid var(--m3d-chain,transparent);"
            "padding:0 .15em;border-radius:.2em}"
            f"{scope} .m3d-chain-id,{scope} .m3d-chain-ref{{font-weight:600}}"
            f"{scope} .m3d-chain-ref{{color:var(--m3d-chain)}}"
            f"{scope} .m3d-chain-id{{font-size:.7em;margin-left:.15em;color:#fff;background:var(--m3d-chain);"
            "border-radius:.6em;padding:0 .3em}"
            f"{scope} .m3d-entity-type{{font-size:.65em;color:#495057;margin-left:.15em}}"
            f"{scope} .m3d-relation{{cursor:default}}{scope} .m3d-relation-type{{font-family:monospace}}"
            f"{scope} .m3d-frames{{display:flex;flex-wrap:wrap;gap:.5em}}"
            f"{scope} figure{{margin:0}}{scope} .m3d-frame{{position:relative;display:inline-block}}"
            f"{scope} .m3d-frame img{{display:block;max-width:{FRAME_MAX_SIDE}px}}"
            f"{scope} .m3d-box{{position:absolute;border:2px solid var(--m3d-type);box-sizing:border-box}}"
            f"{scope} .m3d-box-label{{position:absolute;top:-1.5em;left:-2px;background:var(--m3d-type);"
            "font-size:.7em;line-height:1.4;padding:0 .3em;white-space:nowrap}"
            f"{scope} figcaption{{font-size:.8em;color:#868e96}}{types}{hover}</style>"
        )

    def _mark(self, start: int, end: int, entity_type: str, chain: int | None) -> str:
        text = _escape(self.span_text((start, end)))
        label = f"<span class='m3d-entity-type'>{_escape(entity_type)}</span>"
        if chain is None:
            return f"<mark class='m3d-entity {_type_class(entity_type)}' title='{_escape(entity_type)}'>{text}{label}</mark>"
        return (
            f"<mark class='m3d-entity {_type_class(entity_type)}' data-chain='{chain}' "
            f"style='--m3d-chain:{chain_colour(chain)}' title='{_escape(entity_type)}, chain #{chain}'>"
            f"{text}{label}<sup class='m3d-chain-id'>#{chain}</sup></mark>"
        )

    def _line(self, first: int, end: int, spans: list[tuple[int, int, str, int | None]]) -> str:
        """One subtitle line: plain runs of tokens between the (clipped) entity spans, escaped."""
        separator = "" if self.lang == "zh" else " "
        pieces, cursor = [], first
        for start, stop, entity_type, chain in spans:
            pieces.append(_escape(join_tokens(self.tokens[cursor:start], self.lang)))
            pieces.append(self._mark(start, stop, entity_type, chain))
            cursor = stop
        pieces.append(_escape(join_tokens(self.tokens[cursor:end], self.lang)))
        return separator.join(piece for piece in pieces if piece)

    def text_html(self) -> str:
        """The subtitle lines with times, entities highlighted (an entity across two lines is marked in each)."""
        if not self.tokens:
            return "<p class='m3d-missing'>No text (the text modality is missing).</p>"
        spans = _outer_spans(self.parsed.entities)
        starts = np.array([s for s, _, _ in spans], dtype=int)
        ends = np.array([e for _, e, _ in spans], dtype=int)
        lines = []
        for first, end, start_time, end_time in subtitle_lines(self.row):
            inside = np.flatnonzero((starts < end) & (ends > first))
            clipped = [
                (max(spans[k][0], first), min(spans[k][1], end), spans[k][2], self.chain_of.get(spans[k][:2]))
                for k in inside
            ]
            time = (
                ""
                if start_time is None
                else f"<span class='m3d-time'>{format_seconds(start_time)}–{format_seconds(end_time)}</span>"
            )
            lines.append(f"<p class='m3d-line'>{time}{self._line(first, end, clipped)}</p>")
        return "".join(lines)

    def _chain_ref(self, chain: int) -> str:
        text = _escape(self.span_text(self.parsed.chains[chain][0]))
        return (
            f"<span class='m3d-chain-ref' data-chain='{chain}' style='--m3d-chain:{chain_colour(chain)}'>"
            f"#{chain} {text}</span>"
        )

    def relations_html(self) -> str:
        """ "subject chain — type → object chain", one item per relation."""
        if not self.parsed.relations:
            return "<p class='m3d-none'>No relations.</p>"
        items = "".join(
            f"<li class='m3d-relation' data-subject='{s}' data-object='{o}'>{self._chain_ref(s)} — "
            f"<span class='m3d-relation-type'>{_escape(t)}</span> → {self._chain_ref(o)}</li>"
            for s, o, t in self.parsed.relations
        )
        return f"<ol class='m3d-relations'>{items}</ol>"

    def _box(self, box: dict) -> str:
        cx, cy, w, h = box["box"]
        score = "" if box["score"] is None else f" {box['score']:.2f}"
        label = f"{_escape(box['type'])}{score}"
        return (
            f"<div class='m3d-box {_type_class(box['type'])}' title='{label}' style='left:{100 * (cx - w / 2):.2f}%;"
            f"top:{100 * (cy - h / 2):.2f}%;width:{100 * w:.2f}%;height:{100 * h:.2f}%'>"
            f"<span class='m3d-box-label'>{label}</span></div>"
        )

    def frames_html(self) -> str:
        """Each frame with its boxes (positioned in % of the frame, so they follow its displayed size)."""
        if not self.frames:
            return "<p class='m3d-missing'>No frames (the video modality is missing).</p>"
        figures = []
        for j, frame in enumerate(self.frames):
            boxes = "".join(self._box(box) for box in self.parsed.groundings if box["frame"] == j)
            time = "" if self.frame_times is None else f" · {format_seconds(self.frame_times[j])}"
            uri = frame_data_uri(frame, f"{self.where}, field 'frames[{j}]'")
            figures.append(
                f"<figure><div class='m3d-frame'><img src='{uri}' alt='frame {j}'>{boxes}</div>"
                f"<figcaption>frame {j}{time}</figcaption></figure>"
            )
        return f"<div class='m3d-frames'>{''.join(figures)}</div>"

    def html(self) -> str:
        """The view as an HTML fragment (style included, scoped to the fragment's id)."""
        title = _escape(self.title if self.title is not None else row_id(self.row))
        counts = (
            f"{len(self.parsed.entities)} entities, {len(self.parsed.chains)} chains, "
            f"{len(self.parsed.relations)} relations, {len(self.parsed.groundings)} boxes"
        )
        return (
            f"<div class='m3d-view' id='{self.uid}'>{self._style()}<h3>{title}</h3>"
            f"<p class='m3d-counts'>{counts}</p><h4>Text</h4>{self.text_html()}"
            f"<h4>Relations</h4>{self.relations_html()}<h4>Frames</h4>{self.frames_html()}</div>"
        )

    # ------------------------------------------------------------------------------------------- timeline

    def timeline_rows(self) -> list[tuple[str, str, list[tuple[float, float]]]]:
        """`(label, colour, [(start s, end s)])` per row: each chain at the subtitle lines of its mentions, each
        grounded type at its frames (a frame as an instant). Empty without times."""
        rows = []
        lines = [line for line in subtitle_lines(self.row) if line[2] is not None]
        if lines:
            line_ends = np.array([end for _, end, _, _ in lines])
            for c, chain in enumerate(self.parsed.chains):
                found = np.searchsorted(line_ends, [start for start, _ in chain], side="right")
                spans = sorted({(lines[k][2], lines[k][3]) for k in found if k < len(lines)})
                rows.append((f"#{c} {self.span_text(chain[0])}", chain_colour(c), spans))
        if self.frame_times is not None:
            for grounded in GROUNDING_TYPES:
                times = sorted({float(self.frame_times[g["frame"]]) for g in self.parsed.groundings
                                if g["type"] == grounded})  # fmt: skip
                if times:
                    rows.append((f"on screen: {grounded}", TYPE_COLOURS[grounded], [(t, t) for t in times]))
        return rows

    def timeline_html(self) -> str:
        """An SVG timeline of `timeline_rows` (seconds on the x axis; hover a mark for its times)."""
        rows = self.timeline_rows()
        if not rows:
            return "<p class='m3d-none'>No times to place on a timeline.</p>"
        extent = max([end for _, _, spans in rows for _, end in spans] + [1e-6])
        scale = (TIMELINE_WIDTH - TIMELINE_LABEL - 10) / extent
        height = TIMELINE_ROW * (len(rows) + 1)
        marks = []
        for r, (label, colour, spans) in enumerate(rows):
            y = r * TIMELINE_ROW
            marks.append(f"<text x='0' y='{y + 14}' font-size='12'>{_escape(label[:28])}</text>")
            for start, end in spans:
                x, width = TIMELINE_LABEL + start * scale, max((end - start) * scale, 3)
                tip = _escape(f"{label}: {format_seconds(start)}–{format_seconds(end)}")
                marks.append(f"<rect x='{x:.1f}' y='{y + 4}' width='{width:.1f}' height='12' fill='{colour}'>"
                             f"<title>{tip}</title></rect>")  # fmt: skip
        ticks = np.linspace(0, extent, 5)
        axis_y = len(rows) * TIMELINE_ROW + 14
        marks += [
            f"<text x='{TIMELINE_LABEL + t * scale:.1f}' y='{axis_y}' font-size='11' fill='#868e96'>"
            f"{format_seconds(t)}</text>"
            for t in ticks
        ]
        return (
            f"<svg class='m3d-timeline' xmlns='http://www.w3.org/2000/svg' width='{TIMELINE_WIDTH + 40}' "
            f"height='{height}' font-family='system-ui,sans-serif'>{''.join(marks)}</svg>"
        )

    # ------------------------------------------------------------------------------------------- pages

    def _repr_html_(self) -> str:
        return self.html() + self.timeline_html()

    def save(self, path: str | Path) -> Path:
        """Write `render_page([self])` to `path` (through a temporary file: nothing half-written)."""
        return save_page([self], path, self.title or row_id(self.row))


def render_page(views: Sequence[M3DRendering], title: str = "M³D extraction") -> str:
    """A whole HTML document of several views (one per clip), each with its timeline."""
    body = "".join(f"<section>{view.html()}{view.timeline_html()}</section><hr>" for view in views)
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_escape(title)}</title></head>"
        f"<body><h2>{_escape(title)}</h2>{body}</body></html>"
    )


def save_page(views: Sequence[M3DRendering], path: str | Path, title: str = "M³D extraction") -> Path:
    """Write `render_page(views, title)` to `path` atomically (a temporary file beside it, then a rename)."""
    path = Path(path)
    page = render_page(views, title)
    # a plain open (mode 0o666 minus the umask, as the files around it; mkstemp's would be 0600), then a rename
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(page, encoding="utf-8")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


__all__ = ["Extraction", "M3DRendering", "normalize_extraction", "render_page", "save_page"]
