"""Tests of the decoding helpers and of M3DModel.predict."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from torchcrf import CRF

from modeling_m3d import schema, scoring
from modeling_m3d.decoding_m3d import (
    bio_tags_to_spans,
    chain_mask_of,
    connected_components,
    coref_adjacency,
    decode_relations,
    first_mention_chain,
    pad_spans,
    select_grounding_slots,
    viterbi_decode,
)
from modeling_m3d.processing_m3d import M3DProcessor
from modeling_m3d.testing import build_tokenizer, tiny_config, tiny_image_processor

TYPES = ["PER", "LOC"]


def tag_name(tag: int) -> str:
    return "O" if tag == 0 else f"{'B' if tag % 2 else 'I'}-{TYPES[(tag - 1) // 2]}"


def test_viterbi_matches_brute_force_and_skips_rows_without_words():
    torch.manual_seed(0)
    crf = CRF(5, batch_first=True)
    emissions = torch.randn(3, 4, 5)
    word_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    tags = viterbi_decode(crf, emissions, word_mask)
    for row, length in ((0, 4), (1, 2)):

        def score(path, row=row, length=length):
            return crf._compute_score(
                emissions[row : row + 1, :length].transpose(0, 1),
                torch.tensor(path)[:, None],
                torch.ones(length, 1, dtype=torch.bool),
            )

        with torch.no_grad():
            best = max(itertools.product(range(5), repeat=length), key=lambda path: float(score(path)))
        assert tags[row, :length].tolist() == list(best)
        assert (tags[row, length:] == 0).all()
    assert (tags[2] == 0).all()


def test_bio_decoding_is_strict_iob2_like_scoring():
    tags = torch.tensor([[1, 2, 2, 0, 4, 3, 4, 2, 1], [2, 2, 1, 1, 0, 3, 0, 0, 0]])
    mask = torch.ones_like(tags, dtype=torch.bool)
    mask[1, 6:] = False
    spans = bio_tags_to_spans(tags, mask).tolist()
    # row 0: B-PER I-PER I-PER | O | I-LOC (orphan) | B-LOC I-LOC | I-PER (orphan) | B-PER at the end
    # row 1: orphan I-PER run | B-PER | B-PER | O | B-LOC
    assert spans == [[0, 0, 3, 0], [0, 5, 7, 1], [0, 8, 9, 0], [1, 2, 3, 0], [1, 3, 4, 0], [1, 5, 6, 1]]
    random.seed(0)
    for _ in range(200):
        length = random.randint(1, 12)
        row = [random.randint(0, 4) for _ in range(length)]
        ours = bio_tags_to_spans(torch.tensor([row]), torch.ones(1, length, dtype=torch.bool))
        theirs = scoring.bio_to_spans([tag_name(t) for t in row])
        assert [[s, e, TYPES[t]] for _, s, e, t in ours.tolist()] == [
            [x["start"], x["end"], x["type"]] for x in theirs
        ]


def test_pad_spans():
    spans = torch.tensor([[0, 1, 3, 0], [0, 4, 5, 1], [2, 0, 2, 1]])
    padded, mask = pad_spans(spans, 4)
    assert padded.shape == (4, 2, 2)
    assert mask.tolist() == [[True, True], [False, False], [True, False], [False, False]]
    assert padded[0].tolist() == [[1, 3], [4, 5]] and padded[2, 0].tolist() == [0, 2]
    empty, empty_mask = pad_spans(torch.zeros(0, 4, dtype=torch.long), 2)
    assert empty.shape == (2, 1, 2) and not empty_mask.any()


def union_find_components(edges: list[tuple[int, int]], nodes: list[int]) -> list[int]:
    parent = {n: n for n in nodes}

    def find(n: int) -> int:
        while parent[n] != n:
            n = parent[n]
        return n

    for a, b in edges:
        parent[max(find(a), find(b))] = min(find(a), find(b))
    roots = sorted({find(n) for n in nodes})
    return [roots.index(find(n)) for n in nodes]


@pytest.mark.parametrize("seed", range(5))
def test_connected_components_match_union_find(seed):
    generator = torch.Generator().manual_seed(seed)
    batch, nodes = 4, 23
    adjacency = torch.rand(batch, nodes, nodes, generator=generator) < 0.04 * (seed + 1)
    lengths = torch.tensor([23, 17, 1, 0])
    mask = torch.arange(nodes) < lengths[:, None]
    components = connected_components(adjacency, mask)
    for b in range(batch):
        length = int(lengths[b])
        edges = [(i, j) for i, j in adjacency[b, :length, :length].nonzero().tolist()]
        assert components[b, :length].tolist() == union_find_components(edges, list(range(length)))
        assert (components[b, length:] == -1).all()


def test_coref_adjacency_uses_the_symmetric_mean():
    logits = torch.zeros(1, 3, 3, 2)
    logits[0, 0, 1, 1], logits[0, 1, 0, 1] = 3.0, -1.0  # p ≈ 0.95 and 0.27: mean > 0.5
    logits[0, 0, 2, 1], logits[0, 2, 0, 1] = 3.0, -5.0  # p ≈ 0.95 and 0.007: mean < 0.5
    adjacency = coref_adjacency(logits, torch.tensor([[True, True, True]]))
    assert adjacency[0].tolist() == [[False, True, False], [True, False, False], [False, False, False]]
    assert not coref_adjacency(logits, torch.tensor([[True, False, True]]))[0, 0, 1]


def test_decode_relations_keeps_pairs_likely_related_with_their_likeliest_type():
    logits = torch.zeros(1, 3, 3, 4)
    logits[0, 0, 1] = torch.tensor([0.0, 2.0, 1.0, 0.0])  # p(none) 0.08: relation type 0
    logits[0, 1, 0] = torch.tensor([3.0, 2.0, 1.0, 0.0])  # p(none) 0.64
    logits[0, 2, 2] = torch.tensor([0.0, 0.0, 0.0, 5.0])  # diagonal: never
    logits[0, 0, 2] = torch.tensor([0.0, 0.0, 0.0, 5.0])  # chain 2 is padding
    chains = torch.tensor([[True, True, False]])
    relations, scores = decode_relations(logits, chains)
    assert relations.tolist() == [[0, 0, 1, 0]]
    torch.testing.assert_close(scores, 1 - logits[0, 0, 1].softmax(-1)[:1])
    relations, scores = decode_relations(logits, chains, threshold=0.3, one_per_pair=False)
    assert relations.tolist() == [[0, 0, 1, 0], [0, 1, 0, 0]] and 0.3 < scores[1] < 0.4
    assert decode_relations(logits, chains, threshold=0.95)[0].shape == (0, 4)


def test_two_chains_get_one_relation_in_the_likelier_direction():
    logits = torch.zeros(2, 3, 3, 3)
    logits[0, :, :, 0] = 5.0  # no relation, but:
    logits[0, 0, 1, 0], logits[0, 1, 0, 0] = -2.0, -1.0  # both related; 0 → 1 the likelier
    logits[0, 2, 0, 0] = -3.0  # 2 → 0 beats 0 → 2
    logits[1, :, :, 0] = -2.0  # every pair equally likely: the earlier subject wins
    chains = torch.ones(2, 3, dtype=torch.bool)
    relations, _ = decode_relations(logits, chains, threshold=0.5)
    assert relations[:, :3].tolist() == [[0, 0, 1], [0, 2, 0], [1, 0, 1], [1, 0, 2], [1, 1, 2]]
    assert len(decode_relations(logits, chains, threshold=0.5, one_per_pair=False)[0]) == 3 + 6
    assert relations[:, 0].tolist() == [0, 0, 1, 1, 1]


def test_select_grounding_slots():
    logits = torch.full((1, 2, 3, 4), -5.0)
    logits[0, 0, 0, 1] = 5.0  # LOC, confident
    logits[0, 0, 1, 3] = 5.0  # none
    logits[0, 0, 2, 0], logits[0, 0, 2, 2] = 0.1, 0.0  # PER, unsure
    logits[0, 1, 0, 2] = 5.0  # frame 1 is padding
    boxes = torch.rand(1, 2, 3, 4)
    frame_mask = torch.tensor([[True, False]])
    rows, frames, types, scores, chosen = select_grounding_slots(logits, boxes, frame_mask)
    assert rows.tolist() == [0, 0] and frames.tolist() == [0, 0] and types.tolist() == [1, 0]
    assert scores[0] > 0.99 and scores[1] < 0.6
    torch.testing.assert_close(chosen, boxes[0, 0, [0, 2]])
    assert select_grounding_slots(logits, boxes, frame_mask, threshold=0.6)[2].tolist() == [1]


def test_chain_mask_and_first_mention_chain():
    relation_chain = torch.tensor([[0, 1, 0, 2, -1], [1, 0, -1, -1, -1]])
    mention_chain = torch.tensor([[0, 1, 2, 3, -1], [0, 1, -1, -1, -1]])
    assert chain_mask_of(relation_chain).tolist() == [[True] * 3, [True, True, False]]
    # Gold chain 0 of row 0 starts at mention 0 (predicted chain 0); gold chain 2 at mention 3 (predicted 3).
    assert first_mention_chain(relation_chain, mention_chain).tolist() == [[0, 1, 3], [1, 0, -1]]
    assert chain_mask_of(torch.zeros(2, 0, dtype=torch.long)).tolist() == [[False], [False]]


@pytest.fixture(scope="module")
def model_and_batch():
    words = "Alice Brown met Bob in Rome and she joined Acme in 2001 .".split()
    row = {
        "id": "video_0",
        "tokens": words,
        "entities": [
            {"start": 0, "end": 2, "type": 0, "chain": 0},
            {"start": 3, "end": 4, "type": 0, "chain": 1},
            {"start": 5, "end": 6, "type": 1, "chain": 2},
            {"start": 7, "end": 8, "type": 0, "chain": 0},
            {"start": 9, "end": 10, "type": 2, "chain": 3},
        ],
        "chains": [{"id": f"L{i}", "type": t} for i, t in enumerate([0, 0, 1, 2])],
        "relations": [{"subject": 0, "object": 3, "type": "PER-ORG_member"}],
        "frames": [],
        "groundings": [],
    }
    from PIL import Image

    video_row = {
        **row,
        "id": "video_1",
        "tokens": [],
        "entities": [],
        "chains": [],
        "relations": [],
        "frames": [Image.new("RGB", (32, 32), (200, 10, 10))] * 2,
        "groundings": [{"frame": 1, "type": 0, "box": [0.5, 0.5, 0.4, 0.4]}],
    }
    tokenizer = build_tokenizer([" ".join(words)], "en")
    config = tiny_config(tokenizer)
    torch.manual_seed(0)
    from modeling_m3d.modeling_m3d import M3DModel

    model = M3DModel(config).eval()
    processor = M3DProcessor(tiny_image_processor(), tokenizer, max_frames=config.max_frames)
    rows = [row, video_row]
    return model, processor(rows, return_tensors="pt"), rows


def _check_document(document: dict, words: int, frames: int) -> None:
    assert set(document) == {"entities", "chains", "relations", "groundings"}
    for relation in document["relations"]:
        chains = document["chains"]
        assert relation["subject"][0] in chains[relation["subject_chain"]]
        assert relation["object"][0] in chains[relation["object_chain"]]
    for entity in document["entities"]:
        assert 0 <= entity["start"] < entity["end"] <= words and entity["type"] in (
            "PER",
            "LOC",
            "ORG",
            "TIME",
        )
    for relation in document["relations"]:
        assert relation["subject"] and relation["object"] and isinstance(relation["type"], str)
    for grounding in document["groundings"]:
        assert (
            0 <= grounding["frame"] < frames and len(grounding["box"]) == 4 and 0 <= grounding["score"] <= 1
        )


@pytest.mark.parametrize("protocol", ["gold_pairs", "end_to_end"])
def test_predict_returns_metric_formats(model_and_batch, protocol):
    model, batch, rows = model_and_batch
    documents = model.predict(**batch, protocol=protocol)
    assert len(documents) == 2
    for document, row in zip(documents, rows, strict=True):
        _check_document(document, len(row["tokens"]), len(row["frames"]))
    assert documents[1]["entities"] == [] and documents[1]["chains"] == []
    if protocol == "gold_pairs":
        mentions = sorted(m for chain in documents[0]["chains"] for m in chain)
        assert mentions == sorted([e["start"], e["end"]] for e in rows[0]["entities"])
    else:
        mentions = sorted(m for chain in documents[0]["chains"] for m in chain)
        assert mentions == sorted([e["start"], e["end"]] for e in documents[0]["entities"])
    references = [schema.reference_document(row, relation_types=model.config.relation_types) for row in rows]
    scores = scoring.m3d_scores(documents, references)
    assert 0.0 <= scores["average_f1"] <= 1.0


def test_predict_rejects_unknown_protocol_and_missing_gold(model_and_batch):
    model, batch, _ = model_and_batch
    with pytest.raises(ValueError, match="protocol"):
        model.predict(**batch, protocol="paper")
    without_gold = {k: v for k, v in batch.items() if k != "entity_chain"}
    with pytest.raises(ValueError, match="gold_pairs"):
        model.predict(**without_gold, protocol="gold_pairs")


@pytest.mark.parametrize("protocol", ["gold_pairs", "end_to_end"])
def test_predict_is_decode_then_post_processing(model_and_batch, protocol):
    model, batch, _ = model_and_batch
    processor = M3DProcessor(
        tiny_image_processor(), build_tokenizer(None, "en"), max_frames=model.config.max_frames
    )
    decoded = model.decode(**batch, protocol=protocol)
    assert decoded.entities.dtype == torch.long and decoded.entities.shape[1] == 4
    assert decoded.relations.shape[1] == 4 and decoded.grounding_boxes.shape[1] == 4
    assert processor.post_process_extraction(decoded, batch) == model.predict(**batch, protocol=protocol)


def test_groundings_name_the_row_frame_after_subsampling(model_and_batch):
    """A row with more frames than `max_frames` keeps an even subsample; groundings name the row's own frame."""
    model, _, rows = model_and_batch
    frames = [rows[1]["frames"][0]] * 20
    processor = M3DProcessor(
        tiny_image_processor(), build_tokenizer(None, "en"), max_frames=model.config.max_frames
    )
    batch = processor([{**rows[1], "frames": frames, "groundings": []}])
    kept = batch["frame_indices"][0].tolist()
    assert kept == [0, 3, 5, 8, 11, 14, 16, 19]
    documents = model.predict(**batch, protocol="end_to_end", grounding_threshold=0.0)
    assert documents[0]["groundings"] and {g["frame"] for g in documents[0]["groundings"]} <= set(kept)
