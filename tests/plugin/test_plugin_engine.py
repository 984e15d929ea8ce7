"""A third party's engine (tests/plugin/site/dbops_gauge, registered only through its entry
point) is validated in the config, polled, judged, listed on the overview and in `dbops check`,
with no edit to dbops' own files."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from textual.widgets import DataTable

from dbops.config import ConfigError, parse
from dbops.engine_spec import overview_row
from dbops.poller import poll_once

pytestmark = pytest.mark.usefixtures("gauge_installed")


def gauge_config(port: int, section: str = "[environments.lab.clusters.boiler.gauge]\nunit = \" bar\"\n"
                 "thresholds = { level_warn = 70, level_crit = 90 }\n") -> str:
    return ('[environments.lab]\nmode = "read-only"\n'
            '[environments.lab.clusters.boiler]\nengine = "gauge"\n'
            f'members = [{{ name = "g1", host = "127.0.0.1", port = {port} }}, {{ name = "g2", host = "127.0.0.1" }}]\n'
            + section)


def test_the_config_validates_the_plugins_section_and_fills_its_defaults():
    cfg = parse(gauge_config(1234))
    (ref,) = cfg.clusters()
    options = ref.cluster.options["gauge"]
    assert (options.unit, options.thresholds.level_warn, options.thresholds.level_crit) == (" bar", 70, 90)
    assert [m.port for m in ref.cluster.members] == [1234, 7199]  # the spec's default port
    assert ref.poll_units == ref.cluster.members  # polled member by member, as its spec says

    # Without a section, the spec's defaults.
    (bare,) = parse(gauge_config(1234, section="")).clusters()
    assert bare.cluster.options["gauge"].thresholds.level_warn == 80


def test_a_bad_plugin_section_is_reported_with_file_line_and_did_you_mean():
    with pytest.raises(ConfigError) as err:
        parse(gauge_config(1234, section="[environments.lab.clusters.boiler.gauge]\nthresholds = { level_wran = 70 }\n"
                                         "unit = 3\n"), "lab.toml")
    text = str(err.value)
    assert "lab.toml:7: environments.lab.clusters.boiler.gauge.thresholds.level_wran: unknown key (did you mean 'level_warn'?)" in text
    assert "environments.lab.clusters.boiler.gauge.unit: expected a string (got 3)" in text
    with pytest.raises(ConfigError) as err:
        parse(gauge_config(1234, section="[environments.lab.clusters.boiler.redis]\nmode = \"cluster\"\n"))
    assert "a [redis] section on an engine = 'gauge' cluster" in str(err.value)


def test_without_the_plugin_the_engine_is_unknown_and_named(monkeypatch):
    import dbops.engine_spec

    monkeypatch.setattr(dbops.engine_spec, "_specs", {k: v for k, v in dbops.engine_spec.specs().items() if k != "gauge"})
    with pytest.raises(ConfigError) as err:
        parse(gauge_config(1234, section=""))
    assert "engine: must be one of 'kafka', 'neo4j', 'postgres', 'qdrant', 'redis' (got 'gauge')" in str(err.value)


def test_it_is_polled_and_judged_and_gives_its_overview_row(gauge_server):
    gauge_server.level = 75
    (ref,) = parse(gauge_config(gauge_server.server_address[1])).clusters()
    (health,) = asyncio.run(poll_once([ref]))
    assert health.severity.name == "CRIT"  # g2 (the default port) does not answer
    by_name = {m.name: m for m in health.members}
    assert by_name["g1"].severity.name == "WARN" and by_name["g1"].problems == ["level 75 bar"]
    assert by_name["g2"].snapshot.reachability.value == "DOWN"
    row = overview_row(ref, health)
    assert row.long == "75" and [t.name for t in row.topology] == ["g1", "g2"]


def _one_member_config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "gauge.toml"
    path.write_text('[environments.lab]\nmode = "read-only"\n[environments.lab.clusters.boiler]\nengine = "gauge"\n'
                    f'members = [{{ name = "g1", host = "127.0.0.1", port = {port} }}]\n'
                    '[environments.lab.clusters.boiler.gauge]\nthresholds = { level_warn = 70, level_crit = 90 }\n')
    return path


def test_dbops_check_judges_it(tmp_path, gauge_installed, gauge_server):
    gauge_server.level = 93
    cfg = _one_member_config(tmp_path, gauge_server.server_address[1])
    env = {**os.environ, "PYTHONPATH": str(gauge_installed), "DBOPS_STATE_DIR": str(tmp_path)}
    dbops = Path(sys.executable).parent / "dbops"
    out = subprocess.run([str(dbops), "--config", str(cfg), "check", "--json", "--no-backups", "--no-platform"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    (cluster,) = json.loads(out.stdout)["clusters"]
    assert (cluster["engine"], cluster["severity"]) == ("gauge", "CRIT")
    assert cluster["members"][0]["problems"] == ["level 93%"]

    text = subprocess.run([str(dbops), "--config", str(cfg), "check", "--no-backups", "--no-platform"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert "CRIT     lab/boiler (gauge)" in text.stdout and "level 93%" in text.stdout


async def test_the_console_lists_it_on_the_overview(tmp_path, gauge_server):
    from dbops.config import load
    from dbops.screens.app import DbopsApp

    gauge_server.level = 72
    app = DbopsApp(load(_one_member_config(tmp_path, gauge_server.server_address[1])), state_dir=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.screen.query_one("#clusters", DataTable)
        for _ in range(100):  # the poller answers within a refresh; bounded, never a sleep-and-hope
            await pilot.pause(0.1)
            row = " ".join(str(c) for c in table.get_row_at(0)) if table.row_count else ""
            if "WARN" in row:
                break
        assert "WARN" in row and "boiler" in row and "g1" in row and "72" in row
        await pilot.press("enter")
        await pilot.pause()
        assert "no pane for engine 'gauge' yet" in " ".join(str(n.message) for n in app._notifications)
