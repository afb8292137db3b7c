"""modeling_m3d.rendering_m3d: an extraction as HTML (entities by type, chains by colour and number, relations,
frames with boxes, timeline), the three extraction shapes, escaping, errors; examples/predict.py --html."""

import base64
import io
import json
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from media import write_grey_clip as write_clip
from PIL import Image
from test_video import SRT

from modeling_m3d.ingest_m3d import ingest_video
from modeling_m3d.rendering_m3d import (
    CHAIN_COLOURS,
    M3DRendering,
    normalize_extraction,
    save_page,
    subtitle_lines,
)
from modeling_m3d.schema import reference_document
from modeling_m3d.testing import tiny_model_and_processor

REPO = Path(__file__).resolve().parents[1]
LINES = [
    (0.0, 2.0, "Ann met her brother Bob in Paris ."),
    (2.0, 4.5, "She wrote < script > alert ( 1 ) there ."),
]
TOKENS = [token for _, _, text in LINES for token in text.split(" ")]
SHE = TOKENS.index("She")
# The "m3d-extraction" pipeline's output shape: chains of {start, end, text}, relations by chain index.
PIPELINE_OUTPUT = {
    "id": "clip_0",
    "entities": [
        {"start": 0, "end": 1, "type": "PER", "text": "Ann"},
        {"start": 4, "end": 5, "type": "PER", "text": "Bob"},
        {"start": 6, "end": 7, "type": "LOC", "text": "Paris"},
        {"start": SHE, "end": SHE + 1, "type": "PER", "text": "She"},
    ],
    "chains": [
        [{"start": 0, "end": 1, "text": "Ann"}, {"start": SHE, "end": SHE + 1, "text": "She"}],
        [{"start": 4, "end": 5, "text": "Bob"}],
        [{"start": 6, "end": 7, "text": "Paris"}],
    ],
    "relations": [
        {
            "subject": 0,
            "object": 1,
            "type": "PER-PER_brother_sister",
            "subject_text": "Ann",
            "object_text": "Bob",
        },
        {"subject": 0, "object": 2, "type": "PER-LOC_located", "subject_text": "Ann", "object_text": "Paris"},
    ],
    "groundings": [
        {"frame": 0, "type": "PER", "box": [0.5, 0.5, 0.2, 0.4], "score": 0.87},
        {"frame": 1, "type": "LOC", "box": [0.25, 0.25, 0.5, 0.5], "score": 0.5},
    ],
}


def clip_row(**changes) -> dict:
    frames = [Image.new("RGB", (64, 48), colour) for colour in ((200, 30, 30), (30, 30, 200))]
    subtitles = [{"start_time": s, "end_time": e, "text": text} for s, e, text in LINES]
    return {
        "id": "clip_0",
        "lang": "en",
        "tokens": TOKENS,
        "subtitles": subtitles,
        "frames": frames,
        **changes,
    }


class Elements(HTMLParser):
    """The attributes and text of every element of a class or tag: `Elements(html)["m3d-entity"]`, `["img"]`."""

    def __init__(self, html: str):
        super().__init__()
        self.found, self.open = {}, []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        item = {"tag": tag, **attributes, "text": ""}
        for name in [tag, *(attributes.get("class") or "").split()]:
            self.found.setdefault(name, []).append(item)
        if tag not in ("img", "br", "meta"):
            self.open.append(item)

    def handle_endtag(self, tag):
        self.open.pop()

    def handle_data(self, data):
        for item in self.open:
            item["text"] += data

    def __getitem__(self, name):
        return self.found.get(name, [])


def test_entities_are_highlighted_by_type_and_chain():
    view = M3DRendering(clip_row(), PIPELINE_OUTPUT, frame_times=[1.0, 3.0])
    marks = Elements(view.html())["m3d-entity"]
    assert [mark["text"] for mark in marks] == ["AnnPER#0", "BobPER#1", "ParisLOC#2", "ShePER#0"]
    assert [mark["class"].split()[1] for mark in marks] == ["m3d-type-PER", "m3d-type-PER", "m3d-type-LOC",
                                                            "m3d-type-PER"]  # fmt: skip
    colours = [mark["style"] for mark in marks]
    assert colours[0] == colours[3] == f"--m3d-chain:{CHAIN_COLOURS[0]}"
    assert len(set(colours)) == 3
    assert [mark["data-chain"] for mark in marks] == ["0", "1", "2", "0"]


def test_lines_keep_their_subtitle_times_and_the_plain_text_between_entities():
    lines = Elements(M3DRendering(clip_row(), PIPELINE_OUTPUT).html())["m3d-line"]
    assert [line["text"] for line in lines] == [
        "0:00.0–0:02.0AnnPER#0 met her brother BobPER#1 in ParisLOC#2 .",
        "0:02.0–0:04.5ShePER#0 wrote < script > alert ( 1 ) there .",
    ]


