"""M³D entity recognition metric: exact span-and-type precision, recall and F1 (paper Section VI-B)."""

import evaluate

from modeling_m3d.metric_modules import CheckedInputsMixin, metric_info
from modeling_m3d.scoring import score_validated

_DESCRIPTION = """\
Entity recognition on M³D: a predicted entity is a true positive when its token span and its type both equal
those of a gold entity (paper Section VI-B). Counts are summed over documents before precision and recall
(micro average). On BIO tag sequences (see `modeling_m3d.scoring.bio_to_spans`) the scores equal seqeval's in
strict IOB2 mode. Also reports the Table VI error rates: predictions whose span is no gold span
(`error_boundary`), and predictions whose span is a gold span but whose type is wrong (`error_type`).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: one list per document of entities {"start": int, "end": int, "type": str}; token offsets,
        `end` exclusive.
    references: the gold entities, in the same format, one list per document.
Returns:
    precision, recall, f1: micro-averaged over all entities, in [0, 1] (0 when there is nothing to divide).
    error_boundary, error_type: Table VI error counts over the number of predictions.
Examples:
    >>> metric = evaluate.load("metrics/m3d_ner")
    >>> gold = [[{"start": 0, "end": 2, "type": "PER"}, {"start": 5, "end": 6, "type": "LOC"}]]
    >>> pred = [[{"start": 0, "end": 2, "type": "PER"}, {"start": 5, "end": 6, "type": "ORG"}]]
    >>> metric.compute(predictions=pred, references=gold)["f1"]
    0.5
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class M3DNer(CheckedInputsMixin, evaluate.Metric):
    module_name = "m3d_ner"

    def _info(self):
        return metric_info(self.module_name, _DESCRIPTION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions, references):
        return score_validated("ner", predictions, references)
