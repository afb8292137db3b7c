"""Raw media reading: subtitle files (with pysubs2) and frames sampled in time (with PyAV).

The M³D release gives each clip as timed subtitle sentences (`time_sent_pair`) plus frames sampled from the
video (Section III of the paper, Steps 2-3). This module reads the raw material: subtitle cues in seconds,
in time order, with styling removed; the video stream's frame rate, extent and rotation; and the frames on
screen at given times, turned upright as players show them. `ingest_m3d` cuts a whole video into clips
and makes their unannotated schema rows (`modeling_m3d.schema`) with `unannotated_row` and `tokenized_cues`.
"""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import pysubs2
from PIL import Image

from .schema import check_language, join_tokens, tokenize_text

logger = logging.getLogger(__name__)

_TIMESTAMP = r"(?:\d+:)?\d{1,2}:\d{1,2}[,.]\d{1,3}"
_TIMING_LINE = re.compile(rf"\s*{_TIMESTAMP}\s*-->\s*{_TIMESTAMP}(?:\s.*)?")
_MARKUP = re.compile(r"<[^>]*>")  # tags pysubs2 leaves in text (e.g. SRT <font>)
SEEK_GAP_SECONDS = (
    4.0  # farther than this to the next sample: seek instead of decoding on (benchmark_video_m3d)
)


# ----------------------------------------------------------------------------------------------- subtitles


