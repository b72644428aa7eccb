"""Server settings: flags > TOML file > EDGEFL_* environment > defaults, and the serve command."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from edgefl.__main__ import main
from edgefl._config import FIELDS, ConfigError, Settings, add_arguments, load_settings


def _flags(*argv: str) -> dict[str, object]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return vars(parser.parse_args(list(argv)))


def test_defaults() -> None:
    s = load_settings({}, {})
    assert s == Settings()
    assert (s.port, s.max_body_bytes, s.retry_wait, s.fast_path) == (
        4321,
        16 * 1024 * 1024,
        5.0,
        True,
    )


def test_flags_beat_toml_beat_environment(tmp_path: Path) -> None:
    config = tmp_path / "edgefl.toml"
    config.write_text("port = 2222\nretry_wait = 7.5\n")
    env = {
        "EDGEFL_PORT": "1111",
        "EDGEFL_RETRY_WAIT": "9",
        "EDGEFL_MAX_BODY_BYTES": "5000",
        "EDGEFL_CONFIG": str(config),
    }
    s = load_settings(_flags("--port", "3333"), env)
    assert s.port == 3333  # flag
    assert s.retry_wait == 7.5  # TOML over environment
    assert s.max_body_bytes == 5000  # environment over default
    assert s.config == config
    s = load_settings(_flags(), env)
    assert s.port == 2222
    s = load_settings(_flags(), {"EDGEFL_PORT": "1111"})
    assert s.port == 1111


def test_config_flag_and_server_table(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[server]\nhost = "127.0.0.1"\nfast_path = false\njobs = "/srv/jobs"\n')
    s = load_settings(_flags("--config", str(config)), {})
    assert (s.host, s.fast_path, s.jobs) == ("127.0.0.1", False, Path("/srv/jobs"))


def test_booleans_from_every_source(tmp_path: Path) -> None:
    assert load_settings(_flags("--no-fast-path"), {}).fast_path is False
    assert load_settings(_flags(), {"EDGEFL_FAST_PATH": "off"}).fast_path is False
    assert load_settings(_flags(), {"EDGEFL_SELECTION_ENDPOINT": "0"}).selection_endpoint is False
    assert load_settings(_flags("--fast-path"), {"EDGEFL_FAST_PATH": "no"}).fast_path is True


@pytest.mark.parametrize(
    ("flags", "env", "toml", "message"),
    [
        ((), {"EDGEFL_PORT": "abc"}, None, "port (from EDGEFL_PORT): cannot use 'abc' as int"),
        (("--port", "70000"), {}, None, "port must be in 0..65535, got 70000"),
        ((), {}, "porty = 1\n", "unknown setting(s) porty"),
        ((), {}, "port = 'x'\n", "port (from config file): cannot use 'x' as int"),
        ((), {}, "port = \n", "not valid TOML"),
        (("--retry-wait", "-1"), {}, None, "retry_wait must be a positive number of seconds"),
        (("--tls-cert", "c.pem"), {}, None, "tls_cert and tls_key must be given together"),
        ((), {"EDGEFL_FINISHED_RESULT": "maybe"}, None, "finished_result must be one of done, ok"),
        ((), {"EDGEFL_MAX_BODY_BYTES": "10"}, None, "max_body_bytes must be at least 1024"),
        (("--device-rate", "0"), {}, None, "device_rate must be > 0 requests per second"),
        (("--device-burst", "0"), {}, None, "device_burst must be at least 1"),
        (("--body-timeout", "0"), {}, None, "body_timeout must be a positive number of seconds"),
    ],
)
def test_errors_name_the_setting_and_source(
    tmp_path: Path,
    flags: tuple[str, ...],
    env: dict[str, str],
    toml: str | None,
    message: str,
) -> None:
    if toml is not None:
        path = tmp_path / "bad.toml"
        path.write_text(toml)
        flags = (*flags, "--config", str(path))
    with pytest.raises(ConfigError) as info:
        load_settings(_flags(*flags), env)
    assert message in str(info.value)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope\.toml"):
        load_settings(_flags("--config", str(tmp_path / "nope.toml")), {})


def test_help_explains_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for spec in FIELDS:
        assert spec.option in text
        assert spec.env in text
    assert "[default: 4321; env EDGEFL_PORT]" in text
    assert "flags, then the --config TOML file, then EDGEFL_* environment variables" in text


def test_serve_without_jobs_fails_with_a_message(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("EDGEFL_JOBS", raising=False)
    monkeypatch.delenv("EDGEFL_CONFIG", raising=False)
    assert main(["serve", "--port", "0"]) == 1
    assert "no jobs to serve" in capsys.readouterr().err
    assert main(["serve", "--jobs", str(tmp_path)]) == 1
    assert "no job folders" in capsys.readouterr().err
    assert main(["serve", "--port", "x"]) == 2
    assert "cannot use 'x' as int" in capsys.readouterr().err
