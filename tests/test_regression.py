"""The refactors keep the numbers: a fixed tiny model (saved at the pre-refactor commit, two grounding poolings)
gives the same losses and the same predictions, both protocols, on a fixed batch with a text-missing and a
video-missing row (`regression_rows.py`). Decoded as recorded: every grounding slot whose best class is a type
(`grounding_threshold=0`); the relations were recorded again when their rule changed from the arg-max to a
probability of some relation ≥ 0.5 (`config.relation_threshold`), one per pair of chains. The relation labels are
built as recorded, in the annotated direction only (`symmetric_relation_types=[]`; the processor now also labels
the reverse of a symmetric relation, a change of the labels, not of the model, tested in `test_processing.py`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from regression_rows import regression_rows

from modeling_m3d import M3DModel, M3DProcessor

FIXTURES = Path(__file__).parent / "fixtures" / "regression"
# Loss names in the recorded file -> output fields now.
LOSSES = {
    "loss": "loss",
    "ner_loss": "ner_loss",
    "coref_loss": "coref_loss",
    "relation_loss": "re_loss",
    "grounding_type_loss": "grounding_type_loss",
    "grounding_box_loss": "grounding_box_loss",
    "kl_loss": "kl_loss",
}


def _close(actual, expected, where: str) -> None:
    """Same structure, same ints and strings; floats equal to 1e-5. A dict may carry new keys (post-processing
    now adds each relation's predicted chain indices)."""
    if isinstance(expected, dict):
        assert set(expected) <= set(actual), where
        for key in expected:
            _close(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _close(a, e, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, abs=1e-5), where
    else:
        assert actual == expected, where


@pytest.mark.parametrize("name", ["mean", "slots"])
def test_losses_and_predictions_are_unchanged(name):
    folder = FIXTURES / name
    expected = json.loads((folder / "expected.json").read_text(encoding="utf-8"))
    model = M3DModel.from_pretrained(folder)
    processor = M3DProcessor.from_pretrained(folder, symmetric_relation_types=[])
    batch = processor(regression_rows(), return_tensors="pt")
    with torch.no_grad():
        output = model(**batch)
    for recorded, field in LOSSES.items():
        assert float(getattr(output, field)) == pytest.approx(expected["losses"][recorded], abs=1e-5), field
    for protocol, documents in expected["predictions"].items():
        predictions = model.predict(**batch, protocol=protocol, grounding_threshold=0.0)
        _close(predictions, _row_frames(documents, batch["frame_indices"]), protocol)


def _row_frames(documents: list[dict], frame_indices: torch.Tensor) -> list[dict]:
    """The recorded groundings named the kept frame (a row of 10 frames keeps 8); they now name the row's own
    frame, through the batch's `frame_indices`."""
    return [
        {
            **document,
            "groundings": [
                {**g, "frame": int(frame_indices[row, g["frame"]])} for g in document["groundings"]
            ],
        }
        for row, document in enumerate(documents)
    ]
