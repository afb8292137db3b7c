"""Inter-annotator agreement: identical sets, a hand-computed κ, edits of the real dev files, clips in one set
only, clips whose text differs, the CLI on release and BRAT folders and its atomic JSON output."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from modeling_m3d.agreement import agreement, bio_tags, pair_clips, token_kappa
from modeling_m3d.brat import export_brat
from modeling_m3d.schema import TASKS, reference_document
from modeling_m3d.scoring import validate_chains

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "dataset_script"))

import agreement as agreement_cli  # noqa: E402

REAL = REPO.parent / "shared" / "m3d"
FRAMES = 2  # frames written for each clip given boxes


def real_records(lang: str) -> list[dict]:
    path = REAL / "data" / lang / f"dev_{lang}.json"
    if not path.is_file():
        pytest.skip("real release files absent")
    return json.loads(path.read_text(encoding="utf-8"))


def real_rows(lang: str) -> list[dict]:
    """The schema rows of the real dev file, read as the CLI reads them."""
    real_records(lang)
    return agreement_cli.read_rows(REAL, lang, "dev")


def write_release(folder: Path, records: list[dict], lang: str, boxes: dict[str, list[str]]) -> Path:
    """A release copy: the records as `dev_<lang>.json`, and for each clip in `boxes` FRAMES frames whose first
    one carries the YOLO lines given."""
    target = folder / "data" / lang / f"dev_{lang}.json"
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    for clip, lines in boxes.items():
        frame_dir = folder / "img" / clip
        frame_dir.mkdir(parents=True)
        for frame in range(FRAMES):
            Image.new("RGB", (8, 8), (frame * 90, 0, 0)).save(frame_dir / f"{frame}.png")
        (frame_dir / "0.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def row(clip: str, tokens: int, entities: list[tuple[int, int, str, int]], chains: int) -> dict:
    """A schema row with `entities` given as (start, end, type, chain)."""
    return {
        "id": clip,
        "tokens": [f"w{i}" for i in range(tokens)],
        "entities": [{"start": s, "end": e, "type": t, "chain": c} for s, e, t, c in entities],
        "chains": [{"id": f"L{i}", "type": "PER"} for i in range(chains)],
        "relations": [],
        "frames": [],
        "groundings": [],
    }


def all_scores(report: dict) -> list:
    tasks = report["tasks"]
    return [tasks["ner"]["kappa"], *(tasks[task]["f1"] for task in TASKS), report["overall"]["average_f1"]]


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_identical_sets_agree_fully(lang):
    rows = real_rows(lang)
    report = agreement(rows, copy.deepcopy(rows))
    assert report["clips"]["compared"] == len(rows) > 200
    assert report["tasks"]["grounding"]["f1"] is None  # no frames in the shared copy: nothing to score
    assert [score for score in all_scores(report) if score is not None] == [1.0] * 5
    assert report["tasks"]["coref"]["muc_f1"] == report["tasks"]["re"]["precision"] == 1.0
    assert {clip["average_f1"] for clip in report["per_clip"]} == {1.0}


def test_hand_computed_kappa_and_f1():
    # A: PER [0, 2) with a nested LOC [1, 2) inside, LOC [5, 6), TIME [8, 10); B: PER [0, 1), ORG [5, 6), TIME [8, 10).
    a = row("c", 10, [(0, 2, "PER", 0), (1, 2, "LOC", 1), (5, 6, "LOC", 2), (8, 10, "TIME", 3)], 4)
    b = row("c", 10, [(0, 1, "PER", 0), (5, 6, "ORG", 1), (8, 10, "TIME", 2)], 3)
    # The nested LOC gives way to the PER around it.
    assert bio_tags(a) == ["B-PER", "I-PER", "O", "O", "O", "B-LOC", "O", "O", "B-TIME", "I-TIME"]
    assert bio_tags(b) == ["B-PER", "O", "O", "O", "O", "B-ORG", "O", "O", "B-TIME", "I-TIME"]
    # Observed agreement: tokens 0, 2, 3, 4, 6, 7, 8, 9 -> p_o = 8/10.
    # Marginals A: B-PER 1, I-PER 1, O 5, B-LOC 1, B-TIME 1, I-TIME 1; B: B-PER 1, O 6, B-ORG 1, B-TIME 1,
    # I-TIME 1. Chance agreement p_e = (1*1 + 5*6 + 1*1 + 1*1) / 10**2 = 33/100.
    # kappa = (p_o - p_e) / (1 - p_e) = (80 - 33) / (100 - 33) = 47/67.
    report = agreement([a], [b])
    assert report["tasks"]["ner"]["kappa"] == pytest.approx(47 / 67, abs=1e-12)
    # Entities: only TIME [8, 10) is shared: P = 1/3 (B has 3), R = 1/4 (A has 4), F1 = 2/7.
    ner = report["tasks"]["ner"]
    assert (ner["precision"], ner["recall"], ner["f1"]) == pytest.approx((1 / 3, 1 / 4, 2 / 7))
    assert report["per_clip"][0]["kappa"] == report["overall"]["kappa"]
    # Swapping the sets swaps precision and recall and keeps kappa and F1.
    swapped = agreement([b], [a])["tasks"]["ner"]
    assert (swapped["precision"], swapped["recall"]) == (ner["recall"], ner["precision"])
    assert (swapped["kappa"], swapped["f1"]) == pytest.approx((ner["kappa"], ner["f1"]))


def test_kappa_edge_cases():
    assert token_kappa([], []) is None
    assert token_kappa(["O"] * 4, ["O"] * 4) == 1.0  # one label on both sides: agreement is perfect
    assert token_kappa(["B-PER", "O"], ["O", "B-PER"]) == pytest.approx(-1.0)
    # A clip where every chain is a singleton in both sets: MUC (which counts links) has no score.
    single = row("s", 4, [(0, 1, "PER", 0), (2, 3, "LOC", 1)], 2)
    coref = agreement([single], [single])["tasks"]["coref"]
    assert coref["muc_f1"] is None and coref["f1"] == 1.0


def test_bio_tags_keep_the_outer_mention_like_the_processor():
    torch = pytest.importorskip("torch")
    from modeling_m3d.processing_m3d import bio_labels

    rows = real_rows("zh")[:20]
    rows.append(
        row("nested", 9, [(0, 3, "PER", 0), (1, 2, "LOC", 1), (4, 8, "ORG", 2), (5, 8, "TIME", 3)], 4)
    )
    names = ["O"] + [f"{prefix}-{t}" for t in ("PER", "LOC", "ORG", "TIME") for prefix in "BI"]
    types = {"PER": 0, "LOC": 1, "ORG": 2, "TIME": 3}
    for r in rows:
        spans = torch.tensor([[[e["start"], e["end"]] for e in r["entities"]]])
        kinds = torch.tensor([[types[e["type"]] for e in r["entities"]]])
        labels = bio_labels(
            spans,
            kinds,
            torch.ones(kinds.shape, dtype=torch.bool),
            torch.ones(1, len(r["tokens"]), dtype=torch.bool),
        )
        assert bio_tags(r) == [names[i] for i in labels[0].tolist()], r["id"]


def first(records: list[dict], taken: set[str], test) -> dict:
    """The first record not in `taken` that passes `test`; marks it taken."""
    record = next(r for r in records if r["video_id"] not in taken and test(r))
    taken.add(record["video_id"])
    return record


def unique_spans(record: dict) -> set[tuple[int, int]]:
    """The mention spans that occur once in a release record."""
    spans = [(m["start"], m["end"]) for chain in record["entityLink"].values() for m in chain["link"]]
    return {span for span in spans if spans.count(span) == 1}


def retypable(record: dict) -> dict | None:
    """A PER or LOC singleton chain of the record whose span is unique in it."""
    chains = record["entityLink"].values()
    return next(
        (
            c
            for c in chains
            if c["len"] == 1 and c["type"] in ("PER", "LOC") and _spans(c) <= unique_spans(record)
        ),
        None,
    )


def long_chain(record: dict) -> dict | None:
    """A chain of 3 or more mentions of the record whose spans are unique in it."""
    chains = record["entityLink"].values()
    return next((c for c in chains if c["len"] >= 3 and _spans(c) <= unique_spans(record)), None)


def _spans(chain: dict) -> set[tuple[int, int]]:
    return {(m["start"], m["end"]) for m in chain["link"]}


def write_edited_copies(folder: Path, lang: str) -> dict:
    """Two release copies of the real dev file with frames for two clips, `a` as released and `b` with four
    edits in four clips: a retyped entity (PER <-> LOC), a removed mention (the last of a chain of k >= 3),
    a dropped relation, a moved box. Returns the folders, the edited clips, the clip whose box moved and k."""
    records = real_records(lang)
    edited, taken = copy.deepcopy(records), set()
    chain = retypable(first(edited, taken, retypable))
    chain["type"] = chain["link"][0]["type"] = {"PER": "LOC", "LOC": "PER"}[chain["type"]]
    chain = long_chain(first(edited, taken, long_chain))
    k = chain["len"]
    chain["link"].pop()
    chain["len"] -= 1
    first(edited, taken, lambda r: r["relation"])["relation"].pop(0)
    # Two clips get frames: two boxes in the first, one in the second, which moves off it in `b`.
    unmoved, moved = (first(edited, taken, lambda r: True)["video_id"] for _ in range(2))
    boxes = {unmoved: ["PER 0.2 0.2 0.1 0.1", "LOC 0.5 0.5 0.3 0.3"], moved: ["ORG 0.7 0.7 0.2 0.2"]}
    return {
        "a": write_release(folder / "a", records, lang, boxes),
        "b": write_release(folder / "b", edited, lang, {**boxes, moved: ["ORG 0.2 0.7 0.2 0.2"]}),
        "edited": sorted(taken - {unmoved}),
        "moved": moved,
        "k": k,
    }


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_edits_of_the_real_dev_file_drop_each_task_by_the_expected_amount(tmp_path, lang):
    copies = write_edited_copies(tmp_path, lang)
    rows_a = agreement_cli.read_rows(copies["a"], lang, "dev")
    rows_b = agreement_cli.read_rows(copies["b"], lang, "dev")
    assert agreement(rows_a, rows_a)["tasks"]["grounding"]["f1"] == 1.0
    report = agreement(rows_a, rows_b)

    documents = [reference_document(r) for r in rows_a]
    n = sum(len({(e["start"], e["end"], e["type"]) for e in d["entities"]}) for d in documents)
    chains = [validate_chains(d["chains"], "references", i) for i, d in enumerate(documents)]
    mentions, clusters = sum(len(c) for doc in chains for c in doc), sum(len(doc) for doc in chains)
    links = mentions - clusters
    relations = sum(len(d["relations"]) for d in documents)
    tasks = report["tasks"]
    # Entities: B has n - 1 (one removed), n - 2 of them in A (one retyped): P = (n-2)/(n-1), R = (n-2)/n.
    assert tasks["ner"]["f1"] == pytest.approx(2 * (n - 2) / (2 * n - 1), abs=1e-12)
    assert 0.98 < tasks["ner"]["kappa"] < 1.0
    # Chains: one chain of k mentions lost one. MUC loses one of A's links (P = 1); B³ recall loses
    # k - (k-1)^2/k of `mentions` (P = 1); CEAF-e: that chain pair scores 2(k-1)/(2k-1) instead of 1.
    muc = 2 * (links - 1) / (2 * links - 1)
    k = copies["k"]
    b3_recall = (mentions - k + (k - 1) ** 2 / k) / mentions
    b3 = 2 * b3_recall / (1 + b3_recall)
    ceafe = (clusters - 1 + 2 * (k - 1) / (2 * k - 1)) / clusters
    coref = tasks["coref"]
    assert (coref["muc_f1"], coref["b3_f1"], coref["ceafe_f1"]) == pytest.approx((muc, b3, ceafe), abs=1e-12)
    assert coref["f1"] == pytest.approx((muc + b3 + ceafe) / 3, abs=1e-12)
    # Relations: B misses one of A's: P = 1, R = (r-1)/r. Groundings: one of 3 boxes moved: P = R = 2/3.
    assert tasks["re"]["f1"] == pytest.approx(2 * (relations - 1) / (2 * relations - 1), abs=1e-12)
    assert (tasks["grounding"]["a"], tasks["grounding"]["f1"]) == (3, pytest.approx(2 / 3))
    assert report["overall"]["average_f1"] == pytest.approx(sum(tasks[t]["f1"] for t in TASKS) / 4)
    # The four edited clips come first; every other clip agrees fully.
    ranked = report["per_clip"]
    assert {clip["id"] for clip in ranked[:4]} == set(copies["edited"])
    assert (ranked[0]["id"], ranked[0]["grounding_f1"]) == (copies["moved"], 0.0)  # its only box moved
    assert all(clip["average_f1"] == 1.0 and clip["kappa"] == 1.0 for clip in ranked[4:])


def test_clips_in_one_set_only_are_named_and_counted():
    rows = real_rows("en")
    extra = {**rows[0], "id": "video_extra", "video_id": "video_extra"}
    report = agreement(rows, rows[2:] + [extra])
    assert report["clips"]["compared"] == len(rows) - 2
    assert report["clips"]["only_in_a"] == {"count": 2, "ids": [rows[0]["id"], rows[1]["id"]]}
    assert report["clips"]["only_in_b"] == {"count": 1, "ids": ["video_extra"]}
    assert [score for score in all_scores(report) if score is not None] == [1.0] * 5
    text = agreement_cli.summary(report, show=3)
    assert f"clips only in A (2): {rows[0]['id']}, {rows[1]['id']}" in text
    assert "clips only in B (1): video_extra" in text


def test_a_clip_whose_text_differs_raises_naming_it():
    rows = real_rows("en")
    changed = copy.deepcopy(rows)
    changed[7]["tokens"][3] = "different"
    with pytest.raises(ValueError, match=rf"clip '{rows[7]['id']}': the text differs.*token 3"):
        pair_clips(rows, changed)
    changed[7]["tokens"] = rows[7]["tokens"][:-1]
    with pytest.raises(ValueError, match=rf"clip '{rows[7]['id']}'.*tokens in A"):
        agreement(rows, changed)
    with pytest.raises(ValueError, match=rf"set B: clip '{rows[0]['id']}' appears twice"):
        agreement(rows, rows + rows[:1])
    with pytest.raises(ValueError, match="no clip is in both sets"):
        agreement(rows[:1], rows[1:])
    changed = copy.deepcopy(rows)
    changed[2]["frames"] = ["0.jpg"]
    with pytest.raises(ValueError, match=rf"clip '{rows[2]['id']}': set A has 0 frames, set B 1"):
        agreement(rows, changed)
    with pytest.raises(
        ValueError, match=r"record 'c', field 'entities\[1\]': span \[3, 5\) is not within its 4"
    ):
        bio_tags(row("c", 4, [(0, 1, "PER", 0), (3, 5, "LOC", 1)], 2))


def test_cli_on_a_release_copy_and_a_brat_folder_writes_the_json(tmp_path):
    records = real_records("zh")[:12]
    boxes = {records[0]["video_id"]: ["PER 0.5 0.5 0.4 0.4"]}
    release = write_release(tmp_path / "a", records, "zh", boxes)
    edited = copy.deepcopy(records)
    edited[5]["relation"].pop()
    brat = export_brat(write_release(tmp_path / "b", edited, "zh", boxes), tmp_path / "brat", "zh", ("dev",))
    output = tmp_path / "out" / "agreement.json"
    args = ["--a", str(release), "--b", str(brat), "--lang", "zh", "--output", str(output), "--show", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    script = str(REPO / "dataset_script" / "agreement.py")
    result = subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(output.read_text(encoding="utf-8"))
    assert (report["lang"], report["split"], report["clips"]["compared"]) == ("zh", "dev", 12)
    assert report["tasks"]["grounding"]["f1"] == report["tasks"]["ner"]["kappa"] == 1.0
    assert report["tasks"]["re"]["f1"] < 1.0 and report["per_clip"][0]["id"] == records[5]["video_id"]
    assert f"  {records[5]['video_id']}" in result.stdout and "Relation F1" in result.stdout
    assert os.listdir(output.parent) == ["agreement.json"]


def test_cli_stops_on_bad_input_with_a_clear_error(tmp_path, capsys):
    records = real_records("zh")[:6]
    release = write_release(tmp_path / "a", records, "zh", {})
    changed = copy.deepcopy(records)
    doc, links = changed[3]["doc"], changed[3]["entityLink"].values()
    covered = {i for chain in links for m in chain["link"] for i in range(m["start"], m["end"])}
    free = next(i for i in range(len(doc)) if i not in covered and doc[i] != "某")
    changed[3]["doc"] = doc[:free] + "某" + doc[free + 1 :]
    output = tmp_path / "agreement.json"
    output.write_text("{}", encoding="utf-8")
    for other, message in (
        (
            write_release(tmp_path / "b", changed, "zh", {}),
            f"clip '{records[3]['video_id']}': the text differs",
        ),
        (tmp_path / "none", "neither a release copy"),
    ):
        with pytest.raises(SystemExit) as stopped:
            agreement_cli.main(
                ["--a", str(release), "--b", str(other), "--lang", "zh", "--output", str(output)]
            )
        assert stopped.value.code == 2 and message in capsys.readouterr().err
    assert output.read_text(encoding="utf-8") == "{}"


def test_write_json_leaves_nothing_half_written(tmp_path, monkeypatch):
    output = tmp_path / "report.json"
    agreement_cli.write_json({"kappa": 0.5}, output)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(agreement_cli.json, "dump", fail)
    with pytest.raises(OSError, match="disk full"):
        agreement_cli.write_json({"kappa": 0.9}, output)
    assert json.loads(output.read_text()) == {"kappa": 0.5} and os.listdir(tmp_path) == ["report.json"]
