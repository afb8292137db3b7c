"""Whole videos to M³D clips (the paper's Section III, Steps 2-4), in memory or as a release folder.

Step 2 cuts a video into clips of about one to two minutes, only between subtitle lines; Step 3 keeps one
frame every `frame_step` frames (24 in the paper); Step 4 transcribes speech when there are no subtitles.

```python
clips = ingest_video("talk.mp4", "talk.srt", lang="en")  # list of Clip, frames as PIL images
write_release(clips, "out", lang="en", split="test")  # out/data/en/test_en.json and out/img/<clip id>/
```

Clip `k` (from 0) of video `V` is `V_k`. Subtitle times in a clip are seconds from the clip's start. Clips
follow each other from the video's start to its end; each lasts at most the maximum clip length (but a single
line longer than that), a long silent stretch making clips without lines (`split_into_clips`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .schema import check_language, join_tokens
from .video_m3d import VideoInfo, frames_at, probe_video, read_subtitles, tokenized_cues, unannotated_row

logger = logging.getLogger(__name__)

FRAME_STEP = 24  # Step 3: one frame kept every 24
MIN_CLIP_SECONDS, MAX_CLIP_SECONDS = 60.0, 120.0
MAX_FRAME_SIDE = 640  # saved frames are shrunk to this longest side (the model's images are far smaller)


@dataclass
class Clip:
    """One clip of a video. `cues` keep whole-video times (seconds); `frame_times` are whole-video seconds
    of `frames`, `frame_numbers` their frame numbers counted from the clip's start (the release's file
    names)."""

    clip_id: str
    start: float
    end: float
    cues: list[dict]
    frames: list[Image.Image] = field(default_factory=list)
    frame_times: list[float] = field(default_factory=list)
    frame_numbers: list[int] = field(default_factory=list)


Span = tuple[float, float, list[dict]]  # (clip start, clip end, its cues); seconds of the whole video


def split_into_clips(
    cues: Sequence[dict], start: float, end: float, min_clip: float, max_clip: float
) -> list[Span]:
    """Cut `[start, end)` (seconds) into contiguous `(clip start, clip end, cues)` between subtitle lines (cues
    in time order).

    A cut goes before a line once the clip so far lasts `min_clip` seconds and the rest of the video would not
    fit in it (no short last clip), or when taking the line in would make the clip last over `max_clip`; so a
    line longer than `max_clip` is a clip of its own. No other clip lasts over `max_clip`: a clip ends where
    the next line starts, or `max_clip` after its own start when that line is farther. The silence left before
    the next line opens that line's clip when it is shorter than `min_clip` (and the line still ends within
    `max_clip`); otherwise it becomes clips without lines, of equal lengths up to `max_clip`. So a clip never
    spans a long silent stretch, at the start, in the middle or at the end of the video.
    """
    if not 0 < min_clip <= max_clip:
        raise ValueError(f"clip lengths must satisfy 0 < min_clip <= max_clip, got {min_clip} and {max_clip}")
    clips: list[Span] = []
    clip_start, group = start, []
    for cue in cues:
        if group and _cut_before(cue, clip_start, end, min_clip, max_clip):
            clip_start, group = _close(clips, clip_start, group, cue["start_time"], max_clip), []
        if not group:
            clip_start = _lead_in(clips, clip_start, cue, min_clip, max_clip)
        group.append(cue)
    if group:
        clip_start = _close(clips, clip_start, group, end, max_clip)
    clips.extend(_silent_clips(clip_start, end, max_clip))
    return clips


def _cut_before(cue: dict, clip_start: float, end: float, min_clip: float, max_clip: float) -> bool:
    """Whether `cue` opens a new clip: the clip so far lasts `min_clip` and the rest of the video (ending at
    `end`) would not fit in it, or the cue would end over `max_clip` seconds after the clip's start."""
    long_enough = cue["start_time"] - clip_start >= min_clip and end - clip_start > max_clip
    return long_enough or cue["end_time"] - clip_start > max_clip


