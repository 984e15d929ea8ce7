"""One list of secret words (dbops.secrets.SECRET_WORDS) decides, by scope, what free text, a
Job's environment and flags, and an audit params key treat as a credential."""

from __future__ import annotations

import pytest

from dbops.platform.kubernetes import redacted_job
from dbops.secrets import SECRET_NAME, is_secret_key, scrub_text


@pytest.mark.parametrize("name", ["PGPASSWORD", "db_passwd", "PWD_FILE", "client_secret", "AUTH_TOKEN", "api_key", "APIKEY",
                                  "--api-key", "PASSPHRASE", "credentials", "private_key", "AWS_SECRET_ACCESS_KEY", "access-key"])
def test_a_name_with_a_secret_word_is_a_secret_everywhere_names_are_judged(name: str) -> None:
    assert SECRET_NAME.search(name) and is_secret_key(name)


@pytest.mark.parametrize("name", ["S3_KEY_PREFIX", "sslkey", "dsn", "conninfo", "Cookie", "Authorization", "private_network"])
def test_key_only_words_count_in_audit_keys_and_not_in_a_jobs_environment(name: str) -> None:
    assert is_secret_key(name) and not SECRET_NAME.search(name)
    job = {"spec": {"template": {"spec": {"containers": [{"env": [{"name": name, "value": "shown"}]}]}}}}
    assert redacted_job(job)["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] == "shown"


def test_only_text_words_are_scrubbed_in_free_text() -> None:
    assert scrub_text("password=hunter2 token: abc api-key=k") == "password=*** token: *** api-key=***"
    # Prose: "pass" and "credentials" are name-only words.
    assert scrub_text("pass: 2 of 3, credentials: none found") == "pass: 2 of 3, credentials: none found"


@pytest.mark.parametrize("name", ["PGHOST", "S3_BUCKET", "--to", "region", "pgbackrest_stanza"])
def test_ordinary_names_are_not_secrets(name: str) -> None:
    assert not SECRET_NAME.search(name) and not is_secret_key(name)
