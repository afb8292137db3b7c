"""Whole videos through the "m3d-extraction" pipeline: `{"video", "subtitles"?}` is cut into clips between
subtitle lines and gives time-anchored clips plus the video-level record, exactly as `examples/predict.py
--video`; speech is transcribed when there are no subtitles; --input lines may be whole videos."""

import json
from itertools import pairwise

import pytest
from test_asr import speech, whisper  # noqa: F401  (fixtures: a video with audio, a tiny Whisper)
from test_predict_video import REPO, talk  # noqa: F401  (fixture: a 20 s video and its subtitles)
from test_predict_video import model_dir as model_dir  # noqa: F401
from transformers import pipeline

import modeling_m3d  # noqa: F401  (registers the Auto classes and the pipeline)
from modeling_m3d.pipeline_m3d import M3DExtractionPipeline
from modeling_m3d.timeline_m3d import BOX_FORMAT

CUT = {"frame_step": 20, "min_clip": 10, "max_clip": 15}  # two clips of the 20 s talk: [0, 12) and [12, 20)
CUT_OPTIONS = ["--frame_step", "20", "--min_clip", "10", "--max_clip", "15", "--device", "cpu"]


@pytest.fixture(scope="module")
def extractor(model_dir):  # noqa: F811
    return pipeline("m3d-extraction", model=str(model_dir), device="cpu")


def check_video_record(record: dict, clip_ids: list[str]) -> None:
    """The video-level record: JSON-ready, its clips in order and in time, every chain, relation and grounding
    of the clips gathered with the clip it comes from."""
    assert json.loads(json.dumps(record)) == record
    assert set(record) == {"video", "video_id", "clips", "chains", "relations", "groundings", "box_format"}
    clips = record["clips"]
    assert [clip["id"] for clip in clips] == clip_ids and record["box_format"] == BOX_FORMAT
    assert all(a["end_time"] == b["start_time"] for a, b in pairwise(clips))
    for clip in clips:
        for entity in clip["entities"]:
            assert clip["document"][entity["char_start"] : entity["char_end"]] == entity["text"]
            assert clip["start_time"] <= entity["start_time"] < clip["end_time"]
        assert all(clip["start_time"] <= g["time"] < clip["end_time"] for g in clip["groundings"])
    for name in ("chains", "relations", "groundings"):
        assert record[name] == [{**item, "clip": clip["id"]} for clip in clips for item in clip[name]]


def test_a_video_is_cut_into_clips_with_times(extractor, talk):  # noqa: F811
    video, subtitles = talk
    record = extractor({"video": str(video), "subtitles": subtitles}, **CUT, grounding_threshold=0.0)
    check_video_record(record, ["talk_0", "talk_1"])
    first, second = record["clips"]
    assert (first["start_time"], second["start_time"], second["end_time"]) == (0, 12, pytest.approx(20.0))
    assert first["document"] == "Ann met Bob in Paris . She liked him ."
    assert second["document"] == "Bob left Paris . Ann stayed ."
    assert [g["time"] for g in second["groundings"]] and {g["time"] for g in second["groundings"]} <= {
        12,
        14,
        16,
        18,
    }
    assert record["video"] == str(video) and record["video_id"] == "talk"
    quiet = extractor(
        {"video": video, "subtitles": subtitles, "video_id": "t"}, **CUT, grounding_threshold=1.01
    )
    assert [clip["id"] for clip in quiet["clips"]] == ["t_0", "t_1"] and quiet["groundings"] == []


