"""Raw video ingestion: subtitle files and uniformly sampled frames to a DESIGN §2 schema row.

The M³D release gives each clip as timed subtitle sentences (`time_sent_pair`) plus frames sampled from the
video (Section III of the paper). This module builds the same row from a raw video file and a subtitle file
(`.srt`, `.vtt`, or a JSON list of `{start_time, end_time, text}`), so the extraction pipeline runs on new
clips. Text is tokenised like the release (`schema.tokenize_text`): EN words with punctuation split off and joined
by single spaces (`Peter ' s father ,`), ZH one token per character with no spaces.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import av
from PIL import Image

from .schema import LANGUAGES, join_tokens, tokenize_text

_TIMING = re.compile(r"^(?P<start>\S+)\s+-->\s+(?P<end>\S+)")
_TIMESTAMP = re.compile(r"^(?:(\d+):)?(\d+):(\d{2})[,.](\d{1,3})$")
_MARKUP = re.compile(r"<[^>]*>")  # SRT <i>/<b>/<font>; VTT voice, class and inline timestamp tags
_VTT_SKIPPED_BLOCKS = ("NOTE", "STYLE", "REGION")


# ----------------------------------------------------------------------------------------------- subtitles


def read_subtitles(path: str | Path) -> list[dict]:
    """Read a `.srt`, `.vtt` or `.json` subtitle file into `[{start_time, end_time, text}]` (seconds).

    Cues keep their file order; markup tags are dropped and a multi-line cue is joined with spaces. Cues with
    no text are left out. Malformed input raises `ValueError` naming the file, the line or entry and the
    field.
    """
    path = Path(path)
    parsers = {".srt": _parse_srt, ".vtt": _parse_vtt, ".json": _parse_json}
    parser = parsers.get(path.suffix.lower())
    if parser is None:
        raise ValueError(
            f"{path}: unsupported subtitle format {path.suffix!r}; expected one of {sorted(parsers)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such subtitle file")
    cues = parser(path.read_text(encoding="utf-8-sig"), path)
    return [cue for cue in cues if cue["text"]]


def _blocks(text: str) -> Iterator[tuple[int, list[str]]]:
    """Blank-line separated blocks of stripped lines, each with the 1-based line number of its first line."""
    block: list[str] = []
    first = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            first = first if block else number
            block.append(line.strip())
        elif block:
            yield first, block
            block = []
    if block:
        yield first, block


def _seconds(stamp: str, where: str) -> float:
    match = _TIMESTAMP.match(stamp)
    if match is None:
        raise ValueError(f"{where}: malformed timestamp {stamp!r}; expected [hh:]mm:ss,mmm or [hh:]mm:ss.mmm")
    hours, minutes, seconds, fraction = match.groups()
    return int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds) + float(f"0.{fraction}")


def _cue(block: list[str], timing_index: int, where: str, unescape: bool) -> dict:
    """One cue from its block: the timing line at `timing_index`, the text on the lines after it."""
    timing = _TIMING.match(block[timing_index])
    start, end = _seconds(timing["start"], where), _seconds(timing["end"], where)
    if end < start:
        raise ValueError(f"{where}: cue ends ({end:.3f} s) before it starts ({start:.3f} s)")
    text = _MARKUP.sub("", " ".join(block[timing_index + 1 :]))
    return {"start_time": start, "end_time": end, "text": html.unescape(text) if unescape else text}


def _timing_index(block: list[str]) -> int | None:
    """Index of the `start --> end` line: first line, or second after a cue number / identifier."""
    return next((i for i, line in enumerate(block[:2]) if _TIMING.match(line)), None)


def _parse_srt(text: str, path: Path) -> list[dict]:
    return _cues(_blocks(text), path, unescape=False)


def _parse_vtt(text: str, path: Path) -> list[dict]:
    blocks = list(_blocks(text))
    if not blocks or not blocks[0][1][0].startswith("WEBVTT"):
        raise ValueError(f"{path}: line 1: a WebVTT file must start with 'WEBVTT'")
    cue_blocks = [
        (line, block) for line, block in blocks[1:] if block[0].split(" ")[0] not in _VTT_SKIPPED_BLOCKS
    ]
    return _cues(cue_blocks, path, unescape=True)


def _cues(blocks: Iterable[tuple[int, list[str]]], path: Path, unescape: bool) -> list[dict]:
    """The cue of each block; a block without a timing line is an error."""
    cues = []
    for line, block in blocks:
        index = _timing_index(block)
        if index is None:
            raise ValueError(f"{path}: line {line}: cue has no 'start --> end' timing line")
        cues.append(_cue(block, index, f"{path}: line {line + index}", unescape=unescape))
    return cues


def _parse_json(text: str, path: Path) -> list[dict]:
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: malformed JSON ({err})") from err
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of {{start_time, end_time, text}} objects")
    return [_json_cue(entry, f"{path}: subtitle {i}") for i, entry in enumerate(entries)]


def _json_cue(entry: object, where: str) -> dict:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object with start_time, end_time and text")
    for field in ("start_time", "end_time"):
        if isinstance(entry.get(field), bool) or not isinstance(entry.get(field), (int, float)):
            raise ValueError(
                f"{where}: field {field!r} must be a number of seconds, got {entry.get(field)!r}"
            )
    if not isinstance(entry.get("text"), str):
        raise ValueError(f"{where}: field 'text' must be a string, got {entry.get('text')!r}")
    if entry["end_time"] < entry["start_time"]:
        raise ValueError(f"{where}: field 'end_time' ({entry['end_time']}) is before start_time")
    return {
        "start_time": float(entry["start_time"]),
        "end_time": float(entry["end_time"]),
        "text": entry["text"],
    }


# ----------------------------------------------------------------------------------------------- frames


def sample_frames(
    video_path: str | Path,
    num_frames: int = 8,
    fps: float | None = None,
    max_frames: int | None = None,
) -> tuple[list[Image.Image], list[float]]:
    """Sample frames uniformly in time; return the RGB images and their presentation times in seconds.

    By default the clip is cut into `num_frames` equal segments and the frame shown at the middle of each is
    taken. With `fps`, frames are taken every `1 / fps` seconds from the start instead; `max_frames` caps the
    count, spreading the frames over the whole clip when the cap is hit. Each frame is reached by seeking to
    the keyframe before it and decoding from there, so sparse sampling of a long video decodes little.
    """
    path = Path(video_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            start, duration = _time_range(container, stream, path)
            times = _sample_times(start, duration, num_frames, fps, max_frames)
            frames = [_frame_at(container, stream, time, path) for time in times]
    except av.FFmpegError as err:
        raise ValueError(f"{path}: unreadable video ({err})") from err
    return [frame.to_image() for frame in frames], [float(frame.time) for frame in frames]


def _time_range(
    container: av.container.InputContainer, stream: av.VideoStream, path: Path
) -> tuple[float, float]:
    """Start time and duration of the video stream in seconds (the container's when the stream lacks it)."""
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    if stream.duration:
        return start, float(stream.duration * stream.time_base)
    if container.duration:
        return start, container.duration / av.time_base
    raise ValueError(f"{path}: the video has no known duration")


def _sample_times(
    start: float, duration: float, num_frames: int, fps: float | None, max_frames: int | None
) -> list[float]:
    if fps is not None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        count = max(1, math.floor(duration * fps))
        if max_frames is None or count <= max_frames:
            return [start + k / fps for k in range(count)]
        num_frames = max_frames
    elif max_frames is not None:
        num_frames = min(num_frames, max_frames)
    if num_frames < 1:
        raise ValueError(f"the number of frames must be at least 1, got {num_frames}")
    return [start + (k + 0.5) * duration / num_frames for k in range(num_frames)]


def _frame_at(
    container: av.container.InputContainer, stream: av.VideoStream, time: float, path: Path
) -> av.VideoFrame:
    """The frame on screen at `time`: seek to the keyframe at or before it, decode up to it."""
    container.seek(int(time / stream.time_base), stream=stream, backward=True, any_frame=False)
    return _last_frame_not_after(container.decode(stream), time, path)


def _last_frame_not_after(frames: Iterable[av.VideoFrame], time: float, path: Path) -> av.VideoFrame:
    shown = None
    for frame in frames:
        if frame.time is None:
            raise ValueError(f"{path}: a decoded frame has no timestamp")
        if frame.time > time:
            return shown or frame  # the seek landed after `time` only when no earlier frame exists
        shown = frame
    if shown is None:
        raise ValueError(f"{path}: no frame could be decoded at {time:.3f} s")
    return shown


# ----------------------------------------------------------------------------------------------- rows


def unannotated_row(
    video_id: str, lang: str, tokens: list[str], subtitles: list[dict], frames: list[Image.Image]
) -> dict:
    """A DESIGN §2 schema row with text, subtitles and frames, and empty annotation lists."""
    if lang not in LANGUAGES:
        raise ValueError(f"{video_id}: field 'lang' is {lang!r}; expected one of {LANGUAGES}")
    return {
        "id": video_id,
        "lang": lang,
        "video_id": video_id,
        "video_title": "",
        "tokens": tokens,
        "subtitles": subtitles,
        "entities": [],
        "chains": [],
        "relations": [],
        "frames": frames,
        "groundings": [],
    }


def video_to_row(
    video_path: str | Path,
    subtitles_path: str | Path | None = None,
    lang: str = "en",
    num_frames: int = 8,
    video_id: str | None = None,
) -> dict:
    """Build an unannotated schema row from a video file and, optionally, its subtitles.

    The document is the concatenation of the subtitle lines, tokenised like the release; each subtitle keeps
    its times and is stored as its tokens joined (single spaces for EN, nothing for ZH), so that the
    subtitles joined give the document as in `time_sent_pair`. Without subtitles the text modality is missing
    (`tokens == []`). `video_id` defaults to the video's file stem.
    """
    if lang not in LANGUAGES:
        raise ValueError(f"{video_path}: unknown language {lang!r}; expected one of {LANGUAGES}")
    frames, _ = sample_frames(video_path, num_frames=num_frames)
    cues = read_subtitles(subtitles_path) if subtitles_path is not None else []
    pieces = [tokenize_text(cue["text"], lang) for cue in cues]
    subtitles = [
        {"start_time": cue["start_time"], "end_time": cue["end_time"], "text": join_tokens(piece, lang)}
        for cue, piece in zip(cues, pieces, strict=True)
        if piece
    ]
    tokens = [token for piece in pieces for token in piece]
    return unannotated_row(video_id or Path(video_path).stem, lang, tokens, subtitles, frames)
