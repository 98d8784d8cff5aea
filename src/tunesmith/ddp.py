"""One rank of a data-parallel training run: ``python -m tunesmith.ddp RUN_DIR [--resume]`` under torchrun.

Started by :func:`tunesmith.train.distributed.launch` (``train.nproc > 1``), never by hand: every rank runs
the train stage on the prepared run; rank 0 writes. A rank that meets bad input leaves its one-line error in
the run folder for the launcher and exits 2.
"""
from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from . import pipeline
    from .errors import TunesmithError
    from .fsutil import atomic_write_text
    from .train.distributed import RANK_ERROR, current
    run_dir = Path(argv[0])
    try:
        pipeline.train(run_dir, resume="--resume" in argv[1:])
    except TunesmithError as e:
        if current().main:
            atomic_write_text(run_dir / RANK_ERROR, str(e) + "\n")
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
