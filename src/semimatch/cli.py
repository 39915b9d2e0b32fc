"""``semimatch`` command line: train | eval | predict | report | presets | datasets | demo.

Training flags are generated from ``semimatch.config.Config``: one flag per field, same names,
same validation as the Python API.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from semimatch import __version__
from semimatch.config import Config, ConfigError, field_types, load_preset
from semimatch.flags import as_flags, cli_fields, flag, given_flags
from semimatch.methods.registry import methods
from semimatch.presets import PRESETS
from semimatch.scoring import (
    cmd_eval,
    cmd_predict,
    eval_parser,
    predict_parser,
    relative_paths_note,
)

__all__ = ["build_config", "build_parser", "main"]


#: Values a switch takes after ``--x`` (old commands spell ``--deterministic true``).
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
#: What an optional switch (``bool | None``) takes for its default, decided at run start.
_AUTO = ("auto", "none", "null")


class _Switch(argparse.Action):
    """``--x`` sets True, ``--no-x`` False; ``--x VALUE`` still takes true/false (yes/no, on/off,
    1/0) so older commands keep working, and ``auto`` (= None) where the field may be None."""

    def __init__(self, option_strings: list[str], dest: str, *, optional: bool, **kw: Any) -> None:
        self.optional = optional
        kw.setdefault("metavar", "BOOL|auto" if optional else "BOOL")
        super().__init__(option_strings, dest, nargs="?", const=True, **kw)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        on, off = self.option_strings
        if option_string == off:
            if values is not True:  # argparse passes const (True) when no value follows
                parser.error(f"{off} takes no value (to set one: {on} {values})")
            value: bool | None = False
        elif values is True or values.lower() in _TRUE:  # True: a bare --x
            value = True
        elif values.lower() in _FALSE:
            value = False
        elif self.optional and values.lower() in _AUTO:
            value = None
        else:
            allowed = "true, false or auto" if self.optional else "true or false"
            parser.error(
                f"argument {on}: expected {allowed} (or just {on} / {off}); got {values!r}"
            )
        setattr(namespace, self.dest, value)


class _HelpFormatter(argparse.HelpFormatter):
    """Shows a switch as ``--x [BOOL], --no-x``: the value belongs to the first spelling only."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if isinstance(action, _Switch):
            on, off = action.option_strings
            return f"{on} [{action.metavar}], {off}"
        return super()._format_action_invocation(action)


#: Fields whose value is a file-system path (shown as PATH in --help).
_PATH_SUFFIXES = ("_root", "_dir", "_path", "_file")


