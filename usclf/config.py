"""Typed dataclass configs <-> YAML, with `key=value` command-line overrides.

Every stage has a dataclass; `load_config(Cls, path, overrides)` builds it from a YAML file (nested
mappings for nested dataclasses) and dotted overrides such as `train.lr=3e-4`. An unknown key is
rejected with the valid names listed; a key a config class has moved (its `MOVED_KEYS`) with the new one.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import UsclfError

T = TypeVar("T")


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise a one-line UsclfError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(value, a, key)
            except UsclfError as e:  # try the next member of the union
                errors.append(str(e))
        if len(errors) == 1:  # `int | None`: the int's own message says more than the union's
            raise UsclfError(errors[0] + " (or null)")
        raise UsclfError(f"config key '{key}': cannot read {value!r} as {tp}")
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise UsclfError(f"config key '{key}': expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            value = [value]
        item_t = args[0] if args else Any
        items = [_coerce(v, item_t, key) for v in value]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise UsclfError(f"config key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise UsclfError(f"config key '{key}': expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, (bool, list, tuple, dict)) or value is None:
            what = {list: "a list", tuple: "a list", dict: "a mapping"}.get(type(value), repr(value))
            raise UsclfError(f"config key '{key}': expected {'an integer' if tp is int else 'a number'}, got {what}"
                             + (f" {value!r}" if isinstance(value, (list, tuple, dict)) else ""))
        try:
            num = float(value) if tp is float else int(str(value)) if isinstance(value, str) else value
        except ValueError:
            raise UsclfError(f"config key '{key}': expected {tp.__name__}, got {value!r}") from None
        if not isinstance(num, (int, float)):
            raise UsclfError(f"config key '{key}': expected {tp.__name__}, got {value!r}")
        if tp is int and isinstance(num, float):
            if not num.is_integer():
                raise UsclfError(f"config key '{key}': expected an integer, got {value!r}")
            num = int(num)
        if tp is int and key.rsplit(".", 1)[-1].endswith("seed"):
            check_seed(num, f"config key '{key}'")
        return tp(num)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise UsclfError(f"config key '{key}': expected a string, got {value!r}")
        return str(value)
    return value


SEED_MAX = 2**32 - 1  # numpy's seed range


def check_seed(value: int, what: str = "seed") -> int:
    """A seed must be in numpy's range 0 .. 2**32-1 (one line otherwise)."""
    if not 0 <= int(value) <= SEED_MAX:
        raise UsclfError(f"{what}: a seed must be between 0 and {SEED_MAX}, got {value}")
    return int(value)


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a (nested) dict; unknown keys raise with the valid names listed."""
    types = _field_types(cls)
    unknown = sorted(set(data) - set(types))
    for key in unknown:
        _refuse_moved(cls, key, prefix, data[key])
    if unknown:
        raise UsclfError(
            f"unknown config key '{prefix}{unknown[0]}'; valid keys: {', '.join(prefix + k for k in types)}")
    kwargs = {k: _coerce(v, types[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def _refuse_moved(cls, key: str, prefix: str, value: Any) -> None:
    """One line naming the new key when `key` is one a config class lists in its `MOVED_KEYS` {old: new}."""
    new = getattr(cls, "MOVED_KEYS", {}).get(key)
    if new is None:
        return
    head, *rest = new.split(".")
    nested = str(value)
    for part in reversed(rest):
        nested = f"{{{part}: {nested}}}"
    raise UsclfError(f"config key '{prefix}{key}' is now '{prefix}{new}': write {prefix}{new}={value} on the command "
                     f"line, or `{head}: {nested}` in the YAML file")


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain nested dict of a dataclass (for YAML dumps and MLflow params)."""
    return dataclasses.asdict(obj)


def apply_overrides(cfg: T, overrides: list[str | dict[str, Any]]) -> T:
    """Apply overrides to a dataclass, returning a new one. An item is either a user's `a.b=value` text (value
    parsed as YAML) or, from code, a mapping {"a.b": value} whose values are used as they are (typed)."""
    data = to_dict(cfg)
    for item in overrides:
        if isinstance(item, dict):
            for key, value in item.items():
                _set(data, type(cfg), str(key), value, None)
            continue
        if "=" not in item:
            raise UsclfError(f"override '{item}' must look like key=value")
        key, raw = item.split("=", 1)
        _set(data, type(cfg), key, yaml.safe_load(raw) if raw != "" else "", raw)
    return from_dict(type(cfg), data)


def _set(data: dict, cls: Any, key: str, value: Any, raw: str | None) -> None:
    """Put `value` at the dotted `key` of `data` (the dict form of a `cls`); `raw` is the text it came from."""
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts):
        types = _field_types(cls)
        if part not in types:
            _refuse_moved(cls, part, ".".join(parts[:i]) + "." if i else "", value)
            where = ".".join(parts[:i])
            valid = ", ".join((where + "." if where else "") + k for k in types)
            raise UsclfError(f"unknown config key '{key}'; valid keys: {valid}")
        if i == len(parts) - 1:
            node[part] = value if raw is None else _raw_for_text(types[part], raw, value)
        elif typing.get_origin(types[part]) is dict or types[part] is dict:
            # a free mapping (e.g. a method's `options`): the rest of the key is one entry, checked later
            node.setdefault(part, {})
            node[part] = {**(node[part] or {}), ".".join(parts[i + 1:]): value}
            return
        else:
            cls = types[part]
            if not _is_dataclass_type(cls):
                raise UsclfError(f"config key '{'.'.join(parts[:i + 1])}' has no sub-keys")
            node = node[part]


def _raw_for_text(tp: Any, raw: str, parsed: Any) -> Any:
    """A text field takes the command-line text verbatim: YAML would turn `out=yes` into True -> "True",
    `out=0x10` into 16 -> "16". An optional text field reads `null` / `~` as None."""
    args = typing.get_args(tp)
    optional = type(None) in args
    inner = [a for a in args if a is not type(None)] if args else [tp]
    if inner != [str]:
        return parsed
    if optional and raw.strip() in ("null", "~", "None"):
        return None
    return raw


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str | dict[str, Any]] | None = None) -> T:
    """Defaults of `cls`, updated by the YAML file at `path` (if any), then by overrides (`apply_overrides`)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise UsclfError(f"--config {p} is a folder; give a YAML file (see configs/)")
        if not p.is_file():
            raise UsclfError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise UsclfError(f"config file {p} is not a text file (not UTF-8): give a YAML file") from None
        except yaml.YAMLError as e:
            raise UsclfError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise UsclfError(f"config file {p} must hold a mapping of keys")
    cfg = from_dict(cls, data)
    return apply_overrides(cfg, overrides or [])


def dump_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (logged as an artefact with every run)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
