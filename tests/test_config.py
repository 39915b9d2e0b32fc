"""Typed config: unknown keys, wrong types, presets, auto-derived settings."""

from __future__ import annotations

import json
import os
import types

import numpy as np
import pytest
import torch

from semimatch.config import Config, ConfigError, budget_momentum, load_preset
from semimatch.data import from_arrays
from semimatch.methods.consistency import SSLAlgorithm
from semimatch.presets import PRESETS
from semimatch.runs.resolve import dataset_options, resolve
from semimatch.training.two_pass import check_forward_mode


def tiny_data(num_classes: int = 10, size: int = 32, channels: int = 3):
    rng = np.random.default_rng(0)
    n = num_classes * 6
    images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    labels = np.arange(n) % num_classes
    return from_arrays(images, labels)


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match="did you mean 'num_labels'"):
        Config.from_dict({"num_label": 40})
    with pytest.raises(ConfigError, match="did you mean 'iterations'"):
        Config().replace(iteration=5)


@pytest.mark.parametrize(
    "key,value",
    [
        ("iterations", "abc"),
        ("iterations", 1.5),
        ("lr", "fast"),
        ("algorithm", "defixmatch"),
        ("deterministic", "maybe"),
        ("precision", "fp8"),
        ("batch_size", True),
    ],
)
def test_wrong_types_are_errors(key, value):
    with pytest.raises(ConfigError, match=key):
        Config.from_dict({key: value})
    with pytest.raises(ConfigError, match=key):  # however the config is made
        Config(**{key: value})


def test_a_mistyped_choice_names_the_closest_one():
    with pytest.raises(ConfigError, match="did you mean 'softmatch'"):
        Config(algorithm="softmach")
    with pytest.raises(ConfigError, match="did you mean 'joint'"):
        Config.from_dict({"forward_mode": "jiont"})


def test_strings_from_the_command_line_are_converted():
    cfg = Config.from_dict(
        {
            "iterations": "100",
            "lr": "0.1",
            "deterministic": "true",
            "tau": "none",
            "backbone": "cnn",
        }
    )
    assert cfg.iterations == 100 and cfg.lr == 0.1 and cfg.deterministic is True
    assert cfg.tau is None and cfg.backbone == "cnn"
    # A string option's None is "none" too (help: "None = ..."); "auto" stays a string there.
    spelled = Config.from_dict({"backbone": "None", "augment_device": "null", "data_root": "auto"})
    assert spelled.backbone is None and spelled.augment_device is None
    assert spelled.data_root == os.path.abspath("auto")  # a folder named auto


def test_data_paths_are_stored_absolute(tmp_path, monkeypatch):
    # A saved run's config.json must name the same files from any folder (eval, --resume).
    monkeypatch.chdir(tmp_path)
    cfg = Config(data_root="names.csv", test_dir="t/", val_dir="~/v", unlabeled_dir=tmp_path)
    assert cfg.data_root == str(tmp_path / "names.csv") and cfg.test_dir == str(tmp_path / "t")
    assert cfg.val_dir == os.path.expanduser("~/v") and cfg.unlabeled_dir == str(tmp_path)
    # the saved config and a command's compare equal (--resume auto), from another folder too
    cfg.save(tmp_path / "config.json")
    monkeypatch.chdir(tmp_path / "..")
    assert Config.load(tmp_path / "config.json") == cfg
    assert cfg.replace(data_root=str(tmp_path / "names.csv")) == cfg


def test_config_round_trips_through_json(tmp_path):
    cfg = Config(algorithm="softmatch", n_sigma=1.0, iterations=77)
    cfg.save(tmp_path / "c.json")
    again = Config.load(tmp_path / "c.json")
    assert again == cfg
    (tmp_path / "bad.json").write_text(json.dumps({**cfg.to_dict(), "typo_key": 1}))
    with pytest.raises(ConfigError, match="typo_key"):
        Config.load(tmp_path / "bad.json")


@pytest.mark.parametrize(
    "content, expected",
    [
        ("lr: 0.1\n", "is not valid JSON .*a config file is a JSON object of options"),
        ("[1, 2]", "holds a list, not a mapping of option names"),
        ("null", "holds a null, not a mapping"),
        (b"\xff\xfe\x00", "is not valid JSON"),
    ],
)
def test_a_bad_config_file_says_what_is_wrong(content, expected, tmp_path):
    path = tmp_path / "config.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ConfigError, match=expected):
        Config.load(path)


