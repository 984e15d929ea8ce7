"""Reads `level N` from a gauge server over TCP."""

import asyncio
from dataclasses import dataclass

from dbops.engines.base import Adapter, common_reachability
from dbops.model import Reachability


@dataclass(frozen=True)
class GaugeData:
    level: int


class GaugeAdapter(Adapter):
    kind = "gauge"

    async def collect(self) -> GaugeData:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.member.host, self.member.port), self.cluster.timeout)
        try:
            line = (await asyncio.wait_for(reader.readline(), self.cluster.timeout)).decode()
        finally:
            writer.close()
        word, _, value = line.strip().partition(" ")
        if word != "level" or not value.isdigit():
            raise ValueError(f"not a gauge answer: {line.strip()!r}")
        return GaugeData(int(value))

    async def close(self) -> None:
        return None

    def classify(self, exc: BaseException) -> tuple[Reachability, str]:
        where = f"{self.member.host}:{self.member.port}"
        common = common_reachability(exc, where, self.cluster.timeout)
        if common is not None:
            return common
        if isinstance(exc, OSError):
            return Reachability.DOWN, f"{where}: {exc.strerror or exc}"
        return Reachability.ERROR, f"{where}: {exc}"
