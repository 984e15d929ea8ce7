"""The sandbox writes its servers' configuration whole or not at all."""

from __future__ import annotations

import stat

import pytest

from dbops.sandbox import write_private


def test_a_write_that_fails_halfway_leaves_the_old_file_and_no_leftover(tmp_path):
    ini = tmp_path / "pgbouncer.ini"
    write_private(ini, "[databases]\npostgres = host=127.0.0.1 port=5432\n")

    def killed(_path):
        raise KeyboardInterrupt  # as if dbops died between writing the new file and renaming it

    with pytest.raises(KeyboardInterrupt):
        write_private(ini, "[databases]\npostgres = host=127.0.0.1 port=5433\n", prepare=killed)
    assert ini.read_text() == "[databases]\npostgres = host=127.0.0.1 port=5432\n"
    assert [p.name for p in tmp_path.iterdir()] == ["pgbouncer.ini"]


def test_the_new_file_is_private_from_the_start_and_prepared_before_it_replaces_the_old(tmp_path):
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text("old\n")
    seen = []

    def prepare(path):
        seen.append((path.read_text(), stat.S_IMODE(path.stat().st_mode), ini.read_text()))

    write_private(ini, "new\n", prepare=prepare)
    assert seen == [("new\n", 0o600, "old\n")]
    assert ini.read_text() == "new\n" and stat.S_IMODE(ini.stat().st_mode) == 0o600
