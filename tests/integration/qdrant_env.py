"""What the Qdrant pane and runbook tests share: the fake Qdrant (validation on) and a dbops
config pointing at it, written for each key setup a test needs."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dbops.config import ClusterRef, load
from dbops.model import ClusterHealth
from dbops.poller import poll_once
from dbops.sandbox.fake_qdrant import FakeQdrantCluster

NAME = "vectors"


def config_text(cluster: FakeQdrantCluster, key: str | None, manage: str | None = None, timeout: float = 6.0,
                s3: Any = None) -> str:
    members = ", ".join(f'{{ name = "q{i + 1}", host = "127.0.0.1", port = {u.rsplit(":", 1)[1]} }}'
                        for i, u in enumerate(cluster.urls))
    lines = ["[environments.staging]", "sandbox = true", 'mode = "operator"',
             f"[environments.staging.clusters.{NAME}]", 'engine = "qdrant"', f"members = [{members}]",
             f"timeout = {timeout}", "refresh_interval = 0.5"]
    if key is not None:
        lines.append(f"password = {{ value = {json.dumps(key)} }}")
    if manage is not None:
        lines += [f"[environments.staging.clusters.{NAME}.qdrant]", f"manage_api_key = {{ value = {json.dumps(manage)} }}"]
    if s3 is not None:
        lines += [f"[environments.staging.clusters.{NAME}.backups]",
                  f"s3 = {{ bucket = {json.dumps(s3.bucket)}, prefix = {json.dumps(s3.prefix)}, region = {json.dumps(s3.region)}, "
                  f"endpoint_url = {json.dumps(s3.endpoint_url)}, access_key_id = {{ value = {json.dumps(s3.access_key_id.value)} }}, "
                  f"secret_access_key = {{ value = {json.dumps(s3.secret_access_key.value)} }} }}"]
    return "\n".join(lines) + "\n"


@dataclass
class Env:
    cluster: FakeQdrantCluster
    state_dir: Path
    config: Path

    def write(self, key: str | None, manage: str | None = None, timeout: float = 6.0, s3: Any = None) -> Env:
        self.config.write_text(config_text(self.cluster, key, manage, timeout, s3))
        return self

    def ref(self) -> ClusterRef:
        return next(r for r in load(self.config).clusters() if r.name == NAME)

    def health(self) -> ClusterHealth:
        """One refresh, as the pane and `dbops check` do it."""
        return asyncio.run(poll_once([self.ref()]))[0]

    def wait_for(self, predicate: Any, what: str, timeout: float = 30.0) -> ClusterHealth:
        deadline = time.monotonic() + timeout
        while True:
            h = self.health()
            if predicate(h):
                return h
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting for {what}; problems: {h.problems}")
            time.sleep(0.2)

    def dbops(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dbops.cli", "--config", str(self.config), *args],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              env={**os.environ, "DBOPS_STATE_DIR": str(self.state_dir)})

    def audit_text(self) -> str:
        path = self.state_dir / "audit.jsonl"
        return path.read_text() if path.exists() else ""

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit_text().splitlines()]
