"""The configuration: precedence and where each value came from, every problem of a
file with its line, and examples/cws.toml kept complete and true to the defaults."""

from __future__ import annotations

import tomllib
from pathlib import Path

import attrs
import pytest

from api._config import (
    PROVIDER_CONFIG_KEYS,
    RESILIENCE_KEYS,
    SETTINGS,
    ConfigError,
    DaemonConfig,
    Origin,
    check_file,
    default_home,
    load_config,
    resolve_config,
)
from api._toml_lines import key_lines, line_of

EXAMPLE = Path(__file__).parents[2] / "examples" / "cws.toml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cws.toml"
    path.write_text(text)
    return path


def test_each_source_wins_over_the_one_before_and_says_so(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "[daemon]\nport = 9000\nshutdown_grace = 3\nlog_level = 'debug'\n"
        "log_format = 'json'\n[plugins]\nmax_restarts = 4\n",
    )
    env = {"CWS_SHUTDOWN_GRACE": "5", "CWS_LOG_LEVEL": "warning", "CWS_HOME": str(tmp_path)}
    resolved = resolve_config(path, env=env, log_level="error")
    config = resolved.config
    assert (config.port, config.max_restarts, config.log_format) == (9000, 4, "json")  # file
    assert config.shutdown_grace == 5.0  # the variable over the file
    assert config.log_level == "ERROR"  # the flag over the variable and the file
    assert config.host == "127.0.0.1"  # the default, where nothing says otherwise
    assert resolved.origin("daemon.port") == Origin("file", f"{path}:2")
    assert resolved.origin("plugins.max_restarts") == Origin("file", f"{path}:7")
    assert resolved.origin("daemon.shutdown_grace") == Origin("env", "CWS_SHUTDOWN_GRACE")
    assert resolved.origin("daemon.log_level") == Origin("flag", "--log-level")
    assert resolved.origin("daemon.home") == Origin("env", "CWS_HOME")
    assert resolved.origin("daemon.host") == Origin("default", "embedded default")
    assert (
        config.source == f"embedded defaults, {path}, CWS_HOME, CWS_SHUTDOWN_GRACE, CWS_LOG_LEVEL"
    )


def test_the_log_settings_are_validated_and_normalized(tmp_path: Path) -> None:
    config = load_config(
        None, env={"CWS_LOG_LEVEL": "debug", "CWS_LOG_FORMAT": "JSON", "CWS_ACCESS_LOG": "yes"}
    )
    assert (config.log_level, config.log_format, config.access_log) == ("DEBUG", "json", True)
    defaults = DaemonConfig()
    assert (defaults.log_level, defaults.log_format, defaults.access_log) == ("INFO", "text", False)
    with pytest.raises(ConfigError) as caught:
        load_config(None, env={"CWS_LOG_LEVEL": "loud", "CWS_LOG_FORMAT": "xml",
                               "CWS_ACCESS_LOG": "sometimes"})  # fmt: skip
    assert [str(problem) for problem in caught.value.problems] == [
        'CWS_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, got "LOUD"',
        'CWS_LOG_FORMAT must be one of text, json, got "xml"',
        "CWS_ACCESS_LOG must be true or false (or 1/0, yes/no, on/off), got 'sometimes'",
    ]
    with pytest.raises(ValueError, match="log_level must be one of DEBUG, INFO, WARNING, ERROR"):
        DaemonConfig(log_level="LOUD")
    with pytest.raises(ConfigError, match=r"--log-format must be one of text, json, got \"yaml\""):
        load_config(None, env={}, log_format="yaml")


