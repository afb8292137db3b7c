"""M³D relation extraction metric: chain-level triples, one-to-one, symmetric types either way (Section VI-B)."""

import evaluate

from modeling_m3d.metric_modules import CheckedInputsMixin, metric_info
from modeling_m3d.scoring import score_validated

_DESCRIPTION = """\
Relation extraction on M³D at the chain level (paper Section VI-B): a predicted relation can match a gold one
when its subject chain shares at least one mention with the gold subject chain, its object chain shares one
with the gold object chain, and the types are equal. For symmetric types subject and object may also be
swapped. Each gold relation is matched at most once: the true positives of a document are a maximum bipartite
matching between its predicted and gold relations (scipy's linear_sum_assignment on the graph of admissible
pairs, which only joins equal types, so it equals the sum of the per-type matchings), not a greedy one. Counts
are summed over documents. Also reports the Table VI error rates over predicted relations: no gold relation
between the two chains in either direction (`error_unrelated`), and a gold relation between them but none
with the predicted type and direction (`error_type`).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: one list per document of relations {"subject": chain, "object": chain, "type": str}, a chain
        being a list of mentions [start, end].
    references: the gold relations, in the same format, one list per document.
    symmetric_types (optional): relation types matched in either order; default
        modeling_m3d.schema.SYMMETRIC_RELATION_TYPES.
Returns:
    precision, recall, f1: micro-averaged, in [0, 1].
    error_unrelated, error_type: Table VI error counts over the number of predictions.
Examples:
    >>> metric = evaluate.load("metrics/m3d_re")
    >>> gold = [[{"subject": [[0, 1], [7, 8]], "object": [[3, 5]], "type": "PER-PER_couple"}]]
    >>> pred = [[{"subject": [[3, 5]], "object": [[0, 1]], "type": "PER-PER_couple"}]]
    >>> metric.compute(predictions=pred, references=gold)["f1"]
    1.0
    >>> metric.compute(predictions=pred, references=gold, symmetric_types=[])["f1"]
    0.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class M3DRe(CheckedInputsMixin, evaluate.Metric):
    module_name = "m3d_re"

    def _info(self):
        return metric_info(self.module_name, _DESCRIPTION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions, references, symmetric_types=None):
        return score_validated("re", predictions, references, symmetric_types)
