"""Train on a folder of images: labeled images in class folders, unlabeled images loose.

    python examples/images_from_folder.py --data my_images
    python examples/images_from_folder.py          # writes scikit-learn's digits as PNGs first

``my_images/train/<class>/*.png`` are the labeled images (any format Pillow reads),
``my_images/unlabeled/*.png`` the unlabeled ones (no class folders) and
``my_images/test/<class>/*.png`` the test set. The same run from the command line:

    semimatch train --dataset imagefolder --data-root my_images/train \
        --unlabeled-dir my_images/unlabeled --test-dir my_images/test --out runs/folder

SEMIMATCH_EXAMPLE_SMALL=1 trains a few iterations only (the test suite runs it that way).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image

import semimatch

SMALL = os.environ.get("SEMIMATCH_EXAMPLE_SMALL") == "1"


def write_digits(root: Path, per_class: int = 5) -> Path:
    """scikit-learn's 8x8 digits as PNG files: ``per_class`` labeled images per class, a fifth
    of the rest as the test set, the others unlabeled."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255 / 16)).astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(images))
    if SMALL:
        order = order[:200]
    test, train = order[: len(order) // 5], order[len(order) // 5 :]
    labeled = [i for c in range(10) for i in train[digits.target[train] == c][:per_class]]
    for i in train:
        if i in labeled:
            path = root / "train" / str(digits.target[i]) / f"{i}.png"
        else:
            path = root / "unlabeled" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(path)
    for i in test:
        path = root / "test" / str(digits.target[i]) / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(path)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="folder with train/, unlabeled/ and test/")
    parser.add_argument("--out", type=Path, default=Path("runs/images-from-folder"))
    args = parser.parse_args()
    data = args.data or write_digits(args.out.parent / "digits-as-png")

    run = semimatch.train(
        dataset="imagefolder",
        data_root=str(data / "train"),  # <class>/<image>: every image here is labeled
        unlabeled_dir=str(data / "unlabeled"),
        test_dir=str(data / "test"),
        algorithm="softmatch",
        iterations=6 if SMALL else 500,
        eval_every=3 if SMALL else 100,
        seed=0,
        out=args.out,
        overwrite=True,  # this example may be run again into the same folder
    )
    print("test:", {k: v for k, v in run.evaluate().items() if k in ("top1", "error")})

    # Classify image files with the saved run (the best checkpoint's EMA model).
    files = sorted((data / "test").rglob("*.png"))[:3]
    for row in semimatch.predict(args.out, files):
        print(Path(row["path"]).relative_to(data), "->", row["class"], f"{row['confidence']:.3f}")


if __name__ == "__main__":
    main()
