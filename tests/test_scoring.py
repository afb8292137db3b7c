"""Unit tests of `modeling_m3d.scoring`, the one place where the M³D metrics are computed."""

import math
import random
import time
from collections import Counter

import numpy as np
import pytest
from seqeval.metrics import f1_score, precision_score, recall_score
from seqeval.scheme import IOB2

from modeling_m3d import scoring
from modeling_m3d.schema import reference_document
from modeling_m3d.scoring import (
    bio_to_spans,
    box_iou,
    coref_counts,
    coref_scores,
    finalize,
    grounding_scores,
    m3d_scores,
    ner_scores,
    relation_scores,
)

# ---------------------------------------------------------------------------------------------------------
# CoNLL-2012 reference scorer (v8.01) test suite: conll/reference-coreference-scorers, test/TestCases.README
# and test/CorefMetricTestConfig.pm. A letter is a one-token mention; "B" overlaps "b" (another span) in
# TC-A-5/6 and repeats it (the same span) in TC-A-7/8/9. Expected values are (recall, precision, F1).
# ---------------------------------------------------------------------------------------------------------

_OVERLAPPING_B = (1, 3)


def _chains(text: str, big_b: tuple[int, int] = (1, 2)) -> list[list[list[int]]]:
    """'{a} {bc}' -> chains of mentions; letters are tokens in alphabetical order, digits and A-Z after them."""
    alphabet = "abcdefghijklmnopqrstuvwxyz123456789ACDEFGHIJKLMNOPQRSTUVWXYZ"
    chains = []
    for chain in text.split():
        mentions = []
        for letter in chain.strip("{}"):
            start = alphabet.index(letter) if letter != "B" else big_b[0]
            mentions.append([start, start + 1 if letter != "B" else big_b[1]])
        chains.append(mentions)
    return chains


