"""Extraction results anchored in a video's time: per clip, then for the whole video.

The pipeline's output for a clip indexes tokens, chains and frames; for a reader of a whole video these are
turned into self-explaining records: each mention with its text, its character offsets in the clip's
document and the time (seconds from the video's start) of the subtitle line it is in; each chain with an id,
a type and its mentions; each grounding with the time of its frame and its box format named.

`extract_video` is the one way from a video file to these records: it cuts the video into clips
(`ingest_m3d.ingest_video`), runs an extractor (the `"m3d-extraction"` pipeline) on their rows and anchors the
results. The pipeline calls it for `{"video": ...}` inputs, and `examples/predict.py --video` through it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from itertools import accumulate
from pathlib import Path
from typing import Any

import numpy as np

from .ingest_m3d import FRAME_STEP, MAX_CLIP_SECONDS, MIN_CLIP_SECONDS, Clip, clip_to_row, ingest_video
from .schema import join_tokens, tokenize

BOX_FORMAT = "cx, cy, w, h (box centre, width and height, normalised to [0, 1] by the frame's size)"


class _ClipText:
    """Character offsets and subtitle times of token spans in one clip's document."""

    def __init__(self, clip: Clip, row: dict, lang: str):
        tokens = row["tokens"]
        gap = 0 if lang == "zh" else 1
        lengths = [len(token) for token in tokens]
        self.char_starts = np.array(
            [0, *accumulate(length + gap for length in lengths)][: len(tokens)], dtype=int
        )
        self.char_ends = self.char_starts + np.array(lengths, dtype=int)
        # token index one past each subtitle line (a line's text is its tokens joined, as in the release)
        self.cue_ends = np.cumsum([len(tokenize(subtitle["text"], lang)) for subtitle in row["subtitles"]])
        self.times = [(s["start_time"] + clip.start, s["end_time"] + clip.start) for s in row["subtitles"]]
        self.tokens, self.lang = tokens, lang

    def mention(self, start: int, end: int) -> dict:
        """`{"start", "end", "text", "char_start", "char_end", "start_time", "end_time"}` of tokens[start:end]."""
        line = int(np.searchsorted(self.cue_ends, start, side="right"))
        start_time, end_time = self.times[min(line, len(self.times) - 1)] if self.times else (None, None)
        return {
            "start": start,
            "end": end,
            "text": join_tokens(self.tokens[start:end], self.lang),
            "char_start": int(self.char_starts[start]),
            "char_end": int(self.char_ends[end - 1]),
            "start_time": start_time,
            "end_time": end_time,
        }


def clip_result(clip: Clip, row: dict, result: dict, video_id: str) -> dict:
    """One clip's pipeline `result` (on `row`, the clip's schema row) as a self-explaining, time-anchored record.

    Times are seconds from the video's start; chain ids are `<clip id>/C<k>`; relations name chain ids.
    """
    lang = row["lang"]
    text = _ClipText(clip, row, lang)
    entity_types = {(e["start"], e["end"]): e["type"] for e in result["entities"]}
    chain_ids = [f"{clip.clip_id}/C{k}" for k in range(len(result["chains"]))]
    chains = [
        {
            "id": chain_id,
            "type": _chain_type(chain, entity_types),
            "mentions": [text.mention(m["start"], m["end"]) for m in chain],
        }
        for chain_id, chain in zip(chain_ids, result["chains"], strict=True)
    ]
    return {
        "id": clip.clip_id,
        "video_id": video_id,
        "start_time": clip.start,
        "end_time": clip.end,
        "document": join_tokens(row["tokens"], lang),
        "tokens": row["tokens"],
        "entities": [{**text.mention(e["start"], e["end"]), "type": e["type"]} for e in result["entities"]],
        "chains": chains,
        "relations": [
            {
                "subject": chain_ids[r["subject"]],
                "object": chain_ids[r["object"]],
                "type": r["type"],
                "score": r.get("score"),
                "subject_text": r["subject_text"],
                "object_text": r["object_text"],
            }
            for r in result["relations"]
        ],
        "groundings": [
            {**g, "time": clip.frame_times[g["frame"]], "box_format": BOX_FORMAT}
            for g in result["groundings"]
        ],
    }


