"""The `datasets` builder for the M³D release (dataset_script/m3d, defined in modeling_m3d.builder): schema, Table II
counts on the real dev files, frames and boxes, bad input and its error chain, the download URLs, and the package's
split loader (modeling_m3d.data) building the same dataset."""

import json
import logging
import shutil
import sys
from pathlib import Path

import datasets
import pytest
from PIL import Image

from modeling_m3d import builder as package_builder
from modeling_m3d.data import DataArguments, load_release, load_splits
from modeling_m3d.release import record_to_example, release_sources

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "m3d"
sys.path.insert(0, str(ROOT / "dataset_script" / "m3d"))  # the builder module as documented

import m3d  # noqa: E402

ENTITY = datasets.ClassLabel(names=["PER", "LOC", "ORG", "TIME"])
DESIGN_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "lang": datasets.Value("string"),
        "video_id": datasets.Value("string"),
        "video_title": datasets.Value("string"),
        "tokens": datasets.List(datasets.Value("string")),
        "subtitles": datasets.List(
            {
                "start_time": datasets.Value("float32"),
                "end_time": datasets.Value("float32"),
                "text": datasets.Value("string"),
            }
        ),
        "entities": datasets.List(
            {
                "start": datasets.Value("int32"),
                "end": datasets.Value("int32"),
                "type": ENTITY,
                "chain": datasets.Value("int32"),
            }
        ),
        "chains": datasets.List({"id": datasets.Value("string"), "type": ENTITY}),
        "relations": datasets.List(
            {
                "subject": datasets.Value("int32"),
                "object": datasets.Value("int32"),
                "type": datasets.Value("string"),
            }
        ),
        "frames": datasets.List(datasets.Image()),
        "groundings": datasets.List(
            {
                "frame": datasets.Value("int32"),
                "type": datasets.ClassLabel(names=["PER", "LOC", "ORG"]),
                "box": datasets.List(datasets.Value("float32")),
            }
        ),
    }
)
TABLE_II_DEV = {"en": (205, 3457, 1885, 1388), "zh": (203, 2685, 1397, 985)}


def en_record(video_id="video_1_1"):
    """A small English record; chain ids out of numeric order (L10 after L2) on purpose."""
    return {
        "doc": "Ann was born in Paris in 1990 . She left Paris .",
        "time_sent_pair": {"0-2.5": "Ann was born in Paris in 1990 .", "2.5-4": "She left Paris ."},
        "relation": [
            {"link1": "L2", "link2": "L10", "type": "PER-LOC_birth"},
            {"link1": "L0", "link2": "L10", "type": "PER-TIME_birth_time"},
        ],
        "entityLink": {
            "L10": {
                "type": "PER",
                "len": 2,
                "link": [_mention("PER", 8, 9, "She"), _mention("PER", 0, 1, "Ann")],
            },
            "L2": {
                "type": "LOC",
                "len": 2,
                "link": [_mention("LOC", 4, 5, "Paris"), _mention("LOC", 10, 11, "Paris")],
            },
            "L0": {"type": "TIME", "len": 1, "link": [_mention("TIME", 6, 7, "1990")]},
        },
        "image": [1, 2],
        "video_id": video_id,
        "video_title": "Ann",
        "lang": "en",
    }


def _mention(entity_type, start, end, text):
    return {"type": entity_type, "start": start, "end": end, "text": text, "sent_time": "0-2.5"}


def write_release(root, lang, split, records):
    path = Path(root) / "data" / lang / f"{split}_{lang}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def write_frame(root, video_id, name, colour, boxes=None):
    path = Path(root) / "img" / video_id / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), colour).save(path)
    if boxes is not None:
        path.with_suffix(".txt").write_text("".join(f"{line}\n" for line in boxes))
    return path


def build(data_dir, cache_dir, lang="en"):
    builder = m3d.M3D(config_name=lang, data_dir=str(data_dir), cache_dir=str(cache_dir))
    builder.download_and_prepare()
    return builder.as_dataset()


def prepared_files(cache_dir):
    return [
        path
        for path in Path(cache_dir).rglob("*")
        if path.name == "dataset_info.json" or path.suffix == ".arrow" or path.name.endswith(".incomplete")
    ]


@pytest.fixture
def release(tmp_path):
    """An EN release with one annotated clip (three frames, two with labels) and one clip without frames."""
    root = tmp_path / "release"
    write_release(root, "en", "train", [en_record("video_1_1"), en_record("video_2_1")])
    write_frame(root, "video_1_1", "10.png", (0, 0, 255), ["PER 0.5 0.5 0.2 0.4", "", "LOC 0.1 0.2 0.1 0.1"])
    write_frame(root, "video_1_1", "2.png", (0, 255, 0), ["ORG 0.3 0.3 0.2 0.2"])
    write_frame(root, "video_1_1", "1.png", (255, 0, 0))
    return root