_KEY_A = "{a} {bc} {def}"
_REFERENCE_CASES = {
    # id: (key, response, "B" span, {metric: (recall, precision, f1)})
    "A1": (
        _KEY_A,
        "{a} {bc} {def}",
        None,
        {"muc": (1, 1, 1), "b3": (1, 1, 1), "ceafm": (1, 1, 1), "ceafe": (1, 1, 1)},
    ),
    "A2": (
        _KEY_A,
        "{a} {de}",
        None,
        {
            "muc": (1 / 3, 1, 0.5),
            "b3": (7 / 18, 1, 14 / 25),
            "ceafm": (0.5, 1, 0.66667),
            "ceafe": (0.6, 0.9, 0.72),
        },
    ),
    "A3": (
        _KEY_A,
        "{a} {bcx} {defy} {z}",
        None,
        {
            "muc": (1, 3 / 5, 0.75),
            "b3": (1, (4 + 7 / 12) / 9, 110 / 163),
            "ceafm": (1, 0.66667, 0.8),
            "ceafe": (0.88571, 0.66429, 0.75918),
        },
    ),
    "A4": (
        _KEY_A,
        "{a} {bcx} {dy} {z}",
        None,
        {
            "muc": (1 / 3, 1 / 3, 1 / 3),
            "b3": (5 / 9, 17 / 42, 2 * (5 / 9) * (17 / 42) / (5 / 9 + 17 / 42)),
            "ceafm": (0.66667, 0.57143, 0.61538),
            "ceafe": (0.73333, 0.55, 0.62857),
        },
    ),
    "A5": (
        _KEY_A,
        "{a} {bcxB} {dy} {z}",
        _OVERLAPPING_B,
        {
            "muc": (1 / 3, 1 / 4, 2 / 7),
            "b3": (5 / 9, 2.5 / 8, 2 * (5 / 9) * (5 / 16) / (5 / 9 + 5 / 16)),
            "ceafm": (0.66667, 0.5, 0.57143),
            "ceafe": (0.68889, 0.51667, 0.59048),
        },
    ),
    "A6": (
        _KEY_A,
        "{a} {bcx} {dy} {Bz}",
        _OVERLAPPING_B,
        {
            "muc": (1 / 3, 1 / 4, 2 / 7),
            "b3": (5 / 9, 17 / 48, 2 * (5 / 9) * (17 / 48) / (5 / 9 + 17 / 48)),
            "ceafm": (0.66667, 0.5, 0.57143),
            "ceafe": (0.73333, 0.55, 0.62857),
        },
    ),
    # TC-A-7..9: "B" repeats the key mention b in the response; every repeat after the first is removed
    **{
        case: (
            _KEY_A,
            response,
            None,
            {
                "muc": (1 / 3, 1 / 3, 1 / 3),
                "b3": (5 / 9, 17 / 42, 2 * (5 / 9) * (17 / 42) / (5 / 9 + 17 / 42)),
                "ceafm": (0.66667, 0.57143, 0.61538),
                "ceafe": (0.73333, 0.55, 0.62857),
            },
        )
        for case, response in (
            ("A7", "{a} {bcxB} {dy} {z}"),
            ("A8", "{a} {bcx} {dy} {Bz}"),
            ("A9", "{a} {bcx} {dy} {BBBBBBBBBBz}"),
        )
    },
    "A10": (_KEY_A, "{a} {b} {c} {d} {e} {f}", None, {"muc": (0, 0, 0), "b3": (0.5, 1, 2 / 3)}),
    "A11": (_KEY_A, "{abcdef}", None, {"muc": (1, 3 / 5, 0.75), "b3": (1, 7 / 18, 14 / 25)}),
    "A12": (
        _KEY_A,
        "{a} {x} {y} {c} {d} {e} {z}",
        None,
        {"muc": (0, 0, 0), "b3": (13 / 36, 4 / 7, 2 * (13 / 36) * (4 / 7) / (13 / 36 + 4 / 7))},
    ),
    "A13": (
        _KEY_A,
        "{axycdez}",
        None,
        {
            "muc": (1 / 3, 1 / 6, 2 / 9),
            "b3": (17 / 36, 6 / 49, 2 * (17 / 36) * (6 / 49) / (17 / 36 + 6 / 49)),
        },
    ),
    "D1": (
        "{12345} {67} {89ACD}",
        "{12345} {6789ACD}",
        None,
        {"muc": (1, 9 / 10, 2 * 0.9 / 1.9), "b3": (1, 16 / 21, 2 * (16 / 21) / (1 + 16 / 21))},
    ),
    "E1": (
        "{12345} {67} {89ACD}",
        "{1234589ACD} {67}",
        None,
        {"muc": (1, 9 / 10, 2 * 0.9 / 1.9), "b3": (1, 7 / 12, 2 * (7 / 12) / (1 + 7 / 12))},
    ),
    "F1": ("{abcd}", "{ab} {cd}", None, {"muc": (2 / 3, 1, 0.8)}),
    "G1": ("{ab} {cd}", "{abcd}", None, {"muc": (1, 2 / 3, 0.8)}),
    "H1": ("{abcd}", "{abcd}", None, {"muc": (1, 1, 1)}),
    "J1": ("{abc}", "{ac}", None, {"muc": (1 / 2, 1, 2 / 3)}),
    "K1": ("{bcdegHJ}", "{abc} {def} {gHi}", None, {"muc": (3 / 6, 3 / 6, 3 / 6)}),
    "L1": ("{abc} {defg}", "{ab} {cd} {fgh}", None, {"muc": (2 / 5, 2 / 4, 2 * 0.4 * 0.5 / 0.9)}),
    "M1": (
        "{abcdef}",
        "{abcdef}",
        None,
        {"muc": (1, 1, 1), "b3": (1, 1, 1), "ceafm": (1, 1, 1), "ceafe": (1, 1, 1)},
    ),
    "M2": ("{abcdef}", "{a} {b} {c} {d} {e} {f}", None, {"muc": (0, 0, 0)}),
    "N1": (
        "{a} {b} {c} {d} {e} {f}",
        "{a} {b} {c} {d} {e} {f}",
        None,
        {"muc": (0, 0, 0), "b3": (1, 1, 1), "ceafm": (1, 1, 1), "ceafe": (1, 1, 1)},
    ),
}


@pytest.mark.parametrize("case", sorted(_REFERENCE_CASES))
def test_coref_reproduces_reference_scorer_cases(case):
    key, response, big_b, expected = _REFERENCE_CASES[case]
    scores = coref_scores([_chains(response, big_b or (1, 2))], [_chains(key, big_b or (1, 2))])
    for metric, (recall, precision, f1) in expected.items():
        got = (scores[f"{metric}_recall"], scores[f"{metric}_precision"], scores[f"{metric}_f1"])
        assert got == pytest.approx((recall, precision, f1), abs=1e-5), metric
    if len(expected) == 4:
        assert scores["f1"] == pytest.approx(
            (expected["muc"][2] + expected["b3"][2] + expected["ceafe"][2]) / 3, abs=1e-5
        )


