"""One rank of data-parallel training, for launchers such as ``torchrun``.

    torchrun --nnodes M --nproc-per-node N --node-rank I --master-addr HOST --master-port PORT \\
        -m diskgnn.tools.train PACKED --model sage --epochs 10 --metrics m.jsonl --checkpoint ck/

takes exactly the flags of ``diskgnn train`` (the same parser pieces). Each
process reads its rank from the environment torchrun sets and joins the job
(see :mod:`diskgnn.distributed`); rank 0 writes metrics and checkpoints and
prints the report. Without torchrun it behaves like ``diskgnn train``
(``--nproc N`` spawns N local ranks).
"""
from __future__ import annotations

import argparse
import os
import sys

from diskgnn.tools.cli import _common, _train_args, _train_task_arg, cmd_train, run_args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m diskgnn.tools.train",
        description="Data-parallel out-of-core training, one process per rank (launch with torchrun); the flags "
                    "are those of diskgnn train.")
    p.add_argument("packed", help="packed directory on a shared filesystem, or a directory holding shard-<rank> "
                                  "packed directories (each rank reads only its own)")
    _train_args(p)
    _train_task_arg(p)
    _common(p)
    p.set_defaults(func=cmd_train, command="train")
    return p


def main(argv=None) -> int:
    return run_args(build_parser().parse_args(argv))


if __name__ == "__main__":
    code = main()
    if os.environ.get("WORLD_SIZE", "1") != "1":
        # skip interpreter teardown: destroying torch's gloo group at exit can deadlock on the GIL
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