def _members(kind: Any) -> list[Any]:
    """The types of a union (``int | None`` -> [int, NoneType]); ``[kind]`` otherwise."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        return list(typing.get_args(kind))
    return [kind]


def _metavar(name: str, kind: Any) -> str:
    """How ``--help`` shows the value of field ``name`` of type ``kind``."""
    members = _members(kind)
    options = [o for o in members if o is not type(None)]
    if typing.get_origin(options[0]) is Literal:
        choices = [str(c) for c in typing.get_args(options[0])]
        if type(None) in members and "auto" not in choices:
            choices.append("auto")  # None: the algorithm's (or the run's) own choice
        return "{" + ",".join(choices) + "}"
    if name.endswith(_PATH_SUFFIXES):
        return "PATH"
    if name.endswith("device"):
        return "DEVICE"
    return {int: "INT", float: "FLOAT"}.get(options[0], "STR")


def _shown_default(f: Any) -> str:
    if f.default is None:
        return str(f.metadata.get("none", "auto"))
    if isinstance(f.default, bool):
        return str(f.default).lower()
    return str(f.default)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "options (each overrides the preset / config file)",
        "Switches: --x turns an option on, --no-x off (--x true / --x false also work); "
        "switches marked [BOOL|auto] also take auto, their default.",
    )
    kinds = field_types()
    for f in cli_fields():
        help_text = f"{f.metadata['help']} (default: {_shown_default(f)})".replace("%", "%%")
        kind = kinds[f.name]
        options = _members(kind)
        if bool in options:
            group.add_argument(
                flag(f.name),
                "--no-" + f.name.replace("_", "-"),
                dest=f.name,
                action=_Switch,
                optional=type(None) in options,
                default=argparse.SUPPRESS,
                help=help_text,
            )
            continue
        group.add_argument(
            flag(f.name),
            dest=f.name,
            default=argparse.SUPPRESS,
            metavar=_metavar(f.name, kind),
            help=help_text,
        )


def _train_parser(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train a model",
        description=(
            "Train with FixMatch, SoftMatch, Pseudo-Label or supervised-only. Every option below "
            "is a field of the config; --preset loads a paper setting first."
        ),
    )
    p.add_argument(
        "--preset", metavar="NAME", help="start from a paper preset (see `semimatch presets`)"
    )
    p.add_argument("--config", metavar="PATH", help="start from a config.json (e.g. another run's)")
    p.add_argument(
        "--out",
        metavar="PATH",
        help="run directory (config, split, metrics.jsonl, checkpoints); default: a new "
        "runs/<dataset>-<algorithm>-N",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR|auto",
        help=(
            "RUN_DIR: continue the run in RUN_DIR exactly, with its saved config (but for speed "
            "or display flags, e.g. --threads; a larger --iterations extends it). 'auto' (with "
            "--out and the usual options): start the run, or continue it if --out already holds "
            "it; a restartable command for torchrun --max-restarts (a folder named auto: ./auto)"
        ),
    )
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    _add_config_flags(p)


def build_config(args: argparse.Namespace) -> Config:
    """The config of parsed ``train`` arguments: --preset or --config, then the flags given."""
    if args.preset and args.config:
        raise ConfigError("use --preset or --config, not both")
    cfg = (
        load_preset(args.preset)
        if args.preset
        else (Config.load(args.config) if args.config else Config())
    )
    return cfg.replace(**given_flags(args))


#: Where commands put a run when no --out is given (relative to the working directory).
RUNS = Path("runs")


@contextlib.contextmanager
def _new_run_dir(stem: str, command: str) -> Iterator[Path]:
    """Reserve ``runs/<stem>-N`` (N >= 1, the smallest not taken) and say so on stderr.

    The folder is made here, atomically, so two commands started together get two folders; if
    the command leaves it empty (a config refused before training) it is removed again.
    """
    from semimatch.distributed import launched_by_torchrun

    if launched_by_torchrun():  # each process would reserve a folder of its own
        raise ConfigError("under torchrun all processes must write one run: pass --out RUN_DIR")
    stem = re.sub(r"[^\w.+-]+", "_", stem).strip(".") or "run"  # a name, never a path
    made_parent = not RUNS.is_dir()
    RUNS.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        out = RUNS / f"{stem}-{n}"
        try:
            out.mkdir()
            break
        except FileExistsError:
            n += 1
    print(f"semimatch {command}: writing the run to {out} (pass --out to choose)", file=sys.stderr)
    try:
        yield out
    finally:
        with contextlib.suppress(OSError):  # not empty: the run (or part of it) is there
            out.rmdir()
            if made_parent:
                RUNS.rmdir()


def cmd_train(args: argparse.Namespace) -> int:
    from semimatch.runs.engine import fit

    cfg = build_config(args)
    if args.resume not in (None, "auto"):  # --resume RUN_DIR: that run, in place
        drop = [f"--{n}" for n in ("out", "preset", "config") if getattr(args, n)]
        if drop:  # the run's own folder, with its saved config
            raise ConfigError(f"--resume {args.resume} continues that run in place; drop {drop[0]}")
        fit(given_flags(args), out=args.resume, resume=True, overwrite=args.overwrite)
        return 0
    resume = "auto" if args.resume == "auto" else False
    if args.out or resume:  # engine.fit (start.RunStart) decides how the run starts
        fit(cfg, out=args.out, resume=resume, overwrite=args.overwrite)
        return 0
    if args.overwrite:
        raise ConfigError(
            "--overwrite replaces the run in --out; pass --out (without it every run gets a "
            f"new folder under {RUNS}/)"
        )
    # No --out: a new folder rather than a run that writes nothing (and a Ctrl-C with no
    # checkpoint to resume from); the Python API keeps out=None for callers who want that.
    with _new_run_dir(f"{cfg.dataset}-{cfg.algorithm}", "train") as out:
        fit(cfg, out=out)
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    width = max(len(n) for n in PRESETS)
    for name, preset in PRESETS.items():
        print(f"{name:<{width}}  {preset.description}  [{preset.runtime}]")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from semimatch.data import DATASETS

    print("\n".join(DATASETS))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from semimatch.report import build_report

    path = build_report([Path(r) for r in args.run_dirs], out=args.out)
    print(f"report written to {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from semimatch.demo import demo_runs, parse_methods, run_demo

    options = dict(
        iterations=args.iterations,
        num_labels=args.num_labels,
        seed=args.seed,
        methods=parse_methods(args.methods),  # a typo fails before a folder is made
        report=args.report,
    )
    if args.out is None:  # a new folder: nothing to replace
        with _new_run_dir("demo", "demo") as out:
            run_demo(out, threads=args.threads, overwrite=False, **options)
        return 0
    held = demo_runs(Path(args.out))
    if held and not args.overwrite:
        raise ConfigError(
            f"{args.out} already holds a demo ({', '.join(held)}); pass --overwrite to replace "
            "it, or another --out (without --out the demo gets a new folder under runs/)"
        )
    run_demo(Path(args.out), threads=args.threads, overwrite=args.overwrite, **options)
    return 0


def _positive(text: str) -> int:
    """An argparse type: an integer >= 1 (checked before the demo's first run starts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """No silent prefix matching of flags, and a suggestion for a mistyped one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        if "unrecognized arguments" in message:
            import difflib

            known = [s for a in self._actions for s in a.option_strings]
            for sub in self._subparsers._group_actions if self._subparsers else []:
                for p in getattr(sub, "choices", {}).values():
                    known += [s for a in p._actions for s in a.option_strings]
            for word in message.split(":", 1)[1].split():
                hint = difflib.get_close_matches(word.split("=")[0], known, n=1)
                if hint:
                    message += f" (did you mean {hint[0]}?)"
                    break
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="semimatch",
        description=(
            "Semi-supervised classification of images, feature vectors and texts with FixMatch, "
            "SoftMatch and their family."
        ),
    )
    parser.add_argument(
        "--version",
        action="version",
        # The running code's version (an installed copy's metadata may describe another tree).
        version=f"%(prog)s {__version__}",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _train_parser(sub)

    eval_parser(sub)
    predict_parser(sub)
    _report_parser(sub)
    sub.add_parser("presets", help="list the paper presets")
    sub.add_parser("datasets", help="list the dataset names")
    _demo_parser(sub)
    return parser


def _report_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="HTML report + figures for one or more runs")
    p.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        help="run folders, or folders of runs (every run folder under them, sorted)",
    )
    p.add_argument(
        "-o",
        "--out",
        metavar="PATH",
        help="report folder (default: RUN_DIR/report; ./semimatch-report for several runs)",
    )


