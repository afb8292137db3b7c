#!/usr/bin/env python
"""Run a trained M³D model on clips through the "m3d-extraction" pipeline: one JSON line per clip.

    python examples/predict.py --model outputs/m3d-tiny --input clips.jsonl --output predictions.jsonl
    python examples/predict.py --model outputs/m3d-tiny --video talk.mp4 --subtitles talk.srt \
        --video_summary talk.summary.json
    python examples/predict.py --model outputs/m3d-tiny --video talk.mp4 --asr_model openai/whisper-small

Each line of --input is one clip: a schema row (DESIGN §2, `frames` as image paths), `{"text": ...,
"frames": [paths]}`, or `{"video": path, "subtitles": path}`; relative paths are read from the folder of the
input file. Output lines are `{"id", "entities", "chains", "relations", "groundings"}` (see
`modeling_m3d.pipeline_m3d.M3DExtractionPipeline`).

A whole --video is cut into clips in memory (`modeling_m3d.ingest_m3d.ingest_video`: between subtitle lines,
one frame every --frame_step frames; speech transcribed with --asr_model when there are no subtitles), and
each clip's line is time-anchored (`modeling_m3d.timeline_m3d.clip_result`): its document and tokens, every
mention with its text, character offsets and subtitle time, chains with ids and types, groundings with their
frame's time in seconds. --video_summary writes the whole video's chains, relations and groundings.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from transformers import pipeline

import modeling_m3d  # noqa: F401  (registers the Auto classes and the pipeline)
from modeling_m3d.ingest_m3d import FRAME_STEP, MAX_CLIP_SECONDS, MIN_CLIP_SECONDS, clip_to_row, ingest_video
from modeling_m3d.pipeline_m3d import M3DExtractionPipeline, to_schema_row
from modeling_m3d.schema import PROTOCOLS
from modeling_m3d.timeline_m3d import clip_result, video_summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", required=True, help="A folder (or Hub id) holding the model and its processor."
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", type=Path, help="A JSON Lines file of clips.")
    source.add_argument("--video", type=Path, help="One video file.")
    parser.add_argument(
        "--subtitles", type=Path, help="Subtitles of --video (SRT, WebVTT, ASS, ... or .json)."
    )
    parser.add_argument(
        "--asr_model", help="Whisper-family checkpoint to transcribe --video without subtitles."
    )
    parser.add_argument("--video_summary", type=Path, help="Write the whole --video's results here (JSON).")
    parser.add_argument("--video_id", help="Clip ids of --video are <video_id>_<k> (default: the file stem).")
    parser.add_argument("--frame_step", type=int, default=FRAME_STEP, help="Keep one frame in this many.")
    parser.add_argument("--min_clip", type=float, default=MIN_CLIP_SECONDS, help="Seconds.")
    parser.add_argument("--max_clip", type=float, default=MAX_CLIP_SECONDS, help="Seconds.")
    parser.add_argument("--output", type=Path, help="Where to write the JSON lines (default: stdout).")
    parser.add_argument(
        "--protocol", choices=PROTOCOLS, default="end_to_end", help="gold_pairs needs annotated schema rows."
    )
    parser.add_argument("--threshold", type=float, default=0.0, help="Minimum score of a grounding.")
    parser.add_argument(
        "--lang", choices=("en", "zh"), help="Language of inputs without one (default: the processor's)."
    )
    parser.add_argument(
        "--num_frames", type=int, help="Frames sampled per video (default: the processor's max_frames)."
    )
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument(
        "--device", default=None, help="'cpu', 'cuda', 'cuda:1', ... (default: first GPU if any)."
    )
    args = parser.parse_args(argv)
    video_only = ("subtitles", "asr_model", "video_summary", "video_id")
    if args.video is None and any(getattr(args, name) is not None for name in video_only):
        parser.error(f"--{'/--'.join(video_only)} go with --video")
    if args.subtitles is not None and args.asr_model is not None:
        parser.error("give --subtitles or --asr_model, not both")
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
        results = extractor(read_clips(args.input, lang, num_frames), batch_size=args.batch_size)
    else:
        results = predict_video(extractor, args, lang)
    output = args.output.open("w", encoding="utf-8") if args.output else sys.stdout
    try:
        for result in results:
            output.write(json.dumps(result, ensure_ascii=False) + "\n")
    finally:
        if output is not sys.stdout:
            output.close()


def predict_video(extractor: M3DExtractionPipeline, args: argparse.Namespace, lang: str) -> list[dict]:
    """The time-anchored result of each clip of --video; the video summary written when asked."""
    try:
        clips = ingest_video(
            args.video,
            args.subtitles,
            lang=lang,
            video_id=args.video_id,
            frame_step=args.frame_step,
            min_clip=args.min_clip,
            max_clip=args.max_clip,
            asr_model=args.asr_model,
        )
    except (ValueError, OSError) as err:
        raise SystemExit(str(err)) from err
    video_id = args.video_id or args.video.stem
    rows = [clip_to_row(clip, lang) for clip in clips]
    outputs = extractor(rows, batch_size=args.batch_size)
    results = [clip_result(*triple, video_id) for triple in zip(clips, rows, outputs, strict=True)]
    if args.video_summary is not None:
        summary = json.dumps(video_summary(results, str(args.video)), ensure_ascii=False, indent=1)
        args.video_summary.write_text(summary + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
