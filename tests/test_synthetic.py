"""The synthetic release generator: layout, release invariants, determinism and the four learnable signals."""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modeling_m3d.release import iter_examples
from modeling_m3d.schema import ENTITY_TYPES, GROUNDING_TYPES, RELATION_TYPES, join_tokens, tokenize
from modeling_m3d.synthetic import RELATION_TEMPLATES, SHAPE_COLOURS, write_synthetic_release

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "dataset_script"))  # the command-line tool under test

from make_synthetic import main  # noqa: E402

REAL_DATA = REPO.parent / "shared" / "m3d" / "data"


def load_split(root: Path, lang: str, split: str) -> list[dict]:
    return json.loads((root / "data" / lang / f"{split}_{lang}.json").read_text(encoding="utf-8"))


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def tokens_of(record: dict) -> list[str]:
    return tokenize(record["doc"], record["lang"])


def cue(relation_type: str, lang: str) -> str:
    template = RELATION_TEMPLATES[relation_type][lang == "zh"]
    return template[template.index("{S}") + 3 : template.index("{O}")].strip()


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_release(root, docs=24, lang="en", seed=3)
    write_synthetic_release(root, docs=8, lang="zh", seed=3, eval_docs=3)
    return root


@pytest.fixture(scope="module", params=["en", "zh"])
def records(release, request) -> list[dict]:
    return [
        record for split in ("train", "dev", "test") for record in load_split(release, request.param, split)
    ]


def test_layout_and_split_sizes(release):
    sizes = {
        lang: [len(load_split(release, lang, s)) for s in ("train", "dev", "test")] for lang in ("en", "zh")
    }
    assert sizes == {"en": [24, 6, 6], "zh": [8, 3, 3]}
    video_ids = [
        r["video_id"]
        for lang in ("en", "zh")
        for s in ("train", "dev", "test")
        for r in load_split(release, lang, s)
    ]
    assert len(set(video_ids)) == len(video_ids)
    assert all(v.startswith("video_") and len(v.split("_")) == 3 for v in video_ids)
    assert sorted(p.name for p in (release / "img").iterdir()) == sorted(video_ids)


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_builder_reads_every_split(release, lang):
    """The release reader accepts every record, decodes every frame and parses every label file."""
    for split in ("train", "dev", "test"):
        rows = list(iter_examples(release / "data" / lang / f"{split}_{lang}.json", lang, release / "img"))
        assert all(len(row["frames"]) == 4 for row in rows)
        assert sum(len(row["groundings"]) for row in rows) > len(rows)


def test_record_format_matches_release(records):
    record_keys = [
        "doc",
        "time_sent_pair",
        "relation",
        "entityLink",
        "image",
        "video_id",
        "video_title",
        "lang",
    ]
    for record in records:
        assert list(record) == record_keys
        assert list(record["entityLink"]) == [f"L{i}" for i in range(len(record["entityLink"]))]
        for chain in record["entityLink"].values():
            assert list(chain) == ["len", "link", "type"]
            assert all(list(m) == ["type", "start", "end", "text", "sent_time"] for m in chain["link"])
        assert all(list(r) == ["link1", "link2", "type"] for r in record["relation"])
        assert all(isinstance(n, int) for n in record["image"])


@pytest.mark.skipif(not (REAL_DATA / "en" / "dev_en.json").exists(), reason="real release files absent")
def test_record_keys_equal_real_release(records):
    real = json.loads((REAL_DATA / "en" / "dev_en.json").read_text(encoding="utf-8"))[0]
    assert list(records[0]) == list(real)
    real_chain, chain = next(iter(real["entityLink"].values())), next(iter(records[0]["entityLink"].values()))
    assert list(chain) == list(real_chain)
    assert list(chain["link"][0]) == list(real_chain["link"][0])


def test_release_invariants(records):
    for record in records:
        tokens = tokens_of(record)
        assert all(tokens), f"{record['video_id']}: empty token"
        assert join_tokens(list(record["time_sent_pair"].values()), record["lang"]) == record["doc"]
        spans = set()
        for chain in record["entityLink"].values():
            assert chain["len"] == len(chain["link"]) >= 1 and chain["type"] in ENTITY_TYPES
            for mention in chain["link"]:
                assert mention["type"] == chain["type"]
                assert 0 <= mention["start"] < mention["end"] <= len(tokens)
                text = join_tokens(tokens[mention["start"] : mention["end"]], record["lang"])
                assert text == mention["text"]
                assert mention["text"] in record["time_sent_pair"][mention["sent_time"]]
                spans.add((mention["start"], mention["end"]))
        assert len(spans) == sum(c["len"] for c in record["entityLink"].values()), "two mentions share a span"
        for relation in record["relation"]:
            subject_type, object_type = relation["type"].split("_")[0].split("-")
            assert record["entityLink"][relation["link2"]]["type"] == subject_type
            assert record["entityLink"][relation["link1"]]["type"] == object_type