def test_ceaf_takes_the_best_one_to_one_alignment():
    # {abd} overlaps both gold chains: aligning it with {abc} (and {ce} with {de}) beats the other pairing
    scores = coref_scores([_chains("{abd} {ce}")], [_chains("{abc} {de}")])
    assert (scores["ceafm_recall"], scores["ceafm_precision"]) == (pytest.approx(3 / 5), pytest.approx(3 / 5))
    assert scores["ceafe_f1"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_coref_sums_counts_over_documents_before_dividing():
    docs = [(_chains("{a} {bcx} {dy} {z}"), _chains(_KEY_A)), (_chains("{abcdef}"), _chains("{ab} {cd}"))]
    preds, golds = [p for p, _ in docs], [g for _, g in docs]
    summed = coref_counts(preds[:1], golds[:1]) + coref_counts(preds[1:], golds[1:])
    assert finalize("coref", summed) == pytest.approx(coref_scores(preds, golds))
    # micro, not the mean of per-document scores: MUC recall (1 + 2) / (3 + 2)
    assert coref_scores(preds, golds)["muc_recall"] == pytest.approx(3 / 5)


# ---------------------------------------------------------------------------------------------------------
# Repeated mentions, as the reference scorer v8.01 reads them (`IdentifMentions` of lib/CorScorer.pm): a key
# span repeated keeps one id and stays in every key chain; K(m) is the last key chain holding m. In the
# response, a repeat of a key mention (in the same chain or a later one) is removed; an invented mention
# keeps every entry. Letters are one-token mentions as above; x, y, z are in no key chain (invented).
# ---------------------------------------------------------------------------------------------------------


def _assert_coref(scores: dict, expected: dict) -> None:
    for metric, (recall, precision) in expected.items():
        got = (scores[f"{metric}_recall"], scores[f"{metric}_precision"])
        assert got == pytest.approx((recall, precision), abs=1e-4), metric


def test_coref_invented_mention_in_two_chains_as_the_reference_scorer():
    # /work/shared/cases/metrics/coref_invented_mention_in_two_chains.json (outside the repository): key,
    # response and the values the reference scorer v8.01 printed, copied here. The invented span [10, 12] sits
    # in both response chains and keeps both entries.
    key = [[[0, 2], [3, 5]], [[6, 8], [8, 10]]]
    response = [[[0, 2], [3, 5], [10, 12]], [[6, 8], [8, 10], [10, 12]]]
    expected = {"muc": (1.0, 0.5), "b3": (1.0, 0.4444), "ceafe": (0.8, 0.8), "ceafm": (1.0, 0.6667)}
    _assert_coref(coref_scores([response], [key]), expected)


def test_coref_key_mention_repeated_in_one_response_chain_is_removed():
    # key {abc}; response {aba} -> {ab} (the second a is removed), |K| = 3, |R| = 2.
    # MUC: key links 2, response links 1, correct 1 -> R 1/2, P 1.
    # B³: a and b each have c = 2: P (2/2 + 2/2) / 2 = 1, R (2/3 + 2/3) / 3 = 4/9.
    # CEAF-m: φ3 = 2 -> R 2/3, P 2/2. CEAF-e: φ4 = 2·2 / (3 + 2) = 4/5 over one chain each side.
    scores = coref_scores([_chains("{aba}")], [_chains("{abc}")])
    _assert_coref(scores, {"muc": (1 / 2, 1), "b3": (4 / 9, 1), "ceafm": (2 / 3, 1), "ceafe": (4 / 5, 4 / 5)})
    assert scores["error_missing_entity"] == 1.0  # the predicted chain is {ab}, inside {abc}


def test_coref_key_mention_repeated_across_response_chains_keeps_its_first_entry():
    # key {ab} {cd}; response {ac} {bcd} -> {ac} {bd}: c stays in the first chain, where it came first.
    # MUC: every (R, K) pair shares one entry -> correct 0 of 2 links each side.
    # B³: every entry has c = 1 and |R| = |K| = 2: P = R = 4 · 1/2 / 4 = 1/2.
    # CEAF-m: φ3 = 1 for every pair, best alignment 2 -> 2/4 both ways. CEAF-e: φ4 = 2/4, best 1 -> 1/2.
    scores = coref_scores([_chains("{ac} {bcd}")], [_chains("{ab} {cd}")])
    _assert_coref(
        scores, {"muc": (0, 0), "b3": (1 / 2, 1 / 2), "ceafm": (1 / 2, 1 / 2), "ceafe": (1 / 2, 1 / 2)}
    )


def test_coref_invented_mention_repeated_in_one_chain_keeps_both_entries():
    # key {ab}; response {abxx}: x is invented, both entries stay, |R| = 4.
    # MUC: key links 1, response links 3, correct 1 -> R 1, P 1/3.
    # B³: a and b have c = 2 (P 2/4, R 2/2 each), the x entries c = 0 -> P 1/4, R 2/2.
    # CEAF-m: φ3 = 2 -> R 2/2, P 2/4. CEAF-e: φ4 = 2·2 / (2 + 4) = 2/3 over one chain each side.
    scores = coref_scores([_chains("{abxx}")], [_chains("{ab}")])
    _assert_coref(scores, {"muc": (1, 1 / 3), "b3": (1, 1 / 4), "ceafm": (1, 1 / 2), "ceafe": (2 / 3, 2 / 3)})


def test_coref_mention_repeated_in_the_key():
    # Within one key chain: key {aba} {c}, response {ab} {c}; |K1| = 3 counts both a entries.
    # MUC: key links 2 + 0, response links 1 + 0, correct 1 -> R 1/2, P 1.
    # B³: a, b in {ab}: c = 2, P 2/2, R 2/3 each; c in {c}: P 1, R 1 -> P 3/3, R (2/3 + 2/3 + 1) / 4 = 7/12.
    # CEAF counts the key chain's entries: φ3({aba}, {ab}) = 3, so CEAF-m = 4/4 recall and 4/3 precision and
    # φ4 = 2·3 / (3 + 2) = 6/5, CEAF-e = (6/5 + 1) / 2 both ways: above 1, as the reference scorer gives.
    scores = coref_scores([_chains("{ab} {c}")], [_chains("{aba} {c}")])
    _assert_coref(scores, {"muc": (1 / 2, 1), "b3": (7 / 12, 1), "ceafm": (1, 4 / 3), "ceafe": (1.1, 1.1)})
    # In two key chains: key {ab} {ac}, response {abc}; K(a) = {ac}, the last key chain holding a.
    # MUC: entries of {abc} by key chain: {ab} <- b, {ac} <- a, c: correct 0 + 1 of 2 links each side.
    # B³: every entry has c = 2 (|{abc} ∩ {ab}| = |{abc} ∩ {ac}| = 2): P 3 · 2/3 / 3 = 2/3, R 3 · 2/2 / 4 = 3/4.
    # CEAF-m: φ3 = 2 for both key chains, one response chain -> R 2/4, P 2/3. CEAF-e: φ4 = 2·2 / 5 -> R 2/5, P 4/5.
    scores = coref_scores([_chains("{abc}")], [_chains("{ab} {ac}")])
    _assert_coref(
        scores,
        {"muc": (1 / 2, 1 / 2), "b3": (3 / 4, 2 / 3), "ceafm": (1 / 2, 2 / 3), "ceafe": (2 / 5, 4 / 5)},
    )


# ---------------------------------------------------------------------------------------------------------
# Entities
# ---------------------------------------------------------------------------------------------------------


def test_bio_to_spans_is_strict_iob2():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-ORG", "I-LOC", "B-ORG", "B-ORG", "I-ORG"]
    assert bio_to_spans(tags) == [
        {"start": 0, "end": 2, "type": "PER"},
        {"start": 5, "end": 6, "type": "ORG"},
        {"start": 7, "end": 8, "type": "ORG"},
        {"start": 8, "end": 10, "type": "ORG"},
    ]
    assert bio_to_spans([]) == []
    with pytest.raises(ValueError, match="tag 1"):
        bio_to_spans(["O", "E-PER"])


@pytest.mark.parametrize("seed", range(4))
def test_ner_agrees_with_seqeval_strict_iob2_on_random_sequences(seed):
    rng = random.Random(seed)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-TIME", "I-TIME"]

    def sequence():
        return [rng.choice(tags) for _ in range(rng.randint(0, 25))]

    gold = [sequence() for _ in range(60)]
    pred = [[t if rng.random() < 0.7 else rng.choice(tags) for t in g] for g in gold]
    scores = ner_scores([bio_to_spans(p) for p in pred], [bio_to_spans(g) for g in gold])
    kwargs = {"mode": "strict", "scheme": IOB2, "zero_division": 0}
    assert scores["precision"] == pytest.approx(precision_score(gold, pred, **kwargs))
    assert scores["recall"] == pytest.approx(recall_score(gold, pred, **kwargs))
    assert scores["f1"] == pytest.approx(f1_score(gold, pred, **kwargs))


def test_ner_is_micro_averaged_and_exact():
    gold = [[{"start": 0, "end": 2, "type": "PER"}], [{"start": 1, "end": 2, "type": "LOC"}]]
    pred = [
        [{"start": 0, "end": 2, "type": "PER"}],
        [
            {"start": 1, "end": 3, "type": "LOC"},
            {"start": 1, "end": 2, "type": "ORG"},
            {"start": 4, "end": 5, "type": "LOC"},
        ],
    ]
    scores = ner_scores(pred, gold)
    assert (scores["precision"], scores["recall"]) == (pytest.approx(1 / 4), pytest.approx(1 / 2))
    assert (scores["error_boundary"], scores["error_type"]) == (pytest.approx(2 / 4), pytest.approx(1 / 4))


# ---------------------------------------------------------------------------------------------------------
# Relations
# ---------------------------------------------------------------------------------------------------------

_A, _B, _C = [[0, 1], [5, 6]], [[2, 3]], [[8, 9], [10, 11]]


def _relation(subject, obj, kind):
    return {"subject": subject, "object": obj, "type": kind}


def test_relations_need_a_shared_mention_on_each_side_and_equal_types():
    gold = [[_relation(_A, _B, "PER-LOC_birth")]]
    assert relation_scores([[_relation([[5, 6], [30, 31]], [[2, 3]], "PER-LOC_birth")]], gold)["f1"] == 1.0
    assert relation_scores([[_relation([[30, 31]], _B, "PER-LOC_birth")]], gold)["f1"] == 0.0
    assert relation_scores([[_relation(_A, _B, "PER-LOC_work")]], gold)["f1"] == 0.0


def test_symmetric_relations_match_in_either_order_and_are_overridable():
    gold = [[_relation(_A, _C, "PER-PER_couple"), _relation(_A, _C, "PER-PER_parents")]]
    swapped = [[_relation(_C, _A, "PER-PER_couple"), _relation(_C, _A, "PER-PER_parents")]]
    assert relation_scores(swapped, gold)["precision"] == 0.5  # couple matches, parents does not
    assert relation_scores(swapped, gold, symmetric_types=[])["precision"] == 0.0
    assert relation_scores(swapped, gold, symmetric_types={"PER-PER_couple", "PER-PER_parents"})["f1"] == 1.0
    assert "ORG-ORG_nearby" in scoring.SYMMETRIC_RELATION_TYPES


def test_relations_are_matched_one_to_one_by_maximum_matching():
    kind = "PER-PER_colleague"
    gold = [[_relation(_A, _B, kind), _relation([[5, 6]], [[2, 3], [20, 21]], kind)]]
    # the first prediction fits both gold relations, the second only the second one: greedy in order would
    # give the second gold relation to the first prediction and leave one true positive
    pred = [[_relation([[0, 1], [5, 6]], [[2, 3], [20, 21]], kind), _relation([[5, 6]], [[20, 21]], kind)]]
    assert relation_scores(pred, gold)["f1"] == 1.0
    duplicated = [[_relation(_A, _B, kind)] * 3]
    scores = relation_scores(duplicated, [[_relation(_A, _B, kind)]])
    assert (scores["precision"], scores["recall"]) == (pytest.approx(1 / 3), 1.0)


# ---------------------------------------------------------------------------------------------------------
# Grounding
# ---------------------------------------------------------------------------------------------------------


def test_box_iou_edge_cases():
    box = [0.5, 0.5, 0.25, 0.25]
    iou = box_iou(
        [box],
        [box, [0.625, 0.5, 0.5, 0.25], [0.75, 0.5, 0.25, 0.25], [0.9, 0.9, 0.1, 0.1], [0.5, 0.5, 0.0, 0.25]],
    )
    assert iou.shape == (1, 5)
    assert iou[0].tolist() == [1.0, 0.5, 0.0, 0.0, 0.0]  # same, half, touching, apart, zero area
    assert box_iou([[0.5, 0.5, 0.0, 0.0]], [[0.5, 0.5, 0.0, 0.0]]).tolist() == [[0.0]]  # no NaN
    assert box_iou(np.zeros((0, 4)), [box]).shape == (0, 1)


def test_grounding_needs_same_frame_same_type_and_iou_above_half():
    gold = [[{"frame": 1, "type": "PER", "box": [0.5, 0.5, 0.25, 0.25]}]]

    def f1(frame=1, kind="PER", box=(0.5, 0.5, 0.25, 0.25)):
        return grounding_scores([[{"frame": frame, "type": kind, "box": list(box)}]], gold)["f1"]

    assert f1() == 1.0
    assert f1(frame=0) == 0.0
    assert f1(kind="LOC") == 0.0
    assert f1(box=(0.625, 0.5, 0.5, 0.25)) == 0.0  # IoU exactly 0.5 is not enough
    assert f1(box=(0.6, 0.5, 0.45, 0.25)) == 1.0


def test_grounding_average_precision_coco_101_points():
    gold = [
        [
            {"frame": 0, "type": "PER", "box": [0.25, 0.25, 0.2, 0.2]},
            {"frame": 0, "type": "PER", "box": [0.75, 0.75, 0.2, 0.2]},
        ]
    ]
    pred = [
        [
            {"frame": 0, "type": "PER", "box": [0.25, 0.25, 0.2, 0.2], "score": 0.9},
            {"frame": 0, "type": "PER", "box": [0.5, 0.1, 0.2, 0.2], "score": 0.8},
            {"frame": 0, "type": "PER", "box": [0.75, 0.75, 0.2, 0.2], "score": 0.7},
            {"frame": 0, "type": "ORG", "box": [0.5, 0.5, 0.2, 0.2], "score": 0.6},
        ]
    ]
    scores = grounding_scores(pred, gold)
    # precision 1 up to recall 0.5 (51 points), 2/3 up to recall 1 (50 points); ORG has no gold box
    assert scores["ap50_PER"] == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert scores["ap50_ORG"] == 0.0
    assert scores["map50"] == scores["ap50_PER"]
    assert "map50" not in grounding_scores(
        [[{k: v for k, v in b.items() if k != "score"} for b in pred[0]]], gold
    )


# ---------------------------------------------------------------------------------------------------------
# Empty input, bad input
# ---------------------------------------------------------------------------------------------------------

_SCORERS = [ner_scores, coref_scores, relation_scores, grounding_scores]


@pytest.mark.parametrize("scorer", _SCORERS)
def test_empty_inputs_give_zero(scorer):
    for predictions, references in (([], []), ([[]], [[]]), ([[]] * 3, [[]] * 3)):
        scores = scorer(predictions, references)
        assert scores and all(value == 0.0 for value in scores.values()), scores
    empty_docs = [{"entities": [], "chains": [], "relations": [], "groundings": []}] * 2
    assert set(m3d_scores(empty_docs, empty_docs).values()) == {0.0}


def test_one_empty_side_gives_zero():
    gold = [[{"start": 0, "end": 1, "type": "PER"}]]
    for predictions, references in (([[]], gold), (gold, [[]])):
        scores = ner_scores(predictions, references)
        assert (scores["precision"], scores["recall"], scores["f1"]) == (0.0, 0.0, 0.0)
    assert ner_scores(gold, [[]])["error_boundary"] == 1.0


@pytest.mark.parametrize(
    ("scorer", "predictions", "message"),
    [
        (
            ner_scores,
            [[], [{"start": 0, "end": 1, "type": "PER"}, {"start": 3, "end": 3, "type": "PER"}]],
            r"predictions document 1, field 'entities\[1\]'",
        ),
        (
            ner_scores,
            [[], [{"start": 0, "type": "PER"}]],
            r"predictions document 1, field 'entities\[0\]'.*'end'",
        ),
        (ner_scores, [[], [{"start": 0, "end": 1, "type": 3}]], r"document 1, field 'entities\[0\].type'"),
        (coref_scores, [[], [[[0, 1]], [[2, 3, 4]]]], r"predictions document 1, field 'chains\[1\]\[0\]'"),
        (coref_scores, [[], [[[0, 1.5]]]], r"predictions document 1, field 'chains\[0\]\[0\]'"),
        (
            relation_scores,
            [[], [{"subject": [[0, 1]], "type": "X"}]],
            r"document 1, field 'relations\[0\]'.*'object'",
        ),
        (
            relation_scores,
            [[], [{"subject": [], "object": [[0, 1]], "type": "X"}]],
            r"field 'relations\[0\].subject'",
        ),
        (
            grounding_scores,
            [[], [{"frame": 0, "type": "PER", "box": [0.1, 0.1, 0.1]}]],
            r"field 'groundings\[0\].box'",
        ),
        (
            grounding_scores,
            [[], [{"frame": -1, "type": "PER", "box": [0.1, 0.1, 0.1, 0.1]}]],
            r"'groundings\[0\].frame'",
        ),
        (
            grounding_scores,
            [
                [],
                [
                    {"frame": 0, "type": "PER", "box": [0.1] * 4, "score": 0.5},
                    {"frame": 0, "type": "PER", "box": [0.1] * 4},
                ],
            ],
            r"predictions document 1, field 'groundings\[1\].score'",
        ),
        (ner_scores, [[], "PER"], r"predictions document 1, field 'entities': expected a list"),
    ],
)
def test_malformed_items_name_document_and_field(scorer, predictions, message):
    with pytest.raises(ValueError, match=message):
        scorer(predictions, [[], []])


def test_mismatched_lengths_and_missing_keys_raise():
    with pytest.raises(ValueError, match="1 predictions and 2 references"):
        ner_scores([[]], [[], []])
    doc = {"entities": [], "chains": [], "relations": [], "groundings": []}
    with pytest.raises(ValueError, match="references document 1, field 'groundings'"):
        m3d_scores([doc, doc], [doc, {k: v for k, v in doc.items() if k != "groundings"}])


def test_mixing_scored_and_unscored_documents_raises():
    box = {"frame": 0, "type": "PER", "box": [0.5, 0.5, 0.1, 0.1]}
    with pytest.raises(ValueError, match="predictions document 1, field 'groundings'"):
        grounding_scores([[{**box, "score": 0.3}], [box]], [[box], [box]])


# ---------------------------------------------------------------------------------------------------------
# Combined scores and Table VI
# ---------------------------------------------------------------------------------------------------------


def test_m3d_table_vi_breakdown_on_a_hand_case():
    person, place, group = [[0, 2], [10, 11], [12, 13]], [[3, 4]], [[6, 8], [14, 15]]
    box = [0.5, 0.5, 0.2, 0.2]
    gold = {
        "entities": [
            {"start": 0, "end": 2, "type": "PER"},
            {"start": 3, "end": 4, "type": "LOC"},
            {"start": 6, "end": 8, "type": "ORG"},
        ],
        "chains": [person, place, group],
        "relations": [_relation(person, place, "PER-LOC_birth")],
        "groundings": [{"frame": 0, "type": "PER", "box": box}, {"frame": 1, "type": "LOC", "box": box}],
    }
    pred = {
        # right; right boundary wrong type; wrong boundary (twice)
        "entities": [
            {"start": 0, "end": 2, "type": "PER"},
            {"start": 3, "end": 4, "type": "ORG"},
            {"start": 6, "end": 7, "type": "ORG"},
            {"start": 9, "end": 10, "type": "PER"},
        ],
        # misses an entity; right; holds a foreign mention; mixes two gold chains
        "chains": [[[0, 2], [10, 11]], [[3, 4]], [[6, 8], [20, 21]], [[12, 13], [14, 15]]],
        # right; wrong type; unrelated chains; reversed (non-symmetric): related chains, wrong direction
        "relations": [
            _relation([[0, 2]], place, "PER-LOC_birth"),
            _relation([[10, 11]], place, "PER-LOC_work"),
            _relation(person, group, "PER-LOC_birth"),
            _relation(place, person, "PER-LOC_birth"),
        ],
        # right; duplicate (lost to one-to-one); right box wrong type; wrong box
        "groundings": [
            {"frame": 0, "type": "PER", "box": box},
            {"frame": 0, "type": "PER", "box": box},
            {"frame": 0, "type": "LOC", "box": box},
            {"frame": 1, "type": "LOC", "box": [0.1, 0.1, 0.1, 0.1]},
        ],
    }
    scores = m3d_scores([pred], [gold])
    expected = {
        "ner_error_boundary": 2 / 4,
        "ner_error_type": 1 / 4,
        "coref_error_wrong_entity": 2 / 4,
        "coref_error_missing_entity": 1 / 4,
        "re_error_unrelated": 1 / 4,
        "re_error_type": 2 / 4,
        "grounding_error_boundary": 1 / 4,
        "grounding_error_type": 1 / 4,
        "ner_precision": 1 / 4,
        "re_precision": 1 / 4,
        "grounding_precision": 1 / 4,
        "grounding_recall": 1 / 2,
    }
    assert {key: scores[key] for key in expected} == pytest.approx(expected)
    f1s = [scores[f"{task}_f1"] for task in ("ner", "coref", "re", "grounding")]
    assert scores["average_f1"] == pytest.approx(sum(f1s) / 4)
    assert all(not math.isnan(value) for value in scores.values())


def test_reference_document_from_a_schema_row_scores_perfectly():
    row = {
        "id": "video_1_2",
        "entities": [
            {"start": 0, "end": 2, "type": 0, "chain": 0},
            {"start": 3, "end": 4, "type": "LOC", "chain": 1},
            {"start": 5, "end": 6, "type": 0, "chain": 0},
        ],
        "chains": [{"id": "L0", "type": 0}, {"id": "L1", "type": 1}],
        "relations": [{"subject": 0, "object": 1, "type": "PER-LOC_birth"}],
        "groundings": [{"frame": 2, "type": 2, "box": [0.5, 0.5, 0.1, 0.2]}],
    }
    document = reference_document(row)
    assert document == {
        "entities": [
            {"start": 0, "end": 2, "type": "PER"},
            {"start": 3, "end": 4, "type": "LOC"},
            {"start": 5, "end": 6, "type": "PER"},
        ],
        "chains": [[[0, 2], [5, 6]], [[3, 4]]],
        "relations": [{"subject": [[0, 2], [5, 6]], "object": [[3, 4]], "type": "PER-LOC_birth"}],
        "groundings": [{"frame": 2, "type": "ORG", "box": [0.5, 0.5, 0.1, 0.2]}],
    }
    assert m3d_scores([document], [document])["average_f1"] == 1.0
    bad = {**row, "relations": [{"subject": 0, "object": 5, "type": "PER-LOC_birth"}]}
    with pytest.raises(ValueError, match=r"record 'video_1_2', field 'relations\[0\].object'"):
        reference_document(bad)
    assert (
        reference_document({**row, "relations": [{"subject": 0, "object": 1, "type": 1}]}, ["a", "b"])[
            "relations"
        ][0]["type"]
        == "b"
    )


def _m3d_size_document(rng: random.Random) -> dict:
    """About the size of an M³D document: 17 entities, 9 chains, 7 relations, 6 boxes."""
    starts = np.cumsum([rng.randint(1, 6) for _ in range(17)]) * 3
    spans = [[int(s), int(s) + rng.randint(1, 2)] for s in starts]
    chain_of = [i % 9 for i in range(17)]
    chains = [[spans[i] for i in range(17) if chain_of[i] == c] for c in range(9)]
    return {
        "entities": [{"start": s, "end": e, "type": rng.choice("PLOT")} for s, e in spans],
        "chains": chains,
        "relations": [
            _relation(*rng.sample(chains, 2), rng.choice(["PER-PER_couple", "PER-LOC_birth"]))
            for _ in range(7)
        ],
        "groundings": [
            {
                "frame": rng.randrange(4),
                "type": rng.choice(["PER", "LOC"]),
                "box": [rng.random(), rng.random(), 0.2, 0.3],
            }
            for _ in range(6)
        ],
    }


def test_m3d_scores_is_fast_on_m3d_sized_documents():
    """2,000 documents of M³D size: about 0.5 s on one core; the bound is generous for shared CI machines."""
    rng = random.Random(0)
    gold = [_m3d_size_document(rng) for _ in range(2000)]
    pred = [_m3d_size_document(rng) for _ in range(1000)] + gold[1000:]
    start = time.process_time()
    scores = m3d_scores(pred, gold)
    assert time.process_time() - start < 10.0
    assert 0.4 < scores["ner_recall"] < 0.7


def test_counts_accumulate_like_one_call():
    rng = random.Random(1)
    gold = [_m3d_size_document(rng) for _ in range(6)]
    pred = [_m3d_size_document(rng) for _ in range(3)] + gold[3:]
    for task, key, counter in (
        ("ner", "entities", scoring.ner_counts),
        ("re", "relations", scoring.relation_counts),
        ("grounding", "groundings", scoring.grounding_counts),
    ):
        total = Counter()
        for i in range(0, 6, 2):
            total.update(counter([d[key] for d in pred[i : i + 2]], [d[key] for d in gold[i : i + 2]]))
        prefixed = {
            name[len(task) + 1 :]: v
            for name, v in m3d_scores(pred, gold).items()
            if name.startswith(task + "_")
        }
        assert finalize(task, total) == pytest.approx(prefixed)
