#!/usr/bin/env python
"""Run a trained M³D model on clips through the "m3d-extraction" pipeline: one JSON line per clip.

    python examples/predict.py --model outputs/m3d-tiny --input clips.jsonl --output predictions.jsonl
    python examples/predict.py --model outputs/m3d-tiny --video talk.mp4 --subtitles talk.srt \
        --video_summary talk.summary.json --html talk.html
    python examples/predict.py --model outputs/m3d-tiny --video talk.mp4 --asr_model openai/whisper-small

Each line of --input is one clip, a schema row (`modeling_m3d.schema`, `frames` as image paths) or `{"text":
..., "frames": [paths]}`, or one whole video, `{"video": path, "subtitles": path?, "video_id": str?}`; relative
paths are read from the folder of the input file. A clip gives one output line `{"id", "entities", "chains",
"relations", "groundings"}` (see `modeling_m3d.pipeline_m3d.M3DExtractionPipeline`), a video one line per clip
as --video does. With --html, the clips and their extractions are also written as one self-contained HTML page
(`modeling_m3d.rendering_m3d`; the clips are then kept in memory).

A whole --video is cut into clips in memory as the pipeline does for a `{"video"}` input
(`modeling_m3d.timeline_m3d.extract_video`: between subtitle lines, one frame every --frame_step frames; speech
transcribed with --asr_model when there are no subtitles), and each clip's line is time-anchored
(`modeling_m3d.timeline_m3d.clip_result`): its document and tokens, every mention with its text, character
offsets and subtitle time, chains with ids and types, groundings with their frame's time in seconds.
--video_summary writes the whole video's chains, relations and groundings.

Many inputs across processes (each takes every n-th input and writes its own part in `<output>.parts/`; the
main process merges them in input order; a rerun skips the inputs already done):

    accelerate launch [--multi_gpu --num_processes 2] examples/predict.py --model outputs/m3d-tiny \
        --input videos.jsonl --output predictions.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from accelerate import PartialState
from transformers import pipeline

import modeling_m3d  # noqa: F401  (registers the Auto classes and the pipeline)
from modeling_m3d.ingest_m3d import FRAME_STEP, MAX_CLIP_SECONDS, MIN_CLIP_SECONDS
from modeling_m3d.pipeline_m3d import M3DExtractionPipeline, is_video_input, to_schema_row
from modeling_m3d.rendering_m3d import M3DRendering, save_page
from modeling_m3d.schema import LANGUAGES, PROTOCOLS
from modeling_m3d.timeline_m3d import VideoExtraction


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
    parser.add_argument("--html", type=Path, help="Also write the extractions as an HTML page here.")
    parser.add_argument(
        "--protocol", choices=PROTOCOLS, default="end_to_end", help="gold_pairs needs annotated schema rows."
    )
    parser.add_argument(
        "--relation_threshold", type=float, help="Least probability of a relation (default: the model's)."
    )
    parser.add_argument(
        "--grounding_threshold", type=float, help="Least score of a grounding (default: the model's)."
    )
    parser.add_argument(
        "--lang", choices=LANGUAGES, help="Language of inputs without one (default: the processor's)."
    )
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument(
        "--device", default=None, help="'cpu', 'cuda', 'cuda:1', ... (default: first GPU if any)."
    )
    args = parser.parse_args(argv)
    video_only = ("subtitles", "video_summary", "video_id")
    if args.video is None and any(getattr(args, name) is not None for name in video_only):
        parser.error(f"--{'/--'.join(video_only)} go with --video")
    if args.html is not None and args.input is not None and args.output is not None:
        parser.error("--html goes with --video, or with --input without --output (results on stdout)")
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


@dataclass(frozen=True)
class InputLine:
    """One input record, its line number and a digest of the line (to recognise it in a rerun)."""

    number: int
    digest: str
    record: dict


def read_input(path: Path) -> list[InputLine]:
    """The records of a JSON Lines file (paths resolved from its folder); a bad line stops with its number."""
    lines = []
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise SystemExit(f"{path}: line {number}: malformed JSON ({err})") from err
            if not isinstance(record, dict):
                raise SystemExit(
                    f"{path}: line {number}: expected a JSON object, got {type(record).__name__}"
                )
            digest = hashlib.sha1(line.strip().encode("utf-8")).hexdigest()
            lines.append(InputLine(number, digest, _resolve_paths(record, path.parent)))
    return lines


@dataclass
class Prediction:
    """What one input gives: its output lines, and for --html the (schema row, extraction, frame times in
    seconds or None) of each of its clips."""

    lines: list[dict]
    views: list[tuple[dict, dict, list[float] | None]]

    @classmethod
    def of_video(cls, video: VideoExtraction) -> Prediction:
        views = zip(video.rows, video.extractions, [clip.frame_times for clip in video.clips], strict=True)
        return cls(video.clip_results, list(views))


def _schema_row(line: InputLine, path: Path, lang: str) -> dict:
    try:
        return to_schema_row(line.record, lang)
    except (ValueError, OSError) as err:
        raise SystemExit(f"{path}: line {line.number}: {err}") from err


def predict_lines(
    extractor: M3DExtractionPipeline, args: argparse.Namespace, batch: list[InputLine], lang: str
) -> list[Prediction]:
    """The predictions of a batch of --input lines: its clips in one pipeline call, each video on its own."""
    clips = [_schema_row(line, args.input, lang) for line in batch if not is_video_input(line.record)]
    outputs = iter(extractor(clips, batch_size=args.batch_size) if clips else [])
    rows = iter(clips)
    predictions = []
    for line in batch:
        if is_video_input(line.record):
            video = predict_video(extractor, args, line.record, f"{args.input}: line {line.number}: ")
            predictions.append(Prediction.of_video(video))
        else:
            row, output = next(rows), next(outputs)
            predictions.append(Prediction([output], [(row, output, None)]))
    return predictions


def _predict_input(
    extractor: M3DExtractionPipeline, args: argparse.Namespace, lang: str
) -> Iterator[Prediction]:
    """The predictions of all --input lines, in order, --batch_size lines at a time."""
    lines = read_input(args.input)
    for start in range(0, len(lines), args.batch_size):
        yield from predict_lines(extractor, args, lines[start : start + args.batch_size], lang)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # under `accelerate launch` each process runs on its own device (gloo between CPU processes)
    state = PartialState(cpu=args.device == "cpu")
    device = args.device or (state.device if state.num_processes > 1 else None)
    # pipeline_class: a folder written by the pipeline's save_pretrained names it as remote code; use ours
    extractor = pipeline(
        "m3d-extraction",
        model=args.model,
        pipeline_class=M3DExtractionPipeline,
        device=device,
        protocol=args.protocol,
        relation_threshold=args.relation_threshold,
        grounding_threshold=args.grounding_threshold,
        lang=args.lang,
        frame_step=args.frame_step,
        min_clip=args.min_clip,
        max_clip=args.max_clip,
        asr_model=args.asr_model,
    )
    lang = args.lang or extractor.processor.lang
    if args.input is not None and args.output is not None:
        predict_in_parts(state, extractor, args, lang)
        return
    if args.input is not None:
        predictions = _predict_input(extractor, args, lang)
    else:
        record = {"video": args.video, "subtitles": args.subtitles, "video_id": args.video_id}
        video = predict_video(extractor, args, record, "")
        predictions = [Prediction.of_video(video)]
        if args.video_summary is not None:
            summary = json.dumps(video.summary(), ensure_ascii=False, indent=1)
            args.video_summary.write_text(summary + "\n", encoding="utf-8")
    _write(predictions, args)


def _write(predictions: Iterable[Prediction], args: argparse.Namespace) -> None:
    """The output lines to --output (or stdout) as they come; then, with --html, the page of all clips."""
    views = []
    output = args.output.open("w", encoding="utf-8") if args.output else sys.stdout
    try:
        for prediction in predictions:
            output.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in prediction.lines)
            if args.html is not None:
                views.extend(prediction.views)
    finally:
        if output is not sys.stdout:
            output.close()
    if args.html is not None:
        save_page([M3DRendering(row, out, times) for row, out, times in views], args.html)


def predict_video(
    extractor: M3DExtractionPipeline, args: argparse.Namespace, record: dict, where: str
) -> VideoExtraction:
    """A whole video (`{"video", "subtitles"?, "video_id"?}`) through the pipeline's `video_extraction`: its
    clips cut in memory, their rows, pipeline outputs and time-anchored results. Bad input stops the script
    with the error, after `where` (the input line)."""
    try:
        return extractor.video_extraction(record, batch_size=args.batch_size)
    except (ValueError, OSError) as err:
        raise SystemExit(f"{where}{err}") from err


def predict_in_parts(
    state: PartialState, extractor: M3DExtractionPipeline, args: argparse.Namespace, lang: str
) -> None:
    """--input to --output across processes (`accelerate launch`): each process takes every n-th input not
    done yet and appends its results to its own part file in `<output>.parts/`; the main process then merges
    all parts in input order into --output. A rerun skips the inputs whose results are in the parts."""
    lines = read_input(args.input)
    parts = args.output.with_name(args.output.name + ".parts")
    if state.is_main_process:
        parts.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    done = _read_parts(parts)
    todo = [line for line in lines if (line.number, line.digest) not in done][
        state.process_index :: state.num_processes
    ]
    part_path = parts / f"part-{state.process_index}.jsonl"
    cut_off = part_path.is_file() and not part_path.read_bytes().endswith(b"\n") and part_path.stat().st_size
    with part_path.open("a", encoding="utf-8") as part:
        part.write("\n" if cut_off else "")  # a line cut off by a killed run stays apart from the new ones
        for start in range(0, len(todo), args.batch_size):
            batch = todo[start : start + args.batch_size]
            for line, prediction in zip(batch, predict_lines(extractor, args, batch, lang), strict=True):
                entry = {"input": line.number, "digest": line.digest, "results": prediction.lines}
                part.write(json.dumps(entry, ensure_ascii=False) + "\n")
                part.flush()
    state.wait_for_everyone()
    if state.is_main_process:
        _merge(parts, lines, args.output)


def _read_parts(parts: Path) -> dict[tuple[int, str], list[dict]]:
    """(input line number, digest) -> results, from all part files (a cut-off last line, from a killed run,
    does not count)."""
    results = {}
    for part in sorted(parts.glob("part-*.jsonl")):
        for text in part.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                entry = json.loads(text)
                results[entry["input"], entry["digest"]] = entry["results"]
    return results


def _merge(parts: Path, lines: list[InputLine], output: Path) -> None:
    """Write the results of all inputs, in input order, to `output` (through a temporary file)."""
    results = _read_parts(parts)
    missing = [line.number for line in lines if (line.number, line.digest) not in results]
    if missing:
        raise SystemExit(f"{output}: no results for input lines {missing}; rerun to complete them")
    temporary = output.with_name(output.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as file:
        for line in lines:
            for result in results[line.number, line.digest]:
                file.write(json.dumps(result, ensure_ascii=False) + "\n")
    os.replace(temporary, output)


if __name__ == "__main__":
    main()
