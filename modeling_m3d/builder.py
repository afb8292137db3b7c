"""The `datasets` builder of the M³D release (configs ``en`` and ``zh``; splits train, validation, test).

``dataset_script/m3d/m3d.py`` re-exports :class:`M3D` as the documented builder module::

    import sys
    sys.path.insert(0, "dataset_script/m3d")
    import m3d

    builder = m3d.M3D(config_name="zh", data_dir="path/to/m3d")  # data/zh/*_zh.json and img/<video_id>/
    builder.download_and_prepare()
    dataset = builder.as_dataset()

The class lives here so that the package (``modeling_m3d.data``) builds the very same dataset without touching
``sys.path``, and so that ``datasets`` finds its module by name wherever the package is installed. Its dataset name
is ``m3d`` (the cache folder ``<cache_dir>/m3d/<config id>/`` and the shard names ``m3d-<split>``), as when it was
defined in ``m3d.py``. Without ``data_dir`` the annotation files are downloaded from the release's public
repository; frames only come from a local copy of the image archive (``<data_dir>/img`` or ``image_dir=...``).
The record parsing and validation live in :mod:`modeling_m3d.release`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import datasets
from datasets.exceptions import DatasetGenerationError
from datasets.fingerprint import Hasher

from .release import CITATION, DESCRIPTION, FEATURES, HOMEPAGE, M3DFormatError, iter_examples, release_sources

# The name `datasets` gives the cache folder and the prepared files (it defaults to the defining module's name).
DATASET_NAME = "m3d"

logger = datasets.logging.get_logger(__name__)

_VERSION = datasets.Version("1.0.0")


@dataclass
class M3DBuilderConfig(datasets.BuilderConfig):
    """One language of the release.

    Args:
        lang: ``"en"`` or ``"zh"``.
        image_dir: folder holding ``<video_id>/`` frame folders; defaults to ``<data_dir>/img``.
    """

    lang: str = "en"
    image_dir: str | None = None


class M3D(datasets.GeneratorBasedBuilder):
    """M³D: one row per video clip with its document, entities, chains, relations, frames and boxes."""

    VERSION = _VERSION
    BUILDER_CONFIG_CLASS = M3DBuilderConfig
    BUILDER_CONFIGS = [
        M3DBuilderConfig(name="en", lang="en", version=_VERSION, description="English clips."),
        M3DBuilderConfig(name="zh", lang="zh", version=_VERSION, description="Chinese clips."),
    ]
    DEFAULT_CONFIG_NAME = "en"

    def __init__(self, *args, dataset_name: str | None = DATASET_NAME, **kwargs) -> None:
        super().__init__(*args, dataset_name=dataset_name, **kwargs)

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=DESCRIPTION, features=FEATURES, homepage=HOMEPAGE, citation=CITATION
        )

    def _split_generators(self, dl_manager: datasets.DownloadManager) -> list[datasets.SplitGenerator]:
        image_dir = self._image_dir()
        sources = release_sources(self.config.lang, self.config.data_dir)
        generators = []
        for split, source in sources.items():
            try:
                path = dl_manager.download(source)
            except FileNotFoundError as error:
                if not _is_absent(error):
                    raise ConnectionError(
                        f"M3D {self.config.name}: cannot download {source}: {error.__cause__}"
                    ) from error
                logger.warning(f"M3D {self.config.name}: {source} not found, the {split!r} split is left out")
                continue
            gen_kwargs = {"path": path, "source": source, "image_dir": image_dir}
            generators.append(datasets.SplitGenerator(name=split, gen_kwargs=gen_kwargs))
        if not generators:
            raise FileNotFoundError(
                f"M3D {self.config.name}: no annotation file found, looked for {', '.join(sources.values())}"
            )
        return generators

    def _generate_examples(self, path: str, source: str, image_dir: str | None):
        yield from enumerate(iter_examples(path, self.config.lang, image_dir, source=source))

    def _download_and_prepare(self, dl_manager, verification_mode, **prepare_split_kwargs):
        """As the base class, but a release format error surfaces as itself, not wrapped by `datasets`.

        It is raised after the ``except`` block: raised inside it, Python would set its ``__context__`` to the
        wrapper, whose ``__cause__`` is the error itself, a cycle that never ends a walk along the chain.
        """
        try:
            super()._download_and_prepare(dl_manager, verification_mode, **prepare_split_kwargs)
            return
        except DatasetGenerationError as error:
            if not isinstance(error.__cause__, M3DFormatError):
                raise
            format_error = error.__cause__
        raise format_error

    def _create_builder_config(self, config_name=None, custom_features=None, config_id=None, **config_kwargs):
        """As the base class, but the config id (which names the cache folder) ends with the
        :func:`release_fingerprint` of the local inputs, unless ``config_id`` is given.

        The base class derives the id from the config's arguments, i.e. the folder paths only, so a release
        rewritten in the same folder would be served from the stale cache; `datasets` fingerprints its own
        data files by modification time in the same way.
        """
        config, default_id = super()._create_builder_config(
            config_name, custom_features, config_id, **config_kwargs
        )
        return config, config_id or f"{default_id}-{release_fingerprint(config)}"

    def _image_dir(self) -> str | None:
        """The frame folder: ``image_dir`` if set, else ``<data_dir>/img`` if present, else none."""
        if self.config.image_dir is not None and not Path(self.config.image_dir).is_dir():
            raise FileNotFoundError(
                f"M3D {self.config.name}: image_dir {self.config.image_dir} is not a folder"
            )
        image_dir = _image_folder(self.config)
        if image_dir is None:
            logger.warning(
                f"M3D {self.config.name}: no image folder, frames and groundings are left empty "
                "(the image archive is a manual download, see the dataset card)"
            )
        return image_dir


def release_fingerprint(config: M3DBuilderConfig) -> str:
    """A hash of the path, size and modification time of each local input of ``config``.

    The inputs are the annotation files under ``data_dir`` (none when they are downloaded) and every file
    under the frame folder: one ``stat`` per file, no file is read.
    """
    paths = list(release_sources(config.lang, config.data_dir).values()) if config.data_dir else []
    image_dir = _image_folder(config)
    if image_dir is not None:
        for folder, subfolders, names in os.walk(image_dir):
            subfolders.sort()
            paths.extend(os.path.join(folder, name) for name in sorted(names))
    stats = []
    for path in paths:
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            continue
        stats.append((path, stat.st_size, stat.st_mtime_ns))
    return Hasher.hash(stats)


def _image_folder(config: M3DBuilderConfig) -> str | None:
    """The resolved ``image_dir`` if it is a folder, else ``<data_dir>/img`` if it is one, else None."""
    if config.image_dir is not None:
        candidate = Path(config.image_dir)
    elif config.data_dir is not None:
        candidate = Path(config.data_dir) / "img"
    else:
        return None
    return str(candidate.resolve()) if candidate.is_dir() else None


def _is_absent(error: FileNotFoundError) -> bool:
    """A local file that does not exist, or a URL answered with 404 (rather than a network failure)."""
    cause = error.__cause__
    return cause is None or getattr(cause, "status", None) == 404
