"""Raw video ingestion: subtitle parsers, frame sampling with PyAV, and the schema row built from a clip."""

import json

import av
import numpy as np
import pytest
from PIL import Image

from modeling_m3d.schema import tokenize_text as tokenize
from modeling_m3d.video_m3d import read_subtitles, sample_frames, video_to_row

FPS, NUM_FRAMES, LEVEL_STEP = 10, 20, 12  # a 2 s clip; frame i is a flat grey of level i * LEVEL_STEP

SRT = """1
00:00:00,000 --> 00:00:01,200
Peter's father, <i>Patrick</i>,

2
00:00:01,200 --> 00:01:02,5
left Ireland for the working-class town of Leeds.
"""

VTT = """WEBVTT - a header line

NOTE a comment block
spanning two lines

intro
00:00.000 --> 00:01.500 align:start
<v Narrator>Peter &amp; Pat</v>

00:00:01.500 --> 00:00:02.000
went <c.loud>home</c>.
"""


def write_clip(path, codec="mpeg4", gop_size=5):
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt, stream.gop_size = 64, 64, "yuv420p", gop_size
        for index in range(NUM_FRAMES):
            image = np.full((64, 64, 3), index * LEVEL_STEP, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def frame_index(image):
    """Which source frame a decoded image shows (flat grey levels survive lossy coding within a few units)."""
    return int(round(float(np.asarray(image, dtype=np.float32).mean()) / LEVEL_STEP))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("video") / "video_7_3.mp4")


def test_tokenize_like_the_release():
    expected = "Peter ' s father , Patrick ( 1934 ) - 10 , 000 $ !".split(" ")
    assert tokenize("Peter's father, Patrick (1934) - 10,000 $!", "en") == expected
    assert tokenize("Orléans 20th", "en") == ["Orléans", "20th"]
    assert tokenize("乔治 说：OK", "zh") == ["乔", "治", "说", "：", "O", "K"]
    with pytest.raises(ValueError, match="unknown language 'fr'"):
        tokenize("bonjour", "fr")


def test_read_srt(tmp_path):
    path = tmp_path / "clip.srt"
    path.write_text(SRT.replace("\n", "\r\n"), encoding="utf-8")
    assert read_subtitles(path) == [
        {"start_time": 0.0, "end_time": 1.2, "text": "Peter's father, Patrick,"},
        {"start_time": 1.2, "end_time": 62.5, "text": "left Ireland for the working-class town of Leeds."},
    ]


def test_read_vtt_skips_header_notes_and_markup(tmp_path):
    path = tmp_path / "clip.vtt"
    path.write_text(VTT, encoding="utf-8")
    assert read_subtitles(path) == [
        {"start_time": 0.0, "end_time": 1.5, "text": "Peter & Pat"},
        {"start_time": 1.5, "end_time": 2.0, "text": "went home."},
    ]


