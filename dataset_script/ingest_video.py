#!/usr/bin/env python
"""Cut a video into M³D clips and write them as a release folder (the paper's Section III, Steps 2-4).

    python dataset_script/ingest_video.py --video talk.mp4 --subtitles talk.srt --output_dir out --lang en
    python dataset_script/ingest_video.py --video talk.mp4 --asr_model openai/whisper-small --output_dir out

Writes `out/data/<lang>/<split>_<lang>.json` (release records with empty annotations) and
`out/img/<clip id>/<frame number>.jpg`; the folder loads with the `M3D` builder (`data_dir=out`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from modeling_m3d.ingest_m3d import (
    FRAME_STEP,
    MAX_CLIP_SECONDS,
    MAX_FRAME_SIDE,
    MIN_CLIP_SECONDS,
    ingest_video,
    write_release,
)
from modeling_m3d.schema import LANGUAGES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, required=True)
    parser.add_argument("--subtitles", type=Path, help="SRT, WebVTT, ASS/SSA, ... or a .json list of cues.")
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--lang", choices=LANGUAGES, default="en")
    parser.add_argument("--video_id", help="Clip ids are <video_id>_<k> (default: the video's file stem).")
    parser.add_argument("--video_title", default="")
    parser.add_argument("--split", choices=("train", "validation", "test"), default="test")
    parser.add_argument("--frame_step", type=int, default=FRAME_STEP, help="Keep one frame in this many.")
    parser.add_argument("--min_clip", type=float, default=MIN_CLIP_SECONDS, help="Seconds.")
    parser.add_argument("--max_clip", type=float, default=MAX_CLIP_SECONDS, help="Seconds.")
    parser.add_argument("--max_side", type=int, default=MAX_FRAME_SIDE, help="Longest side of saved frames.")
    parser.add_argument("--asr_model", help="Whisper-family checkpoint (folder or Hub id) when no subtitles.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        clips = ingest_video(
            args.video,
            args.subtitles,
            lang=args.lang,
            video_id=args.video_id,
            frame_step=args.frame_step,
            min_clip=args.min_clip,
            max_clip=args.max_clip,
            asr_model=args.asr_model,
            max_side=args.max_side,
        )
        release_split = {"validation": "dev"}.get(args.split, args.split)
        path = write_release(clips, args.output_dir, args.lang, release_split, args.video_title)
    except (ValueError, OSError) as err:
        raise SystemExit(f"error: {err}") from err
    frames = sum(len(clip.frames) for clip in clips)
    print(f"wrote {len(clips)} clips and {frames} frames: {path}")


if __name__ == "__main__":
    main()
