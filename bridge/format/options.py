"""How a daemon's configuration is declared and loaded: typed sections, merged by field name.

A daemon's configuration is one dataclass whose fields are *sections*
(dataclasses too); every option is a section field declared once with
:func:`option`: its default, its help text, and whether it is a secret.
Field names are unique across a daemon's sections, so one name reaches a
field from every source:

* a flag ``--field-name`` (plus any legacy spellings in ``flags``);
* the environment ``<PREFIX>FIELD_NAME`` (plus legacy names in ``env``);
* the TOML file, as ``field_name = ...`` in the section's table
  (``[swarm]``) or at the top level (files written before sections);
* the default.

Precedence is flag > environment > file > default.  A secret can also come
from a file (``--field-name-file``, ``<PREFIX>FIELD_NAME_FILE``,
``field_name_file = ...``), since a flag shows in ``ps``.  A bad value is one
:class:`UserError` naming the source and the field.  Sections validate
themselves in ``__post_init__`` by raising :class:`InvalidOption`, which the
loader turns into such a message.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

import tomli_w

from layerswarm.bridge.format.errors import InvalidOption, UserError

REDACTED = "<redacted>"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def option(default=dataclasses.MISSING, help: str = "", *, default_factory=dataclasses.MISSING,
           flags: tuple = (), env: tuple = (), toml: tuple = (), secret: bool = False, parse=None,
           metavar: str | None = None, flag: bool = True):
    """A configuration field: ``flags``/``env``/``toml`` add legacy spellings to the derived names;
    ``parse`` turns text (or a TOML value) into the field's value; ``flag=False`` means file/env only;
    ``flag="file"`` (a secret) gives only the ``--name-file`` flag, so the secret never shows in ``ps``."""
    meta = {"help": help, "flags": tuple(flags), "env": tuple(env), "toml": tuple(toml), "secret": secret,
            "parse": parse, "metavar": metavar, "flag": flag, "option": True}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class _Opt:
    section: str
    name: str
    kind: type             # str, int, float, bool, list or dict
    optional: bool
    meta: dict

    @property
    def flags(self) -> tuple:
        return (f"--{self.name.replace('_', '-')}",) + tuple(f for f in self.meta["flags"]
                                                              if f != f"--{self.name.replace('_', '-')}")


def _kind(tp) -> tuple:
    """(base type, optional?) of an annotation."""
    args = typing.get_args(tp)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return _kind(rest[0])[0], True
    origin = typing.get_origin(tp) or tp
    if origin in (list, tuple):
        return list, False
    if origin is dict:
        return dict, False
    return origin, False


class Schema:
    """The options of one daemon's configuration class ``root`` (sections of options)."""

    def __init__(self, root, env_prefix: str):
        self.root = root
        self.env_prefix = env_prefix
        self.sections: dict = {}   # section name -> section class
        self.opts: dict = {}       # field name -> _Opt
        self.toml_names: dict = {}  # every TOML key -> field name
        for sec in dataclasses.fields(root):
            cls = typing.get_type_hints(root)[sec.name]
            self.sections[sec.name] = cls
            hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                if not f.metadata.get("option"):
                    continue
                if f.name in self.opts:
                    raise TypeError(f"option {f.name!r} is declared twice")
                kind, optional = _kind(hints[f.name])
                self.opts[f.name] = _Opt(sec.name, f.name, kind, optional, dict(f.metadata))
                for key in (f.name,) + f.metadata["toml"]:
                    self.toml_names[key] = f.name

    # -- argparse -------------------------------------------------------------
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
        parser.add_argument("--print-config", action="store_true",
                            help="print the effective configuration (secrets redacted) and exit")
        parser.add_argument("--check-config", action="store_true",
                            help="check the configuration from every source and exit")
        for section, cls in self.sections.items():
            doc = (cls.__doc__ or section).strip().splitlines()[0].rstrip(".")
            group = parser.add_argument_group(f"[{section}] {doc}")
            for opt in self.opts.values():
                if opt.section != section or not opt.meta["flag"]:
                    continue
                self._add_flag(group, opt)

    def _add_flag(self, group, opt: _Opt) -> None:
        env = self.env_prefix + opt.name.upper()
        default = self.default_of(opt)
        quiet = opt.meta["secret"] or opt.kind is bool or default in (None, "", [], {})
        shown = "" if quiet else f"; default {default}"
        help_text = f"{opt.meta['help']} (env {env}{shown})"
        kw = {"dest": opt.name, "default": argparse.SUPPRESS, "help": help_text}
        if opt.meta["flag"] == "file":   # the secret only from a file (or the environment)
            names = " or ".join(f"{e}[_FILE]" for e in (env, *opt.meta["env"]))
            _file_flag(group, opt, f"{opt.meta['help']}, read from FILE (env {names})")
            return
        if opt.kind is bool:
            group.add_argument(*opt.flags, action="store_true", **kw)
            return
        if opt.kind is list:
            kw["action"] = "append"
        elif opt.kind is dict:
            kw["action"] = "append"
            kw["metavar"] = "KEY=VALUE"
        if opt.meta["metavar"]:
            kw["metavar"] = opt.meta["metavar"]
        group.add_argument(*opt.flags, **kw)
        if opt.meta["secret"]:
            _file_flag(group, opt, f"read {opt.name} from FILE (env {env}_FILE)")

    def default_of(self, opt: _Opt):
        f = {f.name: f for f in dataclasses.fields(self.sections[opt.section])}[opt.name]
        if f.default_factory is not dataclasses.MISSING:
            return f.default_factory()
        return f.default

    # -- loading --------------------------------------------------------------
    def load(self, args: argparse.Namespace | None = None, environ=None, file: str | None = None,
             values: dict | None = None):
        """Defaults < ``file`` (or ``args.config``) < ``environ`` < ``values`` (by field name) < flags."""
        environ = os.environ if environ is None else environ
        got: dict = {}      # field -> value
        origin: dict = {}   # field -> where it came from
        file = file or (getattr(args, "config", None) if args is not None else None)
        if file:
            self._from_file(file, got, origin)
        self._from_env(environ, got, origin)
        for name, value in (values or {}).items():
            self._set(self._known(name, "settings"), value, "settings", got, origin)
        if args is not None:
            self._from_args(args, got, origin)
        return self._build(got, origin)

    def _known(self, name: str, source: str) -> _Opt:
        opt = self.opts.get(self.toml_names.get(name, name))
        if opt is None:
            raise UserError(f"{source}: unknown option {name!r}")
        return opt

    def _from_file(self, path: str, got: dict, origin: dict) -> None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UserError(f"cannot read config {path}: {exc}") from None
        for key, value in data.items():
            if key in self.sections and isinstance(value, dict) and key not in self.toml_names:
                for k, v in value.items():
                    self._file_key(path, k, v, got, origin, section=key)
            else:
                self._file_key(path, key, value, got, origin)

    def _file_key(self, path, key, value, got, origin, section=None) -> None:
        where = f"config {path}" + (f" [{section}]" if section else "")
        if key.endswith("_file") and key[:-5] in self.toml_names:
            opt = self._known(key[:-5], where)
            if opt.meta["secret"]:
                self._set(opt, read_secret(value, f"{where} {key}"), f"{where} {key}", got, origin)
                return
        if key.endswith("_env") and key[:-4] in self.toml_names:
            opt = self._known(key[:-4], where)
            if opt.meta["secret"]:
                self._set(opt, env_secret(value, f"{where} {key}"), f"{where} {key}", got, origin)
                return
        if section is not None and key not in self.toml_names and isinstance(value, dict):
            tables = getattr(self.sections[section], "__tables__", None)
            if tables:  # a named sub-table, e.g. [upstreams.corp]
                got.setdefault(tables, dict(got.get(tables) or {}))[key] = value
                origin[tables] = where
                return
        opt = self._known(key, where)
        if section is not None and opt.section != section:
            raise UserError(f"{where}: {key!r} belongs in [{opt.section}]")
        self._set(opt, value, f"{where} {key}", got, origin)

    def _from_env(self, environ, got: dict, origin: dict) -> None:
        for opt in self.opts.values():
            names = (self.env_prefix + opt.name.upper(),) + opt.meta["env"]
            for name in names:
                if opt.meta["secret"] and environ.get(name + "_FILE"):
                    self._set(opt, read_secret(environ[name + "_FILE"], f"environment {name}_FILE"),
                              f"environment {name}_FILE", got, origin)
                    break
                if environ.get(name) not in (None, ""):
                    self._set(opt, environ[name], f"environment {name}", got, origin)
                    break

    def _from_args(self, args, got: dict, origin: dict) -> None:
        ns = vars(args)
        for opt in self.opts.values():
            if opt.name + "__file" in ns:
                self._set(opt, read_secret(ns[opt.name + "__file"], f"flag {opt.flags[0]}-file"),
                          f"flag {opt.flags[0]}-file", got, origin)
            if opt.name in ns:
                self._set(opt, ns[opt.name], f"flag {opt.flags[0]}", got, origin)

    def _set(self, opt: _Opt, value, source: str, got: dict, origin: dict) -> None:
        try:
            got[opt.name] = _coerce(opt, value)
        except (ValueError, TypeError) as exc:
            raise UserError(f"{source}: {exc}") from None
        origin[opt.name] = source

    def _build(self, got: dict, origin: dict):
        sections = {}
        try:
            for name, cls in self.sections.items():
                kw = {f.name: got[f.name] for f in dataclasses.fields(cls) if f.name in got and f.init}
                sections[name] = cls(**kw)
            return self.root(**sections)
        except InvalidOption as exc:
            where = origin.get(exc.field)
            opt = self.opts.get(exc.field)
            label = opt.flags[0] if opt is not None else exc.field
            raise UserError(f"{where or label}: {exc}") from None

    # -- output ---------------------------------------------------------------
    def answered(self, args, cfg, check=None) -> bool:
        """``--print-config`` / ``--check-config``: print the answer; True means the command is done.

        ``check(cfg)`` goes past the values to what they name (files, directories) and returns a
        one-line summary; it raises UserError for the first thing wrong."""
        if getattr(args, "print_config", False):
            print(self.dump(cfg), end="")
            return True
        if getattr(args, "check_config", False):
            summary = check(cfg) if check else ""
            print("configuration OK" + (f": {summary}" if summary else ""))
            return True
        return False

    def dump(self, cfg) -> str:
        """The effective configuration as TOML, secrets redacted (None values are left out)."""
        out = {}
        for name in self.sections:
            sec = getattr(cfg, name)
            table = {}
            for f in dataclasses.fields(sec):
                if not f.metadata.get("option") and f.name != getattr(sec, "__tables__", None):
                    continue
                v = getattr(sec, f.name)
                if v is None or v == {} or v == []:
                    continue
                table[f.name] = REDACTED if f.metadata.get("secret") else _redact(v)
            out[name] = table
        return tomli_w.dumps(out)