def test_check_lists_every_problem_with_its_line_in_the_files_order(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "# a comment\n"
        "[daemon]\n"
        "prot = 8080\n"  # 3: a typo
        'port = "80"\n'  # 4: a wrong type
        'log_level = "LOUD"\n'  # 5: a bad value
        'note = """\n'  # 6: text that looks like a key must not move the lines
        "open_health = 1\n"
        '"""\n'
        "[plugins]\n"
        "max_restarts = 0\n"  # 10
        "host = 'x'\n"  # 11: a key of another table
        "[plugins.overrides.aws]\n"
        "config = { regoin = 'eu-west-1', resilience = { retires = 2 } }\n"  # 13
        "isolation = 'thread'\n"  # 14
        "[plugins.overrides.analytics]\n"
        "limits = { memory_mb = 8 }\n"  # 16
        "[evnts]\n"  # 17
        "durable_topics = []\n",
    )
    assert [str(problem) for problem in check_file(path)] == [
        f"{path}:3: unknown key daemon.prot; did you mean daemon.port?",
        f'{path}:4: daemon.port must be an integer, got a string ("80")',
        f'{path}:5: daemon.log_level must be one of DEBUG, INFO, WARNING, ERROR, got "LOUD"',
        f"{path}:6: unknown key daemon.note; expected one of access_log, allowed_hosts, home,"
        " host, instance_poll_interval, keep_alive_seconds, log_format, log_level,"
        " loopback_is_one_source, max_body_bytes, max_body_rate, max_connections,"
        " max_upload_bytes,"
        " open_health, open_reads, port, shutdown_grace",
        f"{path}:10: plugins.max_restarts must be >= 1, got 0",
        f"{path}:11: unknown key plugins.host; did you mean daemon.host?",
        f"{path}:13: unknown key plugins.overrides.aws.config.regoin;"
        " did you mean plugins.overrides.aws.config.region?",
        f"{path}:13: unknown key plugins.overrides.aws.config.resilience.retires;"
        " did you mean plugins.overrides.aws.config.resilience.retries?",
        f'{path}:14: plugins.overrides.aws.isolation must be "in_process" or "subprocess",'
        ' got a string ("thread")',
        f"{path}:16: plugins.overrides.analytics.limits.memory_mb must be an integer >= 16,"
        " got an integer (8)",
        f"{path}:17: unknown table [evnts]; did you mean [events]?",
    ]
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert str(caught.value).startswith("11 problems in the configuration:\n  ")
    assert len(caught.value.problems) == 11


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[daemon\n", "cws.toml:1: not valid TOML: Expected ']'"),
        ("[daemon]\nport = 1\nport = 2\n", "cws.toml:3: not valid TOML: Cannot overwrite"),
        ("daemon = 1\n", "cws.toml:1: daemon must be a table ([daemon]), got an integer (1)"),
        ("port = 1\n", "cws.toml:1: unknown key port; did you mean daemon.port?"),
        ("[daemon]\nport = 70000\n", "cws.toml:2: daemon.port must be in 0..65535"),
        ("[daemon]\nopen_health = 1\n", "cws.toml:2: daemon.open_health must be true or false"),
        ("[daemon]\nshutdown_grace = inf\n", "must be a finite number, got inf"),
        ("[plugins]\nrestart_period = true\n", "restart_period must be a number, got a boolean"),
        (
            "[events]\ndurable_topics = ['instance.*', 'a..b']\n",
            "cws.toml:2: events.durable_topics must be an array of topic patterns",
        ),
        ("[plugins.overrides.x]\nenv = ['A', '']\n", "cws.toml:2: plugins.overrides.x.env must be"),
        ("[plugins.overrides]\nx = 1\n", "cws.toml:2: [plugins.overrides.x] must be a table"),
    ],
)
def test_a_bad_file_says_where_and_what_was_expected(
    tmp_path: Path, text: str, message: str
) -> None:
    problems = check_file(_write(tmp_path, text))
    assert len(problems) == 1
    assert message in str(problems[0])


def test_an_unreadable_or_missing_file_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    (problem,) = check_file(tmp_path / "nope.toml")
    assert str(problem) == f"{tmp_path / 'nope.toml'}: cannot read it: No such file or directory"
    (problem,) = check_file(_write(tmp_path, "") and tmp_path)
    assert "cannot read it" in str(problem)


def test_variables_and_flags_are_named_when_wrong() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, env={"CWS_PORT": "eighty", "CWS_RESTART_PERIOD": "0"}, max_restarts=0)
    assert [str(problem) for problem in caught.value.problems] == [
        "CWS_PORT must be an integer, got 'eighty'",
        "CWS_RESTART_PERIOD must be > 0, got 0.0",
        "--max-restarts must be >= 1, got 0",
    ]
    with pytest.raises(TypeError, match="unknown setting 'prot'"):
        load_config(None, env={}, prot=1)