def test_features_are_the_design_schema(release, tmp_path):
    assert m3d.M3D(config_name="en", data_dir=str(release), cache_dir=str(tmp_path / "c")).info.features == (
        DESIGN_FEATURES
    )
    assert build(release, tmp_path / "cache")["train"].features == DESIGN_FEATURES


def test_row_from_fixture_with_frames_and_boxes(release, tmp_path):
    train = build(release, tmp_path / "cache")["train"]
    row, bare = train[0], train[1]
    assert row["id"] == row["video_id"] == "video_1_1" and row["lang"] == "en"
    assert row["tokens"][:3] == ["Ann", "was", "born"] and len(row["tokens"]) == 12
    assert row["subtitles"] == [
        {"start_time": 0.0, "end_time": 2.5, "text": "Ann was born in Paris in 1990 ."},
        {"start_time": 2.5, "end_time": 4.0, "text": "She left Paris ."},
    ]
    # chains in release order L0, L2, L10; entities sorted by span with their chain index
    assert row["chains"] == [{"id": "L0", "type": 3}, {"id": "L2", "type": 1}, {"id": "L10", "type": 0}]
    assert [(e["start"], e["end"], e["type"], e["chain"]) for e in row["entities"]] == [
        (0, 1, 0, 2),
        (4, 5, 1, 1),
        (6, 7, 3, 0),
        (8, 9, 0, 2),
        (10, 11, 1, 1),
    ]
    # link2 is the subject, link1 the object
    assert row["relations"] == [
        {"subject": 2, "object": 1, "type": "PER-LOC_birth"},
        {"subject": 2, "object": 0, "type": "PER-TIME_birth_time"},
    ]
    # frames by the numeric value of the stem: 1, 2, 10
    assert [frame.getpixel((0, 0)) for frame in row["frames"]] == [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    assert [(g["frame"], g["type"]) for g in row["groundings"]] == [(1, 2), (2, 0), (2, 1)]
    assert row["groundings"][1]["box"] == pytest.approx([0.5, 0.5, 0.2, 0.4])
    assert bare["frames"] == [] and bare["groundings"] == []


def test_frames_stay_paths_in_the_cache(release, tmp_path):
    train = build(release, tmp_path / "cache")["train"]
    stored = train.cast_column("frames", datasets.List(datasets.Image(decode=False)))[0]["frames"]
    assert [Path(frame["path"]).name for frame in stored] == ["1.png", "2.png", "10.png"]
    assert all(frame["bytes"] is None for frame in stored)


def test_frames_from_a_separate_image_dir(release, tmp_path):
    images = tmp_path / "frames"
    (release / "img").rename(images)
    builder = m3d.M3D(config_name="en", data_dir=str(release), image_dir=str(images), cache_dir=str(tmp_path))
    builder.download_and_prepare()
    row = builder.as_dataset()["train"][0]
    assert len(row["frames"]) == 3 and len(row["groundings"]) == 3


def test_a_release_rewritten_in_the_same_folder_is_built_afresh(release, tmp_path):
    cache = tmp_path / "cache"
    first = m3d.M3D(config_name="en", data_dir=str(release), cache_dir=str(cache))
    assert len(build(release, cache)["train"]) == 2
    # unchanged inputs: the same cache folder
    assert m3d.M3D(config_name="en", data_dir=str(release), cache_dir=str(cache)).cache_dir == first.cache_dir
    # new annotations and new frames (the old frame files are gone), written in place
    shutil.rmtree(release / "img")
    write_release(release, "en", "train", [{**en_record("video_7_1"), "video_title": "Ann again"}])
    write_frame(release, "video_7_1", "5.png", (7, 7, 7), ["ORG 0.4 0.4 0.2 0.2"])
    train = build(release, cache)["train"]
    assert train["video_id"] == ["video_7_1"] and train["video_title"] == ["Ann again"]
    assert [frame.getpixel((0, 0)) for frame in train[0]["frames"]] == [(7, 7, 7)]
    # a label file edited in place (same frame, same size): its new box is read
    (release / "img" / "video_7_1" / "5.txt").write_text("PER 0.4 0.4 0.2 0.2\n")
    assert build(release, cache)["train"][0]["groundings"][0]["type"] == 0


def test_zh_tokens_are_characters_and_nested_mentions_are_kept():
    record = {
        "doc": "北京大学在北京。",
        "time_sent_pair": {"0-3": "北京大学在北京。"},
        "relation": [{"link1": "L1", "link2": "L0", "type": "ORG-LOC_located"}],
        "entityLink": {
            "L0": {"type": "ORG", "link": [_mention("ORG", 0, 4, "北京大学")]},
            "L1": {"type": "LOC", "link": [_mention("LOC", 0, 2, "北京"), _mention("LOC", 5, 7, "北京")]},
        },
        "video_id": "video_9_9",
        "video_title": "北大",
        "lang": "zh",
    }
    example = record_to_example(record, "zh")
    assert example["tokens"] == list("北京大学在北京。")
    assert [(e["start"], e["end"], e["type"], e["chain"]) for e in example["entities"]] == [
        (0, 2, "LOC", 1),
        (0, 4, "ORG", 0),
        (5, 7, "LOC", 1),
    ]
    assert example["relations"] == [{"subject": 0, "object": 1, "type": "ORG-LOC_located"}]


def test_an_empty_document_has_no_tokens():
    record = {**en_record(), "doc": "", "entityLink": {}, "relation": [], "time_sent_pair": {}}
    assert record_to_example(record, "en")["tokens"] == []


@pytest.mark.skipif(not REAL.is_dir(), reason="real M3D dev files not available")
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_real_dev_files_give_table_ii(lang, tmp_path, caplog):
    root = tmp_path / "release"
    (root / "data" / lang).mkdir(parents=True)
    (root / "data" / lang / f"dev_{lang}.json").symlink_to(REAL / "data" / lang / f"dev_{lang}.json")
    with caplog.at_level(logging.WARNING):
        dataset = build(root, tmp_path / "cache", lang)
    assert list(dataset) == ["validation"]
    validation = dataset["validation"]
    counts = [len(validation)] + [
        sum(map(len, validation[column])) for column in ("entities", "chains", "relations")
    ]
    assert tuple(counts) == TABLE_II_DEV[lang]
    for absent in (f"train_{lang}.json", f"test_{lang}.json"):
        assert any(absent in message for message in caplog.messages), absent
    assert any("no image folder" in message for message in caplog.messages)
    # release order: the first record's relations and mentions, read straight from the file
    record = json.loads((root / "data" / lang / f"dev_{lang}.json").read_text(encoding="utf-8"))[0]
    row = validation[0]
    chain_ids = [chain["id"] for chain in row["chains"]]
    assert chain_ids == sorted(record["entityLink"], key=lambda chain_id: int(chain_id[1:]))
    assert [(chain_ids[r["subject"]], chain_ids[r["object"]], r["type"]) for r in row["relations"]] == [
        (r["link2"], r["link1"], r["type"]) for r in record["relation"]
    ]
    spans = [(e["start"], e["end"]) for e in row["entities"]]
    assert spans == sorted(spans)


def _break_mention_range(root):
    record = en_record()
    record["entityLink"]["L2"]["link"][1]["end"] = 40
    return write_release(root, "en", "train", [record]), "video_1_1", "entityLink.L2.link[1]"


def _break_mention_text(root):
    record = en_record()
    record["entityLink"]["L10"]["link"][0]["text"] = "He"
    return write_release(root, "en", "train", [record]), "video_1_1", "entityLink.L10.link[0].text"


def _break_relation_chain(root):
    record = en_record()
    record["relation"][1]["link1"] = "L7"
    return write_release(root, "en", "train", [record]), "video_1_1", "relation[1].link1"


def _break_missing_key(root):
    record = en_record()
    del record["time_sent_pair"]
    return write_release(root, "en", "train", [record]), "video_1_1", "time_sent_pair"


def _break_duplicate_id(root):
    return write_release(root, "en", "train", [en_record(), en_record()]), "video_1_1", "video_id"


def _break_box(root):
    write_release(root, "en", "train", [en_record()])
    label = write_frame(root, "video_1_1", "3.png", (9, 9, 9), ["PER 0.5 0.5 1.5 0.2"]).with_suffix(".txt")
    return label, "video_1_1", "groundings (line 1)"


def _break_image(root):
    write_release(root, "en", "train", [en_record()])
    frame = write_frame(root, "video_1_1", "3.png", (9, 9, 9))
    frame.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return frame, "video_1_1", "frames"


def _break_json(root):
    path = write_release(root, "en", "train", [en_record()])
    path.write_text(path.read_text(encoding="utf-8")[:-20], encoding="utf-8")
    return path, None, "line 1"


@pytest.mark.parametrize(
    "breaker",
    [
        _break_mention_range,
        _break_mention_text,
        _break_relation_chain,
        _break_missing_key,
        _break_duplicate_id,
        _break_box,
        _break_image,
        _break_json,
    ],
    ids=lambda breaker: breaker.__name__.removeprefix("_break_"),
)
def test_bad_input_is_named_and_leaves_no_cache(breaker, release, tmp_path):
    bad_file, video_id, field = breaker(release)
    cache = tmp_path / "cache"
    with pytest.raises(m3d.M3DFormatError) as caught:
        build(release, cache)
    message = str(caught.value)
    assert str(bad_file) in message and field in message
    if video_id is not None:
        assert repr(video_id) in message
    assert prepared_files(cache) == []
    # the corrected release builds in the same cache
    shutil.rmtree(release)
    write_release(release, "en", "train", [en_record()])
    assert len(build(release, cache)["train"]) == 1


def test_a_format_error_chain_ends_and_names_the_record(release, tmp_path):
    """The error raised out of the builder has a finite `__cause__`/`__context__` chain (no cycle through the
    `datasets` wrapper), which tools such as traceback printers and error reporters walk."""
    bad_file, video_id, field = _break_mention_text(release)
    with pytest.raises(m3d.M3DFormatError) as caught:
        build(release, tmp_path / "cache")
    chain, error = [], caught.value
    while error is not None and len(chain) < 50:
        chain.append(error)
        error = error.__cause__ or error.__context__
    assert error is None, f"the chain does not end: {[type(e).__name__ for e in chain[:6]]} ..."
    assert len({id(e) for e in chain}) == len(chain)
    message = str(caught.value)
    assert str(bad_file) in message and repr(video_id) in message and field in message


def test_the_package_loader_builds_the_builders_dataset(release, tmp_path):
    """`modeling_m3d.data` and the documented `m3d.M3D` are one builder: same class, same cache folder, same rows;
    the second load is served from the first one's cache."""
    cache = tmp_path / "cache"
    assert m3d.M3D is package_builder.M3D
    documented = build(release, cache)
    args = DataArguments(dataset_dir=str(release), cache_dir=str(cache))
    loaded = load_release(args, tmp_path / "work")
    assert loaded["train"].cache_files == documented["train"].cache_files
    assert loaded["train"].to_list() == documented["train"].to_list()
    assert [path.name for path in cache.iterdir() if path.is_dir()] == ["m3d"]


def test_splits_by_role_and_a_heldout_carve(release, tmp_path):
    write_release(release, "en", "dev", [en_record("video_3_1")])
    args = DataArguments(dataset_dir=str(release), cache_dir=str(tmp_path / "cache"), test_split="absent")
    splits = load_splits(args, tmp_path)
    assert {role: split["id"] for role, split in splits.items()} == {
        "train": ["video_1_1", "video_2_1"],
        "validation": ["video_3_1"],
    }
    records = [en_record(f"video_{i}_1") for i in range(10)]
    write_release(release, "en", "train", records)
    args.heldout_fraction, args.modality_seed = 0.4, 3
    carved = load_splits(args, tmp_path)
    ids = {role: list(split["id"]) for role, split in carved.items()}
    assert [len(ids[role]) for role in ("train", "validation", "test")] == [6, 2, 2]
    assert sorted(sum(ids.values(), [])) == sorted(record["video_id"] for record in records)
    assert all(part == sorted(part) for part in ids.values())  # each part keeps the file's order
    with pytest.raises(ValueError, match="--train_split 'dev2'"):
        load_splits(
            DataArguments(dataset_dir=str(release), train_split="dev2", cache_dir=str(tmp_path / "c")),
            tmp_path,
        )


def test_download_urls_without_data_dir(tmp_path):
    base = "https://raw.githubusercontent.com/solkx/m3d/main/data"
    assert release_sources("en") == {
        "train": f"{base}/en/train_en.json",
        "validation": f"{base}/en/dev_en.json",
        "test": f"{base}/en/test_en.json",
    }
    assert release_sources("zh")["validation"] == f"{base}/zh/dev_zh.json"
    assert release_sources("zh", tmp_path)["test"] == str(tmp_path.resolve() / "data/zh/test_zh.json")
    builder = m3d.M3D(config_name="zh", cache_dir=str(tmp_path / "cache"))
    assert builder.config.data_dir is None and builder.config.lang == "zh"


def test_a_release_without_any_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no annotation file.*dev_zh.json"):
        build(tmp_path, tmp_path / "cache", "zh")
