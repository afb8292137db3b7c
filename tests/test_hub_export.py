"""The Hub-native export (dataset_script/build_hub_dataset.py): parquet + card, loadable with
`datasets.load_dataset(folder, config)` and equal to the builder's rows; written atomically."""

import json
import sys
from pathlib import Path

import datasets
import pytest
import yaml
from huggingface_hub import DatasetCard
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "m3d"
sys.path.insert(0, str(ROOT / "dataset_script"))
sys.path.insert(0, str(ROOT / "dataset_script" / "m3d"))

import build_hub_dataset  # noqa: E402
import m3d  # noqa: E402

pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason="real M3D dev files not available")


def write_frame(root, video_id, name, colour, boxes):
    path = Path(root) / "img" / video_id / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), colour).save(path)
    path.with_suffix(".txt").write_text("".join(f"{line}\n" for line in boxes))


def first_video_id(lang):
    return json.loads((REAL / "data" / lang / f"dev_{lang}.json").read_text(encoding="utf-8"))[0]["video_id"]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """The real dev files, plus frames with boxes for the first clip of each language."""
    root = tmp_path_factory.mktemp("release")
    for lang in ("en", "zh"):
        (root / "data" / lang).mkdir(parents=True)
        (root / "data" / lang / f"dev_{lang}.json").symlink_to(REAL / "data" / lang / f"dev_{lang}.json")
        write_frame(root, first_video_id(lang), "7.png", (200, 10, 10), ["PER 0.5 0.5 0.25 0.5"])
        write_frame(
            root,
            first_video_id(lang),
            "12.jpg",
            (10, 10, 200),
            ["LOC 0.2 0.2 0.1 0.1", "ORG 0.7 0.7 0.2 0.2"],
        )
    return root


@pytest.fixture(scope="module")
def export(release, tmp_path_factory):
    output = tmp_path_factory.mktemp("hub") / "m3d-hub"
    arguments = ["--data_dir", str(release), "--output_dir", str(output), "--lang", "en", "zh"]
    build_hub_dataset.main([*arguments, "--max_shard_size", "400KB"])  # EN dev (~1 MB) gets several shards
    return output


def front_matter(card_path):
    text = card_path.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_layout_has_parquet_and_card_but_no_script(export):
    files = sorted(str(path.relative_to(export)) for path in export.rglob("*") if path.is_file())
    assert files[0] == "README.md" and len(files) > 3
    shards = {lang: [name for name in files if name.startswith(f"{lang}/")] for lang in ("en", "zh")}
    total = len(shards["en"])
    assert shards["en"] == [f"en/validation-{index:05d}-of-{total:05d}.parquet" for index in range(total)]
    assert files == ["README.md", *shards["en"], *shards["zh"]]
    assert not list(export.rglob("*.py"))
    assert not [path for path in export.parent.iterdir() if path.name.startswith(".")]  # no staging left


def test_card_yaml_names_configs_and_counts(export):
    metadata = front_matter(export / "README.md")
    assert [config["config_name"] for config in metadata["configs"]] == ["en", "zh"]
    assert metadata["configs"][1]["data_files"] == [{"split": "validation", "path": "zh/validation-*"}]
    assert DatasetCard.load(export / "README.md").data.configs == metadata["configs"]
    text = (export / "README.md").read_text(encoding="utf-8")
    assert "| en | validation | 205 | 3,457 | 1,885 | 1,388 | 3 |" in text
    assert "| zh | validation | 203 | 2,685 | 1,397 | 985 | 3 |" in text
    for section in ("## Schema", "## Statistics", "## Getting the frames", "## Citation", "load_dataset("):
        assert section in text


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_load_dataset_gives_the_builders_rows(lang, export, release, tmp_path):
    loaded = datasets.load_dataset(str(export), lang, cache_dir=str(tmp_path / "load"))
    builder = m3d.M3D(config_name=lang, data_dir=str(release), cache_dir=str(tmp_path / "build"))
    builder.download_and_prepare()
    built = builder.as_dataset()
    assert list(loaded) == list(built) == ["validation"]
    ours, theirs = loaded["validation"], built["validation"]
    assert ours.features == theirs.features == m3d.FEATURES
    columns = [column for column in ours.column_names if column != "frames"]
    assert ours.select_columns(columns).to_list() == theirs.select_columns(columns).to_list()
    # frames are embedded as bytes (self-contained) and decode to the same pixels
    stored = ours.cast_column("frames", datasets.List(datasets.Image(decode=False)))[0]["frames"]
    assert [frame["bytes"] is not None for frame in stored] == [True, True]
    assert [[frame.tobytes() for frame in row] for row in ours["frames"]] == [
        [frame.tobytes() for frame in row] for row in theirs["frames"]
    ]
    assert [(g["frame"], g["type"]) for g in ours[0]["groundings"]] == [(0, 0), (1, 1), (1, 2)]


def test_existing_output_is_kept_unless_overwrite(export, release):
    with pytest.raises(FileExistsError):
        build_hub_dataset.export(str(release), str(export), ["zh"])
    assert (export / "en").is_dir()


def test_failed_export_leaves_nothing_and_overwrite_replaces(tmp_path):
    path = tmp_path / "release" / "data" / "zh" / "dev_zh.json"
    path.parent.mkdir(parents=True)
    records = json.loads((REAL / "data" / "zh" / "dev_zh.json").read_text(encoding="utf-8"))[:3]
    output = tmp_path / "out" / "m3d-hub"

    def export(documents):
        path.write_text(json.dumps(documents, ensure_ascii=False), encoding="utf-8")
        return build_hub_dataset.export(str(path.parents[2]), str(output), ["zh"], overwrite=True)

    def exported_documents():
        return len(datasets.load_dataset(str(output), "zh", cache_dir=str(tmp_path / "load"))["validation"])

    export(records[:2])
    broken = json.loads(json.dumps(records))
    broken[2]["relation"].append({"link1": "L0", "link2": "L404", "type": "PER-PER_peer"})
    with pytest.raises(m3d.M3DFormatError, match=f"{records[2]['video_id']}.*relation"):
        export(broken)
    assert [item.name for item in output.parent.iterdir()] == ["m3d-hub"]  # the previous export, intact
    assert exported_documents() == 2
    export(records)
    assert [item.name for item in output.parent.iterdir()] == ["m3d-hub"]
    assert exported_documents() == 3
