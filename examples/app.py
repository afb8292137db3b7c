#!/usr/bin/env python
"""A Gradio demo of M³D: extraction from a video, and a gold-vs-predicted viewer of a split (paper Table V/VI).

    python examples/app.py --model outputs/m3d-tiny [--port 7860] [--host 127.0.0.1]
    python examples/app.py --model outputs/m3d-tiny --dataset_dir M3D --lang en --split validation

Tab "Video": upload a video, with or without subtitles (.srt, .vtt, .json), or pick a bundled example (a small
video and SRT generated into --cache_dir at first start), and a model folder; the clip's extraction is shown
(`modeling_m3d.rendering_m3d`: entities by type, chains by colour and number, relations, frames with boxes), with a
timeline of when each chain is mentioned (subtitle times) and each grounded type is on screen (frame times), and
the JSON to download. Tab "Viewer" (with --dataset_dir or --dataset_name): each document of the split with its
gold annotation and the model's extraction side by side, its four F1 scores and its Table VI error rates, and a
filter on the eight error kinds of `modeling_m3d.scoring`.

As a Hugging Face Space: this file as `app.py`, the model folder as `model/` (or set M3D_MODEL), and the package
in `requirements.txt`; the Space runs `python app.py`, listening where its GRADIO_SERVER_NAME says.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import gradio as gr
import numpy as np
from transformers import Pipeline, pipeline

import modeling_m3d  # noqa: F401  (registers the Auto classes and the pipeline)
from modeling_m3d.data import DataArguments, load_release
from modeling_m3d.pipeline_m3d import M3DExtractionPipeline
from modeling_m3d.rendering_m3d import M3DRendering, normalize_extraction
from modeling_m3d.schema import LANGUAGES, PROTOCOLS, TASK_NAMES, TASKS, reference_document, row_id
from modeling_m3d.scoring import m3d_scores
from modeling_m3d.timeline_m3d import extract_video as extract_clips

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "modeling_m3d" / "demo"
EXAMPLE_LINES = (
    (0.0, 2.0, "Ann met her brother Bob in Paris ."),
    (2.0, 4.0, "She worked for the city government there ."),
)
ANY_DOCUMENT = "any document"
PROGRESS = gr.Progress()  # a handler's default that asks Gradio for a progress bar (Gradio reads the default)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.environ.get("M3D_MODEL", "model"), help="A saved model folder.")
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="Address to listen on (0.0.0.0: all; a Space sets GRADIO_SERVER_NAME).",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help="Port (default: GRADIO_SERVER_PORT, else 7860 or the next free).",
    )
    parser.add_argument("--cache_dir", type=Path, default=DEFAULT_CACHE, help="Where the examples are made.")
    parser.add_argument("--dataset_dir", help="A release copy (data/<lang>/, img/): adds the viewer tab.")
    parser.add_argument("--dataset_name", help="A Hub-native copy (folder or repo id): adds the viewer tab.")
    parser.add_argument("--lang", choices=LANGUAGES, default="en", help="The viewer's dataset config.")
    parser.add_argument("--split", default="validation", help="The viewer's split.")
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="gold_pairs",
        help="The viewer's protocol (videos: end to end).",
    )
    parser.add_argument("--batch_size", type=int, default=4, help="The viewer's batch size.")
    return parser.parse_args(argv)


@functools.lru_cache(maxsize=2)
def load_extractor(model_dir: str) -> Pipeline:
    """The "m3d-extraction" pipeline of a model folder (kept for the next request)."""
    return pipeline("m3d-extraction", model=model_dir, pipeline_class=M3DExtractionPipeline)


# ----------------------------------------------------------------------------------------------- video


@dataclass
class ClipExtraction:
    """One clip of a video: its schema row, the pipeline's extraction, and its frames' times (seconds)."""

    row: dict
    extraction: dict
    frame_times: list[float]

    def rendering(self) -> M3DRendering:
        return M3DRendering(self.row, self.extraction, self.frame_times)

    def to_json(self) -> dict:
        """The extraction with the clip's text and times, for the download."""
        times = {
            "tokens": self.row["tokens"],
            "subtitles": self.row["subtitles"],
            "frame_times": self.frame_times,
        }
        return {**self.extraction, "lang": self.row["lang"], **times}


