"""Which configured cluster and member an Alertmanager alert or a Prometheus series is about,
from its labels.

In this order:

1. A cluster with its own `alert_labels` owns every label set that holds all of them (exact
   values); when several do, the one with the most labels wins.
2. A cluster-ish label (`[alertmanager.labels] cluster`, e.g. `cluster`) equal to a cluster's
   name; an environment-ish label, when there is one, must equal its environment. A name used in
   several environments without such a label is settled by the member labels, or not at all.
3. A member-ish label (`instance`, `server`, `addr` ...) whose value, without a scheme such as
   redis:// or postgresql://, a user and a path, is a member's host:port (the config gives a
   member without a port its engine's usual one); a bare host names the member on that host. A member's name (a `pod` label) counts only when it is unique in
   the whole fleet: every PostgreSQL cluster may have a pg1.

The member is then found from the member labels within the matched cluster (or None).

`LabelIndex` is built once per fleet (dicts keyed by names, addresses and label values), so each
alert or series costs a few lookups however many clusters are configured.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from dbops.config import AlertLabels, ClusterRef

Match = tuple[str, str | None]  # (cluster key "env/name", member name or None)


def normalize_address(value: str) -> str:
    """"redis://user@Host:6379/0" -> "host:6379": what an exporter's label says about an address,
    without its scheme, user and path."""
    text = value.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    text = text.split("/", 1)[0].split("?", 1)[0]
    if "@" in text:
        text = text.rsplit("@", 1)[1]
    return text.lower()


def _split_port(address: str) -> tuple[str, int | None]:
    """("host", port) of "host:port", "[::1]:port" or "host" (port None)."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif address.count(":") == 1:
        host, _, port = address.partition(":")
    else:  # a bare host, or a bare IPv6 address
        host, port = address, ""
    return host, int(port) if port.isdigit() else None


@dataclass(frozen=True)
class _Cluster:
    key: str
    environment: str
    name: str
    by_address: dict[str, str]  # "host:port" -> member name
    by_name: dict[str, str]  # lowercased member name (and application_name) -> member name
    by_host: dict[str, str | None]  # host -> member name, None when several members share it


class LabelIndex:
    """Every configured cluster's names, members and alert_labels, for matching label sets."""

    def __init__(self, refs: Iterable[ClusterRef], rules: AlertLabels):
        self.rules = rules
        self._clusters: dict[str, _Cluster] = {}
        self._by_name: dict[str, list[str]] = {}  # lowercased cluster name -> keys
        # alert_labels: label names (sorted) -> their values in that order -> cluster key
        self._explicit: dict[tuple[str, ...], dict[tuple[str, ...], str]] = {}
        self._address: dict[str, list[tuple[str, str]]] = {}  # "host:port" -> (key, member)
        self._member_name: dict[str, list[tuple[str, str]]] = {}  # member name -> (key, member)
        for ref in refs:
            self._add(ref)
        # Most specific first: a cluster naming three labels beats one naming one.
        self._explicit_keys = sorted(self._explicit, key=len, reverse=True)

    def _add(self, ref: ClusterRef) -> None:
        by_address: dict[str, str] = {}
        by_name: dict[str, str] = {}
        by_host: dict[str, str | None] = {}
        for m in ref.cluster.members:
            host = m.host.lower()
            # Cluster.__post_init__ gives a member without a port its engine's usual one, so a
            # loaded config's members all have one; None only for an engine nobody registered.
            if m.port is not None:
                by_address[f"{host}:{m.port}"] = m.name
            by_host[host] = m.name if host not in by_host else None
            by_name[m.name.lower()] = m.name
            if m.application_name:
                by_name.setdefault(m.application_name.lower(), m.name)
        c = _Cluster(ref.key, ref.environment, ref.name, by_address, by_name, by_host)
        self._clusters[c.key] = c
        self._by_name.setdefault(ref.name.lower(), []).append(c.key)
        if ref.cluster.alert_labels:
            names = tuple(sorted(ref.cluster.alert_labels))
            self._explicit.setdefault(names, {})[tuple(ref.cluster.alert_labels[n] for n in names)] = c.key
        for address, member in by_address.items():
            self._address.setdefault(address, []).append((c.key, member))
        for name, member in by_name.items():
            self._member_name.setdefault(name, []).append((c.key, member))

    # -- matching ------------------------------------------------------------------------------

    def match(self, labels: Mapping[str, str]) -> Match | None:
        """(cluster key, member or None) the labels are about, or None when no cluster is named."""
        key = self._explicit_match(labels) or self._name_match(labels)
        if key is not None:
            return key, self.member_of(key, labels)
        return self._member_match(labels)

    def _explicit_match(self, labels: Mapping[str, str]) -> str | None:
        for names in self._explicit_keys:
            values = tuple(labels.get(n) for n in names)
            if None not in values:
                key = self._explicit[names].get(values)  # type: ignore[arg-type]
                if key is not None:
                    return key
        return None

    def _first(self, labels: Mapping[str, str], names: list[str]) -> str | None:
        return next((labels[n] for n in names if labels.get(n)), None)

    def _name_match(self, labels: Mapping[str, str]) -> str | None:
        name = self._first(labels, self.rules.cluster)
        if name is None:
            return None
        keys = self._by_name.get(name.lower(), [])
        env = self._first(labels, self.rules.environment)
        if env is not None:
            keys = [k for k in keys if self._clusters[k].environment == env]
        if len(keys) == 1:
            return keys[0]
        if len(keys) > 1:
            # The same name in several environments and no environment label: the member's
            # address may tell them apart.
            found = [k for k in keys if self.member_of(k, labels, names=False) is not None]
            return found[0] if len(found) == 1 else None
        return None

    def _member_values(self, labels: Mapping[str, str]) -> list[str]:
        return [labels[n] for n in self.rules.member if labels.get(n)]

    def _member_match(self, labels: Mapping[str, str]) -> Match | None:
        values = self._member_values(labels)
        for value in values:
            found = self._address.get(normalize_address(value), [])
            if len(found) == 1:
                return found[0]
        for value in values:
            found = self._member_name.get(value.strip().lower(), [])
            if len(found) == 1:  # a name every cluster may have (pg1) names no cluster
                return found[0]
        return None

    def member_of(self, key: str, labels: Mapping[str, str], *, names: bool = True) -> str | None:
        """The member of cluster `key` the member-ish labels name (by address, then by name)."""
        c = self._clusters.get(key)
        if c is None:
            return None
        values = self._member_values(labels)
        for value in values:
            address = normalize_address(value)
            if address in c.by_address:
                return c.by_address[address]
            host, port = _split_port(address)
            if port is None and c.by_host.get(host):
                return c.by_host[host]
        if names:
            for value in values:
                member = c.by_name.get(value.strip().lower())
                if member is not None:
                    return member
        return None

    def member_named(self, key: str, name: str) -> str | None:
        """The member of cluster `key` called `name` (or whose application_name it is)."""
        c = self._clusters.get(key)
        return c.by_name.get(name.strip().lower()) if c is not None and name else None

    def clusters(self) -> list[str]:
        """Every configured cluster's key, in the configuration's order."""
        return list(self._clusters)


def match_labels(labels: Mapping[str, str], refs: list[ClusterRef], rules: AlertLabels) -> Match | None:
    """(cluster key "env/name", member name or None) for one label set; None when it names no
    configured cluster. Matching many: build one LabelIndex and call its match()."""
    return LabelIndex(refs, rules).match(labels)
