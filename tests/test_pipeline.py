"""The "m3d-extraction" pipeline and examples/predict.py on a saved tiny model: schema rows, text with frames,
batching, both protocols, and the JSON lines of the script (whole videos: test_pipeline_video.py)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from media import write_grey_clip as write_clip
from PIL import Image
from test_video import SRT
from transformers import pipeline

import modeling_m3d  # noqa: F401  (registers the Auto classes and the pipeline)
from modeling_m3d.pipeline_m3d import M3DExtractionPipeline
from modeling_m3d.schema import tokenize_text
from modeling_m3d.testing import tiny_model_and_processor

REPO = Path(__file__).resolve().parents[1]
OUTPUT_KEYS = {"id", "entities", "chains", "relations", "groundings"}
TOKENS = "Ann met Bob in Paris . She liked him .".split(" ")
MENTIONS = [(0, 1, "PER", 0), (2, 3, "PER", 1), (4, 5, "LOC", 2), (6, 7, "PER", 0), (8, 9, "PER", 1)]


def image(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def annotated_row(num_frames: int = 2) -> dict:
    return {
        "id": "clip_0",
        "lang": "en",
        "video_id": "clip_0",
        "video_title": "",
        "tokens": TOKENS,
        "subtitles": [{"start_time": 0.0, "end_time": 4.0, "text": " ".join(TOKENS)}],
        "entities": [{"start": s, "end": e, "type": t, "chain": c} for s, e, t, c in MENTIONS],
        "chains": [{"id": "L0", "type": "PER"}, {"id": "L1", "type": "PER"}, {"id": "L2", "type": "LOC"}],
        "relations": [{"subject": 0, "object": 2, "type": "PER-LOC_go_to"}],
        "frames": [image(i) for i in range(num_frames)],
        "groundings": [{"frame": 0, "type": "PER", "box": [0.5, 0.5, 0.2, 0.4]}],
    }


def check_output(result: dict, tokens: list[str], num_frames: int) -> None:
    """Keys, JSON round trip, texts matching spans, relation chain indices, grounding frames in range."""
    assert set(result) == OUTPUT_KEYS
    assert json.loads(json.dumps(result)) == result
    for entity in result["entities"]:
        assert entity["text"] == " ".join(tokens[entity["start"] : entity["end"]])
    for chain in result["chains"]:
        assert [m["text"] for m in chain] == [" ".join(tokens[m["start"] : m["end"]]) for m in chain]
    for relation in result["relations"]:
        assert result["chains"][relation["subject"]][0]["text"] == relation["subject_text"]
        assert result["chains"][relation["object"]][0]["text"] == relation["object_text"]
    for grounding in result["groundings"]:
        assert 0 <= grounding["frame"] < num_frames and len(grounding["box"]) == 4


def box_scores(result: dict) -> np.ndarray:
    return np.array([[*g["box"], g["score"]] for g in result["groundings"]])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model, processor = tiny_model_and_processor("en")
    directory = tmp_path_factory.mktemp("model")
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def extractor(model_dir):
    return pipeline("m3d-extraction", model=str(model_dir), device="cpu")


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Two frame images, a 2 s video and its .srt, in one folder."""
    folder = tmp_path_factory.mktemp("media")
    for i in range(2):
        image(10 + i).save(folder / f"frame_{i}.png")
    write_clip(folder / "video_7_3.mp4")
    (folder / "video_7_3.srt").write_text(SRT, encoding="utf-8")
    return folder


def test_registered_task_builds_the_pipeline(extractor):
    assert isinstance(extractor, M3DExtractionPipeline)
    with pytest.raises(ValueError, match="protocol must be one of"):
        extractor({"text": "Ann left ."}, protocol="gold")


def test_schema_row_gold_pairs_partitions_the_gold_mentions(extractor):
    row = annotated_row()
    result = extractor(row, protocol="gold_pairs")
    check_output(result, TOKENS, 2)
    assert result["id"] == "clip_0"
    predicted = sorted((m["start"], m["end"]) for chain in result["chains"] for m in chain)
    assert predicted == sorted((s, e) for s, e, _, _ in MENTIONS)
    # an input without gold entities is refused under gold pairs, alone or in a batch, not decoded to nothing
    with pytest.raises(ValueError, match=r"input 't1': protocol 'gold_pairs' .* no 'entities' field"):
        extractor({"id": "t1", "text": "Ann left Paris ."}, protocol="gold_pairs")
    with pytest.raises(ValueError, match="no 'entities' field"):
        extractor([row, {"text": "Ann left Paris ."}], protocol="gold_pairs", batch_size=2)


def test_end_to_end_ignores_gold_annotations(extractor):
    row = annotated_row()
    bare = {k: v for k, v in row.items() if k not in ("entities", "chains", "relations", "groundings")}
    assert extractor(row) == extractor(bare)


def test_text_with_frame_paths(extractor, media):
    text = "Peter's father, Patrick, left Ireland for Leeds."
    result = extractor(
        {"id": "t1", "text": text, "frames": [str(media / "frame_0.png"), media / "frame_1.png"]}
    )
    check_output(result, tokenize_text(text, "en"), 2)
    assert result["id"] == "t1" and result["entities"]
    with pytest.raises(ValueError, match=r"input 't2': field 'frames'\[0\]: cannot read"):
        extractor({"id": "t2", "text": text, "frames": [str(media / "missing.png")]})


def test_grounding_frames_index_the_input_frames(extractor):
    row = annotated_row(num_frames=10)  # the processor keeps 8 of them, evenly spread: 0 1 3 4 5 6 8 9
    frames = {g["frame"] for g in extractor(row, grounding_threshold=0.0)["groundings"]}
    assert frames and frames <= {0, 1, 3, 4, 5, 6, 8, 9}