def test_config_file_paths(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="config file .* does not exist"):
        Config.load(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="is a folder; pass a config file"):
        Config.load(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "c.json").write_text('{"lr": 0.5}')
    assert Config.load("~/c.json").lr == 0.5
    assert Config.from_dict(types.MappingProxyType({"lr": 0.25})).lr == 0.25


@pytest.mark.parametrize(
    "name", sorted(n for n, p in PRESETS.items() if p.values["dataset"] != "text")
)
def test_every_preset_resolves(name):
    """The image presets (the USB NLP presets: test_presets.py)."""
    cfg = load_preset(name)
    assert cfg.preset == name
    # Paper values are pinned, never derived from the (huge) budget.
    assert cfg.ema_decay == 0.999 and cfg.bn_momentum == 0.001 and cfg.ema_warmup is False
    assert cfg.iterations >= 2**18
    C = 100 if cfg.dataset == "cifar100" else 10
    resolved = resolve(cfg, tiny_data(C), torch.device("cpu"))
    assert "ema_decay" not in resolved.auto and "bn_momentum" not in resolved.auto
    if cfg.algorithm == "softmatch":
        assert resolved.stat_momentum == 0.999 and resolved.n_sigma == 2.0
    # What the papers ran: fp32, the exact joint forward, FixMatch's 1,024-iteration
    # evaluation interval (so "median of the last 20 evaluations" means the papers' median).
    assert (resolved.precision, resolved.forward_mode, resolved.eval_every) == (
        "fp32",
        "joint",
        1024,
    )
    assert "precision" not in resolved.auto


def test_flexmatch_presets_take_usb_classic_cv_values():
    """USB's flexmatch classic-CV config: p_cutoff 0.95, thresh_warmup, ulb_loss_ratio 1; no
    long-tailed preset."""
    names = [n for n in PRESETS if n.endswith("-flexmatch")]
    assert "cifar10-40-flexmatch" in names and "stl10-40-flexmatch" in names
    assert not [n for n in names if n.startswith("cifar10lt")]
    for name in names:
        cfg = load_preset(name)
        assert (cfg.algorithm, cfg.tau, cfg.threshold_warmup, cfg.lambda_u) == (
            "flexmatch",
            0.95,
            True,
            1.0,
        )


def test_default_training_is_the_papers_exact_gradient():
    """Exact by default: the joint forward in fp32 (two-pass and bf16 are opt-in); the default
    precision is an auto field only so that a run can tell "fp32 by default" from a choice."""
    assert Config().forward_mode == "joint" and Config().precision is None
    cfg = resolve(Config(num_labels=20), tiny_data(), torch.device("cpu"))
    assert (cfg.forward_mode, cfg.precision, cfg.channels_last) == ("joint", "fp32", False)
    assert "exact by default" in cfg.auto["precision"]


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_where_the_hardware_has_it(monkeypatch, capsys, native):
    from semimatch.runs import resolve as resolution

    monkeypatch.setattr(resolution, "native_bf16", lambda device: native)
    cfg = resolve(Config(num_labels=20, precision="auto"), tiny_data(), torch.device("cpu"))
    assert cfg.precision == ("bf16" if native else "fp32")
    assert cfg.auto["precision"].startswith(f"{cfg.precision}: cpu with")
    # An explicit bf16 on a CPU that emulates it trains, with a warning saying the cost.
    resolve(Config(num_labels=20, precision="bf16"), tiny_data(), torch.device("cpu"))
    warned = "emulates it" in capsys.readouterr().err
    assert warned is not native


def _texts(n: int = 40):
    """Untokenized texts of 4 classes (resolve reads no model: any hf: name will do)."""
    from semimatch.data import from_texts

    return from_texts([f"text {i} of class {i % 4}" for i in range(n)], np.arange(n) % 4)


