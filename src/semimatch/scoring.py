"""``semimatch eval`` and ``semimatch predict``: the commands that reload a trained run to score
a test set or classify new inputs, their flags, and what a reload failure says.

Both read text files as the run read its data (the run's ``text_column`` and ``header`` unless
the command gives its own) and both say which checkpoint they loaded
(``_checkpoint_line``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
from pathlib import Path
from typing import Any

from semimatch.config import PATH_FIELDS, ConfigError
from semimatch.data.modalities import modality
from semimatch.flags import flag

__all__ = ["cmd_eval", "cmd_predict", "eval_parser", "predict_parser", "relative_paths_note"]

#: ``--checkpoint`` of ``semimatch eval`` / ``predict`` (``run.load_run``'s ``checkpoint``).
_CHECKPOINT_HELP = (
    "the checkpoint to load: auto (default) = best.pt if a validation set (--val-size, "
    "--val-dir, dev.json) chose it, else the last checkpoint - never one the test set chose; "
    "best = best.pt even when chosen on the test set (the papers' protocol, optimistic); last; "
    "or a checkpoint file"
)


def _add_checkpoint_flag(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint`` of ``semimatch eval`` and ``predict``."""
    parser.add_argument(
        "--checkpoint", default="auto", metavar="auto|best|last|PATH", help=_CHECKPOINT_HELP
    )


def _checkpoint_line(run: Any, result: dict[str, Any]) -> str:
    """The model (``result["model"]``, ``api.evaluate``'s) and checkpoint a reloaded ``run``
    scored, and what chose the checkpoint (``semimatch eval``): a test score of a checkpoint
    the same test set chose is optimistic, and says so."""
    name = f"{result['model']} model, {run.checkpoint.name if run.checkpoint is not None else '?'}"
    return {
        "val": f"{name}, chosen on the validation set",
        "test": f"{name}, chosen on this test set: an optimistic score (--checkpoint last for "
        "an unbiased one)",
        "last": f"{name}, the last checkpoint",
    }.get(run.selected_on, name)


def _add_reading_flags(p: argparse.ArgumentParser, what: str, label: bool) -> None:
    """How eval's test file / predict's inputs are read, each defaulting to the run's."""
    p.add_argument(
        "--text-column", metavar="NAME", help=f"text runs: {what}'s text column (default: "
        "the run's; a 0-based position with --no-header)"
    )  # fmt: skip
    if label:
        p.add_argument(
            "--label-column", metavar="NAME", help=f"text runs: {what}'s label column "
            "(default: the run's); its labels must be the run's class names"
        )  # fmt: skip
    p.add_argument(
        "--header", action=argparse.BooleanOptionalAction, default=None,
        help=f"text runs: whether {what} (CSV/TSV) has a header row (default: the run's)",
    )  # fmt: skip


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")
    p.add_argument("--model", choices=["ema", "raw"], default="ema")
    _add_checkpoint_flag(p)
    p.add_argument("--device", default="auto", metavar="DEVICE")


