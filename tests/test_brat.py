"""BRAT standoff import and export: exact round trip on the real files, hand-written documents, errors."""

import json
from pathlib import Path

import pytest
from PIL import Image

from modeling_m3d.brat import export_brat, import_brat, main
from modeling_m3d.release import M3DFormatError
from modeling_m3d.synthetic import write_synthetic_release

REPO = Path(__file__).resolve().parents[1]

REAL = REPO.parent / "shared" / "m3d"


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_round_trip_on_real_dev_files_is_identical(tmp_path, lang):
    source = REAL / "data" / lang / f"dev_{lang}.json"
    if not source.is_file():
        pytest.skip("real release files absent")
    brat = export_brat(REAL, tmp_path / "brat", lang)
    assert (brat / "annotation.conf").is_file() and len(list((brat / "dev").glob("*.ann"))) > 200
    target = import_brat(brat, tmp_path / "release", lang, "dev")
    original = json.loads(source.read_text(encoding="utf-8"))
    imported = json.loads(target.read_text(encoding="utf-8"))
    assert json.dumps(imported, ensure_ascii=False) == json.dumps(original, ensure_ascii=False)
    assert target.read_bytes() == source.read_bytes()


def test_round_trip_with_frames(tmp_path):
    release = write_synthetic_release(tmp_path / "release", docs=4, lang="en", seed=5, frames=2, eval_docs=2)
    brat = export_brat(release, tmp_path / "brat", "en")
    assert tree(brat / "img") == tree(release / "img")
    conf = (brat / "annotation.conf").read_text(encoding="utf-8")
    assert "Coref\tArg1:<ENTITY>, Arg2:<ENTITY>, <REL-TYPE>:symmetric-transitive" in conf
    assert "PER-LOC_birth\tArg1:PER, Arg2:LOC" in conf
    for split in ("train", "dev", "test"):
        import_brat(brat, tmp_path / "back", "en", split)
    assert tree(tmp_path / "back") == tree(release)


