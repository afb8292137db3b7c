#!/usr/bin/env python
"""Run a trained M³D model on clips through the "m3d-extraction" pipeline: one JSON line per clip.

    python examples/predict.py --model outputs/m3d-tiny --input clips.jsonl --output predictions.jsonl
    python examples/predict.py --model outputs/m3d-tiny --video clip.mp4 --subtitles clip.srt --html clip.html

Each line of --input is one clip: a schema row (DESIGN §2, `frames` as image paths), `{"text": ...,
"frames": [paths]}`, or `{"video": path, "subtitles": path}`; relative paths are read from the folder of the
input file. Output lines are `{"id", "entities", "chains", "relations", "groundings"}` (see
`modeling_m3d.pipeline_m3d.M3DExtractionPipeline`). With --html, the clips and their extractions are also
written as one self-contained HTML page (`modeling_m3d.rendering_m3d`; the clips are then kept in memory).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from transformers import pipeline

import modeling_m3d  # noqa: F401  (registers the Auto classes and the pipeline)
from modeling_m3d.pipeline_m3d import M3DExtractionPipeline, to_schema_row
from modeling_m3d.rendering_m3d import M3DRendering, save_page
from modeling_m3d.schema import LANGUAGES, PROTOCOLS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", required=True, help="A folder (or Hub id) holding the model and its processor."
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", type=Path, help="A JSON Lines file of clips.")
    source.add_argument("--video", type=Path, help="One video file.")
    parser.add_argument("--subtitles", type=Path, help="Subtitles of --video (.srt, .vtt or a .json list).")
    parser.add_argument("--output", type=Path, help="Where to write the JSON lines (default: stdout).")
    parser.add_argument("--html", type=Path, help="Also write the extractions as an HTML page here.")
    parser.add_argument(
        "--protocol", choices=PROTOCOLS, default="end_to_end", help="gold_pairs needs annotated schema rows."
    )
    parser.add_argument("--threshold", type=float, default=0.0, help="Minimum score of a grounding.")
    parser.add_argument(
        "--lang", choices=LANGUAGES, help="Language of inputs without one (default: the processor's)."
    )
    parser.add_argument(
        "--num_frames", type=int, help="Frames sampled per video (default: the processor's max_frames)."
    )
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument(
        "--device", default=None, help="'cpu', 'cuda', 'cuda:1', ... (default: first GPU if any)."
    )
    args = parser.parse_args(argv)
    if args.subtitles is not None and args.video is None:
        parser.error("--subtitles goes with --video")
    return args


def _resolve_paths(record: dict, folder: Path) -> dict:
    """Media paths of a record, relative to the input file's folder."""
    resolved = dict(record)
    for key in ("video", "subtitles"):
        if isinstance(record.get(key), str):
            resolved[key] = str(folder / record[key])
    if isinstance(record.get("frames"), list):
        resolved["frames"] = [str(folder / f) if isinstance(f, str) else f for f in record["frames"]]
    return resolved


def read_clips(path: Path, lang: str, num_frames: int) -> Iterator[dict]:
    """Schema rows of the clips in a JSON Lines file, built lazily; a bad line stops with its line number."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError(f"expected a JSON object, got {type(record).__name__}")
                yield to_schema_row(_resolve_paths(record, path.parent), lang, num_frames)
            except (ValueError, OSError) as err:
                raise SystemExit(f"{path}: line {number}: {err}") from err


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # pipeline_class: a folder written by the pipeline's save_pretrained names it as remote code; use ours
    extractor = pipeline(
        "m3d-extraction",
        model=args.model,
        pipeline_class=M3DExtractionPipeline,
        device=args.device,
        protocol=args.protocol,
        threshold=args.threshold,
    )
    processor = extractor.processor
    lang, num_frames = args.lang or processor.lang, args.num_frames or processor.max_frames or 8
    if args.input is not None:
        clips = read_clips(args.input, lang, num_frames)
    else:
        try:
            clips = [to_schema_row({"video": args.video, "subtitles": args.subtitles}, lang, num_frames)]
        except (ValueError, OSError) as err:
            raise SystemExit(str(err)) from err
    if args.html is not None:
        clips = list(clips)  # rendered with their results at the end
    results = []
    output = args.output.open("w", encoding="utf-8") if args.output else sys.stdout
    try:
        for result in extractor(clips, batch_size=args.batch_size, num_frames=num_frames):
            output.write(json.dumps(result, ensure_ascii=False) + "\n")
            if args.html is not None:
                results.append(result)
    finally:
        if output is not sys.stdout:
            output.close()
    if args.html is not None:
        save_page([M3DRendering(row, result) for row, result in zip(clips, results, strict=True)], args.html)


if __name__ == "__main__":
    main()
