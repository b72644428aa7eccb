"""Server settings: command-line flags > TOML file > ``EDGEFL_*`` environment variables > defaults.

Every setting is declared once, in :data:`FIELDS`, with its type, default, unit and help text; the
argparse flags, the TOML keys, the environment variable names and ``--help`` are all generated
from that table, so the four sources cannot drift apart.

* Flag ``--max-body-bytes 1000``, TOML ``max_body_bytes = 1000`` and ``EDGEFL_MAX_BODY_BYTES=1000``
  set the same thing.
* The TOML file is named by ``--config`` or ``EDGEFL_CONFIG``; its keys are the setting names
  (top level, or inside a ``[server]`` table). Unknown keys are errors, naming the key and file.
* A setting's value is taken from the first source that gives it, in the order above.
"""

from __future__ import annotations

import argparse
import math
import os
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = [
    "FIELDS",
    "ConfigError",
    "FieldSpec",
    "Settings",
    "add_arguments",
    "load_settings",
]


class ConfigError(ValueError):
    """A setting has an invalid value; the message names the setting and where it came from."""


@attrs.frozen
class FieldSpec:
    """One setting: its name, how to parse a string, its default and help text."""

    name: str
    kind: str  # "str" | "int" | "float" | "bool" | "path" | "choice"
    default: object
    help: str
    choices: tuple[str, ...] = ()

    @property
    def env(self) -> str:
        return "EDGEFL_" + self.name.upper()

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


MiB = 1024 * 1024

FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec(
        "jobs",
        "path",
        None,
        "directory holding the job folders to serve (one per subfolder,"
        " each written by ETFedBuffRecipe.export); a single job folder also works",
    ),
    FieldSpec(
        "host",
        "str",
        "0.0.0.0",
        "address to listen on (0.0.0.0: every interface, so phones"
        " on the network can reach the server)",
    ),
    FieldSpec(
        "port",
        "int",
        4321,
        "TCP port (0: any free port); 4321 is the NVFlare routing-proxy"
        " port the SDK example apps dial",
    ),
    FieldSpec(
        "state_dir",
        "path",
        None,
        "directory for durable job state (SQLite database, model"
        " versions, metrics.jsonl); a fresh temporary directory when not given, which is"
        " deleted at exit",
    ),
    FieldSpec("tls_cert", "path", None, "PEM certificate chain: serve HTTPS (needs --tls-key)"),
    FieldSpec("tls_key", "path", None, "PEM private key for --tls-cert"),
    FieldSpec(
        "max_body_bytes",
        "int",
        16 * MiB,
        "largest request body accepted, in bytes; larger"
        " bodies get 413 before they are read (EDIP 1.3 asks for at least 16 MiB)",
    ),
    FieldSpec(
        "retry_wait",
        "float",
        5.0,
        "seconds a parked device is told to wait before polling"
        " again; sent as milliseconds to Android and seconds to iOS (EDIP 3.4)",
    ),
    FieldSpec(
        "retry_jitter",
        "float",
        0.2,
        "relative random spread of retry_wait, 0 to 0.5"
        " (0.2: +-20 %%), so parked devices do not poll in lockstep",
    ),
    FieldSpec(
        "body_timeout",
        "float",
        60.0,
        "seconds a request body may take to arrive; a slower upload gets 408 and its"
        " connection is closed (a client trickling bytes cannot hold a connection longer)",
    ),
    FieldSpec(
        "access_file",
        "path",
        None,
        "TOML file of per-job device tokens ([jobs.<name>] tokens = [...] or"
        " token_sha256 = [...]); devices of a listed job must present one (Authorization:"
        " Bearer, or access_token in X-Flare-User-Info), others get 403",
    ),
    FieldSpec(
        "device_rate",
        "float",
        None,
        "requests per second one device may make on average to /task and /result; a"
        " device over its budget gets RETRY (off when not given)",
    ),
    FieldSpec(
        "device_burst",
        "int",
        10,
        "requests one device may make at once after being idle (with --device-rate)",
    ),
    FieldSpec(
        "finished_result",
        "choice",
        "done",
        "reply to a /result for a finished job: 'done'"
        " (DONE, EDIP 11.2) or 'ok' (accept and discard, so Android shows no error)",
        choices=("done", "ok"),
    ),
    FieldSpec(
        "selection_endpoint",
        "bool",
        True,
        "serve POST /selection (EDIP 7, used by NVFlare's"
        " device simulator; it reveals the whole selection)",
    ),
    FieldSpec(
        "selection_max_range",
        "int",
        10_000,
        "largest N of a /selection device range <prefix>?<N> (one request registers N"
        " simulated devices; larger ranges get 400)",
    ),
    FieldSpec(
        "selection_max_devices",
        "int",
        50_000,
        "most devices one job may register through /selection ranges in total (each"
        " costs about 1.5 KiB of memory); a range past it gets 403",
    ),
    FieldSpec(
        "fast_path",
        "bool",
        True,
        "serve /job, /task and /result from a raw ASGI handler in"
        " front of the quart-trio app (same replies, less overhead per request)",
    ),
    FieldSpec(
        "graceful_timeout",
        "float",
        10.0,
        "on SIGINT/SIGTERM, seconds to let in-flight"
        " requests finish before the connections are closed",
    ),
    FieldSpec(
        "keep_alive_timeout",
        "float",
        30.0,
        "seconds an idle keep-alive connection stays open (phones poll about every 5 s)",
    ),
    FieldSpec(
        "seed",
        "int",
        None,
        "seed for device selection and retry jitter (reproducible runs); random when not given",
    ),
    FieldSpec(
        "log_level", "choice", "info", "log level", choices=("debug", "info", "warning", "error")
    ),
    FieldSpec(
        "config",
        "path",
        None,
        "TOML file with any of these settings (flags win over it, it wins over EDGEFL_* variables)",
    ),
)

