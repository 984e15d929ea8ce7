"""What the Kubernetes runbooks share: the run's API connection, opened on first use inside a
pre-check or step (so a missing [kubernetes] or an unreachable API is a failed check saying
why, not a crash), closed by the teardown."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from dbops.runbook.model import Context


def settings(ctx: Context) -> Any:
    """The cluster's [kubernetes]; a clear error when it has none."""
    k = ctx.ref.cluster.kubernetes
    if k is None:
        raise RuntimeError(f"{ctx.ref.key} has no [kubernetes] section in the config (namespace, selector ...)")
    return k


async def connection(ctx: Context) -> Any:
    if "k8s" not in ctx.resources:
        from dbops.platform import kubernetes as k8s

        ctx.resources["k8s"] = await asyncio.to_thread(k8s.connect_ref, settings(ctx), max(ctx.ref.timeout, 5.0))
    return ctx.resources["k8s"]


async def call(ctx: Context, fn: Any, *args: Any) -> Any:
    """`fn(connection, *args)` from dbops.platform.kubernetes, off the event loop."""
    conn = await connection(ctx)
    return await asyncio.to_thread(fn, conn, *args)


async def teardown(ctx: Context) -> None:
    conn = ctx.resources.pop("k8s", None)
    if conn is not None:
        conn.close()


# A string that may go without quotes: it starts with a letter (after dashes or a dot), has no
# space, comma, bracket, brace, quote or comment sign, is no word some YAML reads as a boolean,
# and (checked apart, in a block and inline) PyYAML reads it back as itself ("a:" it would not).
_PLAIN = re.compile(r"(?:-+|\.)?[A-Za-z_/][A-Za-z0-9_./:=+@-]*")
_YAML11_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


def as_yaml(obj: Any, width: int) -> list[str]:
    """A Kubernetes object (JSON: dicts, lists, scalars) as YAML lines at most `width` wide where
    it can be (a single long string cannot): block style, with any list or mapping that fits on
    its line written inline ({name: PGHOST, value: db-rw}), keys sorted. yaml.safe_load of the
    lines gives `obj` back exactly; a string YAML would not read back as itself is JSON-quoted."""
    import yaml  # PyYAML, a dependency of the kubernetes client: to tell which strings need quotes

    def scalar(value: Any) -> str:
        if isinstance(value, str):
            if (_PLAIN.fullmatch(value) and value.lower() not in _YAML11_WORDS
                    and yaml.safe_load(value) == value and yaml.safe_load(f"[{value}]") == [value]):
                return value
            return json.dumps(value, ensure_ascii=False)
        return json.dumps(value)  # null, true, 3, 1.5

    def inline(value: Any) -> str:
        if isinstance(value, dict):
            return "{" + ", ".join(f"{scalar(k)}: {inline(v)}" for k, v in sorted(value.items())) + "}"
        if isinstance(value, list):
            return "[" + ", ".join(inline(v) for v in value) + "]"
        return scalar(value)

    def block(value: Any, indent: int) -> list[str]:
        pad = " " * indent
        out: list[str] = []
        if isinstance(value, dict):
            for key, item in sorted(value.items()):
                line = f"{pad}{scalar(key)}: {inline(item)}"
                if not isinstance(item, (dict, list)) or not item or len(line) <= width:
                    out.append(line)
                else:  # a list goes under its key at the key's indent, as kubectl writes it
                    out += [f"{pad}{scalar(key)}:", *block(item, indent + 2 if isinstance(item, dict) else indent)]
            return out
        for item in value:
            line = f"{pad}- {inline(item)}"
            if not isinstance(item, (dict, list)) or not item or len(line) <= width:
                out.append(line)
            else:  # the item's first line shares the dash's line
                inner = block(item, indent + 2)
                out += [f"{pad}- {inner[0][indent + 2:]}", *inner[1:]]
        return out

    return block(obj, 0) if isinstance(obj, (dict, list)) and obj else [inline(obj)]
