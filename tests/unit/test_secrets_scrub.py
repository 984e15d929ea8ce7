"""dbops.secrets.scrub_text: credentials written inside query texts and messages never survive.

The adapter runs every pg_stat_activity / pg_stat_statements query text through it, and the
audit log every string it writes, so a password typed in `ALTER ROLE` reaches no screen, no
`dbops check` output and no audit record.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbops import audit
from dbops.secrets import REDACTED, scrub_text

PW = "TopSecret-123"


@pytest.mark.parametrize(
    "text, expected",
    [
        # CREATE / ALTER ROLE, every spelling the grammar accepts
        ("ALTER ROLE app PASSWORD 'TopSecret-123'", "ALTER ROLE app PASSWORD '***'"),
        ("alter role app with login password 'TopSecret-123' valid until 'infinity'",
         "alter role app with login password '***' valid until 'infinity'"),
        ("CREATE ROLE app ENCRYPTED PASSWORD 'TopSecret-123'", "CREATE ROLE app ENCRYPTED PASSWORD '***'"),
        ("ALTER USER app PASSWORD'TopSecret-123'", "ALTER USER app PASSWORD '***'"),  # no space is valid SQL
        ("ALTER ROLE app PASSWORD\n\t'TopSecret-123';", "ALTER ROLE app PASSWORD\n\t'***';"),
        ("ALTER ROLE app PASSWORD 'it''s TopSecret-123' LOGIN", "ALTER ROLE app PASSWORD '***' LOGIN"),
        ("ALTER ROLE app PASSWORD E'it\\'s TopSecret-123' LOGIN", "ALTER ROLE app PASSWORD '***' LOGIN"),
        ("ALTER ROLE app PASSWORD e'TopSecret-123\\\\' LOGIN", "ALTER ROLE app PASSWORD '***' LOGIN"),
        ("ALTER ROLE app PASSWORD U&'TopSecret-123'", "ALTER ROLE app PASSWORD '***'"),
        ("ALTER ROLE app PASSWORD $$TopSecret-123$$ LOGIN", "ALTER ROLE app PASSWORD '***' LOGIN"),
        ("ALTER ROLE app PASSWORD $pw$Top$$Secret-123$pw$ LOGIN", "ALTER ROLE app PASSWORD '***' LOGIN"),
        ('ALTER ROLE app PASSWORD "TopSecret-123"', "ALTER ROLE app PASSWORD '***'"),
        ("ALTER ROLE app PASSWORD /* new */ 'TopSecret-123'", "ALTER ROLE app PASSWORD /* new */ '***'"),
        ("ALTER ROLE app PASSWORD -- rotated\n'TopSecret-123'", "ALTER ROLE app PASSWORD -- rotated\n'***'"),
        # psql's \password sends the verifier: still a credential
        ("ALTER USER app PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$TopSecret-123'", "ALTER USER app PASSWORD '***'"),
        # foreign servers and user mappings
        ("CREATE USER MAPPING FOR app SERVER s OPTIONS (user 'app', password 'TopSecret-123')",
         "CREATE USER MAPPING FOR app SERVER s OPTIONS (user 'app', password '***')"),
        # connection strings and URLs
        ("SELECT dblink_connect('host=db password=TopSecret-123 user=app')",
         "SELECT dblink_connect('host=db password=*** user=app')"),
        ("host=db password='Top Secret-123' user=app", "host=db password=*** user=app"),
        ("host=db password = 'Top\\'Secret-123' user=app", "host=db password = *** user=app"),
        ("FATAL for postgresql://app:TopSecret-123@db:5432/x", "FATAL for postgresql://app:***@db:5432/x"),
        ("postgres://:TopSecret-123@db/x", "postgres://:***@db/x"),
        # environment variables on a command line (a Kubernetes Job's, a backup tool's)
        ("sh -c 'PGPASSWORD=TopSecret-123 pg_dump -h db'", "sh -c 'PGPASSWORD=*** pg_dump -h db'"),
        ("REDIS_PASSWORD=TopSecret-123 redis-cli", "REDIS_PASSWORD=*** redis-cli"),
        ("AWS_SECRET_ACCESS_KEY=TopSecret-123 aws s3 cp", "AWS_SECRET_ACCESS_KEY=*** aws s3 cp"),
        ("QDRANT__SERVICE__API_KEY=TopSecret-123 qdrant", "QDRANT__SERVICE__API_KEY=*** qdrant"),
        # nothing to remove
        ("select 1", "select 1"),
        ("SELECT * FROM users WHERE auth = 'password' AND id = 3", "SELECT * FROM users WHERE auth = 'password' AND id = 3"),
        ("SET password_encryption = 'scram-sha-256'", "SET password_encryption = 'scram-sha-256'"),
        ("ALTER ROLE app PASSWORD NULL", "ALTER ROLE app PASSWORD NULL"),
        ("PREPARE p AS ALTER ROLE app PASSWORD $1", "PREPARE p AS ALTER ROLE app PASSWORD $1"),
        ("postgresql://app@db/x", "postgresql://app@db/x"),
    ],
)
def test_scrub_text(text: str, expected: str) -> None:
    assert scrub_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        # query text cut at track_activity_query_size inside the literal
        "ALTER ROLE app PASSWORD 'TopSecret-123",
        "ALTER ROLE app PASSWORD E'Top\\'Secret-123",
        "ALTER ROLE app PASSWORD $$TopSecret-123",
        "ALTER ROLE app PASSWORD $q$TopSecret-123$",
        'ALTER ROLE app PASSWORD "TopSecret-123',
        "host=db password='TopSecret-123",
        "ALTER ROLE app PASSWORD 'TopSecret-123\\",  # cut right after a backslash
        "host=db password='TopSecret-123\\",
    ],
)
def test_truncated_literal_is_removed_to_the_end(text: str) -> None:
    out = scrub_text(text)
    assert PW not in out and "Secret" not in out and REDACTED in out


def test_every_occurrence_is_removed() -> None:
    text = "CREATE ROLE a PASSWORD 'TopSecret-123'; CREATE ROLE b PASSWORD 'TopSecret-456'"
    assert scrub_text(text) == "CREATE ROLE a PASSWORD '***'; CREATE ROLE b PASSWORD '***'"


def test_text_whose_lower_case_is_longer_is_scrubbed_too() -> None:
    # "İ".lower() is two characters: positions in the lowered text no longer match the text's
    text = f"-- İİ\nALTER ROLE app PASSWORD '{PW}'; SELECT 'password=x', 'İ'"
    assert scrub_text(text) == "-- İİ\nALTER ROLE app PASSWORD '***'; SELECT 'password=*** 'İ'"


def test_keyword_inside_a_longer_word_is_not_a_keyword() -> None:
    assert scrub_text("SELECT mypassword 'x', capital=3, password_encryption=on") == "SELECT mypassword 'x', capital=3, password_encryption=on"


def test_a_name_ending_in_a_keyword_after_an_underscore_is_one() -> None:
    # DB_PASSWORD=..., GITHUB_TOKEN=...: how secrets are written on command lines. A column
    # compared to a literal (old_token=5) loses its literal on screen: the safe side to err on.
    assert scrub_text("DB_PASSWORD=a GITHUB_TOKEN=b old_token=5") == "DB_PASSWORD=*** GITHUB_TOKEN=*** old_token=***"


def test_audit_uses_the_same_function() -> None:
    assert audit.scrub_text is scrub_text
    assert audit.REDACTED == REDACTED
    assert audit.redact({"sql": f"ALTER ROLE x PASSWORD $${PW}$$"}) == {"sql": "ALTER ROLE x PASSWORD '***'"}


_quoting = st.sampled_from(["'{}'", "E'{}'", "$${}$$", "$tag${}$tag$", '"{}"', "U&'{}'"])
_secret = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789-_!#%&*+,.:;<=>?@[]^{|}~ ", min_size=1, max_size=20)


@settings(max_examples=200, deadline=None)
@given(
    keyword=st.sampled_from(["PASSWORD", "password", "ENCRYPTED PASSWORD", "Password"]),
    space=st.sampled_from(["", " ", "\n", "  \t"]),
    quoting=_quoting,
    secret=_secret,
    tail=st.sampled_from(["", " LOGIN", "; SELECT 1", " VALID UNTIL 'infinity'"]),
)
def test_no_quoting_form_leaks_the_password(keyword: str, space: str, quoting: str, secret: str, tail: str) -> None:
    secret = "ZQX" + secret + "XQZ"  # never produced by the SQL around it
    if quoting.startswith("$") or quoting.startswith('"'):
        secret = secret.replace("$", "")
    literal = quoting.format(
        secret.replace("'", "''") if "'" in quoting else secret.replace('"', '""')
    )
    if space == "" and quoting.startswith('"'):
        space = " "  # PASSWORD"x" would read as one token to a human too; keep the case simple
    text = f"ALTER ROLE app WITH {keyword}{space}{literal}{tail}"
    out = scrub_text(text)
    assert "ZQX" not in out and "XQZ" not in out, out
    assert out.endswith(tail)


def test_adapter_scrubs_session_query_texts() -> None:
    from dbops.engines.postgres.adapter import _session

    row = {
        "pid": 1, "usename": "admin", "application_name": "psql", "client_addr": None, "database": "postgres",
        "state": "idle in transaction", "wait_event_type": None, "wait_event": None,
        "query": f"ALTER ROLE app ENCRYPTED PASSWORD '{PW}'", "query_age": 1.0, "xact_age": 1.0, "state_age": 1.0,
        "blocked_by": None,
    }
    s = _session(row)
    assert s.query == "ALTER ROLE app ENCRYPTED PASSWORD '***'" and PW not in repr(s)


_pieces = st.sampled_from(
    ["password", "PASSWORD", "Passwd", "pwd", "secret", "TOKEN", "api_key", "apikey", "x", "'", "''", "\\", "$$", "$q$",
     '"', " ", "\n", "=", ":", "/*", "*/", "--", "E", "_", "İ", "@", "://", "postgresql"]
)


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(_pieces, max_size=30))
def test_trying_only_where_a_keyword_occurs_changes_nothing(parts: list[str]) -> None:
    # scrub_text tries its patterns only at keyword positions; the result must be what a
    # plain pattern.sub over the whole text gives.
    from dbops import secrets as s

    text = "".join(parts)
    step1 = s._URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED + "@", text)
    step2 = s._SQL_PASSWORD.sub(s._sql_repl, step1)
    assert scrub_text(text) == s._KV_PASSWORD.sub(s._kv_repl, step2)
