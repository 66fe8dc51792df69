"""Config files and `key=value` overrides -> typed dataclasses: what a user types is what the run gets."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from usclf.config import apply_overrides, dump_config, load_config
from usclf.errors import UsclfError


@dataclass
class Inner:
    lr: float = 1e-4
    steps: int | None = None
    name: str = "adam"


@dataclass
class Outer:
    out: str = "runs/x"
    weights: str | None = None
    flag: bool = True
    splits: list[str] = field(default_factory=lambda: ["unlabeled"])
    options: dict = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)


def test_text_fields_take_the_command_line_text_verbatim():
    cfg = apply_overrides(Outer(), ["out=yes", "inner.name=0x10", "weights=null"])
    assert cfg.out == "yes" and cfg.inner.name == "0x10" and cfg.weights is None
    assert apply_overrides(Outer(), ["out=null"]).out == "null"  # a required text field has no None
    assert apply_overrides(Outer(), ["weights=/w/in1k.pth"]).weights == "/w/in1k.pth"


def test_numbers_bools_lists_and_mappings_are_typed():
    cfg = apply_overrides(Outer(), ["inner.lr=3e-4", "inner.steps=200", "flag=no", "splits=[unlabeled,train]",
                                    "options.tau=0.9", "options.mode=soft"])
    assert cfg.inner.lr == 3e-4 and isinstance(cfg.inner.lr, float) and cfg.inner.steps == 200
    assert cfg.flag is False and cfg.splits == ["unlabeled", "train"]
    assert cfg.options == {"tau": 0.9, "mode": "soft"}
    assert apply_overrides(Outer(), ["inner.steps=null"]).inner.steps is None
    assert apply_overrides(Outer(), ["splits=train,val"]).splits == ["train", "val"]


def test_code_passes_typed_overrides_that_are_never_reparsed():
    """Studies hand values from code as {dotted key: value}: a text "null" stays text, a list stays a list, a
    Path becomes its text; mixed with a user's key=value text, the later item wins."""
    cfg = apply_overrides(Outer(), [{"weights": "null", "splits": ["train", "val"], "inner.steps": 7,
                                     "options.tau": 0.9, "out": Path("/runs/a=b")}, "inner.name=sgd"])
    assert cfg.weights == "null" and cfg.splits == ["train", "val"] and cfg.inner.steps == 7
    assert cfg.options == {"tau": 0.9} and cfg.out == "/runs/a=b" and cfg.inner.name == "sgd"
    assert apply_overrides(Outer(), ["inner.steps=3", {"inner.steps": None}]).inner.steps is None
    with pytest.raises(UsclfError, match="config key 'inner.steps': expected an integer"):
        apply_overrides(Outer(), [{"inner.steps": 2.5}])
    with pytest.raises(UsclfError, match="unknown config key 'inner.nope'"):
        apply_overrides(Outer(), [{"inner.nope": 1}])


@pytest.mark.parametrize("item, message", [
    ("inner.lr=fast", "config key 'inner.lr': expected float, got 'fast'"),
    ("inner.steps=2.5", "expected an integer"),
    ("flag=maybe", "expected true/false"),
    ("inner.nope=1", "unknown config key 'inner.nope'; valid keys: inner.lr, inner.steps, inner.name"),
    ("out.sub=1", "config key 'out' has no sub-keys"),
    ("novalue", "must look like key=value"),
])
def test_bad_overrides_are_one_line_errors(item, message):
    with pytest.raises(UsclfError, match=message.replace("(", r"\(").replace(")", r"\)")):
        apply_overrides(Outer(), [item])


def test_config_files_yaml_round_trip_and_bad_files(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("out: runs/a\ninner: {lr: 0.01}\n")
    cfg = load_config(Outer, p, ["inner.steps=5"])
    assert cfg.out == "runs/a" and cfg.inner.lr == 0.01 and cfg.inner.steps == 5
    dump_config(cfg, tmp_path / "dumped.yaml")
    assert load_config(Outer, tmp_path / "dumped.yaml") == cfg
    for content, message in ((b"\xff\xfe\x00binary", "not a text file"), (b"a: [1, 2", "not valid YAML"),
                             (b"- 1\n- 2\n", "must hold a mapping"), (b"bogus: 1\n", "unknown config key 'bogus'")):
        p.write_bytes(content)
        with pytest.raises(UsclfError, match=message):
            load_config(Outer, p)
    with pytest.raises(UsclfError, match="config file not found"):
        load_config(Outer, tmp_path / "missing.yaml")