def read_subtitles(path: str | Path) -> list[dict]:
    """Read a subtitle file into cues `[{start_time, end_time, text}]` (seconds), in time order.

    Any format pysubs2 reads (SRT, WebVTT, ASS/SSA, MicroDVD, ...) or a `.json` list of `{start_time,
    end_time, text}`. Styling never reaches the text: ASS override codes (`{\\an8}`, `{\\i1}`), SRT/VTT tags
    and entities are removed, the lines of a cue are joined with spaces, and cues without text are left out.
    Cues out of time order are sorted, with a warning. Errors (`ValueError`) name the file and the line or
    cue: an empty file, a timing line that does not parse, a cue that ends before it starts.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such subtitle file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from err
    if not text.strip():
        raise ValueError(f"{path}: empty subtitle file")
    cues = _json_cues(text, path) if path.suffix.lower() == ".json" else _pysubs2_cues(text, path)
    cues = [cue for cue in cues if cue["text"]]
    if not cues:
        raise ValueError(f"{path}: no subtitle cue with text")
    ordered = sorted(cues, key=lambda cue: (cue["start_time"], cue["end_time"]))
    if ordered != cues:
        logger.warning("%s: cues are not in time order; they are sorted by start time", path)
    return ordered


def _pysubs2_cues(text: str, path: Path) -> list[dict]:
    _check_timing_lines(text, path)
    try:
        subs = pysubs2.SSAFile.from_string(text)
    except pysubs2.exceptions.Pysubs2Error as err:
        raise ValueError(f"{path}: not a subtitle format pysubs2 can read ({err})") from err
    events = [event for event in subs if event.is_text]
    cues = []
    for number, event in enumerate(events, start=1):
        if event.end < event.start:
            raise ValueError(
                f"{path}: cue {number}: ends ({event.end / 1000:.3f} s) before it starts "
                f"({event.start / 1000:.3f} s)"
            )
        plain = _MARKUP.sub("", event.plaintext)
        plain = html.unescape(plain) if subs.format == "vtt" else plain
        cues.append(
            {"start_time": event.start / 1000, "end_time": event.end / 1000, "text": " ".join(plain.split())}
        )
    return cues


def _check_timing_lines(text: str, path: Path) -> None:
    """Every `-->` line must be a `start --> end` timing: pysubs2 would keep a malformed one as cue text."""
    for number, line in enumerate(text.splitlines(), start=1):
        if "-->" in line and not _TIMING_LINE.fullmatch(line):
            raise ValueError(
                f"{path}: line {number}: unreadable cue time {line.strip()!r}; "
                "expected '[hh:]mm:ss,mmm --> [hh:]mm:ss,mmm'"
            )


def _json_cues(text: str, path: Path) -> list[dict]:
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: malformed JSON ({err})") from err
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of {{start_time, end_time, text}} objects")
    return [_json_cue(entry, f"{path}: cue {number}") for number, entry in enumerate(entries, start=1)]


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
    text = " ".join(_MARKUP.sub("", entry["text"]).split())
    return {"start_time": float(entry["start_time"]), "end_time": float(entry["end_time"]), "text": text}


# ----------------------------------------------------------------------------------------------- frames


@dataclass(frozen=True)
class VideoInfo:
    """What sampling needs to know of a video stream. Times in seconds on the stream's clock.

    `start`/`end` delimit the video stream itself (not the container, whose audio may run longer);
    `rotation` is the display matrix's counter-clockwise angle in degrees (phone footage: ±90).
    """

    path: Path
    fps: float
    start: float
    end: float
    width: int
    height: int
    rotation: int

    @property
    def duration(self) -> float:
        return self.end - self.start


def probe_video(path: str | Path) -> VideoInfo:
    """The frame rate, extent and rotation of a file's first video stream.

    Raises `FileNotFoundError` for a missing file and `ValueError` naming the file (and the stream) for an
    unreadable or truncated file, no video stream, no frame rate or no decodable frame.
    """
    path = Path(path)
    with _open_video(path) as (container, stream):
        fps = _frame_rate(stream, path)
        first = _decoded_frame(container.decode(stream), path, "the first frame")
        start = float(first.time)
        end = _stream_end(container, stream, fps, path)
        return VideoInfo(
            path, fps, start, max(end, start + 1 / fps), first.width, first.height, first.rotation
        )


def frames_at(
    path: str | Path,
    times: Sequence[float],
    max_side: int | None = None,
    seek_gap: float = SEEK_GAP_SECONDS,
) -> list[Image.Image]:
    """The RGB frames on screen at `times` (seconds, sorted ascending), upright, longest side ≤ `max_side`.

    Close samples are reached by decoding on, far ones (over `seek_gap` seconds ahead) by seeking to the
    keyframe before them, so sparse sampling of a long video decodes little. Errors name the file and time.
    """
    path = Path(path)
    if list(times) != sorted(times):
        raise ValueError(f"{path}: sample times must be sorted ascending")
    with _open_video(path) as (container, stream):
        return [_upright(frame, max_side) for frame in _frames_at(container, stream, times, seek_gap, path)]


def sample_frames(
    video_path: str | Path, num_frames: int = 8, max_side: int | None = None
) -> tuple[list[Image.Image], list[float]]:
    """`num_frames` frames uniformly in time (the middle of equal segments of the video stream) and their
    sample times in seconds."""
    if num_frames < 1:
        raise ValueError(f"the number of frames must be at least 1, got {num_frames}")
    info = probe_video(video_path)
    times = [info.start + (k + 0.5) * info.duration / num_frames for k in range(num_frames)]
    return frames_at(video_path, times, max_side), times


class _open_video:
    """Context manager: `(container, first video stream)`, FFmpeg errors turned into `ValueError`s."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> tuple[av.container.InputContainer, av.VideoStream]:
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such video file")
        try:
            self.container = av.open(str(self.path))
        except av.FFmpegError as err:
            raise ValueError(f"{self.path}: unreadable video ({err})") from err
        if not self.container.streams.video:
            self.container.close()
            raise ValueError(f"{self.path}: no video stream (streams: {list(self.container.streams)})")
        stream = self.container.streams.video[0]
        stream.thread_type = "AUTO"
        return self.container, stream

    def __exit__(self, kind, error, traceback) -> None:
        self.container.close()
        if isinstance(error, av.FFmpegError):
            raise ValueError(f"{self.path}: unreadable or truncated video ({error})") from error


