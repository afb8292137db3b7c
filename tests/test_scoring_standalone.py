"""Scoring stands alone: `modeling_m3d.scoring` and the five metric modules work where torch and PyAV are absent.

A subprocess runs on a copy of the site-packages folder (symbolic links) without torch and PyAV, as where they
are not installed, imports the scoring module, loads each metric module by its path and computes it on a small
example; this test then checks the values and that none of the model code got imported.

Blocking with `sys.modules["torch"] = None` does not work here: `import evaluate` imports `scipy.stats`, whose
array-API helpers read `sys.modules["torch"].Tensor` when the key is present, and fail on None.
"""

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# torch (with functorch, torchgen, torchvision, ...) and PyAV (`av`), their .dist-info and bundled libraries
_BLOCKED = re.compile(r"^(torch\w*|functorch|av)([-.].*)?$", re.IGNORECASE)

_SCRIPT = """
import importlib.util
import json
import sys

assert importlib.util.find_spec("torch") is None and importlib.util.find_spec("av") is None

import evaluate

import modeling_m3d.scoring

repo = sys.argv[1]
box = {"frame": 0, "type": "PER", "box": [0.5, 0.5, 0.2, 0.4]}
pred = {
    "entities": [{"start": 0, "end": 2, "type": "PER"}, {"start": 5, "end": 6, "type": "ORG"}],
    "chains": [[[0, 2], [3, 5], [10, 12]], [[6, 8], [8, 10], [10, 12]]],
    "relations": [{"subject": [[3, 5]], "object": [[0, 2]], "type": "PER-PER_couple"}],
    "groundings": [{**box, "box": [0.52, 0.5, 0.2, 0.4], "score": 0.9}],
}
gold = {
    "entities": [{"start": 0, "end": 2, "type": "PER"}, {"start": 5, "end": 6, "type": "LOC"}],
    "chains": [[[0, 2], [3, 5]], [[6, 8], [8, 10]]],
    "relations": [{"subject": [[0, 2], [7, 8]], "object": [[3, 5]], "type": "PER-PER_couple"}],
    "groundings": [box],
}
fields = {"m3d_ner": "entities", "m3d_coref": "chains", "m3d_re": "relations", "m3d_grounding": "groundings"}
scores = {}
for name in (*fields, "m3d"):
    metric = evaluate.load(f"{repo}/metrics/{name}", keep_in_memory=True)
    field = fields.get(name)
    predictions, references = ([pred], [gold]) if field is None else ([pred[field]], [gold[field]])
    scores[name] = metric.compute(predictions=predictions, references=references)
print(json.dumps({"scores": scores, "modules": sorted(sys.modules)}))
"""


def _site_packages_without_torch_and_av(folder: Path) -> Path:
    """`folder` filled with links to every installed package but torch and PyAV."""
    for site_packages in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        for entry in Path(site_packages).iterdir():
            if not _BLOCKED.match(entry.name) and not (folder / entry.name).exists():
                (folder / entry.name).symlink_to(entry)
    return folder


@pytest.fixture(scope="module")
def standalone_run(tmp_path_factory) -> dict:
    site_packages = _site_packages_without_torch_and_av(tmp_path_factory.mktemp("site-packages"))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(site_packages)]),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    # -S: none of the interpreter's own site-packages folders (nor the user's), only the copy above
    result = subprocess.run(
        [sys.executable, "-S", "-c", _SCRIPT, str(REPO)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_scoring_and_metric_modules_need_no_torch_av_or_model_code(standalone_run):
    modules = set(standalone_run["modules"])
    assert "modeling_m3d.scoring" in modules and "modeling_m3d.metric_modules" in modules
    assert not [name for name in modules if name.split(".")[0] in ("torch", "av")]
    model_code = {
        "modeling_m3d.modeling_m3d",
        "modeling_m3d.processing_m3d",
        "modeling_m3d.configuration_m3d",
    }
    assert not modules & model_code


def test_metric_modules_compute_without_torch(standalone_run):
    scores = standalone_run["scores"]
    # entities: the PER span right, the second span with the wrong type
    assert scores["m3d_ner"]["f1"] == 0.5 and scores["m3d_ner"]["error_type"] == 0.5
    # chains: the reference scorer's values for this key and response (see test_scoring)
    coref = scores["m3d_coref"]
    assert (coref["muc_recall"], coref["muc_precision"]) == (1.0, 0.5)
    assert (coref["b3_recall"], coref["b3_precision"]) == (1.0, pytest.approx(4 / 9))
    assert (coref["ceafe_f1"], coref["ceafm_precision"]) == (pytest.approx(0.8), pytest.approx(2 / 3))
    # relations: a symmetric type matches the swapped gold relation through shared mentions
    assert scores["m3d_re"]["f1"] == 1.0
    assert scores["m3d_grounding"]["f1"] == 1.0 and scores["m3d_grounding"]["map50"] == 1.0
    combined = scores["m3d"]
    for task, name in (
        ("ner", "m3d_ner"),
        ("coref", "m3d_coref"),
        ("re", "m3d_re"),
        ("grounding", "m3d_grounding"),
    ):
        assert combined[f"{task}_f1"] == pytest.approx(scores[name]["f1"])
    assert combined["average_f1"] == pytest.approx((0.5 + coref["f1"] + 1.0 + 1.0) / 4)