def test_the_example_names_every_setting_at_its_default_and_passes_check() -> None:
    assert check_file(EXAMPLE) == []
    lines = key_lines(EXAMPLE.read_text())
    by_field = {setting.key: (setting.table, setting.key) for setting in SETTINGS}
    by_field |= {
        "overrides": ("plugins", "overrides"),
        "in_process_allowed": ("plugins", "in_process_allowed"),
        "default_grants": ("plugins", "default_grants"),
        "durable_topics": ("events", "durable_topics"),
    }
    for field in attrs.fields(DaemonConfig):
        if field.name == "source":
            continue  # not a setting: where the others came from
        assert field.name in by_field, f"DaemonConfig.{field.name} is in no table of SETTINGS"
        assert by_field[field.name] in lines, f"examples/cws.toml lacks {field.name}"
    example = load_config(EXAMPLE, env={})
    defaults = DaemonConfig(home=default_home({}))
    for field in attrs.fields(DaemonConfig):
        if field.name not in ("source", "overrides"):
            assert getattr(example, field.name) == getattr(defaults, field.name), field.name
    assert set(example.overrides) == {"aws", "gcp", "research-analytics"}
    for name, keys in PROVIDER_CONFIG_KEYS.items():  # each documented in its table
        text = EXAMPLE.read_text().split(f"[plugins.overrides.{name}]")[1].split("\n[")[0]
        for key in keys:
            assert f"#   {key} " in text, f"examples/cws.toml does not explain {name} {key}"


def test_the_known_provider_keys_are_the_providers_own() -> None:
    from providers._base import Resilience

    assert {field.name for field in attrs.fields(Resilience)} == RESILIENCE_KEYS
    sources = Path(__file__).parents[2] / "providers"
    aws = (sources / "_aws.py").read_text()
    gcp = (sources / "_gcp.py").read_text()
    for key in PROVIDER_CONFIG_KEYS["aws"] - {"resilience"}:
        assert f'config.get("{key}"' in aws or f'config, "{key}"' in aws, key
    for key in PROVIDER_CONFIG_KEYS["gcp"] - {"resilience"}:
        assert f'config.get("{key}"' in gcp or f'_config_str(config, "{key}")' in gcp, key


def test_key_lines_follow_headers_dotted_quoted_keys_and_multiline_values() -> None:
    text = (
        "[a]\n"  # 1
        "x = [\n"  # 2
        "  '[b]',\n"  # 3: in an array, not a header
        "  { y = 1 },\n"  # 4
        "]\n"  # 5
        'c.d = "# not a comment" # a comment\n'  # 6
        '[a . "t3.micro"]\n'  # 7
        "e = '''\n"  # 8
        "f = 1\n"  # 9: in a string
        "'''\n"  # 10
        "g = 2\n"  # 11
        "[[h]]\n"  # 12
    )
    tomllib.loads(text)  # the scan runs on valid TOML only
    lines = key_lines(text)
    assert lines == {
        ("a",): 1,
        ("a", "x"): 2,
        ("a", "c"): 6,
        ("a", "c", "d"): 6,
        ("a", "t3.micro"): 7,
        ("a", "t3.micro", "e"): 8,
        ("a", "t3.micro", "g"): 11,
        ("h",): 12,
    }
    assert line_of(lines, ("a", "x", "y")) == 2  # inside a value: the line of its key
    assert line_of(lines, ("z",)) is None


def test_default_grants_take_an_array_or_a_table_by_plugin(tmp_path: Path) -> None:
    from api._config import GRANT_KINDS
    from api._daemon import host_config
    from cws_actors._plugins._sandbox import KINDS

    assert GRANT_KINDS == KINDS  # the file's check knows the kinds cws_actors grants
    path = tmp_path / "cws.toml"
    path.write_text('[plugins]\ndefault_grants = ["network:loopback", "apis:events:publish"]\n')
    config = load_config(path, env={})
    assert config.default_grants == {"*": ("network:loopback", "apis:events:publish")}
    assert host_config(config).default_grants == config.default_grants
    path.write_text(
        '[plugins.default_grants]\n"*" = ["network"]\nmy-plugin = ["all", "secrets:db"]\n'
    )
    assert load_config(path, env={}).default_grants == {
        "*": ("network",), "my-plugin": ("all", "secrets:db")
    }  # fmt: skip
    path.write_text('[plugins.default_grants]\nmy-plugin = ["root", "network"]\n')
    problems = [str(problem) for problem in check_file(path)]
    assert problems == [
        f"{path}:2: plugins.default_grants.my-plugin must be an array of grants (all, a kind"
        " such as network, or a request such as secrets:aws_key) or a table of such arrays"
        ' by plugin name ("*": every plugin); a string ("root") is not a grant (kinds:'
        " filesystem, network, exec, secrets, apis)"
    ]
    path.write_text('[plugins]\ndefault_grants = "all"\n')
    assert "plugins.default_grants must be" in str(check_file(path)[0])
