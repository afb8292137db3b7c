"""M³D visual grounding metric: same frame, same type, IoU > 0.5, one-to-one; AP when scored (Section VI-B)."""

import evaluate

from modeling_m3d.metric_modules import CheckedInputsMixin, metric_info
from modeling_m3d.scoring import score_validated

_CITATION = """\
@inproceedings{yu-etal-2023-grounded,
  title = {Grounded Multimodal Named Entity Recognition on Social Media},
  author = {Yu, Jianfei and Li, Ziyan and Wang, Jieming and Xia, Rui},
  booktitle = {Proceedings of the 61st Annual Meeting of the Association for Computational Linguistics (Volume 1: Long Papers)},
  year = {2023},
  pages = {9141--9154},
}
"""

_DESCRIPTION = """\
Visual grounding on M³D (paper Section VI-B, after Yu et al. 2023): a predicted box is a true positive when it
is in the same frame as a gold box, has the same type, and their IoU is greater than 0.5 (boxes are
cx, cy, w, h, normalised). Each gold box is matched at most once: the true positives of a document are a
maximum bipartite matching on the admissible pairs (scipy's linear_sum_assignment), which does not depend on
the order of the boxes. Counts are summed over documents. When the predicted boxes carry a `score`, it also
reports COCO-style average precision at IoU 0.5 per type (`ap50_<type>`: boxes in decreasing score each
take the free admissible gold box of highest IoU, precision is made non-increasing and read at the 101 recall
points 0, 0.01, ..., 1) and `map50`, their mean over the types with gold boxes. Table VI error rates over
predicted boxes: no gold box of the frame with IoU > 0.5 (`error_boundary`), one but of another type only
(`error_type`).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: one list per document of boxes {"frame": int, "type": str, "box": [cx, cy, w, h],
        "score": float (optional: on every box of the input or on none)}.
    references: the gold boxes, in the same format (no score), one list per document.
Returns:
    precision, recall, f1: micro-averaged, in [0, 1].
    error_boundary, error_type: Table VI error counts over the number of predictions.
    ap50_<type>, map50: only when the predicted boxes carry a score.
Examples:
    >>> metric = evaluate.load("metrics/m3d_grounding")
    >>> gold = [[{"frame": 0, "type": "PER", "box": [0.5, 0.5, 0.2, 0.4]}]]
    >>> pred = [[{"frame": 0, "type": "PER", "box": [0.52, 0.5, 0.2, 0.4], "score": 0.9}]]
    >>> scores = metric.compute(predictions=pred, references=gold)
    >>> scores["f1"], scores["map50"]
    (1.0, 1.0)
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class M3DGrounding(CheckedInputsMixin, evaluate.Metric):
    module_name = "m3d_grounding"

    def _info(self):
        return metric_info(self.module_name, _DESCRIPTION, _KWARGS_DESCRIPTION, _CITATION)

    def _compute(self, predictions, references):
        return score_validated("grounding", predictions, references)