def _close(
    clips: list[Span], clip_start: float, group: list[dict], next_start: float, max_clip: float
) -> float:
    """Append the clip of `group`: it ends at `next_start` (the next line's start, or the video's end), or
    `max_clip` seconds after its start when that comes first (never before its last line ends). Its end."""
    last_end = max(cue["end_time"] for cue in group)
    clip_end = min(next_start, max(last_end, clip_start + max_clip))
    clips.append((clip_start, clip_end, group))
    return clip_end


def _lead_in(clips: list[Span], clip_start: float, cue: dict, min_clip: float, max_clip: float) -> float:
    """Where the clip opening with `cue` starts: at `clip_start` when the silence before the cue is shorter
    than `min_clip` seconds and the cue ends within `max_clip` of it; else at the cue, the silence becoming
    clips without lines."""
    silence = cue["start_time"] - clip_start
    if silence < min_clip and cue["end_time"] - clip_start <= max_clip:
        return clip_start
    clips.extend(_silent_clips(clip_start, cue["start_time"], max_clip))
    return cue["start_time"]


def _silent_clips(start: float, end: float, max_clip: float) -> list[Span]:
    """`[start, end)` (seconds) as clips without lines of equal lengths, none over `max_clip` (none if empty)."""
    if end <= start:
        return []
    count = math.ceil((end - start) / max_clip - 1e-9)
    bounds = [start + (end - start) * k / count for k in range(count)] + [end]
    return [(bounds[k], bounds[k + 1], []) for k in range(count)]


def clip_cues_to_video(cues: list[dict], info: VideoInfo, source: str) -> list[dict]:
    """Cues limited to the video's extent: lines past its end are dropped or cut short, with a warning."""
    inside = [
        {**cue, "end_time": min(cue["end_time"], info.end)} for cue in cues if cue["start_time"] < info.end
    ]
    if any(cue["end_time"] > info.end for cue in cues):
        logger.warning(
            "%s: subtitles run past the end of the video (%.3f s); %d cue(s) dropped, the rest cut at the end",
            source,
            info.end,
            len(cues) - len(inside),
        )
    return inside


def ingest_video(
    video: str | Path,
    subtitles: str | Path | None = None,
    lang: str = "en",
    video_id: str | None = None,
    frame_step: int = FRAME_STEP,
    min_clip: float = MIN_CLIP_SECONDS,
    max_clip: float = MAX_CLIP_SECONDS,
    asr_model: str | None = None,
    max_side: int | None = MAX_FRAME_SIDE,
) -> list[Clip]:
    """Cut a video into clips with their subtitle lines and sampled frames (all in memory).

    Lines come from `subtitles` (any format `video_m3d.read_subtitles` reads) or, without them, from speech
    transcribed by the Whisper-family `asr_model` (`asr_m3d.transcribe`). Frames are sampled every
    `frame_step / fps` seconds of the video stream, so a variable frame rate is sampled evenly in time.
    """
    check_language(lang)
    if frame_step < 1:
        raise ValueError(f"frame_step must be a positive number of frames, got {frame_step}")
    info = probe_video(video)
    if subtitles is not None:
        cues = read_subtitles(subtitles)
    elif asr_model is not None:
        from .asr_m3d import transcribe  # transformers' speech pipeline, only when needed

        cues = transcribe(video, asr_model, lang)
    else:
        raise ValueError(f"{video}: no subtitles given and no --asr_model to transcribe the speech with")
    cues = clip_cues_to_video(cues, info, str(subtitles or video))
    video_id = video_id or Path(video).stem
    if not video_id or Path(video_id).name != video_id:
        raise ValueError(
            f"{video}: video_id {video_id!r} must be a plain folder name (it names img/<clip id>/)"
        )
    clips = [
        Clip(f"{video_id}_{k}", start, end, group)
        for k, (start, end, group) in enumerate(
            split_into_clips(cues, info.start, info.end, min_clip, max_clip)
        )
    ]
    _add_frames(clips, info, frame_step, max_side)
    return clips


