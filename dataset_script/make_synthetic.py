"""Generate a small synthetic M³D release that carries a learnable signal in all four tasks.

The generator is :func:`modeling_m3d.synthetic.write_synthetic_release` (its docstring describes the signals);
this is its command line::

    python dataset_script/make_synthetic.py --output_dir DIR --docs 100 --lang en --seed 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

from modeling_m3d.schema import LANGUAGES
from modeling_m3d.synthetic import write_synthetic_release

__all__ = ["main", "write_synthetic_release"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True, type=Path)
    parser.add_argument("--docs", type=int, default=100, help="training documents")
    parser.add_argument(
        "--eval_docs", type=int, default=None, help="dev and test documents each (default docs//4, >= 2)"
    )
    parser.add_argument("--lang", choices=LANGUAGES, default="en")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=4, help="frames per document (0: no video)")
    parser.add_argument("--image_size", type=int, default=64)
    args = parser.parse_args(argv)
    path = write_synthetic_release(
        args.output_dir, args.docs, args.lang, args.seed, args.frames, args.image_size, args.eval_docs
    )
    print(f"wrote a synthetic {args.lang} release to {path}")


if __name__ == "__main__":
    main()
