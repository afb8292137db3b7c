"""M³D combined metric: the four task scores, their average F1 and the Table VI error breakdown."""

import evaluate

from modeling_m3d.metric_modules import CheckedInputsMixin, metric_info
from modeling_m3d.scoring import COMBINED, score_validated

_DESCRIPTION = """\
All four M³D tasks at once, on documents {"entities", "chains", "relations", "groundings"}: the scores of the
m3d_ner, m3d_coref, m3d_re and m3d_grounding modules, prefixed ner_, coref_, re_ and grounding_, and
average_f1, the mean of the four task F1s (ner_f1, coref_f1 = CoNLL average, re_f1, grounding_f1). The
<task>_error_* keys are the error analysis of the paper's Table VI, as rates of the task's predictions.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: one dict per document {"entities": [...], "chains": [...], "relations": [...],
        "groundings": [...]}, each value in the format of the matching task module.
    references: the gold documents, in the same format (modeling_m3d.schema.reference_document builds one
        from a dataset row).
    symmetric_types (optional): relation types matched in either order.
Returns:
    ner_*, coref_*, re_*, grounding_* scores, including the Table VI error rates <task>_error_*, and
    average_f1.
Examples:
    >>> metric = evaluate.load("metrics/m3d")
    >>> doc = {"entities": [{"start": 0, "end": 1, "type": "PER"}, {"start": 3, "end": 4, "type": "PER"}],
    ...        "chains": [[[0, 1], [3, 4]]], "relations": [],
    ...        "groundings": [{"frame": 0, "type": "PER", "box": [0.5, 0.5, 0.2, 0.2]}]}
    >>> scores = metric.compute(predictions=[doc], references=[doc])
    >>> scores["ner_f1"], scores["re_f1"], scores["average_f1"]
    (1.0, 0.0, 0.75)
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class M3D(CheckedInputsMixin, evaluate.Metric):
    module_name = "m3d"

    def _info(self):
        return metric_info(self.module_name, _DESCRIPTION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions, references, symmetric_types=None):
        return score_validated(COMBINED, predictions, references, symmetric_types)
