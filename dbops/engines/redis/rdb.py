"""RDB snapshots over the network and their checks, with Redis' own tools.

`redis-cli --rdb FILE` asks a node for a snapshot the way a replica does (SYNC with `rdb-only`),
so a backup needs no access to the node's host; `redis-check-rdb` reads it back and counts its
keys. The password reaches redis-cli through REDISCLI_AUTH, never its command line.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from dbops.config import ClusterRef
from dbops.secrets import redact, resolve

REDIS_CLI = "redis-cli"
CHECK_RDB = "redis-check-rdb"
APT_HINT = "install the Debian package redis-tools (apt-get install redis-tools)"


class RdbError(Exception):
    pass


@dataclass(frozen=True)
class RdbCheck:
    ok: bool
    keys: int | None
    expires: int | None
    message: str


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RdbError(f"{name} is not installed on this host; {APT_HINT}")
    return path


def cli_args(ref: ClusterRef, address: str) -> list[str]:
    """redis-cli's connection options for a node of the cluster (no secret among them)."""
    host, _, port = address.rpartition(":")
    args = ["-h", host, "-p", port]
    opts = ref.cluster.redis
    if opts is not None and opts.username:
        args += ["--user", opts.username]
    tls = ref.cluster.tls
    if tls.mode not in ("disable", "prefer"):
        args.append("--tls")
        if tls.ca_file:
            args += ["--cacert", tls.ca_file]
        if tls.cert_file:
            args += ["--cert", tls.cert_file, "--key", tls.key_file or tls.cert_file]
        if tls.mode == "require":
            args.append("--insecure")
    return args


def describe_fetch(ref: ClusterRef, address: str, dest: str) -> str:
    return f"REDISCLI_AUTH=*** {shlex.join([REDIS_CLI, *cli_args(ref, address), '--rdb', dest])}"


async def fetch(ref: ClusterRef, address: str, dest: Path) -> int:
    """Write a snapshot of the node at `address` to `dest` (via a temporary file beside it);
    returns its size."""
    exe = tool(REDIS_CLI)
    secret = resolve(ref.cluster.password)
    env = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
    if secret is not None:
        env["REDISCLI_AUTH"] = secret.reveal()
    tmp = dest.with_name(f".{dest.name}.partial")
    proc = await asyncio.create_subprocess_exec(exe, *cli_args(ref, address), "--rdb", str(tmp), env=env,
                                                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await proc.communicate()
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        tmp.unlink(missing_ok=True)
        raise
    text = redact(out.decode("utf-8", "replace"), secret)
    if proc.returncode != 0 or "Transfer finished with success" not in text:
        tmp.unlink(missing_ok=True)
        last = [line for line in text.splitlines() if line.strip()][-1:] or ["no output"]
        raise RdbError(f"redis-cli --rdb from {address} failed (exit {proc.returncode}): {last[0][:300]}")
    os.replace(tmp, dest)
    return dest.stat().st_size


_KEYS = re.compile(r"\[info\] (\d+) keys read")
_EXPIRES = re.compile(r"\[info\] (\d+) expires")


async def check(path: Path) -> RdbCheck:
    exe = tool(CHECK_RDB)
    proc = await asyncio.create_subprocess_exec(exe, str(path), stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    text = out.decode("utf-8", "replace")
    keys, expires = _KEYS.search(text), _EXPIRES.search(text)
    ok = proc.returncode == 0 and "RDB looks OK" in text
    if ok:
        message = f"redis-check-rdb: OK, {keys.group(1) if keys else '?'} keys"
    else:
        lines = [line for line in text.splitlines() if line.strip() and not line.startswith("[info]")]
        message = f"redis-check-rdb: {(lines[-1] if lines else 'exit ' + str(proc.returncode))[:300]}"
    return RdbCheck(ok, int(keys.group(1)) if keys else None, int(expires.group(1)) if expires else None, message)
