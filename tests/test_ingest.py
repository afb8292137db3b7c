"""Whole videos to clips (Steps 2-3): cuts between subtitle lines, frames every `frame_step` frames, the
release folder (loaded back through the `M3D` builder), the CLI and its errors."""

import json
import logging
import random
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest
from media import frame_level, write_grey_clip, write_variable_rate_clip

from modeling_m3d.ingest_m3d import ingest_video, split_into_clips, write_release

REPO = Path(__file__).resolve().parents[1]


def load_release(data_dir, lang):
    """The `test` split of a release folder through the dataset builder (the one place that names it)."""
    sys.path.insert(0, str(REPO / "dataset_script" / "m3d"))
    import m3d

    builder = m3d.M3D(
        config_name=lang, data_dir=str(data_dir), cache_dir=str(Path(data_dir).parent / "cache")
    )
    builder.download_and_prepare()
    return builder.as_dataset()["test"]


def cue(start, end, text="x"):
    return {"start_time": start, "end_time": end, "text": text}


def srt(cues):
    def stamp(seconds):
        return f"00:{int(seconds) // 60:02d}:{int(seconds) % 60:02d},{round(seconds % 1 * 1000):03d}"

    return "".join(f"{k}\n{stamp(s)} --> {stamp(e)}\n{text}\n\n" for k, (s, e, text) in enumerate(cues, 1))


def test_cuts_fall_between_lines_within_the_clip_lengths():
    lines = [cue(t, t + 4) for t in range(0, 300, 5)]  # a 4 s line every 5 s
    clips = split_into_clips(lines, 0.0, 300.0, min_clip=60, max_clip=120)
    # the last 120 s fit in one clip: no short clip at the end
    assert [(start, end) for start, end, _ in clips] == [(0, 60), (60, 120), (120, 180), (180, 300)]
    assert [len(group) for _, _, group in clips] == [12, 12, 12, 24]
    assert [group[0]["start_time"] for _, _, group in clips] == [0, 60, 120, 180]


def test_a_line_longer_than_the_maximum_is_its_own_clip():
    lines = [cue(0, 10), cue(10, 20), cue(20, 200), cue(200, 210)]
    clips = split_into_clips(lines, 0.0, 215.0, min_clip=60, max_clip=120)
    assert [(start, end, len(group)) for start, end, group in clips] == [
        (0, 20, 2),
        (20, 200, 1),
        (200, 215, 1),
    ]


def test_a_long_silence_is_cut_off_into_clips_without_lines():
    lines = [cue(0, 5), cue(10, 15), cue(415, 420), cue(425, 430)]  # 400 s without a line in the middle
    clips = split_into_clips(lines, 0.0, 500.0, min_clip=60, max_clip=120)
    spans = [(start, end, len(group)) for start, end, group in clips]
    cut = [120 + 295 * k / 3 for k in range(4)]  # the silence left: three clips without lines, equal lengths
    # the first clip stops max_clip after its start, not at the next line (415 s)
    assert spans == [(0, 120, 2), *((pytest.approx(a), pytest.approx(b), 0) for a, b in pairwise(cut)),
                     (415, 500, 2)]  # fmt: skip


def test_silence_at_the_start_and_end_and_a_short_one_taken_in():
    # a 200 s intro without lines, then two lines 120 s apart, then 150 s without lines to the end
    lines = [cue(200, 205), cue(325, 330)]
    clips = split_into_clips(lines, 0.0, 480.0, min_clip=60, max_clip=120)
    assert [(start, end, len(group)) for start, end, group in clips] == [
        (0, 100, 0),
        (100, 200, 0),
        (200, 320, 1),
        (320, 440, 1),  # the 5 s of silence before its line (shorter than min_clip) open this clip
        (440, 480, 0),
    ]
    assert split_into_clips([], 0.0, 250.0, 60, 120) == [(0, pytest.approx(250 / 3), []),
                                                         (pytest.approx(250 / 3), pytest.approx(500 / 3), []),
                                                         (pytest.approx(500 / 3), 250, [])]  # fmt: skip