def test_relations_name_their_chains_and_hovering_outlines_the_mentions():
    view = M3DRendering(clip_row(), PIPELINE_OUTPUT)
    items = Elements(view.html())["m3d-relation"]
    assert [item["text"] for item in items] == ["#0 Ann — PER-PER_brother_sister → #1 Bob",
                                                "#0 Ann — PER-LOC_located → #2 Paris"]  # fmt: skip
    assert (items[1]["data-subject"], items[1]["data-object"]) == ("0", "2")
    style = view.html()
    for chain in range(3):  # a rule per chain: hovering one of its mentions or a relation naming it
        assert f":has(.m3d-relation[data-object='{chain}']:hover) .m3d-entity[data-chain='{chain}']" in style


def test_frames_are_inlined_with_boxes_placed_and_labelled():
    elements = Elements(M3DRendering(clip_row(), PIPELINE_OUTPUT, frame_times=[1.0, 3.0]).html())
    sources = [image["src"] for image in elements["img"]]
    assert len(sources) == 2 and all(src.startswith("data:image/jpeg;base64,") for src in sources)
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(sources[0].split(",", 1)[1]))))
    assert pixels.shape == (48, 64, 3) and pixels[..., 0].mean() > 150  # the red frame
    assert [caption["text"] for caption in elements["figcaption"]] == ["frame 0 · 0:01.0", "frame 1 · 0:03.0"]
    boxes = elements["m3d-box"]
    assert boxes[0]["style"] == "left:40.00%;top:30.00%;width:20.00%;height:40.00%"
    assert [box["text"] for box in boxes] == ["PER 0.87", "LOC 0.50"]
    assert [box["class"] for box in boxes] == ["m3d-box m3d-type-PER", "m3d-box m3d-type-LOC"]


def test_all_text_is_escaped():
    row = clip_row(id="<img src=x onerror=alert(1)>")
    extraction = {**PIPELINE_OUTPUT, "relations": [{**PIPELINE_OUTPUT["relations"][0], "type": "<b>x</b>"}]}
    page = M3DRendering(row, extraction, title="<script>alert('t')</script>").html()
    assert "<script" not in page and "<b>" not in page and "<img src=x" not in page
    assert "&lt; script &gt; alert ( 1 )" in page
    assert "&lt;script&gt;alert(&#x27;t&#x27;)&lt;/script&gt;" in page
    assert Elements(page)["m3d-type-other"] == []  # known types only become class names
    odd = {**PIPELINE_OUTPUT, "entities": [{"start": 0, "end": 1, "type": "X' onmouseover='alert(1)"}]}
    marked = M3DRendering(row, odd).html()
    assert "onmouseover='" not in marked and len(Elements(marked)["m3d-type-other"]) == 1


def test_the_three_extraction_shapes_read_alike():
    """The pipeline's output, `post_process_extraction`'s documents and a gold `reference_document`."""
    annotated = clip_row(
        entities=[
            {"start": e["start"], "end": e["end"], "type": e["type"], "chain": c}
            for e, c in zip(PIPELINE_OUTPUT["entities"], (0, 1, 2, 0), strict=True)
        ],  # fmt: skip
        chains=[{"id": f"L{c}", "type": t} for c, t in enumerate(("PER", "PER", "LOC"))],
        relations=[
            {"subject": r["subject"], "object": r["object"], "type": r["type"]}
            for r in PIPELINE_OUTPUT["relations"]
        ],  # fmt: skip
        groundings=[{k: g[k] for k in ("frame", "type", "box")} for g in PIPELINE_OUTPUT["groundings"]],
    )
    gold = normalize_extraction(reference_document(annotated))
    piped = normalize_extraction(PIPELINE_OUTPUT)
    document = piped.to_document()
    decoded = {**document, "relations": [{**r, "subject_chain": s, "object_chain": o} for r, (s, o, _) in
                                         zip(document["relations"], piped.relations, strict=True)]}  # fmt: skip
    for parsed in (gold, normalize_extraction(decoded), normalize_extraction(document)):
        assert (
            parsed.relations
            == piped.relations
            == [(0, 1, "PER-PER_brother_sister"), (0, 2, "PER-LOC_located")]
        )
        assert parsed.chains == piped.chains and sorted(parsed.entities) == sorted(piped.entities)
    assert [g["score"] for g in gold.groundings] == [None, None]
    assert "score" not in gold.to_document()["groundings"][0]


def test_subtitle_lines_and_their_fallback():
    assert subtitle_lines(clip_row()) == [(0, 8, 0.0, 2.0), (8, len(TOKENS), 2.0, 4.5)]
    edited = clip_row(subtitles=[{"start_time": 0.0, "end_time": 9.0, "text": "something else"}])
    assert subtitle_lines(edited) == [(0, len(TOKENS), None, None)]
    view = M3DRendering(edited, PIPELINE_OUTPUT)
    assert "m3d-time" not in view.text_html() and view.timeline_rows() == []