def extract_video(
    extractor: Pipeline, video: str, subtitles: str | None, progress: Callable[..., Any] | None = None
) -> list[ClipExtraction]:
    """The demo's way from a video file to extractions: clips, each with its row, extraction, frame times.

    `timeline_m3d.extract_video`, as `predict.py --video` and the pipeline: the video is cut into clips between
    subtitle lines, one frame kept every 24 video frames (the paper's Steps 2–3), and each clip extracted end to
    end. `progress(fraction, desc=...)` is told each step.
    """
    report = progress or (lambda fraction, desc: None)
    report(0.05, desc="cutting the video into clips and extracting")
    extraction = extract_clips(
        extractor, video, subtitles, lang=extractor.processor.lang, batch_size=1, protocol="end_to_end"
    )
    report(1.0, desc="done")
    return [
        ClipExtraction(row, result, clip.frame_times)
        for row, result, clip in zip(extraction.rows, extraction.extractions, extraction.clips, strict=True)
    ]


def write_example_video(path: Path, seconds: float = 4.0, fps: int = 8) -> Path:
    """A small MPEG-4 video: a person-sized box moving over a coloured background."""
    height, width = 120, 160
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for k in range(int(seconds * fps)):
            image = np.full((height, width, 3), (40 + 4 * k, 90, 150), dtype=np.uint8)
            left = 10 + 3 * k
            image[30:110, left : left + 40] = (230, 180, 120)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def srt_time(seconds: float) -> str:
    """`75.5` → `00:01:15,500`."""
    millis = round(seconds * 1000)
    return (
        f"{millis // 3_600_000:02d}:{millis // 60_000 % 60:02d}:{millis // 1000 % 60:02d},{millis % 1000:03d}"
    )


def write_example_srt(path: Path) -> Path:
    cues = [
        f"{i}\n{srt_time(start)} --> {srt_time(end)}\n{text}\n"
        for i, (start, end, text) in enumerate(EXAMPLE_LINES, start=1)
    ]
    path.write_text("\n".join(cues), encoding="utf-8")
    return path


def example_media(cache_dir: Path) -> tuple[Path, Path]:
    """The bundled example (video, subtitles), made in `cache_dir` on first use (written then renamed)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    video, srt = cache_dir / "example.mp4", cache_dir / "example.srt"
    for target, write in ((video, write_example_video), (srt, write_example_srt)):
        if not target.exists():
            partial = target.with_name(f".{target.stem}.partial{target.suffix}")
            write(partial)
            partial.replace(target)
    return video, srt


def run_video(
    video: str | None, subtitles: str | None, model_dir: str, progress: gr.Progress = PROGRESS
) -> tuple[str, str, str]:
    """The video tab: (renderings, timelines, JSON file) of a video and optional subtitles."""
    if not video:
        raise gr.Error("Upload a video (or pick an example) first.")
    try:
        extractor = load_extractor(model_dir.strip())
    except (OSError, ValueError) as err:
        raise gr.Error(f"cannot load the model folder {model_dir!r}: {err}") from err
    try:
        clips = extract_video(extractor, video, subtitles or None, progress)
    except (OSError, ValueError) as err:
        raise gr.Error(str(err)) from err
    views = [clip.rendering() for clip in clips]
    output = Path(tempfile.mkdtemp(prefix="m3d-demo-")) / f"{Path(video).stem}.json"
    output.write_text(json.dumps([clip.to_json() for clip in clips], ensure_ascii=False, indent=1), "utf-8")
    return (
        "".join(view.html() for view in views),
        "".join(view.timeline_html() for view in views),
        str(output),
    )


# ----------------------------------------------------------------------------------------------- viewer


@dataclass
class ViewedDocument:
    """A document of the viewed split: its row, gold document, predicted extraction and per-document scores."""

    row: dict
    gold: dict
    prediction: dict
    scores: dict[str, float]

    @property
    def errors(self) -> list[str]:
        return [name for name, rate in self.scores.items() if "_error_" in name and rate > 0]


def error_label(name: str) -> str:
    """`re_error_unrelated` → `Relation: unrelated`."""
    task, kind = name.split("_error_")
    return f"{TASK_NAMES[task]}: {kind.replace('_', ' ')}"


def view_documents(
    rows: Sequence[dict], extractor: Pipeline, protocol: str, batch_size: int
) -> list[ViewedDocument]:
    """Run the model on `rows` and score each document alone (`scoring.m3d_scores` of one document: the four
    F1s and the Table VI error rates, errors over predictions)."""
    rows = list(rows)
    extractions = extractor(rows, batch_size=batch_size, protocol=protocol)
    documents = []
    for row, extraction in zip(rows, extractions, strict=True):
        gold = reference_document(row, extractor.processor.relation_types)
        predicted = normalize_extraction(extraction, f"prediction of {row_id(row)!r}").to_document()
        documents.append(ViewedDocument(row, gold, extraction, m3d_scores([predicted], [gold])))
    return documents


def scores_html(scores: dict[str, float]) -> str:
    """A table of the four task F1s and the document's error rates (Table VI: errors / predictions)."""
    f1 = "".join(f"<tr><td>{TASK_NAMES[t]} F1</td><td>{100 * scores[f'{t}_f1']:.1f}</td></tr>" for t in TASKS)
    errors = "".join(
        f"<tr><td>{error_label(name)} errors</td><td>{100 * rate:.1f}%</td></tr>"
        for name, rate in scores.items()
        if "_error_" in name
    )
    return f"<table class='m3d-scores'><tbody>{f1}{errors}</tbody></table>"