def test_batch_defaults_follow_the_data_and_are_recorded():
    """Images and feature vectors: FixMatch's 64 + 7 x 64; texts: USB's NLP 8 + 8, which a CPU
    trains ~50x faster per step than 64 + 448 (BENCHMARKS.md, "Text defaults on a CPU").
    Given values stay."""
    from semimatch.data import from_features

    cpu = torch.device("cpu")
    features = from_features(np.random.default_rng(0).normal(size=(40, 5)), np.arange(40) % 4)
    assert Config().batch_size is None and Config().uratio is None
    for data in (tiny_data(), features):
        cfg = resolve(Config(), data, cpu)
        assert (cfg.batch_size, cfg.uratio) == (64, 7)
        assert "FixMatch" in cfg.auto["batch_size"] and "FixMatch" in cfg.auto["uratio"]
    text = resolve(Config(backbone="hf:bert-base-uncased"), _texts(), cpu)
    assert (text.batch_size, text.uratio) == (8, 1)
    assert "USB's NLP batch" in text.auto["batch_size"] and "8 + 8" in text.auto["uratio"]
    given = resolve(Config(backbone="hf:x", batch_size=16, uratio=3), _texts(), cpu)
    assert (given.batch_size, given.uratio) == (16, 3)
    assert not {"batch_size", "uratio"} & set(given.auto)
    with pytest.raises(ConfigError, match="batch_size must be >= 1; got 0"):
        resolve(Config(batch_size=0), tiny_data(), cpu)
    with pytest.raises(ConfigError, match="uratio must be >= 1 for fixmatch; got 0"):
        resolve(Config(uratio=0), tiny_data(), cpu)


@pytest.mark.parametrize("native", [True, False])
def test_fp32_by_default_says_once_what_bf16_measured_here(monkeypatch, capsys, native):
    """fp32 stays the default; where the CPU has native bf16 and fp32 is only the default, one
    status line (stderr) gives the measured factor. A precision chosen gets no line."""
    from semimatch.runs import resolve as resolution

    monkeypatch.setattr(resolution, "native_bf16", lambda device: native)
    cpu = torch.device("cpu")
    for data, factor in ((tiny_data(), "3.1x"), (_texts(), "1.5x")):
        cfg = resolve(Config(backbone="hf:x" if data.info.kind == "text" else None), data, cpu)
        assert cfg.precision == "fp32"
        lines = [ln for ln in capsys.readouterr().err.splitlines() if "native bf16" in ln]
        assert len(lines) == (1 if native else 0), lines
        if native:
            assert "--precision bf16" in lines[0] and f" {factor} faster" in lines[0]
    for precision in ("fp32", "bf16", "auto"):
        resolve(Config(precision=precision), tiny_data(), cpu)
        assert "the exact default" not in capsys.readouterr().err
    # The small CPU backbones (digits' cnn: milliseconds a step) get no line.
    resolve(Config(), tiny_data(size=8, channels=1), cpu)
    assert "the exact default" not in capsys.readouterr().err


def test_two_pass_is_refused_where_its_assumption_fails_by_construction():
    lt = Config(forward_mode="two-pass", lt_gamma=2.0, lt_n1=4, lt_m1=4, lt_reverse=True)
    resolved = resolve(lt, tiny_data(), torch.device("cpu"))
    with pytest.raises(ConfigError, match="two-pass.*lt_reverse.*forward_mode='joint'"):
        check_forward_mode(resolved, uses_strong=True, given_data=False)
    # Only a strong-view student has a two-pass forward; the joint forward takes the split.
    check_forward_mode(resolved, uses_strong=False, given_data=False)
    check_forward_mode(resolved.replace(forward_mode="joint"), uses_strong=True, given_data=False)


def test_two_pass_warns_once_with_the_reason_on_data_it_cannot_check(capsys):
    cpu = torch.device("cpu")
    cfg = Config(forward_mode="two-pass", num_labels=20, batch_size=32)

    def check(cfg: Config, given_data: bool) -> None:
        check_forward_mode(resolve(cfg, tiny_data(), cpu), uses_strong=True, given_data=given_data)

    check(cfg, given_data=False)  # a named loader's data, 32 labeled rows: no warning
    assert "warning" not in capsys.readouterr().err
    check(cfg, given_data=True)
    check(cfg.replace(batch_size=8), given_data=False)
    check(cfg.replace(forward_mode="joint", batch_size=8), given_data=True)
    messages = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(messages) == 2, messages
    assert "data was passed in" in messages[0] and "forward_mode='joint'" in messages[0]
    assert "only 8 labeled rows per process" in messages[1]


