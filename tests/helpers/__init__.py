"""What several test files share (a package, so a test file never imports another test file).

pytest puts ``tests/`` on ``sys.path`` (the rootdir ``conftest.py`` lives there), so test files
anywhere under it import ``from helpers.<module> import ...``:

- ``fake_files``: tiny files in the real dataset formats (IDX, CIFAR's pickles);
- ``text_fixtures``: the tiny random BERT and small text corpora;
- ``tiny_tokenizer``: a tiny WordPiece tokenizer built from a vocabulary written here;
- ``reference_impl``: the independent float64 oracle of the reference equations;
- ``runs``: the tiny training recipe, killing a run after its first checkpoint, comparing runs;
- ``report_pages``: run folders for the report and readers of its HTML and figures;
- ``ddp``: ``torchrun`` on CPU and ``ddp_worker.py``, the script it launches;
- ``scripts``: loading a benchmark (or docs hook) script as a module, committed results.
"""