def test_read_json_list(tmp_path):
    path = tmp_path / "clip.json"
    cues = [
        {"start_time": 0, "end_time": 3.5, "text": "房间窗户被拆了。"},
        {"start_time": 3, "end_time": 4, "text": ""},
    ]
    path.write_text(json.dumps(cues), encoding="utf-8")
    assert read_subtitles(path) == [{"start_time": 0.0, "end_time": 3.5, "text": "房间窗户被拆了。"}]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "bad.srt",
            "1\n00:00:01,000 --> 00:00:0x,000\nHello\n",
            r"bad\.srt: line 2: malformed timestamp '00:00:0x,000'",
        ),
        (
            "bad.srt",
            "1\nHello there\n\n2\n00:00:01,000 --> 00:00:02,000\nHi\n",
            r"bad\.srt: line 1: .*no 'start --> end'",
        ),
        ("bad.srt", "00:00:05,000 --> 00:00:02,000\nHi\n", r"bad\.srt: line 1: cue ends \(2\.000 s\) before"),
        ("bad.vtt", "00:00.000 --> 00:01.000\nHi\n", r"bad\.vtt: line 1: .*must start with 'WEBVTT'"),
        ("bad.json", '[{"start_time": 0, "end_time": 1, "text": "a"', r"bad\.json: malformed JSON"),
        (
            "bad.json",
            '[{"start_time": 0, "end_time": 1, "text": "a"}, {"start_time": "0", "end_time": 1}]',
            r"bad\.json: subtitle 1: field 'start_time' must be a number",
        ),
        ("bad.txt", "hello", r"bad\.txt: unsupported subtitle format '\.txt'"),
    ],
)
def test_malformed_subtitles_name_file_place_and_field(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_subtitles(path)


def test_sample_frames_uniform_in_time(clip):
    frames, times = sample_frames(clip, num_frames=4)
    # segment middles 0.25, 0.75, 1.25, 1.75 s are showing frames 2, 7, 12, 17
    assert times == pytest.approx([0.2, 0.7, 1.2, 1.7])
    assert [frame_index(frame) for frame in frames] == [2, 7, 12, 17]
    assert all(
        isinstance(frame, Image.Image) and frame.size == (64, 64) and frame.mode == "RGB" for frame in frames
    )


def test_sample_frames_at_a_rate_with_a_cap(clip):
    frames, times = sample_frames(clip, fps=2)
    assert times == pytest.approx([0.0, 0.5, 1.0, 1.5])
    assert [frame_index(frame) for frame in frames] == [0, 5, 10, 15]
    frames, times = sample_frames(clip, fps=50, max_frames=5)
    assert len(frames) == 5 and times == sorted(times)
    assert [frame_index(frame) for frame in frames] == [2, 6, 10, 14, 18]


def test_sample_frames_webm_without_stream_duration(tmp_path):
    frames, times = sample_frames(write_clip(tmp_path / "clip.webm", codec="libvpx"), num_frames=2)
    assert [frame_index(frame) for frame in frames] == [5, 15]


def test_sample_frames_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        sample_frames(tmp_path / "missing.mp4")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match=r"broken\.mp4: unreadable video"):
        sample_frames(broken)


def test_video_to_row_builds_an_unannotated_schema_row(clip, tmp_path):
    subtitles = tmp_path / "clip.srt"
    subtitles.write_text(SRT, encoding="utf-8")
    row = video_to_row(clip, subtitles, lang="en", num_frames=3)
    assert row["id"] == row["video_id"] == "video_7_3" and row["lang"] == "en"
    assert row["tokens"][:7] == ["Peter", "'", "s", "father", ",", "Patrick", ","]
    assert [cue["text"] for cue in row["subtitles"]] == [
        "Peter ' s father , Patrick ,",
        "left Ireland for the working - class town of Leeds .",
    ]
    assert " ".join(cue["text"] for cue in row["subtitles"]) == " ".join(
        row["tokens"]
    )  # doc as in time_sent_pair
    assert row["subtitles"][1]["start_time"] == 1.2 and row["subtitles"][1]["end_time"] == 62.5
    assert [frame_index(frame) for frame in row["frames"]] == [3, 10, 16]
    assert row["entities"] == row["chains"] == row["relations"] == row["groundings"] == []
    assert set(row) == {
        "id",
        "lang",
        "video_id",
        "video_title",
        "tokens",
        "subtitles",
        "entities",
        "chains",
        "relations",
        "frames",
        "groundings",
    }


def test_video_to_row_zh_and_without_subtitles(clip, tmp_path):
    subtitles = tmp_path / "clip.json"
    subtitles.write_text(
        json.dumps([{"start_time": 0, "end_time": 1, "text": "乔治 自建的"}]), encoding="utf-8"
    )
    row = video_to_row(clip, subtitles, lang="zh", num_frames=1, video_id="video_1_1")
    assert row["id"] == "video_1_1" and row["tokens"] == list("乔治自建的")
    assert row["subtitles"] == [{"start_time": 0.0, "end_time": 1.0, "text": "乔治自建的"}]
    bare = video_to_row(clip, lang="en", num_frames=2)
    assert bare["tokens"] == [] and bare["subtitles"] == [] and len(bare["frames"]) == 2