def _demo_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo", help="supervised vs FixMatch vs SoftMatch (or --methods) on digits (offline)"
    )
    p.add_argument(
        "--out",
        metavar="PATH",
        help="folder of the runs, PATH/<algorithm>, and of their report, PATH/report "
        "(default: a new runs/demo-N)",
    )
    p.add_argument(
        "--methods",
        metavar="LIST",
        help="comma-separated algorithms to compare, from: "
        f"{', '.join(methods())} (default: supervised,fixmatch,softmatch)",
    )
    p.add_argument(
        "--report",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write the comparison report to PATH/report (default: on)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a demo already in --out")
    p.add_argument(
        "--iterations", type=_positive, default=300, metavar="INT", help="per run (default: 300)"
    )
    p.add_argument(
        "--num-labels",
        type=_positive,
        default=20,
        metavar="INT",
        help="labeled images, a multiple of 10 (default: 20)",
    )
    p.add_argument("--seed", type=int, default=0, metavar="INT", help="random seed (default: 0)")
    p.add_argument(
        "--threads",
        type=_positive,
        metavar="INT",
        help="CPU threads for torch in each run (default: torch's default)",
    )


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "predict": cmd_predict,
    "presets": cmd_presets,
    "datasets": cmd_datasets,
    "report": cmd_report,
    "demo": cmd_demo,
}


#: Exit status when the reader of standard output has gone (128 + SIGPIPE, as a shell shows a
#: tool that SIGPIPE killed, e.g. ``cat`` in ``cat big | head -1`` under ``set -o pipefail``).
EXIT_BROKEN_PIPE = 141


def main(argv: list[str] | None = None) -> int:
    """Run one command; return the exit status (0 ok, 2 usage or config error, 128+N signal N)."""
    try:
        try:
            return _run(argv)
        finally:
            # Output still buffered would meet a closed pipe at interpreter exit, as an
            # "Exception ignored" traceback; flushing here brings that error to the handler below.
            sys.stdout.flush()
    except BrokenPipeError:
        # The reader left early (`semimatch presets | head -1`): stop quietly. What is still
        # buffered goes to /dev/null, so the interpreter's last flush cannot fail again.
        with contextlib.suppress(AttributeError, OSError, ValueError):  # no real file descriptor
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _run(argv: list[str] | None) -> int:
    from semimatch.errors import TrainingError
    from semimatch.runs.checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        with _sigterm_as_interrupt():
            return COMMANDS[args.command](args)
    except (ConfigError, TrainingError, CheckpointError, FileNotFoundError, ValueError) as e:
        # train and demo take config flags, eval and predict those that read a text file (text
        # columns, header, skip_corrupt); report options are not config fields.
        message = as_flags(str(e)) if args.command != "report" else str(e)
        if isinstance(e, FileNotFoundError):
            message += relative_paths_note(args)
        print(f"semimatch {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        # The one place the message (where it stopped, how to resume) is shown; fit does not
        # log it. A plain KeyboardInterrupt (Ctrl-C outside the training loop) is SIGINT.
        if str(e):
            print(str(e), file=sys.stderr)
        return 128 + getattr(e, "signum", signal.SIGINT)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM outside the training loop (loading data, evaluating) stops the command as Ctrl-C
    does: ``finally`` blocks run (a reserved, still empty run folder is removed) and the exit
    status is 143, not a silent kill.  Inside the loop fit's own handler takes over: it
    finishes the iteration and checkpoints first."""
    from semimatch.errors import TrainingInterrupted

    def stop(signum: int, frame: Any) -> None:
        raise TrainingInterrupted("", signum)

    try:
        old = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: the signal is not ours to handle
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


if __name__ == "__main__":
    sys.exit(main())
