"""A test-only engine, packaged as a third party would: a "gauge" server answers one line,
`level N`, on every TCP connection. Its spec, options, adapter, assessor and overview row live
here alone; dbops learns of it only through the `dbops.engines` entry point of this directory's
dist-info (tests put the directory on sys.path / PYTHONPATH, as pip would install it)."""

from dataclasses import dataclass, field

from dbops.engine_spec import EngineSpec
from dbops.schema import Model, limits


@dataclass(frozen=True)
class GaugeThresholds(Model):
    level_warn: int = field(default=80, metadata=limits(ge=0))
    level_crit: int = field(default=95, metadata=limits(ge=0))

    def check(self) -> list[str]:
        return ["level_warn is above level_crit"] if self.level_warn > self.level_crit else []


@dataclass(frozen=True)
class GaugeOptions(Model):
    unit: str = "%"
    thresholds: GaugeThresholds = GaugeThresholds()


SPEC = EngineSpec(
    kind="gauge",
    title="Gauge",
    default_port=7199,
    default_user=None,
    adapter="dbops_gauge.adapter:GaugeAdapter",
    assessor="dbops_gauge.assess",
    overview="dbops_gauge.assess:overview_row",
    options=GaugeOptions,
    thresholds=GaugeThresholds,
)
