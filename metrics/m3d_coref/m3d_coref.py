"""M³D entity chain metric: MUC, B³, CEAF-e, CEAF-m and their CoNLL-2012 average (paper Section VI-B)."""

import evaluate

from modeling_m3d.metric_modules import CheckedInputsMixin, metric_info
from modeling_m3d.scoring import score_validated

_CITATION = """\
@inproceedings{vilain-etal-1995-model,
  title = {A Model-Theoretic Coreference Scoring Scheme},
  author = {Vilain, Marc and Burger, John and Aberdeen, John and Connolly, Dennis and Hirschman, Lynette},
  booktitle = {Sixth Message Understanding Conference (MUC-6)},
  year = {1995},
}
@inproceedings{bagga-baldwin-1998-algorithms,
  title = {Algorithms for Scoring Coreference Chains},
  author = {Bagga, Amit and Baldwin, Breck},
  booktitle = {The First International Conference on Language Resources and Evaluation Workshop on Linguistics Coreference},
  year = {1998},
}
@inproceedings{luo-2005-coreference,
  title = {On Coreference Resolution Performance Metrics},
  author = {Luo, Xiaoqiang},
  booktitle = {Proceedings of HLT/EMNLP 2005},
  year = {2005},
}
@inproceedings{pradhan-etal-2014-scoring,
  title = {Scoring Coreference Partitions of Predicted Mentions: A Reference Implementation},
  author = {Pradhan, Sameer and Luo, Xiaoqiang and Recasens, Marta and Hovy, Eduard and Ng, Vincent and Strube, Michael},
  booktitle = {Proceedings of ACL 2014 (Volume 2: Short Papers)},
  year = {2014},
}
"""

_DESCRIPTION = """\
Entity chain extraction on M³D, scored as the paper does (after Tang and Hardmeier 2023) with the average of
MUC, B³ and CEAF, using the definitions of the CoNLL-2012 reference scorer v8.01: MUC counts partitions (Vilain
et al. 1995), B³ averages per mention (Bagga and Baldwin 1998), CEAF-e (φ4) and CEAF-m (φ3) align chains one to
one (Luo 2005). Singleton chains count; a mention present on one side only counts in that side's
denominators. Repeated mentions as in the reference scorer: in the references every appearance stays (a
mention's gold chain is the last one holding it); in the predictions a repeat of a gold mention is removed
(its first appearance stays) and a mention in no gold chain keeps every appearance. Numerators and
denominators are summed over documents before dividing. `f1` is the CoNLL-2012 average of the MUC, B³ and
CEAF-e F1s. Also reports the Table VI error rates over predicted chains: chains that are not inside one gold
chain (`error_wrong_entity`) and chains strictly inside one (`error_missing_entity`).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: one list per document of chains; a chain is a list of mentions [start, end] (token offsets,
        end exclusive).
    references: the gold chains, in the same format, one list per document.
Returns:
    muc_precision, muc_recall, muc_f1, b3_*, ceafe_*, ceafm_*: each metric's scores, in [0, 1] (CEAF above 1
        only where a gold chain repeats a mention).
    f1: (muc_f1 + b3_f1 + ceafe_f1) / 3.
    error_wrong_entity, error_missing_entity: Table VI error counts over the number of predicted chains.
Examples:
    >>> metric = evaluate.load("metrics/m3d_coref")
    >>> gold = [[[[0, 1]], [[2, 3], [4, 5]], [[6, 7], [8, 9], [10, 11]]]]
    >>> pred = [[[[0, 1]], [[2, 3], [4, 5]], [[6, 7], [8, 9], [10, 11]]]]
    >>> metric.compute(predictions=pred, references=gold)["f1"]
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class M3DCoref(CheckedInputsMixin, evaluate.Metric):
    module_name = "m3d_coref"

    def _info(self):
        return metric_info(
            self.module_name,
            _DESCRIPTION,
            _KWARGS_DESCRIPTION,
            _CITATION,
            reference_urls=["https://github.com/conll/reference-coreference-scorers"],
        )

    def _compute(self, predictions, references):
        return score_validated("coref", predictions, references)