def test_the_pipeline_gives_what_predict_video_prints(extractor, model_dir, talk, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    import predict

    video, subtitles = talk
    output, summary = tmp_path / "clips.jsonl", tmp_path / "summary.json"
    predict.main(["--model", str(model_dir), "--video", str(video), "--subtitles", str(subtitles),
                  "--output", str(output), "--video_summary", str(summary), *CUT_OPTIONS])  # fmt: skip
    printed = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    record = extractor({"video": str(video), "subtitles": str(subtitles)}, **CUT)
    assert printed == record["clips"]
    whole = json.loads(summary.read_text(encoding="utf-8"))
    assert whole == {
        **record,
        "clips": [{k: c[k] for k in ("id", "start_time", "end_time")} for c in printed],
    }


def test_video_parameters_at_construction_and_lists_of_videos(model_dir, extractor, talk):  # noqa: F811
    video, subtitles = talk
    cutter = pipeline("m3d-extraction", model=str(model_dir), device="cpu", **CUT)
    one = {"video": video, "subtitles": subtitles}
    assert cutter(one) == extractor(one, **CUT)
    assert [len(r["clips"]) for r in cutter([one, {**one, "video_id": "again"}], batch_size=2)] == [2, 2]
    assert len(cutter(one, max_clip=30, min_clip=30)["clips"]) == 1  # per call over construction
    with pytest.raises(ValueError, match=r"input 'v': a whole video .*talk\.mp4.* on its own"):
        extractor([{"text": "Ann left ."}, {**one, "id": "v"}])
    with pytest.raises(TypeError, match="num_frames"):
        extractor(one, num_frames=3)


def test_bad_videos_name_the_file(extractor, talk, tmp_path):  # noqa: F811
    video, _ = talk
    with pytest.raises(ValueError, match=r"talk\.mp4: no subtitles given and no --asr_model"):
        extractor({"video": video})
    with pytest.raises(FileNotFoundError, match=r"nowhere\.mp4: no such video file"):
        extractor({"video": tmp_path / "nowhere.mp4"})
    with pytest.raises(ValueError, match=r"talk\.mp4.*unknown fields \['subtitle'\]"):
        extractor({"video": video, "subtitle": video})


def test_a_video_without_subtitles_is_transcribed(extractor, speech, whisper):  # noqa: F811
    record = extractor({"video": speech}, asr_model=str(whisper), frame_step=10)
    check_video_record(record, ["speech_0"])
    (clip,) = record["clips"]
    assert clip["tokens"] and clip["document"] and clip["end_time"] == pytest.approx(4.0)


def test_saved_pipeline_carries_the_video_code(extractor, talk, tmp_path, monkeypatch):  # noqa: F811
    from transformers.pipelines import PIPELINE_REGISTRY

    # loading the copy registers its own class for the task: this package's is put back after the test
    task = "m3d-extraction"
    monkeypatch.setitem(PIPELINE_REGISTRY.supported_tasks, task, PIPELINE_REGISTRY.supported_tasks[task])
    extractor.save_pretrained(tmp_path)
    assert {"timeline_m3d.py", "ingest_m3d.py", "video_m3d.py"} <= {p.name for p in tmp_path.iterdir()}
    reloaded = pipeline(model=str(tmp_path), trust_remote_code=True, device="cpu")
    assert not isinstance(reloaded, M3DExtractionPipeline)  # the copy's own class, not this package's
    video, subtitles = talk
    inputs = {"video": str(video), "subtitles": str(subtitles)}
    assert reloaded(inputs, **CUT) == extractor(inputs, **CUT)


def test_predict_input_lines_may_be_whole_videos(model_dir, talk, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    import predict

    video, subtitles = talk
    lines = [{"text": "Ann met Bob ."}, {"video": str(video), "subtitles": str(subtitles), "video_id": "v"}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    for output in (tmp_path / "parts.jsonl", None):  # through the parts, and on stdout with --html
        where = ["--output", str(output)] if output else ["--html", str(tmp_path / "page.html")]
        predict.main(["--model", str(model_dir), "--input", str(tmp_path / "in.jsonl"), *where, *CUT_OPTIONS])
    results = [
        json.loads(line) for line in (tmp_path / "parts.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert [r["id"] for r in results] == [None, "v_0", "v_1"]
    assert results[1]["start_time"] == 0 and results[2]["start_time"] == 12
    page = (tmp_path / "page.html").read_text(encoding="utf-8")
    assert page.count("class='m3d-view'") == 3