def side_by_side(document: ViewedDocument) -> str:
    """Gold and predicted views in two columns (paper Table V)."""
    gold = M3DRendering(document.row, document.gold, title="Gold").html()
    predicted = M3DRendering(document.row, document.prediction, title="Predicted").html()
    return (
        "<div class='m3d-compare' style='display:grid;grid-template-columns:1fr 1fr;gap:1.5em'>"
        f"<div>{gold}</div><div>{predicted}</div></div>"
    )


def viewer_tab(documents: list[ViewedDocument]) -> None:
    """The viewer's widgets and events, inside the current `gr.Blocks`."""
    by_id = {row_id(d.row): d for d in documents}
    kinds = [name for name in documents[0].scores if "_error_" in name] if documents else []
    counts = {kind: sum(kind in d.errors for d in documents) for kind in kinds}
    choices = [(f"{ANY_DOCUMENT} ({len(documents)})", ANY_DOCUMENT)]
    choices += [(f"{error_label(kind)} ({counts[kind]})", kind) for kind in kinds]

    def ids_with(kind: str) -> list[str]:
        return [i for i, d in by_id.items() if kind == ANY_DOCUMENT or kind in d.errors]

    def show(doc_id: str | None) -> tuple[str, str]:
        if doc_id not in by_id:
            return "<p>No document with this error.</p>", ""
        return scores_html(by_id[doc_id].scores), side_by_side(by_id[doc_id])

    def refilter(kind: str) -> tuple[Any, str, str]:
        ids = ids_with(kind)
        first = ids[0] if ids else None
        return gr.update(choices=ids, value=first), *show(first)

    with gr.Row():
        error_kind = gr.Dropdown(
            choices, value=ANY_DOCUMENT, label="Documents with an error of kind", elem_id="m3d-error-kind"
        )
        first = next(iter(by_id), None)
        document = gr.Dropdown(list(by_id), value=first, label="Document", elem_id="m3d-document")
    scores = gr.HTML(show(first)[0], elem_id="m3d-scores")
    compare = gr.HTML(show(first)[1], elem_id="m3d-compare")
    error_kind.change(refilter, error_kind, [document, scores, compare])
    document.change(show, document, [scores, compare])


def build_demo(
    model_dir: str, examples: tuple[Path, Path], documents: list[ViewedDocument] | None
) -> gr.Blocks:
    with gr.Blocks(
        title="M³D extraction", analytics_enabled=False
    ) as demo:  # no calls out (telemetry, updates)
        gr.Markdown("# M³D: grounded multimodal information extraction from videos and subtitles")
        with gr.Tab("Video"):
            with gr.Row():
                video = gr.File(label="Video", file_types=["video"], elem_id="m3d-video")
                subtitles = gr.File(label="Subtitles (optional)", file_types=[".srt", ".vtt", ".json"],
                                    elem_id="m3d-subtitles")  # fmt: skip
            model = gr.Textbox(model_dir, label="Model folder", elem_id="m3d-model")
            run = gr.Button("Extract", variant="primary", elem_id="m3d-run")
            gr.Examples([[str(examples[0]), str(examples[1])], [str(examples[0]), None]], [video, subtitles])
            result = gr.HTML(elem_id="m3d-result")
            gr.Markdown(
                "### Timeline: chains mentioned (subtitle times), grounded types on screen (frame times)"
            )
            timeline = gr.HTML(elem_id="m3d-timeline")
            download = gr.File(label="Extraction (JSON)", elem_id="m3d-download")
            run.click(run_video, [video, subtitles, model], [result, timeline, download])
        if documents is not None:
            with gr.Tab("Viewer"):
                viewer_tab(documents)
    return demo


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    examples = example_media(args.cache_dir)
    documents = None
    if args.dataset_dir or args.dataset_name:
        data = DataArguments(dataset_dir=args.dataset_dir, dataset_name=args.dataset_name, lang=args.lang)
        release = load_release(data, args.cache_dir)
        if args.split not in release:
            raise SystemExit(f"--split {args.split!r} is not in the data (splits: {sorted(release)})")
        documents = view_documents(
            release[args.split], load_extractor(args.model), args.protocol, args.batch_size
        )
    demo = build_demo(args.model, examples, documents)
    demo.queue().launch(server_name=args.host, server_port=args.port, allowed_paths=[str(args.cache_dir)])


if __name__ == "__main__":
    main()
