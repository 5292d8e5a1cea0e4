"""``mmalign plugins`` (every registered name, with the plugin that provides it) and ``mmalign
demo NAME --out DIR`` (a registered demo, in a fresh ``--out``, on one torch thread)."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

OVERWRITE_HELP = ("move what an earlier run left in --out aside (to OUT.previous-TIME) and "
                  "start anew; without it a non-empty --out is refused")


def plugins_command(args: argparse.Namespace) -> None:
    from mmalign.plugins import KINDS, registry

    reg = registry()
    for kind in KINDS:
        print(f"{kind}:")
        for name in reg.names(kind):
            entry = reg.entry(kind, name)
            extra = ""
            if kind == "losses":
                spec = entry.obj
                flags = [] if spec.needs_reference else ["reference-free"]
                flags += [] if spec.paired else ["unpaired"]
                extra = f"  {spec.summary}" + (f" [{', '.join(flags)}]" if flags else "")
            elif entry.meta.get("suffixes"):
                extra = f"  files: {', '.join(entry.meta['suffixes'])}"
            print(f"  {name:<18} from {entry.source}{extra}")


def demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="text (more come from plugins: see `mmalign plugins`)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run (for smoke tests)")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def demo_command(args: argparse.Namespace) -> None:
    from mmalign.plugins import registry
    from mmalign_runs.output_dir import fresh_out

    run = registry().get("demos", args.name)
    options = {"quick": True} if args.quick else {}
    fresh_out(args.out, args.overwrite)
    with one_thread():
        run(Path(args.out), **options)


@contextlib.contextmanager
def one_thread():
    """The demos' models are tiny: a second torch thread gains little, and on a busy machine a thread
    waiting for a core costs far more (the text demo took 6x longer with 2 threads next to other jobs)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