_BY_NAME: dict[str, FieldSpec] = {f.name: f for f in FIELDS}


def _positive(name: str) -> Callable[[object, attrs.Attribute[Any], float], None]:
    def check(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")

    return check


@attrs.frozen(kw_only=True)
class Settings:
    """Validated server settings (see :data:`FIELDS` for the meaning of each)."""

    jobs: Path | None = None
    host: str = "0.0.0.0"
    port: int = 4321
    state_dir: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_body_bytes: int = 16 * MiB
    retry_wait: float = attrs.field(default=5.0, validator=_positive("retry_wait"))
    retry_jitter: float = 0.2
    body_timeout: float = attrs.field(default=60.0, validator=_positive("body_timeout"))
    access_file: Path | None = None
    device_rate: float | None = None
    device_burst: int = 10
    finished_result: str = "done"
    selection_endpoint: bool = True
    selection_max_range: int = 10_000
    selection_max_devices: int = 50_000
    fast_path: bool = True
    graceful_timeout: float = attrs.field(default=10.0, validator=_positive("graceful_timeout"))
    keep_alive_timeout: float = attrs.field(default=30.0, validator=_positive("keep_alive_timeout"))
    seed: int | None = None
    log_level: str = "info"
    config: Path | None = None

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        if self.max_body_bytes < 1024:
            raise ConfigError(f"max_body_bytes must be at least 1024, got {self.max_body_bytes}")
        if not 0.0 <= self.retry_jitter <= 0.5:
            raise ConfigError(f"retry_jitter must be in 0..0.5, got {self.retry_jitter}")
        if self.device_rate is not None and not (
            math.isfinite(self.device_rate) and self.device_rate > 0
        ):
            raise ConfigError(
                f"device_rate must be > 0 requests per second, got {self.device_rate}"
            )
        for name in ("selection_max_range", "selection_max_devices"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.device_burst < 1:
            raise ConfigError(f"device_burst must be at least 1, got {self.device_burst}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key must be given together")
        for spec in FIELDS:
            if spec.kind == "choice" and getattr(self, spec.name) not in spec.choices:
                raise ConfigError(
                    f"{spec.name} must be one of {', '.join(spec.choices)},"
                    f" got {getattr(self, spec.name)!r}"
                )


def _convert(spec: FieldSpec, value: object, source: str) -> object:
    """Turn ``value`` (a string from a flag/env, or a TOML value) into the setting's type."""
    where = f"{spec.name} (from {source})"
    if value is None:
        return None
    try:
        match spec.kind:
            case "str" | "choice":
                if not isinstance(value, str):
                    raise TypeError
                return value.lower() if spec.kind == "choice" else value
            case "path":
                if not isinstance(value, str | os.PathLike):
                    raise TypeError
                return Path(value).expanduser()
            case "int":
                if isinstance(value, bool):
                    raise TypeError
                if isinstance(value, int):
                    return value
                if isinstance(value, str):
                    return int(value.strip())
                raise TypeError
            case "float":
                if isinstance(value, bool):
                    raise TypeError
                if isinstance(value, int | float):
                    return float(value)
                if isinstance(value, str):
                    return float(value.strip())
                raise TypeError
            case "bool":
                if isinstance(value, bool):
                    return value
                if isinstance(value, str):
                    text = value.strip().lower()
                    if text in ("1", "true", "yes", "on"):
                        return True
                    if text in ("0", "false", "no", "off"):
                        return False
                raise ValueError
            case _:  # pragma: no cover - FIELDS is static
                raise AssertionError(spec.kind)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: cannot use {value!r} as {spec.kind}") from None


def _read_toml(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path}: not valid TOML: {e}") from None
    table = data.get("server", data)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [server] must be a table")
    unknown = sorted(k for k in table if k not in _BY_NAME or k == "config")
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown setting(s) {', '.join(unknown)};"
            f" known: {', '.join(f.name for f in FIELDS if f.name != 'config')}"
        )
    return dict(table)


def load_settings(
    flags: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build :class:`Settings` from flags (``None``: not given), the TOML file and ``environ``.

    Args:
        flags: setting name -> value from the command line (``vars(args)`` works; unknown keys
            are ignored so argparse's extra attributes do no harm).
        environ: the environment (``os.environ`` when ``None``).

    Raises:
        ConfigError: a value cannot be parsed or is out of range; the message names the setting
            and the source it came from.
    """
    flags = {} if flags is None else flags
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    config_path: object = flags.get("config")
    config_source = "--config"
    if config_path is None and env.get("EDGEFL_CONFIG"):
        config_path, config_source = env["EDGEFL_CONFIG"], "EDGEFL_CONFIG"
    toml_values: dict[str, object] = {}
    if config_path is not None:
        path = _convert(_BY_NAME["config"], config_path, config_source)
        assert isinstance(path, Path)
        toml_values = _read_toml(path)
        values["config"] = path
    for spec in FIELDS:
        if spec.name == "config":
            continue
        if flags.get(spec.name) is not None:
            values[spec.name] = _convert(spec, flags[spec.name], spec.option)
        elif spec.name in toml_values:
            values[spec.name] = _convert(spec, toml_values[spec.name], "config file")
        elif env.get(spec.env) not in (None, ""):
            values[spec.name] = _convert(spec, env[spec.env], spec.env)
    try:
        return Settings(**values)  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(str(e)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting; every default is ``None`` so :func:`load_settings` sees what was
    given, and the help text shows the real default and the environment variable."""
    for spec in FIELDS:
        default = "none" if spec.default is None else spec.default
        text = f"{spec.help} [default: {default}; env {spec.env}]"
        if spec.kind == "bool":
            parser.add_argument(
                spec.option,
                dest=spec.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=text,
            )
            continue
        metavar = {"path": "PATH", "int": "N", "float": "SECONDS", "str": "TEXT"}.get(spec.kind)
        if spec.name == "max_body_bytes":
            metavar = "BYTES"
        elif spec.name == "retry_jitter":
            metavar = "FRACTION"
        elif spec.name == "device_rate":
            metavar = "PER_SECOND"
        kwargs: dict[str, Any] = {"dest": spec.name, "default": None, "help": text}
        if spec.kind == "choice":
            kwargs["choices"] = spec.choices
        else:
            kwargs["metavar"] = metavar
        parser.add_argument(spec.option, **kwargs)