@pytest.mark.parametrize("seed", range(20))
def test_no_clip_outlasts_the_maximum_but_a_single_long_line(seed):
    rng = random.Random(seed)
    lines, time = [], rng.uniform(0, 200)
    for _ in range(rng.randrange(0, 40)):
        length = rng.choice([rng.uniform(0.5, 8), rng.uniform(100, 200)]) if rng.random() < 0.1 else 3
        lines.append(cue(time, time + length))
        time += length + rng.choice([0.2, 1, 30, 90, 150, 400])
    end = time + rng.uniform(0, 300)
    clips = split_into_clips(lines, 0.0, end, min_clip=60, max_clip=120)
    assert clips[0][0] == 0 and clips[-1][1] == end
    assert all(a[1] == b[0] for a, b in pairwise(clips))  # contiguous
    assert [line for _, _, group in clips for line in group] == lines  # every line once, in order
    for start, end_, group in clips:
        assert start < end_
        long_line = len(group) == 1 and group[0]["end_time"] - group[0]["start_time"] > 120
        assert end_ - start <= 120 + 1e-9 or (long_line and (start, end_) == (group[0]["start_time"],
                                                                              group[0]["end_time"]))  # fmt: skip
        assert all(start <= line["start_time"] and line["end_time"] <= end_ + 1e-9 for line in group)


@pytest.fixture(scope="module")
def talk(tmp_path_factory):
    """A 30 s grey-level video at 10 fps and its subtitles (a 2 s line every 3 s, the last past the end)."""
    folder = tmp_path_factory.mktemp("talk")
    video = write_grey_clip(folder / "talk.mp4", num_frames=300, audio_seconds=32.0)
    lines = [(t, t + 2, f"Line {t} of Anna's talk.") for t in range(0, 30, 3)] + [(31, 33, "After the end.")]
    subtitles = folder / "talk.srt"
    subtitles.write_text(srt(lines), encoding="utf-8")
    return video, subtitles


def test_ingest_video_cuts_clips_and_samples_frames(talk, caplog):
    video, subtitles = talk
    with caplog.at_level(logging.WARNING):
        clips = ingest_video(video, subtitles, "en", video_id="talk", frame_step=10, min_clip=8, max_clip=12)
    assert "past the end of the video" in caplog.text
    assert [clip.clip_id for clip in clips] == ["talk_0", "talk_1", "talk_2"]
    assert [(clip.start, clip.end) for clip in clips] == [(0, 9), (9, 18), (18, pytest.approx(30.0))]
    assert [len(clip.cues) for clip in clips] == [3, 3, 4]
    # one frame a second (10 frames at 10 fps), numbered from each clip's start
    assert [clip.frame_times for clip in clips][1] == pytest.approx([9, 10, 11, 12, 13, 14, 15, 16, 17])
    assert clips[1].frame_numbers == [0, 10, 20, 30, 40, 50, 60, 70, 80]
    assert [frame_level(image) for image in clips[1].frames] == [(10 * t) % 20 for t in range(9, 18)]
    assert sum(len(clip.frames) for clip in clips) == 30


def test_release_folder_loads_through_the_builder(talk, tmp_path):
    video, subtitles = talk
    clips = ingest_video(video, subtitles, "en", video_id="talk", frame_step=10, min_clip=8, max_clip=12)
    path = write_release(clips, tmp_path / "out", "en", "test", video_title="Anna's talk")
    record = json.loads(path.read_text(encoding="utf-8"))[1]
    assert (
        record["video_id"] == "talk_1" and record["lang"] == "en" and record["video_title"] == "Anna's talk"
    )
    assert record["entityLink"] == {} and record["relation"] == []
    assert record["time_sent_pair"] == {
        "0-2": "Line 9 of Anna ' s talk .",
        "3-5": "Line 12 of Anna ' s talk .",
        "6-8": "Line 15 of Anna ' s talk .",
    }
    assert record["doc"] == " ".join(record["time_sent_pair"].values())
    assert sorted(p.name for p in (tmp_path / "out" / "img" / "talk_1").iterdir())[:2] == ["0.jpg", "10.jpg"]
    rows = load_release(tmp_path / "out", "en")
    assert rows["id"] == ["talk_0", "talk_1", "talk_2"]
    row = rows[2]
    assert row["tokens"][:4] == ["Line", "18", "of", "Anna"] and row["entities"] == []
    assert [s["start_time"] for s in row["subtitles"]] == [0, 3, 6, 9]
    assert row["subtitles"][-1]["end_time"] == pytest.approx(11.0)
    assert len(row["frames"]) == 12 and max(row["frames"][0].size) == 64


