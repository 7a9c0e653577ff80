"""gateway.config: defaults, the documented example, durations, and every refusal.

Every refusal must be a `ConfigError` whose message is one line naming the offending key
(or file), because the CLI prints exactly that line and exits 2.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway import config as cfg
from gateway.config import Config, ConfigError, PoolConfig, load, parse_duration

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config.example.toml"
# Keys of a pool with no default (or whose documented value is an example, not the default).
POOL_EXAMPLE_ONLY = {"name", "host", "username", "password_env"}


@pytest.fixture(autouse=True)
def _no_config_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POSTERN_CONFIG", raising=False)


def write(tmp_path: Path, text: str, name: str = "postern.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def refusal(tmp_path: Path, text: str) -> str:
    """Load `text` as a config file; return the ConfigError message (must be one line)."""
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, text))
    message = str(caught.value)
    assert message, "empty ConfigError message"
    assert "\n" not in message and "\r" not in message, f"not one line: {message!r}"
    return message


def example_pool_block() -> dict[str, Any]:
    """The commented-out [[pools]] example of config.example.toml, uncommented and parsed."""
    lines = EXAMPLE.read_text().splitlines()
    start = lines.index("# [[pools]]")
    block = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        block.append(line[2:] if line.startswith("# ") else line[1:])
    document = tomllib.loads("\n".join(block))
    pools: list[dict[str, Any]] = document["pools"]
    assert len(pools) == 1
    return pools[0]


# --- defaults and the example ---------------------------------------------------------------


def test_defaults_load_with_no_file() -> None:
    config = load(None)
    assert config == Config()
    assert config.server.hostname == "postern.localdomain"
    assert config.server.data_dir == Path("var")
    assert config.smtp.listen == (("127.0.0.1", 2525),)
    assert config.smtp.require_auth is False
    assert config.smtp.max_message_size == 26_214_400
    assert config.smtp.max_recipients == 100
    assert config.http.listen == ("127.0.0.1", 8080)
    assert config.http.max_body_size == 31_457_280
    assert config.http.rate_limit == "50/s"
    assert config.storage.url == ""
    assert config.delivery.retry_schedule == (60.0, 300.0, 900.0, 3600.0, 14400.0)
    assert config.delivery.max_age == 5 * 86400
    assert config.delivery.connect_timeout == 30
    assert config.delivery.command_timeout == 300
    assert config.delivery.handoff_timeout == 10
    assert config.delivery.mx_port == 25
    assert config.policy.sender == "verified"
    assert config.dns.nameservers == ()
    assert config.pools == ()


def beside(folder: Path) -> Config:
    """The defaults as a config file in `folder` gives them: data_dir is folder/var."""
    return dataclasses.replace(Config(), server=cfg.ServerConfig(data_dir=folder / "var"))


def test_empty_file_is_the_defaults(tmp_path: Path) -> None:
    assert load(write(tmp_path, "")) == beside(tmp_path)


def test_postern_config_env_is_used_when_no_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, '[server]\nhostname = "from-env.example"\n')
    monkeypatch.setenv("POSTERN_CONFIG", str(path))
    assert load(None).server.hostname == "from-env.example"


def test_example_loads_and_equals_the_defaults() -> None:
    # Every key in the example is set to its built-in default.
    assert load(EXAMPLE) == beside(REPO)


def test_relative_paths_are_beside_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    monkeypatch.chdir(tmp_path)  # not the config's folder
    text = '[server]\ndata_dir = "state/../var"\n[storage]\nurl = "sqlite:///db/p.db"\n'
    config = load(write(etc, text))
    assert config.server.data_dir == etc / "state/../var"
    assert config.storage.url == f"sqlite:///{etc}/db/p.db"
    absolute = load(write(etc, f'[server]\ndata_dir = "{tmp_path / "abs"}"\n'))
    assert absolute.server.data_dir == tmp_path / "abs"
    message = refusal(etc, '[smtp]\ntls_cert = "tls/cert.pem"\ntls_key = "tls/key.pem"\n')
    assert message == f"smtp.tls_cert: cannot read {etc}/tls/cert.pem"
    assert load(None).server.data_dir == Path("var")  # no file: the current folder's ./var


def test_example_documents_every_section_key() -> None:
    document = tomllib.loads(EXAMPLE.read_text())
    assert set(document) == set(cfg._SECTIONS), "sections differ from gateway.config._SECTIONS"
    for section, (_kind, keys) in cfg._SECTIONS.items():
        assert set(document[section]) == set(keys), f"[{section}] keys differ from the loader's"


def test_every_config_field_is_a_loader_key() -> None:
    # Guards the comparison above: a dataclass field the loader forgot would go unnoticed.
    for section, (kind, keys) in cfg._SECTIONS.items():
        fields = {f.name for f in dataclasses.fields(kind)}
        assert fields == set(keys), f"[{section}] dataclass fields vs loader keys"
    assert {f.name for f in dataclasses.fields(PoolConfig)} == set(cfg._POOL_KEYS)


def test_example_is_commented_line_by_line() -> None:
    # "each with a one-line comment": a comment line directly above (or beside) each key.
    lines = EXAMPLE.read_text().splitlines()
    for number, line in enumerate(lines):
        if "=" in line and not line.lstrip().startswith("#"):
            above = lines[number - 1].lstrip()
            assert above.startswith("#") or "#" in line, f"undocumented: {line!r}"


def test_example_pool_block_has_every_pool_key_with_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = example_pool_block()
    assert set(pool) == set(cfg._POOL_KEYS)
    defaults = PoolConfig(name="x", host="y")
    for key, value in pool.items():
        if key not in POOL_EXAMPLE_ONLY:
            assert value == getattr(defaults, key), f"pools.{key} is not its default"
    # Uncommented, it is a valid pool once its password variable is set.
    monkeypatch.setenv(pool["password_env"], "secret")
    config = cfg.from_dict({"pools": [pool]})
    assert config.pools[0].name == pool["name"]
    assert config.pools[0].password() == "secret"


def test_example_keeps_no_secret() -> None:
    # Secrets come from the environment: no `password = ...` key, even commented out.
    assert not re.search(r"^[#\s]*password\s*=", EXAMPLE.read_text(), re.MULTILINE)


# --- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("5d", 432000.0),
        ("500ms", 0.5),
        ("1.5s", 1.5),
        ("45", 45.0),
        (" 10s ", 10.0),
        (30, 30.0),
        (0, 0.0),
        (2.5, 2.5),
    ],
)
def test_duration_accepted(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value",
    ["", "s", "5x", "five", "-5", "-5s", "5 minutes", "1e3", "5m30s", -1, -0.5, True, None, []],
)
def test_duration_refused(value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_duration(value, "delivery.max_age")
    assert str(caught.value).startswith("delivery.max_age:")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_duration_refuses_non_finite_floats(value: float) -> None:
    # TOML has `nan` and `inf` literals; neither is a usable timeout, retry delay or max age.
    with pytest.raises(ConfigError):
        parse_duration(value, "delivery.max_age")


@pytest.mark.parametrize("literal", ["nan", "inf"])
def test_non_finite_duration_in_file_refused(tmp_path: Path, literal: str) -> None:
    message = refusal(tmp_path, f"[delivery]\nconnect_timeout = {literal}\n")
    assert "delivery.connect_timeout" in message


def test_durations_in_a_file(tmp_path: Path) -> None:
    config = load(
        write(
            tmp_path,
            '[delivery]\nretry_schedule = ["1s", 30, 1.5, "2h"]\nmax_age = "5d"\n'
            'connect_timeout = 7\ncommand_timeout = 2.5\nhandoff_timeout = "500ms"\n'
            '[smtp]\nidle_timeout = "2m"\n',
        )
    )
    assert config.delivery.retry_schedule == (1.0, 30.0, 1.5, 7200.0)
    assert config.delivery.max_age == 432000.0
    assert config.delivery.connect_timeout == 7.0
    assert config.delivery.command_timeout == 2.5
    assert config.delivery.handoff_timeout == 0.5
    assert config.smtp.idle_timeout == 120.0


def test_bad_duration_in_file_names_the_key(tmp_path: Path) -> None:
    message = refusal(tmp_path, '[delivery]\nmax_age = "5 fortnights"\n')
    assert "delivery.max_age" in message


def test_bad_retry_schedule_entry_names_the_index(tmp_path: Path) -> None:
    message = refusal(tmp_path, '[delivery]\nretry_schedule = ["1m", "soon"]\n')
    assert "delivery.retry_schedule[1]" in message


# --- refusals: structure ---------------------------------------------------------------------


def test_unknown_section(tmp_path: Path) -> None:
    message = refusal(tmp_path, '[smpt]\nlisten = ["127.0.0.1:2525"]\n')
    assert "smpt" in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[server]\nhost_name = "x"\n', "host_name"),
        ("[smtp]\nmax_rcpt = 5\n", "max_rcpt"),
        ("[http]\nport = 8080\n", "port"),
        ("[delivery]\nretries = 3\n", "retries"),
        ('[policy]\nsenders = "any"\n', "senders"),
    ],
)
def test_unknown_key(tmp_path: Path, text: str, key: str) -> None:
    message = refusal(tmp_path, text)
    assert key in message
    assert "unknown key" in message


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    message = refusal(tmp_path, 'smtp = "127.0.0.1:2525"\n')
    assert "smtp" in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[server]\nhostname = 5\n", "server.hostname"),
        ("[server]\ndata_dir = 1\n", "server.data_dir"),
        ('[smtp]\nrequire_auth = "yes"\n', "smtp.require_auth"),
        ('[smtp]\nmax_recipients = "100"\n', "smtp.max_recipients"),
        ("[smtp]\nmax_recipients = true\n", "smtp.max_recipients"),
        ("[smtp]\nmax_message_size = 0\n", "smtp.max_message_size"),
        ("[smtp]\nmax_connections = -1\n", "smtp.max_connections"),
        ("[smtp]\nmax_message_size = 1.5\n", "smtp.max_message_size"),
        ("[smtp]\nmax_header_size = 0\n", "smtp.max_header_size"),
        ('[smtp]\nmax_data_in_flight = "1G"\n', "smtp.max_data_in_flight"),
        ("[smtp]\nmax_message_size = 2000\nmax_data_in_flight = 1999\n", "max_data_in_flight"),
        ("[smtp]\nlisten = 2525\n", "smtp.listen"),
        ("[smtp]\nlisten = []\n", "smtp.listen"),
        ('[http]\nlisten = ["127.0.0.1:8080"]\n', "http.listen"),
        ('[http]\nrate_limit = "fast"\n', "http.rate_limit"),
        ("[http]\nrate_limit = 50\n", "http.rate_limit"),
        ("[storage]\nurl = 5\n", "storage.url"),
        ('[storage]\nurl = "mysql://db"\n', "storage.url"),
        ('[storage]\nurl = "postgresql://u:hunter2@db:port/x"\n', "storage.url"),
        ('[delivery]\nretry_schedule = "1m"\n', "delivery.retry_schedule"),
        ("[delivery]\nretry_schedule = []\n", "delivery.retry_schedule"),
        ("[delivery]\nmx_port = 0\n", "delivery.mx_port"),
        ("[delivery]\nmx_port = 70000\n", "delivery.mx_port"),
        ('[delivery]\nmx_port = "25"\n', "delivery.mx_port"),
        ("[delivery]\nworkers = 0\n", "delivery.workers"),
        ('[policy]\nsender = "anyone"\n', "policy.sender"),
        ('[dns]\nnameservers = "127.0.0.1"\n', "dns.nameservers"),
        ("[dns]\nnameservers = [53]\n", "dns.nameservers"),
    ],
)
def test_wrong_type_or_value_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    assert key in refusal(tmp_path, text)


@pytest.mark.parametrize("hostname", ["", "two words", "bad\\r\\nRCPT TO:<x@example.com>"])
def test_bad_hostname_refused(tmp_path: Path, hostname: str) -> None:
    # server.hostname is sent as the EHLO argument and used as the Message-ID domain: an
    # empty name or one with spaces or CR/LF breaks (or injects into) every upstream session.
    assert "server.hostname" in refusal(tmp_path, f'[server]\nhostname = "{hostname}"\n')


# --- refusals: listen addresses --------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "127.0.0.1:", ":2525", "127.0.0.1:smtp", "127.0.0.1:0", "127.0.0.1:65536", ""],
)
def test_bad_smtp_listen_address(tmp_path: Path, address: str) -> None:
    message = refusal(tmp_path, f'[smtp]\nlisten = ["{address}"]\n')
    assert "smtp.listen" in message


@pytest.mark.parametrize("address", ["localhost", "127.0.0.1:99999", "[::1]"])
def test_bad_http_listen_address(tmp_path: Path, address: str) -> None:
    message = refusal(tmp_path, f'[http]\nlisten = "{address}"\n')
    assert "http.listen" in message


def test_good_listen_addresses(tmp_path: Path) -> None:
    config = load(
        write(
            tmp_path,
            '[smtp]\nlisten = ["127.0.0.1:2525", "[::1]:2526", "localhost:2527"]\n'
            '[http]\nlisten = "[::1]:8081"\n',
        )
    )
    assert config.smtp.listen == (("127.0.0.1", 2525), ("::1", 2526), ("localhost", 2527))
    assert config.http.listen == ("::1", 8081)


def test_smtp_listen_may_be_a_single_string(tmp_path: Path) -> None:
    assert load(write(tmp_path, '[smtp]\nlisten = "127.0.0.2:25"\n')).smtp.listen == (
        ("127.0.0.2", 25),
    )


@pytest.mark.parametrize(
    "address", ["0.0.0.0:2525", "[::]:2525", "192.0.2.10:25", "mail.example.com:25"]
)
def test_non_loopback_smtp_listen_requires_auth(tmp_path: Path, address: str) -> None:
    message = refusal(tmp_path, f'[smtp]\nlisten = ["127.0.0.1:2525", "{address}"]\n')
    assert "smtp.listen" in message
    assert "require_auth" in message
    allowed = load(
        write(tmp_path, f'[smtp]\nlisten = ["{address}"]\nrequire_auth = true\n', "ok.toml")
    )
    assert allowed.smtp.require_auth is True


def test_tls_cert_without_key(tmp_path: Path) -> None:
    cert = write(tmp_path, "not really a cert", "cert.pem")
    message = refusal(tmp_path, f'[smtp]\ntls_cert = "{cert}"\n')
    assert "tls_key" in message


def test_unreadable_tls_cert(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    message = refusal(tmp_path, f'[smtp]\ntls_cert = "{missing}"\ntls_key = "{missing}"\n')
    assert "smtp.tls_cert" in message


# --- refusals: pools -------------------------------------------------------------------------


POOL = '[[pools]]\nname = "{name}"\nhost = "127.0.0.1"\nencryption = "none"\n'


def test_pool_loads_with_defaults(tmp_path: Path) -> None:
    config = load(write(tmp_path, POOL.format(name="relay") + "port = 2526\n"))
    assert config.pools == (
        PoolConfig(name="relay", host="127.0.0.1", port=2526, encryption="none"),
    )
    assert config.pools[0].password() == ""


def test_pool_password_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTERN_TEST_POOL_PASSWORD", "hunter2")
    text = POOL.format(name="ses") + 'password_env = "POSTERN_TEST_POOL_PASSWORD"\n'
    assert load(write(tmp_path, text)).pools[0].password() == "hunter2"


def test_pool_password_env_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POSTERN_TEST_UNSET_PASSWORD", raising=False)
    text = POOL.format(name="ses") + 'password_env = "POSTERN_TEST_UNSET_PASSWORD"\n'
    message = refusal(tmp_path, text)
    assert "POSTERN_TEST_UNSET_PASSWORD" in message
    assert "ses" in message


def test_duplicate_pool_names(tmp_path: Path) -> None:
    message = refusal(tmp_path, POOL.format(name="relay") + POOL.format(name="relay"))
    assert "relay" in message
    assert "pools" in message


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('passwd = "x"\n', "passwd"),
        ('port = "587"\n', "pools[0].port"),
        ("port = 0\n", "pools[0].port"),
        ('priority = "high"\n', "pools[0].priority"),
        ("max_connections = 0\n", "pools[0].max_connections"),
        ("is_default = 1\n", "pools[0].is_default"),
    ],
)
def test_bad_pool_key(tmp_path: Path, extra: str, key: str) -> None:
    assert key in refusal(tmp_path, POOL.format(name="relay") + extra)


def test_pool_bad_encryption(tmp_path: Path) -> None:
    text = '[[pools]]\nname = "relay"\nhost = "127.0.0.1"\nencryption = "starttls"\n'
    assert "pools[0].encryption" in refusal(tmp_path, text)


@pytest.mark.parametrize("missing", ["name", "host"])
def test_pool_missing_required_key(tmp_path: Path, missing: str) -> None:
    keys = {"name": '"relay"', "host": '"127.0.0.1"'}
    del keys[missing]
    text = "[[pools]]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())
    message = refusal(tmp_path, text)
    assert missing in message and "pools[0]" in message


def test_pools_must_be_an_array_of_tables(tmp_path: Path) -> None:
    assert "pools" in refusal(tmp_path, '[pools]\nname = "relay"\n')


# --- refusals: the file itself ---------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load(missing)
    message = str(caught.value)
    assert str(missing) in message and "\n" not in message


def test_unreadable_file_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path)
    assert str(tmp_path) in str(caught.value) and "\n" not in str(caught.value)


def test_unreadable_file_not_utf8(tmp_path: Path) -> None:
    # A binary or Latin-1 file must be a ConfigError too, not a UnicodeDecodeError traceback.
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[server]\nhostname = "caf\xe9.example"\n')
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        "[smtp\n",
        "[server]\nhostname = \n",
        "[server]\nhostname = 'a'\nhostname = 'b'\n",
        "= 5\n",
        '[server]\nhostname = "unterminated\n',
    ],
)
def test_invalid_toml(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = str(caught.value)
    assert str(path) in message and "TOML" in message and "line" in message
    assert "\n" not in message


# --- [http] connection limits and /metrics --------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[http]\nmax_connections = 0\n", "http.max_connections"),
        ('[http]\nheader_timeout = "0s"\n', "http.header_timeout"),
        ('[http]\nmetrics_listen = "127.0.0.1"\n', "http.metrics_listen"),
        ('[http]\nmetrics_auth = "yes"\n', "http.metrics_auth"),
        ("[http]\nmetrics_auth = 1\n", "http.metrics_auth"),
        ('[http]\nlisten = "127.0.0.1:81"\nmetrics_listen = "127.0.0.1:81"\n', "metrics_listen"),
    ],
)
def test_http_limits_refused(tmp_path: Path, text: str, key: str) -> None:
    assert key in refusal(tmp_path, text)


@pytest.mark.parametrize(
    ("http", "need_key"),
    [
        ("", False),  # the defaults: loopback, open as before
        ('listen = "0.0.0.0:8080"', True),  # auto: off loopback, a key
        ('listen = "0.0.0.0:8080"\nmetrics_listen = "127.0.0.1:9102"', False),
        ('metrics_listen = "[::]:9102"', True),
        ('metrics_listen = "192.0.2.1:9102"\nmetrics_auth = false', False),  # public, explicitly
        ("metrics_auth = true", True),
        ('metrics_auth = "auto"', False),
    ],
)
def test_metrics_need_a_key_off_loopback_unless_told(
    tmp_path: Path, http: str, need_key: bool
) -> None:
    config = load(write(tmp_path, f"[http]\n{http}\n"))
    assert config.http.metrics_need_key() is need_key


def test_metrics_listen_parsed(tmp_path: Path) -> None:
    config = load(write(tmp_path, '[http]\nmetrics_listen = "127.0.0.1:9102"\n'))
    assert config.http.metrics_listen == ("127.0.0.1", 9102)
    assert Config().http.metrics_listen is None


@pytest.mark.parametrize(
    "text",
    [
        '[auth]\nsession_idle = "30s"\n',
        '[auth]\nsession_idle = "2d"\nsession_absolute = "1d"\n',
        '[auth]\nsession_absolute = "0s"\n',
    ],
)
def test_session_lifetimes_refused(tmp_path: Path, text: str) -> None:
    assert "auth.session_" in refusal(tmp_path, text)


def test_session_lifetimes_read(tmp_path: Path) -> None:
    config = load(write(tmp_path, '[auth]\nsession_idle = "1h"\nsession_absolute = "1d"\n'))
    assert (config.auth.session_idle, config.auth.session_absolute) == (3600.0, 86400.0)


def test_the_bounce_listener_is_off_by_default() -> None:
    bounces = Config().bounces
    assert (bounces.listen, bounces.domain, bounces.processed_folder) == (None, "", "")


def test_bounces_read(tmp_path: Path) -> None:
    text = (
        '[bounces]\ndomain = "Bounce.Example.TEST."\nlisten = "127.0.0.1:2526"\n'
        'processed_folder = "Postern Processed"\nmax_inbound_size = 1000\n'
    )
    bounces = load(write(tmp_path, text)).bounces
    assert (bounces.domain, bounces.listen) == ("bounce.example.test", ("127.0.0.1", 2526))
    assert (bounces.processed_folder, bounces.max_inbound_size) == ("Postern Processed", 1000)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[bounces]\nlisten = "127.0.0.1:2526"\n', "set bounces.domain"),
        ('[bounces]\ndomain = "b.test"\nlisten = "0.0.0.0:25"\n', "listen_public"),
        ('[bounces]\ndomain = "not a domain"\n', "bounces.domain"),
        ('[bounces]\nprocessed_folder = "INBOX"\n', "INBOX itself"),
        ('[bounces]\nprocessed_folder = "a\\"b"\n', "bounces.processed_folder"),
        ("[bounces]\nmax_inbound_size = 0\n", "bounces.max_inbound_size"),
    ],
)
def test_bounces_refused(tmp_path: Path, text: str, words: str) -> None:
    assert words in refusal(tmp_path, text)


def test_a_public_bounce_listener_when_told(tmp_path: Path) -> None:
    text = '[bounces]\ndomain = "b.test"\nlisten = "0.0.0.0:25"\nlisten_public = true\n'
    assert load(write(tmp_path, text)).bounces.listen == ("0.0.0.0", 25)


def test_refuse_attachment_types_takes_extensions_and_mime_types_lower_cased() -> None:
    config = cfg.from_dict(
        {"http": {"refuse_attachment_types": [".EXE", "Application/X-MSDownload", "image/*"]}}
    )
    assert config.http.refuse_attachment_types == (".exe", "application/x-msdownload", "image/*")
    assert config.http.max_attachments_size == 26_214_400
    for bad in ["exe", "application/", "*/*", ".e xe"]:
        with pytest.raises(ConfigError, match="refuse_attachment_types"):
            cfg.from_dict({"http": {"refuse_attachment_types": [bad]}})


@pytest.mark.parametrize("key", ["bounce_rate", "complaint_rate"])
@pytest.mark.parametrize("value", ["0", "0.0", "-0.1", "1.5", "true"])
def test_warmup_spike_rates_must_be_above_zero(tmp_path: Path, key: str, value: str) -> None:
    """A rate of 0 is reached by any mail at all: every warmup would pause at min_volume."""
    message = refusal(tmp_path, f"[warmup]\n{key} = {value}\n")
    assert f"warmup.{key}" in message and "above 0" in message


def test_warmup_spike_rates_accept_a_small_rate_and_one(tmp_path: Path) -> None:
    loaded = load(write(tmp_path, "[warmup]\nbounce_rate = 1\ncomplaint_rate = 0.0001\n"))
    assert loaded.warmup.bounce_rate == 1.0 and loaded.warmup.complaint_rate == 0.0001
    assert loaded.warmup.paused_recheck == 3600.0  # the backstop: a resume wakes mail at once


def test_workers_auto_counts_the_usable_cpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cfg.os, "sched_getaffinity", lambda _pid: {0, 3, 5})
    assert load(write(tmp_path, '[server]\nworkers = "auto"\n')).server.workers == 3
    assert load(write(tmp_path, "[server]\nworkers = 4\n")).server.workers == 4
    assert Config().server.workers == 3  # every core unless told otherwise
    assert load(write(tmp_path, "[server]\nworkers = 1\n")).server.workers == 1


@pytest.mark.parametrize(
    ("value", "words"),
    [("0", "positive"), ('"many"', '"auto"'), ("1000", "at most"), ("2.5", "integer")],
)
def test_workers_refusals(tmp_path: Path, value: str, words: str) -> None:
    assert words in refusal(tmp_path, f"[server]\nworkers = {value}\n")