def _chain_type(chain: list[dict], entity_types: dict[tuple[int, int], str]) -> str | None:
    """The type most of the chain's mentions were predicted with (None when no mention is an entity)."""
    types = Counter(
        entity_types[(m["start"], m["end"])] for m in chain if (m["start"], m["end"]) in entity_types
    )
    return types.most_common(1)[0][0] if types else None


def video_summary(clip_results: list[dict], video: str) -> dict:
    """The whole video: its clips, every chain of every clip (mentions with their times), the relations with
    the clip they come from, and every grounding with its frame's time. Times are seconds from the start."""
    return {
        "video": video,
        "video_id": clip_results[0]["video_id"] if clip_results else None,
        "clips": [
            {"id": c["id"], "start_time": c["start_time"], "end_time": c["end_time"]} for c in clip_results
        ],
        "chains": [{**chain, "clip": c["id"]} for c in clip_results for chain in c["chains"]],
        "relations": [{**relation, "clip": c["id"]} for c in clip_results for relation in c["relations"]],
        "groundings": [{**grounding, "clip": c["id"]} for c in clip_results for grounding in c["groundings"]],
        "box_format": BOX_FORMAT,
    }


@dataclass
class VideoExtraction:
    """A whole video's extraction: its clips, their schema rows and the extractor's output on each (in the
    pipeline's clip format), and from them the time-anchored results (times in seconds from the video's start).
    """

    video: str
    video_id: str
    clips: list[Clip]
    rows: list[dict]
    extractions: list[dict]

    @cached_property
    def clip_results(self) -> list[dict]:
        """One self-explaining record per clip (`clip_result`)."""
        return [
            clip_result(clip, row, extraction, self.video_id)
            for clip, row, extraction in zip(self.clips, self.rows, self.extractions, strict=True)
        ]

    def summary(self) -> dict:
        """The video-level record (`video_summary`): clips as ids and times, all chains, relations, groundings."""
        return video_summary(self.clip_results, self.video)

    def to_json(self) -> dict:
        """The video-level record with each clip's whole record under `"clips"`: what the pipeline returns."""
        return {**self.summary(), "clips": self.clip_results}


def extract_video(
    extractor: Callable[..., Any],
    video: str | Path,
    subtitles: str | Path | None = None,
    lang: str = "en",
    video_id: str | None = None,
    frame_step: int = FRAME_STEP,
    min_clip: float = MIN_CLIP_SECONDS,
    max_clip: float = MAX_CLIP_SECONDS,
    asr_model: str | None = None,
    **extractor_kwargs: Any,
) -> VideoExtraction:
    """Cut `video` into clips between subtitle lines (`min_clip`/`max_clip` seconds, one frame kept every
    `frame_step` frames; speech transcribed by the Whisper-family `asr_model` when there are no `subtitles`),
    run `extractor` on their rows (one call, `extractor_kwargs` passed on: `batch_size`, `protocol`, the
    thresholds) and keep everything for the time-anchored results. Clip ids are `<video_id>_<k>`, `video_id`
    defaulting to the file stem. Bad input raises `ValueError`/`OSError` naming the file.
    """
    clips = ingest_video(
        video,
        subtitles,
        lang=lang,
        video_id=video_id,
        frame_step=frame_step,
        min_clip=min_clip,
        max_clip=max_clip,
        asr_model=asr_model,
    )
    rows = [clip_to_row(clip, lang) for clip in clips]
    extractions = list(extractor(rows, **extractor_kwargs))
    return VideoExtraction(str(video), video_id or Path(video).stem, clips, rows, extractions)
