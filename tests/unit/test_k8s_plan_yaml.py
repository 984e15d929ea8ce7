"""The YAML a Kubernetes runbook's plan shows an object in (runbooks/k8s/common.as_yaml): it must
read back as exactly the object, whatever its strings look like, and stay within its width."""

from __future__ import annotations

import yaml

from dbops.runbooks.k8s.common import as_yaml

# Strings YAML would read as something else unquoted (numbers, booleans, null, dates, a
# mapping), or that hold its indicators; and plain ones that stay plain.
TRICKY = ["yes", "No", "on", "y", "null", "~", "", "-", "--", "-1", "1.5", "0x1f", "0o17", "1e3", ".inf", "12:30",
          "2026-11-22", "a: b", "a:", "#x", "x #y", "[a]", "{a}", "a,b", "'q'", '"q"', "*x", "&x", "!x", "%x", "@x", "|", ">",
          "line\nbreak", "tab\there", "ü", " lead", "trail "]
PLAIN = ["--to", "-c", "s3://backups/orders", "example/pg-backup:15", "app.kubernetes.io/name", "orders-db-rw", "./run.sh"]


def test_every_string_reads_back_as_itself_inline_and_in_blocks() -> None:
    obj = {"list": TRICKY + PLAIN, "map": {s: s for s in TRICKY + PLAIN if s}, "nested": [[1, None, True, 2.5], [{"a": [], "b": {}}]]}
    for width in (1, 40, 80, 10_000):  # every collection in blocks ... every one inline
        text = "\n".join(as_yaml(obj, width))
        assert yaml.safe_load(text) == obj, text


def test_plain_strings_stay_unquoted_and_lines_fit_the_width() -> None:
    job = {"spec": {"containers": [{"name": "backup", "image": "example/pg-backup:15", "command": ["pg-backup", "--to", "s3://b/orders"],
                                    "env": [{"name": "PGHOST", "value": "orders-db-rw"}, {"name": "PGPORT", "value": "5432"}]}]}}
    lines = as_yaml(job, 50)
    assert lines == [
        "spec:",
        "  containers:",
        "  - command: [pg-backup, --to, s3://b/orders]",
        "    env:",
        "    - {name: PGHOST, value: orders-db-rw}",
        '    - {name: PGPORT, value: "5432"}',
        "    image: example/pg-backup:15",
        "    name: backup",
    ]
    assert max(len(line) for line in lines) <= 50