def test_hflip_overrides_the_dataset_policy():
    assert "hflip" not in dataset_options(Config())
    assert dataset_options(Config(hflip=False))["hflip"] is False
    assert Config.from_dict({"hflip": "false"}).hflip is False


def test_explicit_tensorboard_without_the_package_is_an_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name)
    )
    cpu = torch.device("cpu")
    with pytest.raises(ConfigError, match=r"semimatch\[tensorboard\]"):
        resolve(Config(num_labels=20, tensorboard=True), tiny_data(), cpu)
    assert resolve(Config(num_labels=20), tiny_data(), cpu).tensorboard is None  # auto: fine


def test_preset_typo_is_an_error_with_suggestion():
    with pytest.raises(ConfigError, match="cifar10-40-softmatch"):
        load_preset("cifar10-40-softmach")


def test_short_budget_derives_momenta_and_records_them():
    cfg = resolve(
        Config(algorithm="softmatch", iterations=300, num_labels=20),
        tiny_data(),
        torch.device("cpu"),
    )
    assert cfg.ema_decay == pytest.approx(1 - 20 / 300)
    assert cfg.stat_momentum == pytest.approx(1 - 20 / 300)
    assert cfg.bn_momentum == pytest.approx(20 / 300)
    assert cfg.ema_warmup is True
    for key in ("ema_decay", "stat_momentum", "bn_momentum", "backbone"):
        assert key in cfg.auto
    # Long budgets reach the paper values.
    assert budget_momentum(0.999, 2**20) == 0.999
    assert budget_momentum(0.999, 10) == 0.9


def test_weight_decay_follows_the_dataset_unless_set():
    import dataclasses

    cpu = torch.device("cpu")
    c100 = tiny_data(100)
    c100 = dataclasses.replace(c100, info=dataclasses.replace(c100.info, name="cifar100"))
    assert resolve(Config(num_labels=100), c100, cpu).weight_decay == 1e-3
    assert resolve(Config(num_labels=20), tiny_data(), cpu).weight_decay == 5e-4
    assert resolve(Config(num_labels=100, weight_decay=0.0), c100, cpu).weight_decay == 0.0


def test_user_values_are_never_overridden_by_auto():
    cfg = resolve(
        Config(
            algorithm="softmatch",
            iterations=300,
            num_labels=20,
            ema_decay=0.999,
            bn_momentum=0.001,
            stat_momentum=0.999,
        ),
        tiny_data(),
        torch.device("cpu"),
    )
    assert (cfg.ema_decay, cfg.bn_momentum, cfg.stat_momentum) == (0.999, 0.001, 0.999)
    assert "ema_decay" not in cfg.auto


def test_incompatible_config_fails_before_training(tmp_path):
    from semimatch.runs.engine import fit

    with pytest.raises(ConfigError, match="num_labels=40 cannot be split evenly over the 100"):
        resolve(Config(num_labels=40), tiny_data(100), torch.device("cpu"))
    # An option the algorithm does not take stops fit before the run folder is written.
    for option, value in (("n_sigma", 2.0), ("stat_momentum", 0.9)):
        cfg = Config(algorithm="fixmatch", num_labels=20, iterations=2, **{option: value})
        with pytest.raises(
            ConfigError, match=rf"\['{option}'\] have no effect with algorithm 'fixmatch'"
        ):
            fit(cfg, data=tiny_data(), out=tmp_path / option)
        assert not (tmp_path / option).exists()
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        resolve(Config(precision="fp16", num_labels=20), tiny_data(), torch.device("cpu"))


def test_algorithm_options_are_the_builder_keywords():
    cfg = Config(algorithm="softmatch", stat_momentum=0.9, n_sigma=1.0, per_class=True)
    assert cfg.algorithm_options() == {"stat_momentum": 0.9, "n_sigma": 1.0, "per_class": True}


