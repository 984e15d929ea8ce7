"""Host operations (dbops.runbook.hosts): shown to an operator where dbops does not run the
servers, performed by the sandbox where it does; and the runbook declaration's defaults."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from dbops.runbook.hosts import HostOp, HostOpsError, ManualHosts, Verb, hosts_for
from dbops.runbook.model import Context, Kind, Runbook, Step


def ref(sandbox: bool, engine: str = "postgres") -> SimpleNamespace:
    members = [SimpleNamespace(name="pg1", host="db1.example", port=5432)]
    return SimpleNamespace(env=SimpleNamespace(sandbox=sandbox), cluster=SimpleNamespace(engine=engine, members=members))


STOP = HostOp(Verb.STOP, "pg1", ("fast",), manual=("# pg1, on db1.example:5432:", "pg_ctl -D /data -m fast -w stop"))


async def test_manual_hosts_show_the_runbooks_commands_and_never_perform_them():
    hosts = hosts_for(ref(sandbox=False))  # type: ignore[arg-type]
    assert isinstance(hosts, ManualHosts) and not hosts.managed
    assert hosts.render(STOP) == list(STOP.manual)
    assert hosts.data_dir("pg1") is None and hosts.log_file("pg1") is None
    with pytest.raises(HostOpsError, match=r"pg1's host \(db1.example:5432\): stop is a manual step"):
        await hosts.perform(STOP)


def test_the_sandbox_hosts_are_managed_and_render_what_they_will_run(tmp_path, monkeypatch):
    monkeypatch.setenv("DBOPS_STATE_DIR", str(tmp_path))
    hosts = hosts_for(ref(sandbox=True))  # type: ignore[arg-type]
    assert hosts.managed
    assert hosts.render(STOP) == list(STOP.manual)
    # No sandbox under this state directory: the plan still renders, and says why it cannot.
    [line] = hosts.render(HostOp(Verb.FENCE, "pg1", ("pg2",)))
    assert line.startswith("# sandbox fence commands unavailable: ")


def test_a_runbook_on_servers_dbops_does_not_run_never_loads_the_sandbox():
    code = ("import sys; from types import SimpleNamespace as N\n"
            "import dbops.runbooks.postgres.promote_replica, dbops.runbooks.postgres.restore_in_place, dbops.runbooks.redis.restore_rdb\n"
            "from dbops.runbook.hosts import hosts_for\n"
            "hosts_for(N(env=N(sandbox=False), cluster=N(engine='postgres', members=[])))\n"
            "print(sorted(m for m in sys.modules if m.startswith('dbops.sandbox')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_context_hosts_are_looked_up_once_per_run():
    ctx = Context(ref=ref(sandbox=False), params={}, run_id="r1")  # type: ignore[arg-type]
    assert ctx.hosts is ctx.hosts and not ctx.hosts.managed


async def _nothing(ctx: Context) -> None:
    return None


def test_a_runbook_declaration_takes_its_engine_from_its_id_and_its_description_from_its_module():
    step = Step("s", "a step", "does nothing", Kind.CHECK, lambda ctx: [], _nothing)
    variant = Runbook(id="redis.thing", title="variant", steps=(step,))
    book = Runbook(id="redis.thing", title="A thing", specialize=lambda r: variant)
    assert book.engine == "redis"
    assert Runbook(id="k8s.job", title="t", engine="kubernetes").engine == "kubernetes"
    described = book.described("redis.thing: what it does.\n\nMore words.")
    assert described.description == "redis.thing: what it does."
    assert described.for_cluster(ref(sandbox=True)).description == "redis.thing: what it does."  # type: ignore[arg-type]
    declared = Runbook(id="redis.thing", title="t", description="its own")
    assert declared.described("redis.thing: other") is declared


def test_host_variants_make_host_steps_actions_only_where_dbops_runs_the_servers():
    from dbops.runbook.model import host_variants

    def build(managed: bool) -> Runbook:
        kind = Kind.ACTION if managed else Kind.MANUAL
        return Runbook(id="postgres.thing", title="t", steps=(Step("stop", "Stop", "stops", kind, lambda ctx: [],
                                                                   _nothing if managed else None),))

    book = host_variants(build)
    assert book.for_cluster(ref(sandbox=False)).steps[0].kind is Kind.MANUAL  # type: ignore[arg-type]
    assert book.for_cluster(ref(sandbox=True)).steps[0].kind is Kind.ACTION  # type: ignore[arg-type]
