"""``mmalign`` command line: train, and the commands plugins add (plugins, demo, check, eval, score, sweep, push).

Exit codes: 0 done; 2 bad input (config, data, unknown names) or a machine that refuses (disk full,
read-only path), printed as one paragraph; 3 training stopped (non-finite loss); 130 interrupted;
1 a bug: a short message and the path of a log file holding the traceback. Never a raw traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from mmalign.errors import MmalignError, user_error


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmalign", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train from a YAML config")
    add_config_arguments(t)
    t.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue from the latest checkpoint in output_dir (or the one given)")
    t.add_argument("--force-resume", action="store_true",
                   help="with --resume: continue even from a checkpoint written with other settings "
                        "(model, data, loss, batch, lr, seed, ...; the differences are printed)")
    t.add_argument("--overwrite", action="store_true",
                   help="start anew in an output_dir that holds files: they are moved (not deleted) "
                        "to OUTPUT_DIR.previous-<time>")
    _add_plugin_commands(sub)
    return p


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """CONFIG and ``--set KEY=VALUE``: what every command that reads a config takes."""
    parser.add_argument("config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.lr=1e-5 (repeatable)")


def _add_plugin_commands(sub) -> None:
    """The commands plugins register through ``mmalign_register_commands`` (e.g. ``sweep``)."""
    from mmalign.plugins import registry

    reg = registry()
    for name in reg.names("commands"):
        if name in sub.choices:
            continue  # a core command (train) keeps its name
        entry = reg.entry("commands", name)
        parser = sub.add_parser(name, help=entry.meta.get("help", f"from {entry.source}"))
        if entry.meta.get("arguments"):
            entry.meta["arguments"](parser)


def load_checked(args, command: str):
    """The config of a command, validated whole (values, names, modality, hardware) before anything
    loads; remembers output_dir for the crash log."""
    from mmalign.config import load_config
    from mmalign.run_validation import validate_for_run

    cfg = load_config(args.config, args.overrides)
    args.output_dir = cfg.output_dir
    validate_for_run(cfg, args.config, command=command)
    return cfg


def cmd_train(args) -> None:
    from mmalign.engine import train

    cfg = load_checked(args, "train")
    if args.force_resume and not args.resume:
        raise MmalignError("--force-resume needs --resume (it only relaxes the check of which run "
                           "a checkpoint belongs to).")
    if args.overwrite and args.resume:
        raise MmalignError("--overwrite starts a new run and --resume continues one: pass one of them.")
    result = train(cfg, resume=args.resume, overwrite=args.overwrite, force_resume=args.force_resume)
    from accelerate import PartialState

    if PartialState().is_main_process:  # once, not once per process
        print(f"final model: {result.final_dir}")


COMMANDS = {"train": cmd_train}


def _run(args) -> None:
    from mmalign.plugins import registry

    run = COMMANDS.get(args.command) or registry().get("commands", args.command)
    run(args)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = None
    try:
        args = _parser().parse_args(argv)
        _run(args)
    except KeyboardInterrupt:
        print("mmalign: interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (`mmalign plugins | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as the shell reports for a command killed by it
    except Exception as exc:  # the last resort: no raw traceback ever reaches the user
        err = user_error(exc)
        if err is not None:
            print(f"mmalign: error: {err}", file=sys.stderr)
            return err.exit_code
        log = write_crash_log(exc, argv, getattr(args, "output_dir", None) or getattr(args, "out", None))
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        print(f"mmalign: internal error: {type(exc).__name__}: {first}\n"
              f"This is a bug in mmalign or a plugin; please report it with the full log: {log}",
              file=sys.stderr)
        return 1
    return 0


def write_crash_log(exc: BaseException, argv: list[str] | None, output_dir: str | None) -> Path:
    """The traceback, command line and versions, in output_dir when it already exists (a new
    folder is not created just for this), else in the temp directory."""
    import platform

    from mmalign import __version__

    lines = [f"mmalign {__version__}, Python {platform.python_version()}, {platform.platform()}",
             f"command: mmalign {' '.join(sys.argv[1:] if argv is None else argv)}", "",
             *traceback.format_exception(type(exc), exc, exc.__traceback__)]
    name = f"mmalign-crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    folders = [Path(output_dir)] if output_dir and Path(output_dir).is_dir() else []
    for folder in folders + [Path(tempfile.gettempdir())]:
        try:
            (folder / name).write_text("\n".join(line.rstrip("\n") for line in lines) + "\n")
            return folder / name
        except OSError:
            continue
    return Path("(no log written: neither output_dir nor the temp directory is writable)")


if __name__ == "__main__":
    sys.exit(main())