def _add_frames(clips: list[Clip], info: VideoInfo, frame_step: int, max_side: int | None) -> None:
    """Sample the whole video once on the `frame_step` grid and hand each frame to the clip it falls in."""
    step = frame_step / info.fps
    count = int((info.end - info.start) / step - 1e-9) + 1
    times = [info.start + k * step for k in range(count)]
    images = frames_at(info.path, times, max_side)
    bounds = iter(clips)
    clip = next(bounds)
    for time, image in zip(times, images, strict=True):
        while time >= clip.end and clip is not clips[-1]:
            clip = next(bounds)
        clip.frames.append(image)
        clip.frame_times.append(time)
        clip.frame_numbers.append(round((time - clip.start) * info.fps))


def clip_to_row(clip: Clip, lang: str, video_title: str = "") -> dict:
    """The clip as an unannotated schema row (DESIGN §2): clip-relative subtitle times, PIL frames."""
    tokens, subtitles = tokenized_cues(clip.cues, lang, offset=clip.start)
    return {**unannotated_row(clip.clip_id, lang, tokens, subtitles, clip.frames), "video_title": video_title}


def clip_to_record(clip: Clip, lang: str, video_title: str = "") -> dict:
    """The clip as a release record: `doc`, `time_sent_pair` (`"<start>-<end>"` in clip seconds), empty
    `entityLink` and `relation`, `image` (frame numbers), `video_id` (the clip id), `video_title`, `lang`.
    Lines with the same times share one key, their texts joined."""
    tokens, subtitles = tokenized_cues(clip.cues, lang, offset=clip.start)
    pairs: dict[str, str] = {}
    for subtitle in subtitles:
        key = f"{_seconds(subtitle['start_time'])}-{_seconds(subtitle['end_time'])}"
        pairs[key] = join_tokens([pairs[key], subtitle["text"]], lang) if key in pairs else subtitle["text"]
    return {
        "doc": join_tokens(tokens, lang),
        "time_sent_pair": pairs,
        "relation": [],
        "entityLink": {},
        "image": list(clip.frame_numbers),
        "video_id": clip.clip_id,
        "video_title": video_title,
        "lang": lang,
    }


def _seconds(value: float) -> str:
    return f"{max(value, 0.0):.3f}".rstrip("0").rstrip(".")


def write_release(
    clips: Sequence[Clip], output_dir: str | Path, lang: str, split: str = "test", video_title: str = ""
) -> Path:
    """Write the clips as a release folder: `data/<lang>/<split>_<lang>.json` and `img/<clip id>/<n>.jpg`.

    Everything is written to a temporary folder beside `output_dir` and moved in at the end, so a failure
    leaves `output_dir` as it was. Records of the same clip ids already in the split file are replaced,
    others kept (several videos can share one folder). Returns the annotation file's path.
    """
    check_language(lang)
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    relative = Path("data") / lang / f"{split}_{lang}.json"
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        ids = {clip.clip_id for clip in clips}
        kept = [
            record for record in _existing_records(output_dir / relative) if record.get("video_id") not in ids
        ]
        records = kept + [clip_to_record(clip, lang, video_title) for clip in clips]
        (staging / relative).parent.mkdir(parents=True)
        (staging / relative).write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
        for clip in clips:
            folder = staging / "img" / clip.clip_id
            folder.mkdir(parents=True)
            for number, image in zip(clip.frame_numbers, clip.frames, strict=True):
                image.save(folder / f"{number}.jpg", quality=90)
        _move_in(staging, output_dir, [relative, *(Path("img") / clip_id for clip_id in sorted(ids))])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir / relative


def _existing_records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    records = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of release records")
    return records


def _move_in(staging: Path, output_dir: Path, entries: list[Path]) -> None:
    """Move the staged entries into `output_dir` (the whole folder at once when it does not exist yet)."""
    if not output_dir.exists():
        os.replace(staging, output_dir)
        return
    for entry in entries:
        target = output_dir / entry
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(staging / entry, target)
