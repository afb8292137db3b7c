"""The `evaluate` modules under metrics/: loading by path, batching, errors, and gold-vs-gold on real data."""

import doctest
import json
import random
from pathlib import Path

import evaluate
import pytest

from modeling_m3d import metric_modules, scoring
from modeling_m3d.metric_modules import M3D_CITATION

REPO = Path(__file__).resolve().parents[1]
RELEASE = REPO.parent / "shared" / "m3d"
MODULES = {
    "m3d_ner": ("entities", scoring.ner_scores),
    "m3d_coref": ("chains", scoring.coref_scores),
    "m3d_re": ("relations", scoring.relation_scores),
    "m3d_grounding": ("groundings", scoring.grounding_scores),
    "m3d": (None, scoring.m3d_scores),
}


@pytest.fixture(scope="module")
def metrics():
    """Each module loaded as a user would, by its path relative to the repository root."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        yield {name: evaluate.load(f"metrics/{name}", keep_in_memory=True) for name in MODULES}


def _document(rng: random.Random, scored: bool) -> dict:
    starts = sorted(rng.sample(range(0, 60, 3), 6))
    spans = [[s, s + rng.randint(1, 2)] for s in starts]
    chains = [spans[i::3] for i in range(3)]
    boxes = [
        {
            "frame": rng.randrange(3),
            "type": rng.choice(["PER", "LOC"]),
            "box": [rng.random(), rng.random(), 0.3, 0.3],
        }
        for _ in range(rng.randint(0, 4))
    ]
    return {
        "entities": [{"start": s, "end": e, "type": rng.choice(["PER", "LOC"])} for s, e in spans],
        "chains": chains,
        "relations": [
            {"subject": a, "object": b, "type": rng.choice(["PER-PER_couple", "PER-LOC_birth"])}
            for a, b in (rng.sample(chains, 2) for _ in range(rng.randint(0, 3)))
        ],
        "groundings": [{**box, "score": rng.random()} for box in boxes] if scored else boxes,
    }


def _inputs(name: str, documents: list[dict]) -> list:
    key = MODULES[name][0]
    return documents if key is None else [document[key] for document in documents]


@pytest.fixture(scope="module")
def documents():
    rng = random.Random(0)
    gold = [_document(rng, scored=False) for _ in range(12)]
    pred = [_document(rng, scored=True) for _ in range(6)] + [
        {**doc, "groundings": [{**b, "score": 0.5} for b in doc["groundings"]]} for doc in gold[6:]
    ]
    return pred, gold


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_equals_scoring_and_add_batch_equals_compute(metrics, documents, name):
    pred, gold = (_inputs(name, docs) for docs in documents)
    expected = MODULES[name][1](pred, gold)
    assert 0 < expected.get("f1", expected.get("average_f1")) < 1
    metric = metrics[name]
    assert metric.compute(predictions=pred, references=gold) == pytest.approx(expected)
    for start in range(0, len(pred), 5):
        metric.add_batch(predictions=pred[start : start + 5], references=gold[start : start + 5])
    assert metric.compute() == pytest.approx(expected)
    for prediction, reference in zip(pred, gold, strict=True):
        metric.add(prediction=prediction, reference=reference)
    assert metric.compute() == pytest.approx(expected)


def test_inputs_are_checked_once_in_add_batch_and_not_again_in_compute(metrics, documents, monkeypatch):
    calls = []

    def counted(where, validate):
        def wrapper(task, predictions, references):
            calls.append((where, task, len(predictions)))
            return validate(task, predictions, references)

        return wrapper

    for where in (metric_modules, scoring):
        monkeypatch.setattr(where, "validate_documents", counted(where.__name__, where.validate_documents))
    pred, gold = documents
    metrics["m3d"].add_batch(predictions=pred[:5], references=gold[:5])
    metrics["m3d"].compute(predictions=pred[5:], references=gold[5:])
    glue = "modeling_m3d.metric_modules"
    assert calls == [(glue, "m3d", 5), (glue, "m3d", 7)]  # each add_batch; _compute checks nothing
    calls.clear()
    scoring.m3d_scores(pred, gold)  # the combined scorer checks once; its task scorers do not check again
    assert calls == [("modeling_m3d.scoring", "m3d", 12)]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_documented_examples_hold(metrics, name):
    """The Examples of each module's inputs description (what `help` and the Hub show) give what they say."""
    metric = metrics[name]
    assert metric.citation.startswith(M3D_CITATION)
    test = doctest.DocTestParser().get_doctest(
        metric.inputs_description, {"evaluate": evaluate}, name, None, 0
    )
    assert len(test.examples) >= 4
    runner = doctest.DocTestRunner()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_compute_kwargs_reach_the_scorer(metrics):
    chain_a, chain_b = [[0, 1]], [[2, 3]]
    gold = [[{"subject": chain_a, "object": chain_b, "type": "PER-PER_parents"}]]
    pred = [[{"subject": chain_b, "object": chain_a, "type": "PER-PER_parents"}]]
    assert metrics["m3d_re"].compute(predictions=pred, references=gold)["f1"] == 0.0
    assert (
        metrics["m3d_re"].compute(predictions=pred, references=gold, symmetric_types=["PER-PER_parents"])[
            "f1"
        ]
        == 1.0
    )


