"""Raw media reading: subtitle files through pysubs2 (clean text, time order, clear errors) and frames
sampled with PyAV (on-screen frame at a time, rotation, the video stream's own extent)."""

import json
import logging

import av
import numpy as np
import pytest
from media import frame_level, write_grey_clip, write_rateless_clip, write_rotated_clip
from PIL import Image

from modeling_m3d.benchmark_video_m3d import frames_kept_per_second, write_test_video
from modeling_m3d.video_m3d import frames_at, probe_video, read_subtitles, sample_frames

SRT = """1
00:00:00,000 --> 00:00:01,200
Peter's father, <i>Patrick</i>,

2
00:00:01,200 --> 00:01:02,5
left Ireland for the working-class town of Leeds.
"""


def cues(path):
    return [(cue["start_time"], cue["end_time"], cue["text"]) for cue in read_subtitles(path)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_grey_clip(tmp_path_factory.mktemp("video") / "video_7_3.mp4")


def test_read_srt_joins_lines_and_drops_markup(tmp_path):
    path = tmp_path / "clip.srt"
    path.write_text(SRT.replace("\n", "\r\n"), encoding="utf-8")
    assert cues(path) == [
        (0.0, 1.2, "Peter's father, Patrick,"),
        (1.2, 62.5, "left Ireland for the working-class town of Leeds."),
    ]


def test_srt_cues_without_blank_lines_between_them(tmp_path):
    path = tmp_path / "no_blank.srt"
    path.write_text(
        "1\n00:00:01,000 --> 00:00:02,500\nAnna was born in Porto.\n2\n"
        "00:00:02,500 --> 00:00:04,000\nShe moved to Lyon in 1990.\n",
        encoding="utf-8",
    )
    assert cues(path) == [(1.0, 2.5, "Anna was born in Porto."), (2.5, 4.0, "She moved to Lyon in 1990.")]


def test_ass_override_codes_in_srt_never_become_text(tmp_path):
    path = tmp_path / "styled.srt"
    path.write_text(
        "1\n00:00:01,000 --> 00:00:02,000\n{\\an8}{\\i1}Anna{\\i0} was <b>born</b>\nin {\\c&H00FF00&}Porto.\n",
        encoding="utf-8",
    )
    assert cues(path) == [(1.0, 2.0, "Anna was born in Porto.")]


def test_read_ass_and_vtt(tmp_path):
    ass = tmp_path / "clip.ass"
    ass.write_text(
        "[Script Info]\nScriptType: v4.00+\n\n[V4+ Styles]\nFormat: Name, Fontname, Fontsize\n"
        "Style: Default,Arial,20\n\n[Events]\n"
        "Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\n"
        "Dialogue: 0,0:00:01.00,0:00:02.50,Default,,0,0,0,,{\\pos(10,10)}Anna\\Nleft.\n"
        "Comment: 0,0:00:03.00,0:00:04.00,Default,,0,0,0,,not shown\n",
        encoding="utf-8",
    )
    assert cues(ass) == [(1.0, 2.5, "Anna left.")]
    vtt = tmp_path / "clip.vtt"
    vtt.write_text(
        "WEBVTT\n\nNOTE a comment\n\nintro\n00:00.000 --> 00:01.500 align:start\n<v Narrator>Peter &amp; Pat</v>\n",
        encoding="utf-8",
    )
    assert cues(vtt) == [(0.0, 1.5, "Peter & Pat")]


def test_cues_are_put_in_time_order_with_a_warning(tmp_path, caplog):
    path = tmp_path / "shuffled.srt"
    path.write_text(
        "1\n00:00:05,000 --> 00:00:06,000\nB\n\n2\n00:00:01,000 --> 00:00:02,000\nA\n", encoding="utf-8"
    )
    with caplog.at_level(logging.WARNING):
        assert [text for _, _, text in cues(path)] == ["A", "B"]
    assert "not in time order" in caplog.text


def test_read_json_list(tmp_path):
    path = tmp_path / "clip.json"
    path.write_text(
        json.dumps([{"start_time": 0, "end_time": 3.5, "text": "房间窗户被拆了。"}]), encoding="utf-8"
    )
    assert cues(path) == [(0.0, 3.5, "房间窗户被拆了。")]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.srt", "\n  \n", r"empty\.srt: empty subtitle file"),
        (
            "bad.srt",
            "1\n00:00:01,000 --> 00:00:02,000\nHi\n2\n00:00:03,000 --> 00:00:0x,000\nthere\n",
            r"bad\.srt: line 5: unreadable cue time '00:00:03,000 --> 00:00:0x,000'",
        ),
        ("bad.srt", "1\n00:00:05,000 --> 00:00:02,000\nHi\n", r"bad\.srt: cue 1: ends \(2\.000 s\) before"),
        ("bad.txt", "hello there", r"bad\.txt: not a subtitle format pysubs2 can read"),
        ("bad.json", '[{"start_time": 0, "end_time": 1, "text": "a"', r"bad\.json: malformed JSON"),
        (
            "bad.json",
            '[{"start_time": 0, "end_time": 1, "text": "a"}, {"start_time": "0", "end_time": 1}]',
            r"bad\.json: cue 2: field 'start_time' must be a number",
        ),
    ],
)
def test_malformed_subtitles_name_file_and_place(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_subtitles(path)


def test_frames_at_give_the_frame_on_screen(clip):
    images = frames_at(clip, [0.0, 0.35, 1.0, 1.95])
    assert [frame_level(image) for image in images] == [0, 3, 10, 19]
    assert all(isinstance(image, Image.Image) and image.size == (64, 64) for image in images)


def test_far_samples_seek_and_near_ones_decode_on(tmp_path):
    path = write_grey_clip(tmp_path / "long.mp4", num_frames=200)  # 20 s; levels repeat every 20 frames
    images = frames_at(path, [0.5, 0.6, 9.0, 15.3])
    assert [frame_level(image) for image in images] == [5, 6, 10, 13]


def test_sample_frames_uniform_in_time_and_resized(clip):
    images, times = sample_frames(clip, num_frames=4, max_side=32)
    assert times == pytest.approx([0.25, 0.75, 1.25, 1.75])
    assert [frame_level(image) for image in images] == [2, 7, 12, 17]
    assert {image.size for image in images} == {(32, 32)}


def test_rotated_video_frames_come_out_as_players_show_them(tmp_path):
    path = write_rotated_clip(tmp_path / "phone.mp4")
    assert probe_video(path).rotation in (90, -90)
    (image,), _ = sample_frames(path, num_frames=1)
    pixels = np.asarray(image, dtype=np.float32)
    assert image.size == (32, 64)  # portrait
    assert pixels[:28].mean() > 200 and pixels[36:].mean() < 50  # the white half is on top


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_sampling_uses_the_video_streams_extent_not_a_longer_audio(tmp_path, suffix):
    path = write_grey_clip(tmp_path / f"talk{suffix}", audio_seconds=6.0)
    info = probe_video(path)
    assert info.start == 0.0 and info.end == pytest.approx(2.0, abs=0.11) and info.fps == 10.0
    images, _ = sample_frames(path, num_frames=4)
    assert [frame_level(image) for image in images] == [2, 7, 12, 17]


def test_bad_videos_name_the_file_and_stream(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        probe_video(tmp_path / "missing.mp4")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match=r"garbage\.mp4: unreadable"):
        probe_video(garbage)
    whole = write_grey_clip(tmp_path / "whole.mp4").read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(whole[: len(whole) // 3])
    with pytest.raises(ValueError, match=r"truncated\.mp4: "):
        sample_frames(truncated, num_frames=4)
    audio_only = tmp_path / "audio_only.mkv"
    import av

    with av.open(str(audio_only), "w") as container:
        from media import _write_tone

        _write_tone(container, container.add_stream("aac", rate=16000), 1.0)
    with pytest.raises(ValueError, match=r"audio_only\.mkv: no video stream"):
        probe_video(audio_only)


def test_a_stream_without_frame_rate_names_the_file_and_stream(tmp_path):
    path = write_rateless_clip(tmp_path / "still.mp4")
    with av.open(str(path)) as container:  # the file really lacks every rate FFmpeg knows of
        stream = container.streams.video[0]
        assert (stream.average_rate, stream.guessed_rate, stream.base_rate) == (None, None, None)
    with pytest.raises(ValueError, match=r"still\.mp4: video stream 0 \(mjpeg\) has no frame rate"):
        probe_video(path)
    with pytest.raises(ValueError, match=r"still\.mp4: video stream 0 \(mjpeg\) has no frame rate"):
        sample_frames(path, num_frames=2)


@pytest.mark.parametrize("seek_gap", [0.0, 4.0, float("inf")])
def test_benchmark_counts_the_frames_kept_whatever_the_strategy(tmp_path, seek_gap):
    video = write_test_video(tmp_path / "bench.mp4", seconds=3, width=64, height=36, gop=12)
    speed = frames_kept_per_second(video, frame_step=12, seek_gap=seek_gap)
    assert speed["frames"] == 6 and speed["frames_per_second"] > 0
    # every strategy lands on the same frames
    times = [k * 0.5 for k in range(6)]
    reference = [np.asarray(image) for image in frames_at(video, times, seek_gap=float("inf"))]
    assert all(
        np.array_equal(np.asarray(a), b)
        for a, b in zip(frames_at(video, times, seek_gap=seek_gap), reference, strict=True)
    )