def test_clips_without_lines_keep_their_frames_and_load_with_text_missing(talk, tmp_path):
    video, _ = talk
    subtitles = tmp_path / "gap.srt"
    subtitles.write_text(srt([(0, 2, "Anna spoke."), (25, 27, "Then again.")]), encoding="utf-8")
    clips = ingest_video(video, subtitles, "en", video_id="gap", frame_step=10, min_clip=4, max_clip=8)
    assert [(round(c.start, 2), round(c.end, 2), len(c.cues)) for c in clips] == [
        (0, 8, 1), (8, 13.67, 0), (13.67, 19.33, 0), (19.33, 25, 0), (25, 30, 1)]  # fmt: skip
    assert [len(clip.frames) for clip in clips] == [8, 6, 6, 5, 5]  # one a second, each in its clip
    assert all(c.start <= t < c.end for c in clips for t in c.frame_times)
    write_release(clips, tmp_path / "out", "en")
    rows = load_release(tmp_path / "out", "en")
    assert rows["id"] == [f"gap_{k}" for k in range(5)]
    assert rows[1]["tokens"] == [] and rows[1]["subtitles"] == [] and len(rows[1]["frames"]) == 6


def test_zh_clips_and_a_second_video_in_the_same_folder(talk, tmp_path):
    video, _ = talk
    subtitles = tmp_path / "zh.srt"
    subtitles.write_text(srt([(0, 2, "乔治 出生在 伦敦。"), (20, 22, "他 搬到了 巴黎。")]), encoding="utf-8")
    for video_id in ("a", "b"):
        clips = ingest_video(
            video, subtitles, "zh", video_id=video_id, frame_step=50, min_clip=10, max_clip=20
        )
        write_release(clips, tmp_path / "out", "zh")
    rows = load_release(tmp_path / "out", "zh")
    assert rows["id"] == ["a_0", "a_1", "b_0", "b_1"]
    assert rows[1]["tokens"] == list("他搬到了巴黎。") and rows[1]["subtitles"][0]["start_time"] == 0


def run_cli(*args):
    return subprocess.run(
        [sys.executable, str(REPO / "dataset_script" / "ingest_video.py"), *map(str, args)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        check=False,
    )


def test_cli_writes_the_folder_and_bad_input_leaves_nothing(talk, tmp_path):
    video, subtitles = talk
    out = tmp_path / "out"
    done = run_cli("--video", video, "--subtitles", subtitles, "--output_dir", out, "--frame_step", 100)
    assert done.returncode == 0, done.stderr
    assert "wrote 1 clips and 3 frames" in done.stdout and (out / "data" / "en" / "test_en.json").is_file()
    bad = tmp_path / "bad.srt"
    bad.write_text("1\n00:00:01,000 --> 00:0x:02,000\nHi\n", encoding="utf-8")
    fresh = tmp_path / "fresh"
    failed = run_cli("--video", video, "--subtitles", bad, "--output_dir", fresh)
    assert failed.returncode != 0 and "bad.srt: line 2: unreadable cue time" in failed.stderr
    missing = run_cli("--video", video, "--output_dir", fresh)
    assert "no subtitles given and no --asr_model" in missing.stderr
    nested = run_cli("--video", video, "--subtitles", subtitles, "--output_dir", fresh, "--video_id", "a/b")
    assert "video_id 'a/b' must be a plain folder name" in nested.stderr
    assert not fresh.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.srt", "out"]


def test_variable_frame_rate_is_sampled_evenly_in_time(tmp_path):
    video, stamps = write_variable_rate_clip(tmp_path / "vfr.mkv")
    subtitles = tmp_path / "vfr.srt"
    subtitles.write_text(srt([(0, 2, "Hello.")]), encoding="utf-8")
    (clip,) = ingest_video(video, subtitles, "en", frame_step=3)  # the stream's nominal 10 fps: every 0.3 s
    assert clip.frame_times == pytest.approx([0.0, 0.3, 0.6, 0.9, 1.2, 1.5, 1.8])
    shown = [max(k for k, stamp in enumerate(stamps) if stamp <= time + 1e-6) for time in clip.frame_times]
    assert shown == [0, 1, 3, 4, 9, 15, 21]
    assert [frame_level(image) for image in clip.frames] == [index % 20 for index in shown]
