"""Config: every problem reported with file:line, key path and a suggestion; secrets never echoed."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from dbops.cli import main
from dbops.config import ConfigError, find_config, load, locate_keys, parse

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
[environments.staging]
mode = "operator"

[environments.staging.clusters.db1]
engine = "postgres"
password = { env = "PGPASS_TEST" }

[[environments.staging.clusters.db1.members]]
name = "a"
host = "10.0.0.1"
role = "primary"

[[environments.staging.clusters.db1.members]]
name = "b"
host = "10.0.0.2"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "dbops.toml"
    p.write_text(text)
    return p


def test_example_config_is_valid_and_documents_every_threshold():
    cfg = load(REPO / "config.example.toml")
    assert [r.key for r in cfg.clusters()] == ["production/orders-db", "production/sessions", "production/events",
                                               "production/prod-graph", "staging/orders-staging", "staging/cache-staging"]
    from dbops.config import (
        KafkaOptions,
        KafkaThresholds,
        Neo4jThresholds,
        PostgresThresholds,
        QdrantOptions,
        QdrantThresholds,
        RedisThresholds,
    )

    text = (REPO / "config.example.toml").read_text()
    for key in (PostgresThresholds.field_names() + RedisThresholds.field_names() + KafkaThresholds.field_names()
                + [k for k in KafkaOptions.field_names() if k != "thresholds"] + Neo4jThresholds.field_names()
                + QdrantThresholds.field_names() + [k for k in QdrantOptions.field_names() if k != "thresholds"]):
        assert f"{key} =" in text, f"config.example.toml does not document thresholds.{key}"


def test_defaults_are_the_product_briefs():
    cfg = parse(GOOD)
    ref = cfg.clusters()[0]
    th = ref.cluster.thresholds
    assert (th.lag_bytes_warn, th.lag_bytes_crit) == (16 * 2**20, 100 * 2**20)
    assert (th.lag_seconds_warn, th.lag_seconds_crit) == (10, 60)
    assert (th.connections_pct_warn, th.connections_pct_crit) == (80, 95)
    assert th.cache_hit_ratio_warn == 99
    assert (th.xid_age_warn, th.xid_age_crit) == (500_000_000, 1_500_000_000)
    assert th.inactive_slot_retained_bytes_warn == 2**30
    assert ref.refresh_interval == 2.0
    assert ref.cluster.members[1].port == 5432


def test_mistyped_key_reports_file_line_path_and_suggestion(tmp_path):
    bad = GOOD.replace('role = "primary"', 'rol = "primary"')
    p = write(tmp_path, bad)
    result = CliRunner().invoke(main, ["config", "validate", str(p)])
    assert result.exit_code == 2
    assert f"{p}:11: environments.staging.clusters.db1.members.0.rol: unknown key (did you mean 'role'?)" in result.output
    assert "Traceback" not in result.output


def test_every_problem_is_reported_at_once(tmp_path):
    bad = GOOD.replace('mode = "operator"', 'mode = "yolo"').replace('host = "10.0.0.2"', 'host = "10.0.0.2"\nport = 99999')
    bad = bad.replace("[environments.staging.clusters.db1]\n", "[environments.staging.clusters.db1]\nrefresh_intervall = 3\n")
    with pytest.raises(ConfigError) as err:
        parse(bad, "x.toml")
    text = str(err.value)
    assert "x.toml:2: environments.staging.mode" in text
    assert "refresh_intervall: unknown key (did you mean 'refresh_interval'?)" in text
    assert "members.1.port" in text and "65535" in text
    assert len(err.value.problems) == 3


def test_missing_required_key_names_the_path():
    with pytest.raises(ConfigError) as err:
        parse(GOOD.replace('host = "10.0.0.1"\n', ""), "x.toml")
    assert "environments.staging.clusters.db1.members.0.host: required key is missing" in str(err.value)


def test_invalid_toml_names_the_line(tmp_path):
    p = write(tmp_path, GOOD + "\nthis is not toml\n")
    result = CliRunner().invoke(main, ["config", "validate", str(p)])
    assert result.exit_code == 2
    assert "not valid TOML" in result.output and "dbops.toml:17: not valid TOML" in result.output


def test_literal_password_refused_outside_sandbox_and_never_printed(tmp_path):
    p = write(tmp_path, GOOD.replace('{ env = "PGPASS_TEST" }', '{ value = "hunter2-s3cret" }'))
    result = CliRunner().invoke(main, ["config", "validate", str(p)])
    assert result.exit_code == 2
    assert "only allowed in a sandbox environment" in result.output
    assert "hunter2-s3cret" not in result.output


def test_wrongly_typed_password_is_not_echoed(tmp_path):
    p = write(tmp_path, GOOD.replace('{ env = "PGPASS_TEST" }', '"hunter2-s3cret"'))
    result = CliRunner().invoke(main, ["config", "validate", str(p)])
    assert result.exit_code == 2
    assert "password" in result.output
    assert "hunter2-s3cret" not in result.output


def test_literal_password_allowed_in_sandbox():
    cfg = parse(GOOD.replace('mode = "operator"', 'mode = "operator"\nsandbox = true').replace('{ env = "PGPASS_TEST" }', '{ value = "pw" }'))
    assert cfg.clusters()[0].cluster.password.value == "pw"


def test_valid_config_exit_0(tmp_path):
    p = write(tmp_path, GOOD)
    result = CliRunner().invoke(main, ["config", "validate", str(p)])
    assert result.exit_code == 0, result.output
    assert "valid (1 environment(s), 1 cluster(s), 2 member(s))" in result.output


def test_missing_file_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["config", "validate", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2
    assert "file does not exist" in result.output


def test_lookup_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("DBOPS_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="no configuration found"):
        find_config(None)
    user = tmp_path / "xdg" / "dbops" / "dbops.toml"
    user.parent.mkdir(parents=True)
    user.write_text(GOOD)
    assert find_config(None) == user
    (tmp_path / "dbops.toml").write_text(GOOD)
    assert find_config(None) == Path("dbops.toml")
    monkeypatch.setenv("DBOPS_CONFIG", "/from/env.toml")
    assert find_config(None) == Path("/from/env.toml")
    assert find_config("/explicit.toml") == Path("/explicit.toml")


def test_locate_keys_follows_arrays_of_tables():
    lines = locate_keys(GOOD)
    assert lines[("environments", "staging", "clusters", "db1", "members", "1", "host")] == 15
    assert lines[("environments", "staging", "clusters", "db1", "password")] == 6


def test_secret_references_resolve_and_never_print(tmp_path, monkeypatch):
    from dbops.config import SecretRef
    from dbops.secrets import SecretError, resolve

    monkeypatch.setenv("PW_VAR", "topsecret")
    s = resolve(SecretRef(env="PW_VAR"))
    assert s.reveal() == "topsecret"
    assert "topsecret" not in f"{s} {s!r} {[s]}"
    f = tmp_path / "pw"
    f.write_text("filesecret\n")
    assert resolve(SecretRef(file=str(f))).reveal() == "filesecret"
    with pytest.raises(SecretError, match="NOPE_VAR is not set"):
        resolve(SecretRef(env="NOPE_VAR"))
    with pytest.raises(SecretError, match="does not exist"):
        resolve(SecretRef(file=str(tmp_path / "missing")))


def test_wrong_types_say_what_was_expected(tmp_path):
    bad = GOOD.replace('host = "10.0.0.2"', 'host = "10.0.0.2"\nport = "5432"').replace(
        'mode = "operator"', 'mode = "operator"\nproduction = "yes"'
    )
    with pytest.raises(ConfigError) as err:
        parse(bad, "x.toml")
    text = str(err.value)
    assert "members.1.port: expected a whole number (got '5432')" in text
    assert "environments.staging.production: expected true or false (got 'yes')" in text


def test_warn_above_crit_and_duplicate_members_are_refused():
    bad = GOOD.replace('password = { env = "PGPASS_TEST" }', 'password = { env = "PGPASS_TEST" }\nthresholds = { lag_bytes_warn = 200, lag_bytes_crit = 100 }')
    bad = bad.replace('name = "b"', 'name = "a"')
    with pytest.raises(ConfigError) as err:
        parse(bad, "x.toml")
    text = str(err.value)
    assert "lag_bytes_warn (200) is above lag_bytes_crit (100)" in text
    assert "member name 'a' is used twice" in text


def test_empty_members_and_two_secret_sources():
    bad = GOOD.replace('{ env = "PGPASS_TEST" }', '{ env = "A", file = "/b" }')
    with pytest.raises(ConfigError) as err:
        parse(bad, "x.toml")
    assert "password: give exactly one of env, file or value" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse('[environments.e.clusters.c]\nengine = "postgres"\nmembers = []\n', "x.toml")
    assert "x.toml:3: environments.e.clusters.c.members: needs at least 1 entry" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse('[environments.e.clusters.c]\nengine = "mysql"\nmembers = [{ name = "a", host = "h" }]\n', "x.toml")
    assert "engine: must be one of 'kafka', 'neo4j', 'postgres', 'qdrant', 'redis' (got 'mysql')" in str(err.value)



_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 70000), st.floats(allow_nan=False), st.text(max_size=8))
_keys = st.sampled_from(["environments", "clusters", "members", "engine", "postgres", "name", "host", "port", "role",
                         "password", "env", "file", "value", "thresholds", "mode", "sandbox", "tls", "defaults", "x"])
_toml_like = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_keys, inner, max_size=4)), max_leaves=25)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_keys, _toml_like, max_size=4))
def test_any_document_yields_a_config_or_clean_problems(doc):
    from dbops.config import Config
    from dbops.schema import Invalid

    try:
        Config.validate(doc)
    except Invalid as exc:
        assert exc.errors and all(e.message for e in exc.errors)


def test_non_finite_numbers_are_refused():
    with pytest.raises(ConfigError) as err:
        parse("[defaults]\nrefresh_interval = nan\ntimeout = inf\n", "x.toml")
    text = str(err.value)
    assert "x.toml:2: defaults.refresh_interval: must be a finite number" in text
    assert "x.toml:3: defaults.timeout: must be a finite number" in text


def test_literal_credential_problem_points_at_its_line():
    with pytest.raises(ConfigError) as err:
        parse(GOOD.replace('{ env = "PGPASS_TEST" }', '{ value = "pw" }'), "x.toml")
    assert "x.toml:6: environments.staging.clusters.db1.password: a literal credential is only allowed" in str(err.value)


def test_redis_clusters_get_redis_ports_and_sentinel_mode_needs_its_master():
    cfg = parse('[environments.e.clusters.r]\nengine = "redis"\nmembers = [{ name = "a", host = "h" }]\n'
                '[environments.e.clusters.r.redis]\nmode = "sentinel"\nmaster_name = "m"\nsentinels = [{ name = "s", host = "h" }]\n')
    (ref,) = cfg.clusters()
    assert ref.cluster.members[0].port == 6379 and ref.cluster.redis.sentinels[0].port == 26379
    assert [u.name for u in ref.poll_units] == ["nodes"]  # one poll reaches every node
    pg = parse('[environments.e.clusters.p]\nengine = "postgres"\nmembers = [{ name = "a", host = "h" }]\n')
    assert pg.clusters()[0].cluster.members[0].port == 5432
    with pytest.raises(ConfigError) as err:
        parse('[environments.e.clusters.r]\nengine = "redis"\nmembers = [{ name = "a", host = "h" }]\n'
              '[environments.e.clusters.r.redis]\nmode = "sentinel"\n', "x.toml")
    assert "x.toml:4: environments.e.clusters.r.redis.master_name: sentinel mode needs the master name" in str(err.value)
    assert "environments.e.clusters.r.redis.sentinels: sentinel mode needs at least one sentinel address" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse('[environments.e.clusters.p]\nengine = "postgres"\nmembers = [{ name = "a", host = "h" }]\n'
              '[environments.e.clusters.p.redis]\nmode = "cluster"\n', "x.toml")
    assert "a [redis] section on an engine = 'postgres' cluster" in str(err.value)


def test_literal_sentinel_password_refused_outside_sandbox():
    with pytest.raises(ConfigError) as err:
        parse('[environments.e.clusters.r]\nengine = "redis"\nmembers = [{ name = "a", host = "h" }]\n'
              '[environments.e.clusters.r.redis]\nsentinel_password = { value = "hunter2" }\n', "x.toml")
    assert "redis.sentinel_password: a literal credential is only allowed in a sandbox" in str(err.value)
    assert "hunter2" not in str(err.value)


def test_literal_audit_shipping_keys_only_in_a_config_of_sandboxes():
    ship = '\n[audit.ship.s3]\nbucket = "audit"\naccess_key_id = { value = "AKIAEXAMPLEKEY" }\nsecret_access_key = { value = "s3cr3t-ship" }\n'
    with pytest.raises(ConfigError) as err:
        parse(GOOD + ship)
    assert "audit.ship.s3.access_key_id: a literal credential is only allowed in a config of sandbox environments" in str(err.value)
    assert "s3cr3t-ship" not in str(err.value) and "AKIAEXAMPLEKEY" not in str(err.value)
    sandbox_only = GOOD.replace('mode = "operator"', 'mode = "operator"\nsandbox = true') + ship
    assert parse(sandbox_only).audit.ship.s3.bucket == "audit"


def test_a_monitoring_url_no_client_could_connect_to_is_refused_when_read_without_its_password():
    port = "its port is not a number from 0 to 65535"
    for url, said in (("http://am.internal:99999", port), ("https://ops:hunter2@am.internal:70000/", port),
                      # a password the URL parser reads as a port, or as the end of the host
                      ("https://ops:hun/ter2@am.internal:9093/", port), ("https://ops:hun#ter2@am.internal:9093/", port),
                      ("http://am internal:9093", "a URL has no spaces in it"), ("http://:9093", "the URL names no host"),
                      ("http://[::1:9093", "its [host] is not an IPv6 address")):
        with pytest.raises(ConfigError) as err:
            parse(f'[alertmanager]\nurl = "{url}"\n[environments.e.clusters.c]\nengine = "postgres"\n'
                  'members = [{ name = "a", host = "h" }]\n', "x.toml")
        text = str(err.value)
        assert "alertmanager.url: " + said in text, text
        assert "hunter2" not in text and "hun" not in text and "ter2" not in text
    assert parse('[alertmanager]\nurl = "http://127.0.0.1:9093"\n').alertmanager is not None
