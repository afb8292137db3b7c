"""The fixed batch of the regression test (`test_regression.py`): four schema rows, one text-missing and one
video-missing, with frames drawn from a seeded generator (independent of the project's own code)."""

from __future__ import annotations

import numpy as np
from PIL import Image

_WORDS = (
    "Anna Smith was born in Paris in 1950 . She studied at the Sorbonne and later moved to Berlin , "
    "where Anna worked for Siemens until 1990 . Her brother Tom Smith visited her there ."
).split(" ")


def _frames(seed: int, count: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in range(count)]


def _annotated_text() -> dict:
    entities = [
        {"start": 0, "end": 2, "type": "PER", "chain": 0},
        {"start": 5, "end": 6, "type": "LOC", "chain": 1},
        {"start": 7, "end": 8, "type": "TIME", "chain": 2},
        {"start": 9, "end": 10, "type": "PER", "chain": 0},
        {"start": 13, "end": 14, "type": "ORG", "chain": 3},
        {"start": 18, "end": 19, "type": "LOC", "chain": 4},
        {"start": 22, "end": 23, "type": "PER", "chain": 0},
        {"start": 25, "end": 26, "type": "ORG", "chain": 5},
        {"start": 27, "end": 28, "type": "TIME", "chain": 6},
        {"start": 31, "end": 33, "type": "PER", "chain": 7},
    ]
    chains = [
        {"id": f"L{i}", "type": t}
        for i, t in enumerate(["PER", "LOC", "TIME", "ORG", "LOC", "ORG", "TIME", "PER"])
    ]
    relations = [
        {"subject": 0, "object": 1, "type": "PER-LOC_birth"},
        {"subject": 0, "object": 2, "type": "PER-TIME_birth_time"},
        {"subject": 0, "object": 5, "type": "PER-ORG_member"},
        {"subject": 7, "object": 0, "type": "PER-PER_brother_sister"},
    ]
    return {"tokens": list(_WORDS), "entities": entities, "chains": chains, "relations": relations}


def regression_rows() -> list[dict]:
    """Full, text-missing, video-missing and full rows, in that order."""
    groundings = [
        {"frame": 0, "type": "PER", "box": [0.5, 0.5, 0.4, 0.6]},
        {"frame": 2, "type": "LOC", "box": [0.3, 0.4, 0.2, 0.2]},
        {"frame": 2, "type": "PER", "box": [0.7, 0.6, 0.3, 0.5]},
    ]
    empty_text = {"tokens": [], "entities": [], "chains": [], "relations": []}
    return [
        {
            "id": "full-0",
            "lang": "en",
            **_annotated_text(),
            "frames": _frames(0, 4),
            "groundings": groundings,
        },
        {
            "id": "text-missing",
            "lang": "en",
            **empty_text,
            "frames": _frames(1, 3),
            "groundings": groundings[:2],
        },
        {"id": "video-missing", "lang": "en", **_annotated_text(), "frames": [], "groundings": []},
        {
            "id": "full-1",
            "lang": "en",
            **_annotated_text(),
            "frames": _frames(2, 10),
            "groundings": groundings[1:],
        },
    ]
