"""`datasets` builder for the M³D release (configs ``en`` and ``zh``; splits train, validation, test).

Usage (datasets re-imports a builder's module by name, so import it as a module)::

    import sys
    sys.path.insert(0, "dataset_script/m3d")
    import m3d

    builder = m3d.M3D(config_name="zh", data_dir="path/to/m3d")  # data/zh/*_zh.json and img/<video_id>/
    builder.download_and_prepare()
    dataset = builder.as_dataset()

The builder is defined in the package (:mod:`modeling_m3d.builder`, the record parsing and validation in
:mod:`modeling_m3d.release`); this module names it beside its dataset card.
"""

from modeling_m3d.builder import M3D, M3DBuilderConfig, release_fingerprint
from modeling_m3d.release import FEATURES, M3DFormatError, record_to_example

__all__ = [
    "FEATURES",
    "M3D",
    "M3DBuilderConfig",
    "M3DFormatError",
    "record_to_example",
    "release_fingerprint",
]