def test_relations_name_their_chains_and_texts(extractor):
    row = annotated_row(num_frames=10)
    document = {
        "entities": [],
        "chains": [[[0, 1], [6, 7]], [[2, 3]], [[8, 9]], [[4, 5]]],
        "relations": [
            {
                "subject": [[0, 1]],
                "object": [[4, 5]],
                "type": "PER-LOC_go_to",
                "subject_chain": 0,
                "object_chain": 3,
                "score": 0.75,
            },
            {
                "subject": [[8, 9]],
                "object": [[0, 1]],
                "type": "PER-PER_peer",
                "subject_chain": 2,
                "object_chain": 0,
                "score": 0.5,
            },
        ],
        "groundings": [{"frame": 9, "type": "PER", "box": [0.5, 0.5, 0.1, 0.1], "score": 0.9}],
    }
    result = extractor.postprocess({"documents": [document], "rows": [row]})
    assert [m["text"] for m in result["chains"][0]] == ["Ann", "She"]
    assert result["relations"] == [
        {
            "subject": 0,
            "object": 3,
            "type": "PER-LOC_go_to",
            "score": 0.75,
            "subject_text": "Ann",
            "object_text": "Paris",
        },
        {
            "subject": 2,
            "object": 0,
            "type": "PER-PER_peer",
            "score": 0.5,
            "subject_text": "him",
            "object_text": "Ann",
        },
    ]
    assert result["groundings"] == document["groundings"]


def test_groundings_name_the_input_frame(extractor):
    """Ten input frames, eight kept: each grounding names its input frame, not its place among the kept ones."""
    result = extractor(annotated_row(num_frames=10), grounding_threshold=0.0)
    kept = {0, 1, 3, 4, 5, 6, 8, 9}  # eight of ten, evenly (processing_m3d.subsample_indices)
    assert result["groundings"] and {g["frame"] for g in result["groundings"]} <= kept


def test_batched_run_matches_single_runs(extractor, media):
    inputs = [
        annotated_row(),
        {"text": "Ann left Paris ."},
        {"text": "", "frames": [str(media / "frame_0.png")]},
    ]
    single = [extractor(x) for x in inputs]
    batched = extractor(inputs, batch_size=2)
    assert [r["entities"] for r in batched] == [r["entities"] for r in single]
    assert [r["chains"] for r in batched] == [r["chains"] for r in single]
    for b, s in zip(batched, single, strict=True):
        assert [(g["frame"], g["type"]) for g in b["groundings"]] == [
            (g["frame"], g["type"]) for g in s["groundings"]
        ]
        np.testing.assert_allclose(box_scores(b), box_scores(s), atol=1e-4)
    assert batched[2]["entities"] == [] and batched[2]["id"] is None


def test_saved_pipeline_includes_the_processor(extractor, tmp_path):
    extractor.save_pretrained(tmp_path)
    assert (tmp_path / "processor_config.json").is_file() and (tmp_path / "pipeline_m3d.py").is_file()
    assert "m3d-extraction" in json.loads((tmp_path / "config.json").read_text())["custom_pipelines"]
    # the saved folder carries its code: it loads as remote code, with the task read from config.json
    reloaded = pipeline(model=str(tmp_path), trust_remote_code=True, device="cpu")
    assert type(reloaded).__module__.endswith(".pipeline_m3d") and reloaded.processor is not None
    assert reloaded({"text": "Ann left Paris ."}) == extractor({"text": "Ann left Paris ."})


def test_predict_script_writes_one_json_line_per_clip(model_dir, extractor, media):
    row = {**annotated_row(), "frames": ["frame_0.png", "frame_1.png"]}
    lines = [
        row,
        {"text": "Peter met Ann .", "frames": ["frame_1.png"]},
    ]
    (media / "clips.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    output = media / "predictions.jsonl"
    command = [
        sys.executable,
        str(REPO / "examples" / "predict.py"),
        "--model",
        str(model_dir),
        "--input",
        str(media / "clips.jsonl"),
        "--output",
        str(output),
        "--batch_size",
        "2",
        "--device",
        "cpu",
    ]
    subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO.parent)
    results = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in results] == ["clip_0", None]
    assert all(set(r) == OUTPUT_KEYS for r in results)
    # the same extractions as the pipeline on the same clips, media paths read from the input's folder
    in_place = [
        {**row, "frames": [media / name for name in row["frames"]]},
        {**lines[1], "frames": [media / "frame_1.png"]},
    ]
    for result, expected in zip(results, map(extractor, in_place), strict=True):
        for key in ("entities", "chains", "relations"):
            assert result[key] == expected[key], key
        assert [(g["frame"], g["type"]) for g in result["groundings"]] == [
            (g["frame"], g["type"]) for g in expected["groundings"]
        ]


def test_predict_script_names_the_bad_line(model_dir, media, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    import predict

    bad = media / "bad.jsonl"
    bad.write_text(json.dumps({"text": "Ann left ."}) + "\n" + json.dumps({"video": "nowhere.mp4"}) + "\n")
    with pytest.raises(SystemExit, match=r"bad\.jsonl: line 2: .*nowhere\.mp4: no such video file"):
        predict.main(["--model", str(model_dir), "--input", str(bad), "--output", str(media / "out.jsonl")])


def test_zh_text_spans_join_characters():
    torch.manual_seed(0)
    model, processor = tiny_model_and_processor("zh", texts=["乔治在北京工作。"])
    extractor = pipeline("m3d-extraction", model=model, processor=processor, device="cpu")
    result = extractor({"text": "乔治 在北京工作。"})
    assert result["entities"]
    assert all(e["text"] == "乔治在北京工作。"[e["start"] : e["end"]] for e in result["entities"])