def eval_parser(sub: Any) -> None:
    p = sub.add_parser("eval", help="test accuracy of a trained run")
    _add_run_flags(p)
    p.add_argument(
        "--test-dir",
        metavar="PATH",
        help="score labeled images PATH/<class>/<image> instead of the run's test set "
        "(class folders named like the run's classes); for a text run a labeled text file "
        "or folder",
    )
    _add_reading_flags(p, "the test file", label=True)
    p.add_argument(
        "--skip-corrupt", action="store_true", help="skip unreadable images / bad text rows of "
        "--test-dir with a count (default: the run's setting)"
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def predict_parser(sub: Any) -> None:
    p = sub.add_parser(
        "predict", help="classify image files or texts with a trained run (CSV output)"
    )
    _add_run_flags(p)
    p.add_argument(
        "images",
        nargs="+",
        metavar="INPUT",
        help="image files, or folders (searched recursively); for a text run: files of texts "
        "(.txt: one per line; .csv/.tsv/.jsonl/.json: the text column), folders of .txt files, "
        "or - for standard input (one text per line)",
    )
    _add_reading_flags(p, "a table of texts", label=False)
    p.add_argument("--output", metavar="PATH", help="CSV file (default: standard output)")


def cmd_eval(args: argparse.Namespace) -> int:
    from semimatch.api import evaluate
    from semimatch.runs.run import load_run

    run = load_run(args.run_dir, checkpoint=args.checkpoint, device=args.device)
    reading = {k: getattr(args, k) for k in ("text_column", "label_column", "header")}
    if (args.skip_corrupt or any(v is not None for v in reading.values())) and not args.test_dir:
        raise ConfigError(
            "--text-column, --label-column, --header and --skip-corrupt read --test-dir; pass it"
        )
    mod = modality(run.info)
    if not mod.reads_tables and any(v is not None for v in reading.values()):
        raise ConfigError(
            f"{args.run_dir} classifies {mod.noun}: --test-dir is a folder of {mod.noun}"
        )
    skip = True if args.skip_corrupt else None  # default: the run's
    result = evaluate(run, model=args.model, test_dir=args.test_dir, skip_corrupt=skip, **reading)
    what = mod.noun
    result.pop("confusion", None)
    result.update(checkpoint=str(run.checkpoint), selected_on=run.selected_on)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{args.run_dir}: top-1 {100 * result['top1']:.2f}%  error "
            f"{100 * result['error']:.2f}%  ({result['n']} test {what}"
            f"{f' from {args.test_dir}' if args.test_dir else ''}, {_checkpoint_line(run, result)})"
        )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from semimatch.api import predict
    from semimatch.runs.run import load_run

    run = load_run(args.run_dir, checkpoint=args.checkpoint, device=args.device)
    mod = modality(run.info)
    texts: list[Any] = []
    if mod.reads_tables:  # files of texts (or stdin) -> one CSV row per text
        column = args.text_column or run.config.text_column
        header = run.config.header if args.header is None else args.header
        texts = mod.read_table(args.images, column, header)
        rows = predict(run, [t.text for t in texts], model=args.model)
        names, first = ["source", "class", "confidence", "text"], [t.where for t in texts]
    else:
        given = [f for f in ("text_column", "header") if getattr(args, f) is not None]
        if given:
            spelled = "--no-header" if given[0] == "header" and not args.header else flag(given[0])
            raise ConfigError(f"{spelled}: {args.run_dir} classifies {mod.noun}, not texts")
        if "-" in args.images:
            raise ConfigError(
                f"- (standard input) is for text runs; {args.run_dir} classifies {mod.noun}: "
                f"pass {mod.noun[:-1]} files or folders"
            )
        rows = predict(run, args.images, model=args.model)
        names, first = ["path", "class", "confidence"], [row["path"] for row in rows]
    # Which weights answered, as eval says it (a run without an EMA answers with its raw
    # model): on stderr, so the CSV on stdout stays data only.
    used = "ema" if run.eval_model(args.model) is run.ema_model else "raw"
    print(f"{args.run_dir}: {_checkpoint_line(run, {'model': used})}", file=sys.stderr)
    with (
        open(args.output, "w", newline="") if args.output else contextlib.nullcontext(sys.stdout)
    ) as out:
        w = csv.writer(out)
        w.writerow(names)
        for n, (where, row) in enumerate(zip(first, rows)):
            line = [where, row["class"], f"{row['confidence']:.6f}"]
            w.writerow(line + [texts[n].text] if texts else line)
    return 0


def relative_paths(config_file: str | os.PathLike) -> dict[str, str]:
    """The data paths a saved ``config.json`` holds relative: written before semimatch stored
    them absolute, they are relative to the folder the run was started in, unknown here."""
    try:
        data = json.loads(Path(config_file).read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        k: v
        for k in PATH_FIELDS
        if isinstance(v := data.get(k), str) and not os.path.isabs(os.path.expanduser(v))
    }


def relative_paths_note(args: argparse.Namespace) -> str:
    """What to add to a "does not exist" error of a command reloading a run whose config.json
    holds relative data paths ("" if it holds none): where they are relative to."""
    if args.command in ("eval", "predict"):
        run = args.run_dir
    elif args.command == "train" and args.resume is not None:
        run = args.out if args.resume == "auto" else args.resume
    else:
        return ""
    held = relative_paths(Path(run or "", "config.json")) if run else {}
    if not held:
        return ""
    paths = ", ".join(f"{k} {v!r}" for k, v in held.items())
    fix = "; or pass --test-dir PATH" if args.command == "eval" else ""
    return (
        f"; {Path(run, 'config.json')} holds {paths}, relative to the folder the run was "
        f"started in: run the command from that folder{fix}"
    )
