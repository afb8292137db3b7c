"""A tiny M3D model learns all four tasks: it overfits four synthetic clips (generator → builder → processor →
model → decoding → scoring, nothing stubbed) to F1 >= 0.9 on entities, chains and relations and >= 0.5 on
grounding, under the paper's gold-pairs protocol, in well under two minutes on a CPU."""

import time

import torch

from modeling_m3d.builder import M3D
from modeling_m3d.schema import reference_document
from modeling_m3d.scoring import m3d_scores
from modeling_m3d.synthetic import write_synthetic_release
from modeling_m3d.testing import tiny_model_and_processor

STEPS = 400


def test_tiny_model_overfits_four_synthetic_clips(tmp_path):
    root = write_synthetic_release(tmp_path / "release", 4, lang="en", seed=0)
    builder = M3D(config_name="en", data_dir=str(root), cache_dir=str(tmp_path / "cache"))
    builder.download_and_prepare()
    rows = list(builder.as_dataset()["train"])
    assert len(rows) == 4 and all(row["frames"] and row["groundings"] for row in rows)

    torch.manual_seed(0)
    model, processor = tiny_model_and_processor("en", texts=[" ".join(row["tokens"]) for row in rows])
    batch = processor(rows, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    start = time.process_time()
    model.train()
    for _ in range(STEPS):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert time.process_time() - start < 240  # two minutes of wall time on two cores

    model.eval()
    with torch.no_grad():
        predictions = model.predict(**batch, protocol="gold_pairs")
    scores = m3d_scores(predictions, [reference_document(row) for row in rows])
    assert scores["ner_f1"] >= 0.9, scores
    assert scores["coref_f1"] >= 0.9, scores
    assert scores["re_f1"] >= 0.9, scores
    assert scores["grounding_f1"] >= 0.5, scores
