"""Inter-annotator agreement of two annotations of the same clips: Cohen's κ and F1 per task.

    python dataset_script/agreement.py --a DIR_A --b DIR_B --lang en|zh [--split dev] [--output FILE.json]
        [--show 10]

Each of ``DIR_A`` and ``DIR_B`` is either a release copy (``data/<lang>/<split>_<lang>.json``, frames and
YOLO labels in ``img/<video_id>/``) or a BRAT folder as ``import_brat.py export`` writes it (``<split>/``
with ``.txt``/``.ann`` files, ``img/``, ``annotation.conf``), which is imported into a temporary release
copy first. Records are read and validated by the builder's ``record_to_example``. Prints entity κ and the
F1 of each task, then the clips that differ most; ``--output`` writes the whole report (see
``modeling_m3d.agreement.agreement``) as JSON, atomically. Clips present in one set only are named and
counted; a clip whose text differs between the sets is an error naming it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from modeling_m3d.agreement import agreement
from modeling_m3d.brat import SPLITS, import_brat
from modeling_m3d.release import iter_examples
from modeling_m3d.schema import LANGUAGES, TASK_NAMES, TASKS


def release_file(folder: Path, lang: str, split: str) -> Path:
    """Where a release copy keeps one split's annotation file."""
    return folder / "data" / lang / f"{split}_{lang}.json"


def read_rows(folder: str | Path, lang: str, split: str) -> list[dict[str, Any]]:
    """The schema rows of one split of a release copy or a BRAT folder (imported into a temporary folder).

    Raises `FileNotFoundError` when ``folder`` is neither.
    """
    folder = Path(folder)
    if release_file(folder, lang, split).is_file():
        return _rows(release_file(folder, lang, split), lang, folder / "img")
    if (folder / split).is_dir() and any((folder / split).glob("*.ann")):
        with tempfile.TemporaryDirectory(prefix="m3d-agreement-") as staging:
            return _rows(import_brat(folder, staging, lang, split), lang, folder / "img")
    raise FileNotFoundError(
        f"{folder}: neither a release copy (no {release_file(folder, lang, split)}) nor a BRAT folder "
        f"(no .ann files in {folder / split})"
    )


def _rows(annotation_file: Path, lang: str, image_dir: Path) -> list[dict[str, Any]]:
    """Rows of one annotation file, frames from ``image_dir`` (a BRAT folder's ``img/`` is the release's)."""
    return list(iter_examples(annotation_file, lang, image_dir))


def write_json(report: dict[str, Any], path: str | Path) -> None:
    """Write ``report`` to ``path`` through a temporary file in the same folder, renamed when complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(report, file, ensure_ascii=False, indent=1)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def summary(report: dict[str, Any], show: int) -> str:
    """The report in a few lines: clips, κ, the F1 of each task, the ``show`` clips that differ most."""
    clips, tasks = report["clips"], report["tasks"]
    lines = [f"clips compared: {clips['compared']}"]
    for side in ("a", "b"):
        only = clips[f"only_in_{side}"]
        if only["count"]:
            lines.append(f"clips only in {side.upper()} ({only['count']}): {', '.join(only['ids'])}")
    lines.append(f"{'Entity (token κ)':<18}{_percent(tasks['ner']['kappa'])}")
    for task in TASKS:
        counts = f"(A {tasks[task]['a']}, B {tasks[task]['b']})"
        lines.append(f"{TASK_NAMES[task] + ' F1':<18}{_percent(tasks[task]['f1'])}  {counts}")
    lines.append(f"{'average F1':<18}{_percent(report['overall']['average_f1'])}")
    lines.append(f"clips that differ most (κ, {', '.join(TASKS)} F1):")
    for clip in report["per_clip"][:show]:
        scores = " ".join(_percent(clip[f"{task}_f1"]) for task in TASKS)
        lines.append(f"  {clip['id']:<20}{_percent(clip['kappa'])} {scores}")
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return f"{'-':>6}" if value is None else f"{100 * value:6.2f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", required=True, type=Path, help="first annotation: release copy or BRAT folder")
    parser.add_argument("--b", required=True, type=Path, help="second annotation of the same clips")
    parser.add_argument("--lang", required=True, choices=LANGUAGES)
    parser.add_argument("--split", default="dev", choices=SPLITS, help="release split name (default: dev)")
    parser.add_argument("--output", type=Path, help="write the whole report here as JSON")
    parser.add_argument(
        "--show", type=int, default=10, help="how many of the clips that differ most to print"
    )
    args = parser.parse_args(argv)
    try:
        report = agreement(read_rows(args.a, args.lang, args.split), read_rows(args.b, args.lang, args.split))
    except (ValueError, FileNotFoundError) as error:  # bad input: the message names file, clip and field
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    report = {"a": str(args.a), "b": str(args.b), "lang": args.lang, "split": args.split, **report}
    if args.output is not None:
        write_json(report, args.output)
    print(summary(report, args.show))
    return report


if __name__ == "__main__":
    main()