def write_doc(folder: Path, name: str, text: str, ann: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.txt").write_text(text, encoding="utf-8")
    (folder / f"{name}.ann").write_text(ann, encoding="utf-8")


HAND_TEXT = "Anna Berg was born in Oslo .\nLater Anna joined Nordic Bank in 1990 .\n"
HAND_ANN = """T1\tPER 0 9\tAnna Berg
T2\tLOC 22 26\tOslo
T3\tPER 35 39\tAnna
T4\tORG 47 58\tNordic Bank
T5\tTIME 62 66\t1990
*\tCoref T1 T3
R1\tPER-LOC_birth Arg1:T1 Arg2:T2
R2\tPER-ORG_member Arg1:T3 Arg2:T4
R3\tPER-ORG_member Arg1:T1 Arg2:T4
#1\tAnnotatorNotes T4\tcheck the bank's name
"""


def test_import_hand_written_document(tmp_path):
    write_doc(tmp_path / "brat" / "train", "video_7_2", HAND_TEXT, HAND_ANN)
    frames = tmp_path / "brat" / "img" / "video_7_2"
    frames.mkdir(parents=True)
    for number in (12, 3):
        Image.new("RGB", (32, 32), "white").save(frames / f"{number}.png")
    (frames / "12.txt").write_text("PER 0.5 0.5 0.25 0.25\n", encoding="utf-8")

    target = import_brat(tmp_path / "brat", tmp_path / "out", "en", "train")
    (record,) = json.loads(target.read_text(encoding="utf-8"))
    assert record["doc"] == "Anna Berg was born in Oslo . Later Anna joined Nordic Bank in 1990 ."
    assert record["time_sent_pair"] == {
        "0-1": "Anna Berg was born in Oslo .",
        "1-2": "Later Anna joined Nordic Bank in 1990 .",
    }
    chains = {
        key: [(m["start"], m["end"], m["text"], m["sent_time"]) for m in c["link"]]
        for key, c in record["entityLink"].items()
    }
    assert chains == {
        "L0": [(0, 2, "Anna Berg", "0-1"), (8, 9, "Anna", "1-2")],
        "L1": [(5, 6, "Oslo", "0-1")],
        "L2": [(10, 12, "Nordic Bank", "1-2")],
        "L3": [(13, 14, "1990", "1-2")],
    }
    assert [c["type"] for c in record["entityLink"].values()] == ["PER", "LOC", "ORG", "TIME"]
    # Arg1 (subject) -> link2, Arg2 (object) -> link1; R3 repeats R2 at chain level.
    assert record["relation"] == [
        {"link1": "L1", "link2": "L0", "type": "PER-LOC_birth"},
        {"link1": "L2", "link2": "L0", "type": "PER-ORG_member"},
    ]
    assert record["image"] == [3, 12] and record["video_id"] == "video_7_2" and record["lang"] == "en"
    assert (tmp_path / "out" / "img" / "video_7_2" / "12.txt").read_text(
        encoding="utf-8"
    ) == "PER 0.5 0.5 0.25 0.25\n"


def test_import_chinese_with_coref_relation_line(tmp_path):
    text = "王建国出生在北京。\n建国加入了北京大学。"
    ann = "T2\tPER 10 12\t建国\nT1\tPER 0 3\t王建国\nT3\tLOC 6 8\t北京\nT4\tORG 15 19\t北京大学\n"
    ann += "R1\tCoref Arg1:T1 Arg2:T2\nR2\tPER-LOC_birth Arg1:T1 Arg2:T3\n"
    write_doc(tmp_path / "brat" / "dev", "video_1_0", text, ann)
    (record,) = json.loads(
        import_brat(tmp_path / "brat", tmp_path / "out", "zh", "dev").read_text(encoding="utf-8")
    )
    assert record["doc"] == "王建国出生在北京。建国加入了北京大学。"
    assert [[m["text"] for m in c["link"]] for c in record["entityLink"].values()] == [
        ["王建国", "建国"],
        ["北京"],
        ["北京大学"],
    ]
    assert record["entityLink"]["L0"]["link"][1] == {
        "type": "PER",
        "start": 9,
        "end": 11,
        "text": "建国",
        "sent_time": "1-2",
    }
    assert record["relation"] == [{"link1": "L1", "link2": "L0", "type": "PER-LOC_birth"}]


@pytest.mark.parametrize(
    ("ann_change", "match"),
    [
        (("T2\tLOC 22 26\tOslo", "T2\tLOC 22 26\tOsla"), r"line 2 .*field 'text'"),
        (("Arg2:T2", "Arg2:T9"), r"line 7 .*field 'Arg2'.*'T9'"),
        (("T5\tTIME", "T5\tDATE"), r"line 5 .*field 'type'.*'DATE'"),
        (("PER-LOC_birth", "PER-LOC_holiday"), r"line 7 .*field 'type'.*not declared"),
        (("PER-LOC_birth", "PER-ORG_member"), r"line 7 .*field 'type'.*LOC object"),
        (("T1\tPER 0 9", "T1\tPER 0 8"), r"line 1 .*field 'text'"),
        (("T1\tPER 0 9\tAnna Berg", "T1\tPER 0 3\tAnn"), r"line 1 .*field 'span'.*token boundaries"),
        (("*\tCoref T1 T3", "*\tCoref T1 T2"), r"mixes entity types"),
        (("#1\tAnnotatorNotes T4\tcheck the bank's name", "E1\tEvent:T1"), r"line 10 .*field 'id'"),
    ],
)
def test_bad_annotation_names_file_line_and_field(tmp_path, ann_change, match):
    old, new = ann_change
    assert old in HAND_ANN
    write_doc(tmp_path / "brat" / "dev", "video_7_2", HAND_TEXT, HAND_ANN.replace(old, new, 1))
    with pytest.raises(M3DFormatError, match=match) as error:
        import_brat(tmp_path / "brat", tmp_path / "out", "en", "dev")
    assert "video_7_2" in str(error.value)
    assert not (tmp_path / "out").exists(), "nothing is written when a document is bad"


def test_bad_frame_label_is_reported_before_writing(tmp_path):
    write_doc(tmp_path / "brat" / "dev", "video_7_2", HAND_TEXT, HAND_ANN)
    frames = tmp_path / "brat" / "img" / "video_7_2"
    frames.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(frames / "0.png")
    (frames / "0.txt").write_text("PER 0.5 0.5 1.5 0.2\n", encoding="utf-8")
    with pytest.raises(M3DFormatError, match=r"0\.txt.*video_7_2.*outside \[0, 1\]"):
        import_brat(tmp_path / "brat", tmp_path / "out", "en", "dev")
    assert not (tmp_path / "out").exists()


def test_sidecar_language_must_match(tmp_path):
    release = write_synthetic_release(tmp_path / "release", docs=2, lang="zh", frames=0)
    export_brat(release, tmp_path / "brat", "zh")
    with pytest.raises(M3DFormatError, match="field 'lang'"):
        import_brat(tmp_path / "brat", tmp_path / "out", "en", "train")


def test_command_line(tmp_path, capsys):
    release = write_synthetic_release(tmp_path / "release", docs=2, lang="en", frames=1)
    main(["export", "--data_dir", str(release), "--output_dir", str(tmp_path / "brat"), "--lang", "en"])
    main(
        [
            "--brat_dir",
            str(tmp_path / "brat"),
            "--output_dir",
            str(tmp_path / "out"),
            "--lang",
            "en",
            "--split",
            "dev",
        ]
    )
    assert "wrote" in capsys.readouterr().out
    written = tmp_path / "out" / "data" / "en" / "dev_en.json"
    assert written.read_bytes() == (release / "data" / "en" / "dev_en.json").read_bytes()