def _frame_rate(stream: av.VideoStream, path: Path) -> float:
    """Frames per second of the stream: its average rate, else FFmpeg's guess, else its base rate."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or not float(rate) > 0:
        raise ValueError(
            f"{path}: video stream {stream.index} ({stream.codec_context.name}) has no frame rate (no average, "
            "guessed or base rate in the file); remux it with one, e.g. `ffmpeg -i IN -r 25 OUT.mp4`"
        )
    return float(rate)


def _stream_end(
    container: av.container.InputContainer, stream: av.VideoStream, fps: float, path: Path
) -> float:
    """End of the video stream: its own duration, else one frame after its last frame (found by seeking
    near the end). Never the container's duration, which covers a longer audio stream."""
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    if stream.duration:
        return start + float(stream.duration * stream.time_base)
    horizon = container.duration / av.time_base if container.duration else 1e9
    container.seek(int(horizon / stream.time_base), stream=stream, backward=True)
    last = None
    for frame in container.decode(stream):
        last = frame
    if last is None or last.time is None:
        raise ValueError(f"{path}: video stream {stream.index}: no frame could be decoded near the end")
    return float(last.time) + 1 / fps


def _decoded_frame(frames: Iterator[av.VideoFrame], path: Path, what: str) -> av.VideoFrame:
    frame = next(frames, None)
    if frame is None:
        raise ValueError(f"{path}: video stream has no decodable frame ({what})")
    if frame.time is None:
        raise ValueError(f"{path}: {what} has no timestamp")
    return frame


def _frames_at(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    times: Sequence[float],
    seek_gap: float,
    path: Path,
) -> Iterator[av.VideoFrame]:
    """For each time, the last frame whose timestamp is not after it (the first frame before the start)."""
    decoded: Iterator[av.VideoFrame] | None = None
    shown = upcoming = None
    for time in times:
        if decoded is None or (upcoming is not None and time - upcoming.time > seek_gap):
            container.seek(int(Fraction(time).limit_denominator(10**6) / stream.time_base), stream=stream)
            decoded = container.decode(stream)
            shown, upcoming = None, next(decoded, None)
        while upcoming is not None and upcoming.time <= time + 1e-6:
            shown, upcoming = upcoming, next(decoded, None)
            if upcoming is not None and upcoming.time is None:
                raise ValueError(f"{path}: a decoded frame has no timestamp")
        if (shown or upcoming) is None:
            raise ValueError(f"{path}: no frame could be decoded at {time:.3f} s")
        yield shown or upcoming


def _upright(frame: av.VideoFrame, max_side: int | None) -> Image.Image:
    """The frame as players show it (display-matrix rotation applied), shrunk to `max_side` if larger."""
    image = frame.to_image()
    if frame.rotation % 360:
        image = image.rotate(frame.rotation, expand=True)
    if max_side is not None and max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return image


# ----------------------------------------------------------------------------------------------- rows


def unannotated_row(
    video_id: str, lang: str, tokens: list[str], subtitles: list[dict], frames: list[Image.Image]
) -> dict:
    """A DESIGN §2 schema row with text, subtitles and frames, and empty annotation lists."""
    check_language(lang)
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


def tokenized_cues(cues: Sequence[dict], lang: str, offset: float = 0.0) -> tuple[list[str], list[dict]]:
    """The document's tokens and the subtitles as the release stores them: each cue's tokens joined (EN
    single spaces, ZH nothing) with its times shifted by `-offset`; cues without tokens are dropped."""
    pieces = [tokenize_text(cue["text"], lang) for cue in cues]
    subtitles = [
        {
            "start_time": cue["start_time"] - offset,
            "end_time": cue["end_time"] - offset,
            "text": join_tokens(piece, lang),
        }
        for cue, piece in zip(cues, pieces, strict=True)
        if piece
    ]
    return [token for piece in pieces for token in piece], subtitles