def test_grounding_scores_are_optional(metrics):
    gold = [[{"frame": 0, "type": "PER", "box": [0.5, 0.5, 0.2, 0.2]}]]
    plain = metrics["m3d_grounding"].compute(predictions=gold, references=gold)
    assert plain["f1"] == 1.0 and "map50" not in plain
    scored = [[{**gold[0][0], "score": 0.7}]]
    assert metrics["m3d_grounding"].compute(predictions=scored, references=gold)["map50"] == 1.0


@pytest.mark.parametrize(
    ("predictions", "references", "message"),
    [
        ([[{"start": 0, "type": "PER"}]], [[]], r"predictions document 0, field 'entities\[0\]'.*'end'"),
        (
            [[], [{"start": "0", "end": 1, "type": "PER"}]],
            [[], []],
            r"predictions document 1, field 'entities\[0\]'",
        ),
        ([[]], [[], []], "1 predictions and 2 references"),
    ],
)
def test_module_errors_name_document_and_field(metrics, predictions, references, message):
    with pytest.raises(ValueError, match=message):
        metrics["m3d_ner"].compute(predictions=predictions, references=references)


def test_empty_input_gives_zero(metrics):
    empty = {"entities": [], "chains": [], "relations": [], "groundings": []}
    assert set(metrics["m3d"].compute(predictions=[empty], references=[empty]).values()) == {0.0}


def _release_document(record: dict, index: int) -> dict:
    """A release JSON record as the combined metric input; boxes are made up (the JSON files hold none)."""
    chain_ids = list(record["entityLink"])
    chains = [[[m["start"], m["end"]] for m in record["entityLink"][c]["link"]] for c in chain_ids]
    rng = random.Random(index)
    return {
        "entities": [
            {"start": m["start"], "end": m["end"], "type": link["type"]}
            for link in record["entityLink"].values()
            for m in link["link"]
        ],
        "chains": chains,
        "relations": [
            {
                "subject": chains[chain_ids.index(r["link2"])],
                "object": chains[chain_ids.index(r["link1"])],
                "type": r["type"],
            }
            for r in record["relation"]
        ],
        "groundings": [
            {
                "frame": rng.randrange(8),
                "type": rng.choice(["PER", "LOC", "ORG"]),
                "box": [0.5, 0.5, 0.2, 0.3],
            }
            for _ in range(rng.randint(1, 6))
        ],
    }


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_gold_against_gold_on_the_release_dev_files(metrics, lang):
    path = RELEASE / "data" / lang / f"dev_{lang}.json"
    if not path.exists():
        pytest.skip(f"{path} is not available")
    documents = [_release_document(record, i) for i, record in enumerate(json.loads(path.read_text("utf-8")))]
    scores = metrics["m3d"].compute(predictions=documents, references=documents)
    assert {k: v for k, v in scores.items() if "_error_" not in k} == pytest.approx(
        dict.fromkeys((k for k in scores if "_error_" not in k), 1.0)
    )
    assert {v for k, v in scores.items() if "_error_" in k} == {0.0}
