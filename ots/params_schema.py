"""The one shape check of a params document (params.yaml, an overrides file): every key known, every value typed.

Known keys and types come from the defaults that already exist -- each stage's ``DEFAULTS``, the config
dataclasses, the model constructors -- and are handed in by the code that owns them: this module imports no stage
(a DVC stage depends only on the code it runs). :func:`check_sections` checks the top-level names for every stage
(``pipelines.params.load_params``); :func:`check_keys` checks one section against its defaults. A wrong key or
type is one :class:`ots.errors.ConfigError` line naming the key and the nearest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from ots.errors import ConfigError

# the top-level sections of params.yaml (each read by the stage named in params.yaml's comments)
SECTIONS = ("seed", "model", "solver", "data", "evaluate", "register", "serve", "train", "baseline", "tune")


def nearest(key: Any, known) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, else the known names."""
    names = [str(k) for k in known]
    match = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else f" (known: {', '.join(sorted(names))[:300]})"


def _where(path) -> str:
    return f"{path}: " if path else ""


def check_sections(doc: dict, path=None) -> None:
    """Top-level names are sections of params.yaml, sections are mappings, ``seed`` an integer."""
    for key, value in doc.items():
        if key not in SECTIONS:
            raise ConfigError(f"{_where(path)}unknown top-level key {key!r}{nearest(key, SECTIONS)}")
        if key == "seed":
            check_value(value, 0, "seed", path)
        elif value is not None and not isinstance(value, dict):
            raise ConfigError(f"{_where(path)}section {key!r} must be a mapping, got {_shown(value)}")


def check_keys(section: Any, defaults: dict, where: str, path=None, open_keys: tuple = ()) -> None:
    """Every key of ``section`` (params ``where``) is a key of ``defaults`` and its value has the default's type;
    nested mappings are checked the same way unless their dotted name is in ``open_keys`` (free-form, e.g.
    resources). A default of None accepts anything; a value of None is left to the stage (null = its default)."""
    if section is None:
        return
    if not isinstance(section, dict):
        raise ConfigError(f"{_where(path)}{where} must be a mapping, got {_shown(section)}")
    for key, value in section.items():
        name = f"{where}.{key}"
        if key not in defaults:
            raise ConfigError(f"{_where(path)}unknown key {name!r}{nearest(key, defaults)}")
        default = defaults[key]
        if isinstance(default, dict) and default and name not in open_keys and isinstance(value, dict):
            check_keys(value, default, name, path, open_keys)
        elif name not in open_keys:
            check_value(value, default, name, path)


def check_value(value: Any, default: Any, name: str, path=None) -> None:
    """``value`` has the type of ``default``: bool is never a number, a number never a bool (YAML's ``1e-4``, a
    string, passes as a number)."""
    if value is None or default is None:
        return
    if isinstance(default, bool):
        ok, want = isinstance(value, bool), "true or false"
    elif isinstance(default, (int, float)):
        ok, want = _number(value), "a number"
    elif isinstance(default, str):
        ok, want = isinstance(value, str), "a string"
    elif isinstance(default, dict):
        ok, want = isinstance(value, dict), "a mapping"
    elif isinstance(default, (list, tuple)):
        ok, want = isinstance(value, (list, tuple)), "a list"
    else:
        return
    if not ok:
        raise ConfigError(f"{_where(path)}{name} must be {want}, got {_shown(value)}")


def _number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return isinstance(value, str)


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{text[:60]}{'…' if len(text) > 60 else ''} ({type(value).__name__})"


def dataclass_defaults(cls) -> dict:
    """A config dataclass's fields as ``{name: default}`` (None -- unchecked -- for required or ``Any`` fields)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            value = None
        out[f.name] = None if str(f.type) in ("Any", "typing.Any") else value
    return out


def given(cls, section: Any) -> dict:
    """The values a params section gives a config dataclass: a null means the field's default, except for a field
    that may be None (``X | None``), where null is a value of its own (e.g. ``manifest_copy: null``: no copy)."""
    optional = {f.name for f in dataclasses.fields(cls) if "None" in str(f.type)}
    return {k: v for k, v in (section or {}).items() if v is not None or k in optional}