def test_document_statistics(records):
    chains = [len(r["entityLink"]) for r in records]
    mentions = [sum(c["len"] for c in r["entityLink"].values()) for r in records]
    assert min(chains) >= 4 and max(chains) <= 8
    assert 10 <= np.mean(mentions) <= 22
    assert sum(len(r["relation"]) for r in records) >= len(records)


def test_surface_forms_are_type_specific(records):
    texts_by_type: dict[str, set[str]] = {t: set() for t in ENTITY_TYPES}
    for record in records:
        for chain in record["entityLink"].values():
            texts_by_type[chain["type"]].update(m["text"] for m in chain["link"])
    for first, second in [(a, b) for a in ENTITY_TYPES for b in ENTITY_TYPES if a < b]:
        assert not texts_by_type[first] & texts_by_type[second]
    assert all(text.rstrip("年").isdigit() for text in texts_by_type["TIME"])


def test_chains_use_aliases(records):
    """Coreference is non-trivial: some chains mix a full form and an alias."""
    mixed = [c for r in records for c in r["entityLink"].values() if len({m["text"] for m in c["link"]}) > 1]
    assert {c["type"] for c in mixed} >= {"PER", "ORG"}


def test_relation_types_are_the_release_types(records):
    assert sorted(RELATION_TEMPLATES) == sorted(RELATION_TYPES)
    used = {r["type"] for record in records for r in record["relation"]}
    assert used <= set(RELATION_TYPES) and len(used) >= 10


def test_relation_cues_determine_type(records):
    lang = records[0]["lang"]
    cues = {kind: cue(kind, lang) for kind in RELATION_TEMPLATES}
    assert len(set(cues.values())) == len(cues)
    for record in records:
        tokens = tokens_of(record)
        mentions = {
            link: [(m["start"], m["end"]) for m in c["link"]] for link, c in record["entityLink"].items()
        }
        for relation in record["relation"]:
            between = {
                join_tokens(tokens[s_end:o_start], lang)
                for _, s_end in mentions[relation["link2"]]
                for o_start, _ in mentions[relation["link1"]]
            }
            assert cues[relation["type"]] in between, (record["video_id"], relation)
        padded = f" {record['doc']} " if lang == "en" else record["doc"]
        for kind, text in cues.items():
            expected = sum(r["type"] == kind for r in record["relation"])
            assert padded.count(f" {text} " if lang == "en" else text) == expected, (record["video_id"], kind)


def test_frames_and_yolo_boxes(release, records):
    size = 64
    for record in records:
        folder = release / "img" / record["video_id"]
        assert len(record["image"]) == 4 and record["image"] == sorted(record["image"])
        for number in record["image"]:
            with Image.open(folder / f"{number}.png") as image:
                pixels = np.asarray(image.convert("RGB"))
            assert pixels.shape == (size, size, 3)
            for line in (folder / f"{number}.txt").read_text(encoding="utf-8").splitlines():
                kind, *values = line.split(" ")
                cx, cy, w, h = map(float, values)
                assert kind in GROUNDING_TYPES
                assert -1e-6 <= min(cx - w / 2, cy - h / 2) and max(cx + w / 2, cy + h / 2) <= 1 + 1e-6
                assert w >= 0.2 and h >= 0.2
                centre = (
                    pixels[int(cy * size), int(cx * size)]
                    if kind != "ORG"
                    else pixels[int((cy + h / 4) * size), int(cx * size)]
                )
                assert tuple(centre) == SHAPE_COLOURS[kind], (record["video_id"], number, line)


def test_deterministic_per_seed(tmp_path):
    arguments = {"docs": 6, "lang": "zh", "seed": 11, "frames": 2}
    digests = [tree_digest(write_synthetic_release(tmp_path / name, **arguments)) for name in ("a", "b")]
    other = tree_digest(write_synthetic_release(tmp_path / "c", **{**arguments, "seed": 12}))
    assert digests[0] == digests[1] != other


def test_cli_without_frames(tmp_path, capsys):
    main(["--output_dir", str(tmp_path), "--docs", "3", "--lang", "en", "--frames", "0", "--eval_docs", "1"])
    assert "wrote" in capsys.readouterr().out
    assert [len(load_split(tmp_path, "en", s)) for s in ("train", "dev", "test")] == [3, 1, 1]
    assert all(r["image"] == [] for r in load_split(tmp_path, "en", "train"))
    assert not (tmp_path / "img").exists()


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="lang"):
        write_synthetic_release("unused", docs=1, lang="fr")
