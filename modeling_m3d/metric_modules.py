"""The `evaluate` side of the metric modules under `metrics/`: their features, info, citation and input checks.

The maths lives in `modeling_m3d.scoring`; each `metrics/<name>/<name>.py` is a thin shell: an `evaluate.Metric`
with `CheckedInputsMixin`, an `_info` returning `metric_info(name, ...)` and a `_compute` calling
`scoring.score_validated` on the documents that `add_batch` checked and evaluate stored.
"""

from __future__ import annotations

from typing import Any

import datasets
import evaluate

from .schema import TASK_FIELDS
from .scoring import COMBINED, validate_documents

# Metric module name -> the task it scores (`scoring.COMBINED` for whole documents).
MODULE_TASKS = {
    "m3d_ner": "ner",
    "m3d_coref": "coref",
    "m3d_re": "re",
    "m3d_grounding": "grounding",
    "m3d": COMBINED,
}
# The paper's BibTeX entry: the first citation of every metric module (see `metric_info`).
M3D_CITATION = """\
@misc{liu-m3d,
  title = {M$^3$D: A Multimodal, Multilingual and Multitask Dataset for Grounded Document-level Information Extraction},
  author = {Liu, Jiang and Li, Bobo and Yang, Xinran and Yang, Na and Fei, Hao and Zhang, Mingyao and Li, Fei and Ji, Donghong},
}
"""


def _task(name: str) -> str:
    if name not in MODULE_TASKS:
        raise ValueError(f"unknown metric module {name!r}: expected one of {list(MODULE_TASKS)}")
    return MODULE_TASKS[name]


def metric_inputs(name: str, predictions: Any, references: Any) -> dict[str, list]:
    """The `add_batch` inputs of the metric module `name`, checked by `scoring.validate_documents`.

    evaluate 0.4.6 checks a batch's first document itself and fails with a bare `KeyError` on a missing key
    (an absent optional `score` included): this raises the clear error first, naming side, document and field,
    and returns the documents in the checked form (every box with a `score` key, None if absent).
    """
    predictions, references = validate_documents(_task(name), predictions, references)
    return {"predictions": predictions, "references": references}


class CheckedInputsMixin:
    """For the `evaluate.Metric` of the metric modules: checks and completes inputs with `metric_inputs`.

    Set `module_name` on the class (m3d_ner, m3d_coref, m3d_re, m3d_grounding or m3d). `compute(predictions=...,
    references=...)` goes through `add_batch` too, so `_compute` always receives checked documents.
    """

    module_name: str

    def add_batch(self, *, predictions=None, references=None, **kwargs) -> None:
        """Add a batch of documents (checked with `metric_inputs`)."""
        super().add_batch(**metric_inputs(self.module_name, predictions, references), **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs) -> None:
        """Add one document (checked with `metric_inputs`)."""
        self.add_batch(predictions=[prediction], references=[reference], **kwargs)


def _task_feature(task: str) -> Any:
    """The `datasets` feature of one document's value of `task`."""
    chain = datasets.List(datasets.List(datasets.Value("int32")))
    if task == "ner":
        return datasets.List(
            {
                "start": datasets.Value("int32"),
                "end": datasets.Value("int32"),
                "type": datasets.Value("string"),
            }
        )
    if task == "coref":
        return datasets.List(chain)
    if task == "re":
        return datasets.List({"subject": chain, "object": chain, "type": datasets.Value("string")})
    return datasets.List(
        {
            "frame": datasets.Value("int32"),
            "type": datasets.Value("string"),
            "box": datasets.List(datasets.Value("float64")),
            "score": datasets.Value("float64"),
        }
    )


def metric_features(name: str) -> datasets.Features:
    """`datasets.Features` of the metric module `name` (m3d_ner, m3d_coref, m3d_re, m3d_grounding or m3d).

    Boxes and scores are float64: float32 rounding would move IoUs across the 0.5 threshold.
    """
    task = _task(name)
    if task == COMBINED:
        value = {field: _task_feature(t) for t, field in TASK_FIELDS.items()}
    else:
        value = _task_feature(task)
    return datasets.Features({"predictions": value, "references": value})


def metric_info(
    name: str, description: str, inputs_description: str, citation: str = "", **kwargs: Any
) -> evaluate.MetricInfo:
    """The `evaluate.MetricInfo` of the metric module `name`: its `metric_features`, and `citation` after the
    paper's (`M3D_CITATION`). Further `kwargs` go to `MetricInfo` (e.g. `reference_urls`)."""
    return evaluate.MetricInfo(
        description=description,
        citation=M3D_CITATION + citation,
        inputs_description=inputs_description,
        features=metric_features(name),
        **kwargs,
    )
