"""Java servers for the sandbox from Maven Central: their jars fetched once with Maven into a
cache (``$DBOPS_CACHE_DIR`` or the user cache dir, ``maven/<name>/``), offline after that.
Java and Maven are on the machine only to run these servers; dbops itself is Python."""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from dbops.sandbox import Progress, SandboxError, _quiet

FETCH_TIMEOUT = 900.0  # seconds for the first fetch (Neo4j's jars are ~130 MB)
APT_HINT = "install Debian's openjdk-17-jdk-headless and maven (apt-get install openjdk-17-jdk-headless maven)"


def cache_dir() -> Path:
    if os.environ.get("DBOPS_CACHE_DIR"):
        return Path(os.environ["DBOPS_CACHE_DIR"]).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("dbops"))


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SandboxError(f"the sandbox's Java servers need `{name}`, which is not installed; {APT_HINT}")
    return path


def fetch(name: str, artifacts: tuple[tuple[str, str, str], ...], progress: Progress = _quiet) -> Path:
    """The directory holding `artifacts` (group, artifact, version) and their runtime
    dependencies, fetched with Maven the first time."""
    home = cache_dir() / "maven" / name
    lib = home / "lib"
    done = home / "complete"
    if done.exists() and lib.is_dir():
        return lib
    mvn = tool("mvn")
    tool("java")
    home.mkdir(parents=True, exist_ok=True)
    deps = "".join(f"<dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version></dependency>"
                   for g, a, v in artifacts)
    (home / "pom.xml").write_text(
        '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
        f"<groupId>dbops.sandbox</groupId><artifactId>{name}</artifactId><version>1</version>"
        f"<packaging>pom</packaging><dependencies>{deps}</dependencies></project>\n")
    shutil.rmtree(lib, ignore_errors=True)
    progress(f"fetch the {name} jars from Maven Central into {home} (once; later runs are offline)")
    try:
        r = subprocess.run([mvn, "-q", "-B", f"-Dmaven.repo.local={home / 'm2'}", "-f", str(home / "pom.xml"),
                            "dependency:copy-dependencies", f"-DoutputDirectory={lib}", "-DincludeScope=runtime"],
                           capture_output=True, text=True, timeout=FETCH_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise SandboxError(f"Maven did not fetch the {name} jars within {FETCH_TIMEOUT:.0f} s (is Maven Central reachable?)") from None
    if r.returncode != 0 or not any(lib.glob(f"{artifacts[0][1]}-*.jar")):
        last = [line for line in (r.stdout + r.stderr).splitlines() if "ERROR" in line][:3]
        raise SandboxError(f"Maven could not fetch the {name} jars (is Maven Central reachable?):\n  " + "\n  ".join(last or ["no output"]))
    done.write_text(datetime.now(UTC).isoformat() + "\n")
    return lib
