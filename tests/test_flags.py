"""Config fields spelled as command-line flags in error messages (``semimatch.flags``)."""

from __future__ import annotations

import pytest

from semimatch.flags import as_flags


@pytest.mark.parametrize(
    "raised, shown",
    [
        ("or pass skip_corrupt=True.", "or pass --skip-corrupt."),
        ("pass image_size= (e.g. image_size=32) to", "pass --image-size (e.g. --image-size 32) to"),
        ("use forward_mode='joint' with", "use --forward-mode joint with"),
        ("pass lr=0.03, then", "pass --lr 0.03, then"),
        ("weight_decay=1e-3, lr=0.1.", "--weight-decay 1e-3, --lr 0.1."),  # not the full stop
        ("got forward_mode='x'", "got --forward-mode 'x'"),  # the user's value, quoted
        ("lr='abc' in command line is not valid", "--lr 'abc' in command line is not valid"),
        ("threads must be >= 1 (torch's)", "--threads must be >= 1 (torch's)"),
        ("ua_init: with uniform_alignment=False", "--ua-init: with --no-uniform-alignment"),
        ("options ['n_sigma']; accepts ['tau', 'lr']", "options --n-sigma; accepts --tau, --lr"),
        ("(num_labels: balanced, fold: given)", "(--num-labels: balanced, --fold: given)"),
        ("written every eval_every iterations", "written every --eval-every iterations"),
        ("Pass download=True (CLI: --download) to", "Pass --download to"),
        # the API's keywords that are no Config field, and asides only Python has
        ("fix the row or pass skip_bad=True", "fix the row or pass --skip-corrupt"),
        ("skipped 2 bad row(s) (skip_bad), e.g.", "skipped 2 bad row(s) (--skip-corrupt), e.g."),
        ("resume=True continues r; (or use resume='auto', which",
         "--resume RUN_DIR continues r; (or use --resume auto, which"),
        ("--resume auto (resume='auto') continues", "--resume auto continues"),
        ("pass overwrite=True to replace", "pass --overwrite to replace"),
        ("needs --out RUN_DIR (in Python: out=), the run", "needs --out RUN_DIR, the run"),
        ("not both (or pass class_names=)", "not both"),
        ("out of range; resume the run", "out of range; resume the run"),
        # where a field name is not the option: a path, a quoted value, a command, English
        ("cannot read image /d/use lr=1/x.png", "cannot read image /d/use lr=1/x.png"),
        ("no directory at /data/my num_labels/x", "no directory at /data/my num_labels/x"),
        ("unknown backbone 'num_labels'", "unknown backbone 'num_labels'"),
        ("run `semimatch train --resume r`", "run `semimatch train --resume r`"),
        ("the fold file of this dataset", "the fold file of this dataset"),
        ("dataset.labeled: cfg.threads", "dataset.labeled: cfg.threads"),
        ("use in_channels=3", "use in_channels=3"),  # not a config field
    ],
)  # fmt: skip
def test_config_fields_in_errors_become_flags(raised, shown):
    assert as_flags(raised) == shown