def test_every_builder_keyword_is_a_config_field_a_flag_and_checked(capsys):
    """The builders' signatures are the one declaration: each keyword is a Config field (type
    ``<builder type> | None``, default None, help from the docstring) and a ``train`` flag, and
    every field that is no builder keyword is not an algorithm option."""
    import inspect
    import typing
    from dataclasses import fields

    from semimatch.cli import main
    from semimatch.config import OPTIONS, field_types
    from semimatch.methods.registry import DATA_INPUTS, docstring_args, methods

    keywords = {
        name
        for spec in methods().values()
        for name, p in inspect.signature(spec.build).parameters.items()
        if p.kind is p.KEYWORD_ONLY and name not in DATA_INPUTS
    }

    def some_value(name: str) -> object:  # a value of the option's type other than None
        kind = OPTIONS[name].type
        if typing.get_origin(kind) is typing.Literal:
            return typing.get_args(kind)[-1]
        return True if kind is bool else 2 if kind is int else 0.5

    every = Config(**{name: some_value(name) for name in keywords})
    assert set(every.algorithm_options()) == keywords == set(OPTIONS)
    by_name = {f.name: f for f in fields(Config)}
    assert DATA_INPUTS and not DATA_INPUTS & set(by_name)  # the data's, not the user's
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    # argparse may wrap a line after a word's hyphen ("pseudo- labels"): joined back here.
    usage = " ".join(capsys.readouterr().out.split()).replace("- ", "-")
    for algo, spec in methods().items():
        hints, docs = typing.get_type_hints(spec.build), docstring_args(spec.build)
        for name in spec.options:
            f = by_name[name]
            assert f.default is None and field_types()[name] == hints[name] | None
            assert f"{algo}" in f.metadata["help"] and docs[name].rstrip(".") in f.metadata["help"]
            assert f"--{name.replace('_', '-')}" in usage
            assert " ".join(docs[name].rstrip(".").split()).replace("- ", "-") in usage
        for name in set(OPTIONS) - spec.options:
            cfg = Config(algorithm=algo, num_labels=20, **{name: some_value(name)})
            with pytest.raises(ConfigError, match=rf"\['{name}'\] have no effect with algorithm"):
                resolve(cfg, tiny_data(), torch.device("cpu"))


def test_a_builder_keyword_is_enough_for_a_field_and_validation():
    """A throwaway algorithm: its keyword becomes a field with its docstring's help and default
    text, the spec refuses an option it does not take, and a clash of types is an import-time
    error."""
    from dataclasses import dataclass, fields

    from semimatch.config import algorithm_option_fields
    from semimatch.methods.registry import Method, algorithm_options, methods

    def toy(num_classes: int, *, gamma: float = 0.5, tau: float = 0.7) -> SSLAlgorithm:
        """A toy.

        Args:
            num_classes: number of classes.
            gamma: how much toy; a second line
                continues it.
            tau: the toy's threshold.
        """
        return SSLAlgorithm(None, name="toy")

    registry = {"fixmatch": methods()["fixmatch"], "toy": Method("toy", toy)}

    @dataclass
    @algorithm_option_fields(algorithm_options(registry), after="name")
    class ToyConfig:
        name: str = "x"
        last: int = 0

    meta = {f.name: f.metadata for f in fields(ToyConfig)}
    assert list(meta) == ["name", "tau", "lambda_u", "gamma", "last"]
    assert meta["gamma"]["help"] == "toy: how much toy; a second line continues it"
    assert meta["gamma"]["none"] == "toy: 0.5"
    assert meta["tau"]["help"] == "fixmatch: confidence threshold; toy: the toy's threshold"
    assert meta["tau"]["none"] == "fixmatch: 0.95; toy: 0.7"
    assert ToyConfig().gamma is None
    with pytest.raises(ValueError, match=r"\['lambda_u'\] have no effect with algorithm 'toy'"):
        registry["toy"].check("toy", {"gamma": 1.0, "lambda_u": 2.0})

    def clash(num_classes: int, *, tau: int = 1) -> SSLAlgorithm:
        """A clash.

        Args:
            num_classes: number of classes.
            tau: an integer threshold.
        """
        return SSLAlgorithm(None)

    with pytest.raises(TypeError, match="'tau'.*one name, one type"):
        algorithm_options({**registry, "clash": Method("clash", clash)})

    def undocumented(num_classes: int, *, beta: float = 1.0) -> SSLAlgorithm:
        """No Args section."""
        return SSLAlgorithm(None)

    with pytest.raises(TypeError, match="'beta' needs a type annotation and an Args: entry"):
        Method("undocumented", undocumented)