def test_timeline_places_chains_at_their_lines_and_types_at_their_frames():
    view = M3DRendering(clip_row(), PIPELINE_OUTPUT, frame_times=[1.0, 3.0])
    assert view.timeline_rows() == [
        ("#0 Ann", CHAIN_COLOURS[0], [(0.0, 2.0), (2.0, 4.5)]),
        ("#1 Bob", CHAIN_COLOURS[1], [(0.0, 2.0)]),
        ("#2 Paris", CHAIN_COLOURS[2], [(0.0, 2.0)]),
        ("on screen: PER", "#ffc078", [(1.0, 1.0)]),
        ("on screen: LOC", "#8ce99a", [(3.0, 3.0)]),
    ]
    svg = view.timeline_html()
    assert svg.startswith("<svg") and svg.count("<rect") == 6
    assert "<title>#0 Ann: 0:02.0–0:04.5</title>" in svg


def test_chinese_is_joined_without_spaces_and_nested_mentions_are_marked_once():
    row = {"id": "zh_0", "lang": "zh", "tokens": list("张三在北京大学工作"), "frames": [],
           "subtitles": [{"start_time": 0.0, "end_time": 3.0, "text": "张三在北京大学工作"}]}  # fmt: skip
    extraction = {
        "entities": [
            {"start": 0, "end": 2, "type": "PER"},
            {"start": 3, "end": 7, "type": "ORG"},
            {"start": 3, "end": 5, "type": "LOC"},
        ],  # fmt: skip
        "chains": [[[0, 2]], [[3, 7]], [[3, 5]]],
        "relations": [],
        "groundings": [],
    }
    view = M3DRendering(row, extraction)
    (line,) = Elements(view.html())["m3d-line"]
    assert line["text"] == "0:00.0–0:03.0张三PER#0在北京大学ORG#1工作"
    assert "No frames" in view.frames_html() and "No relations" in view.relations_html()


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"relations": [{"subject": 5, "object": 0, "type": "x"}]},
            r"field 'relations\[0\].subject': chain 5",
        ),
        (
            {"relations": [{"subject": [[9, 10]], "object": 0, "type": "x"}]},
            r"'relations\[0\].subject'.*no chain",
        ),
        ({"entities": [{"start": 3, "end": 99, "type": "PER"}]}, r"field 'entities\[0\]': span \[3, 99\)"),
        (
            {"groundings": [{"frame": 2, "type": "PER", "box": [0.5] * 4}]},
            r"'groundings\[0\].frame': 2 is not",
        ),
        ({"chains": [[{"begin": 0}]]}, r"field 'chains\[0\]\[0\]'"),
        ({"entities": [{"start": 0, "end": 1}]}, r"not an extraction \(KeyError"),
    ],
)
def test_bad_extractions_name_the_record_and_field(change, message):
    with pytest.raises(ValueError, match=r"record 'clip_0'.*" + message):
        M3DRendering(clip_row(), {**PIPELINE_OUTPUT, **change})


def test_unreadable_frame_names_the_field():
    with pytest.raises(ValueError, match=r"record 'clip_0', field 'frames\[1\]': cannot read"):
        M3DRendering(
            clip_row(frames=[Image.new("RGB", (8, 8)), {"bytes": b"not an image"}]), PIPELINE_OUTPUT
        ).html()


def test_save_writes_a_whole_page_and_notebooks_display_the_view(tmp_path):
    view = M3DRendering(clip_row(), PIPELINE_OUTPUT, frame_times=[1.0, 3.0])
    path = view.save(tmp_path / "clip.html")
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.count("class='m3d-view'") == 1 and "<svg" in page
    assert [p.name for p in tmp_path.iterdir()] == ["clip.html"]  # no temporary file left
    assert view._repr_html_() == view.html() + view.timeline_html()
    other = M3DRendering(clip_row(), {**PIPELINE_OUTPUT, "relations": []}, title="other")
    assert other.uid != view.uid  # two views on one page keep their own styles
    save_page([view, other], tmp_path / "both.html", title="two")
    assert (tmp_path / "both.html").read_text(encoding="utf-8").count("class='m3d-view'") == 2
    (tmp_path / "plain.txt").write_text("x")  # the page gets the mode of a plain file, not mkstemp's 0600
    assert (tmp_path / "both.html").stat().st_mode == (tmp_path / "plain.txt").stat().st_mode


def test_predict_script_writes_the_html_page(tmp_path, monkeypatch):
    model, processor = tiny_model_and_processor("en")
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    video = write_clip(tmp_path / "clip.mp4")
    (tmp_path / "clip.srt").write_text(SRT, encoding="utf-8")
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    sys.modules.pop("predict", None)
    import predict

    predict.main(["--model", str(tmp_path / "model"), "--video", str(video), "--subtitles",
                  str(tmp_path / "clip.srt"), "--output", str(tmp_path / "out.jsonl"), "--html",
                  str(tmp_path / "out.html")])  # fmt: skip
    (result,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    page = (tmp_path / "out.html").read_text(encoding="utf-8")
    assert page.count("class='m3d-view'") == 1 and page.count("class='m3d-line'") == 2
    assert page.count("<mark class='m3d-entity") >= len(result["entities"])  # random weights: maybe none
    frames = len(ingest_video(video, tmp_path / "clip.srt", lang="en")[0].frame_times)
    assert frames >= 1 and page.count("data:image/jpeg;base64,") == frames  # one every 24 video frames
    assert "&#x27;" in page and "Leeds" in page  # Peter's (escaped), the second line
