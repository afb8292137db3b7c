"""Inference on a whole video (Step 2-3 clips, then the pipeline): time-anchored, self-explaining lines per
clip from examples/predict.py, and the video-level summary."""

import json
from pathlib import Path

import pytest
import torch
from media import write_grey_clip
from test_ingest import srt

from modeling_m3d.ingest_m3d import clip_to_row, ingest_video
from modeling_m3d.testing import tiny_model_and_processor
from modeling_m3d.timeline_m3d import BOX_FORMAT, clip_result, video_summary

REPO = Path(__file__).resolve().parents[1]
LINES = [
    (0, 2, "Ann met Bob in Paris."),
    (3, 5, "She liked him."),
    (12, 14, "Bob left Paris."),
    (15, 17, "Ann stayed."),
]


@pytest.fixture(scope="module")
def talk(tmp_path_factory):
    folder = tmp_path_factory.mktemp("talk")
    video = write_grey_clip(folder / "talk.mp4", num_frames=200, size=(96, 64))  # 20 s at 10 fps
    subtitles = folder / "talk.srt"
    subtitles.write_text(srt(LINES), encoding="utf-8")
    return video, subtitles


def save_tiny_m3d(folder: Path) -> Path:
    """A tiny EN M³D model (random weights, fixed seed) and its processor, saved to `folder`."""
    torch.manual_seed(0)
    model, processor = tiny_model_and_processor("en")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_m3d(tmp_path_factory.mktemp("model"))


def test_clip_result_anchors_mentions_chains_and_groundings_in_time(talk):
    video, subtitles = talk
    clips = ingest_video(video, subtitles, "en", video_id="talk", frame_step=20, min_clip=10, max_clip=15)
    assert [clip.clip_id for clip in clips] == ["talk_0", "talk_1"] and clips[1].start == 12
    row = clip_to_row(clips[1], "en")  # "Bob left Paris . Ann stayed ."
    result = {  # the pipeline's output format (pipeline_m3d.M3DExtractionPipeline)
        "entities": [{"start": 0, "end": 1, "type": "PER"}, {"start": 2, "end": 3, "type": "LOC"},
                     {"start": 4, "end": 5, "type": "PER"}],
        "chains": [[{"start": 0, "end": 1, "text": "Bob"}], [{"start": 2, "end": 3, "text": "Paris"}],
                   [{"start": 4, "end": 5, "text": "Ann"}]],
        "relations": [{"subject": 0, "object": 1, "type": "PER-LOC_go_to", "subject_text": "Bob",
                       "object_text": "Paris"}],
        "groundings": [{"frame": 2, "type": "PER", "box": [0.5, 0.5, 0.2, 0.4], "score": 0.9}],
    }  # fmt: skip
    line = clip_result(clips[1], row, result, "talk")
    assert line["document"] == "Bob left Paris . Ann stayed ." and line["tokens"] == row["tokens"]
    assert (line["start_time"], line["end_time"]) == (12, pytest.approx(20.0))
    ann = line["entities"][2]
    assert line["document"][ann["char_start"] : ann["char_end"]] == ann["text"] == "Ann"
    assert (ann["start_time"], ann["end_time"]) == (15, 17)  # its subtitle line, in video seconds
    assert line["entities"][1]["start_time"] == 12 and line["entities"][1]["char_start"] == 9
    assert [(c["id"], c["type"]) for c in line["chains"]] == [("talk_1/C0", "PER"), ("talk_1/C1", "LOC"),
                                                             ("talk_1/C2", "PER")]  # fmt: skip
    assert line["relations"][0]["subject"] == "talk_1/C0" and line["relations"][0]["object"] == "talk_1/C1"
    assert line["groundings"] == [{**result["groundings"][0], "time": 16.0, "box_format": BOX_FORMAT}]
    summary = video_summary([line], str(video))
    assert (
        summary["chains"][2]["clip"] == "talk_1" and summary["chains"][2]["mentions"][0]["start_time"] == 15
    )
    assert summary["groundings"][0]["time"] == 16.0 and summary["relations"][0]["clip"] == "talk_1"


def test_predict_script_on_a_video(model_dir, talk, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    import predict

    video, subtitles = talk
    output, summary = tmp_path / "clips.jsonl", tmp_path / "summary.json"
    predict.main(["--model", str(model_dir), "--video", str(video), "--subtitles", str(subtitles),
                  "--output", str(output), "--video_summary", str(summary), "--frame_step", "20",
                  "--min_clip", "10", "--max_clip", "15", "--device", "cpu"])  # fmt: skip
    lines = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [line["id"] for line in lines] == ["talk_0", "talk_1"]
    assert lines[0]["document"] == "Ann met Bob in Paris . She liked him ."
    for line in lines:
        for entity in line["entities"]:
            assert line["document"][entity["char_start"] : entity["char_end"]] == entity["text"]
            assert line["start_time"] <= entity["start_time"] < line["end_time"]
        for grounding in line["groundings"]:
            assert line["start_time"] <= grounding["time"] < line["end_time"]
    whole = json.loads(summary.read_text(encoding="utf-8"))
    assert [clip["id"] for clip in whole["clips"]] == ["talk_0", "talk_1"]
    assert len(whole["chains"]) == sum(len(line["chains"]) for line in lines)
    assert len(whole["groundings"]) == sum(len(line["groundings"]) for line in lines)


def test_predict_script_without_subtitles_or_asr_says_so(model_dir, talk, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    import predict

    with pytest.raises(SystemExit, match=r"talk\.mp4: no subtitles given and no --asr_model"):
        predict.main(
            ["--model", str(model_dir), "--video", str(talk[0]), "--output", str(tmp_path / "o.jsonl")]
        )
    assert not (tmp_path / "o.jsonl").exists()