def _file_flag(group, opt: _Opt, help_text: str) -> None:
    group.add_argument(*(f + "-file" for f in opt.flags), dest=opt.name + "__file", metavar="FILE",
                       default=argparse.SUPPRESS, help=help_text)


def _coerce(opt: _Opt, value):
    """Text (flags, env) or a TOML value -> the field's type; ValueError names the field."""
    name = opt.name
    if value is None and opt.optional:
        return None
    parse = opt.meta["parse"]
    if parse is not None:
        return parse(value)
    kind = opt.kind
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"{name} wants true or false, got {value!r}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise ValueError(f"{name} wants an integer, got {value!r}")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"{name} wants a number, got {value!r}")
    if kind is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{name} wants a list of strings, got {value!r}")
        return list(value)
    if kind is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError(f"{name} wants a JSON object, got {value!r}") from None
        if isinstance(value, list):
            value = parse_pairs(name, value)
        if not isinstance(value, dict):
            raise ValueError(f"{name} wants a table, got {value!r}")
        return dict(value)
    if not isinstance(value, str):
        raise ValueError(f"{name} wants a string, got {value!r}")
    return value


def parse_pairs(name: str, items: list) -> dict:
    """Repeated ``KEY=VALUE`` flags as a dict; VALUE is JSON when it parses, else text."""
    out = {}
    for item in items:
        k, sep, v = str(item).partition("=")
        if not sep or not k:
            raise ValueError(f"{name} wants KEY=VALUE, got {item!r}")
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def env_secret(name, source: str) -> str:
    """A secret named by an environment variable (``password_env = "VAR"``)."""
    if name not in os.environ:
        raise UserError(f"{source}: environment variable {name} is not set")
    return os.environ[name]


def read_secret(path, source: str) -> str:
    """A secret kept in a file (``*_file``): its text without surrounding white space."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except (OSError, TypeError) as exc:
        raise UserError(f"{source}: cannot read secret file {path!r}: {getattr(exc, 'strerror', None) or exc}") \
            from None


def writable_dir(path: str, what: str) -> None:
    """UserError unless ``path`` is a directory this process can write, or could create (nothing is made)."""
    p = os.path.abspath(path)
    while not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    if not os.path.isdir(p):
        raise UserError(f"{what} {path}: {p} is not a directory")
    if not os.access(p, os.W_OK | os.X_OK):
        verb = "write" if p == os.path.abspath(path) else f"create it in {p}"
        raise UserError(f"{what} {path}: cannot {verb} (permission denied)")


def readable_file(path: str, what: str) -> None:
    """UserError unless ``path`` is a file this process can read."""
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise UserError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def _redact(value):
    """Nested tables (e.g. upstream definitions) keep their shape; credentials inside are redacted."""
    if isinstance(value, dict):
        return {k: (REDACTED if k in ("password", "username", "token") else _redact(v))
                for k, v in value.items() if v is not None}
    return value
