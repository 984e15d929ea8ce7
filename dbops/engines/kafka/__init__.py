"""Kafka: brokers, partitions and consumer lag through aiokafka (imported only when a Kafka cluster is configured)."""

from dbops.config import KafkaOptions, KafkaThresholds
from dbops.engine_spec import EngineSpec

SPEC = EngineSpec(
    kind="kafka",
    title="Kafka",
    default_port=9092,
    default_user=None,  # SASL only when a user is given
    adapter="dbops.engines.kafka.adapter:KafkaAdapter",
    assessor="dbops.engines.kafka.assess",
    overview="dbops.engines.kafka.overview:overview_row",
    options=KafkaOptions,
    thresholds=KafkaThresholds,
    # One admin client sees every broker: the brokers are judged from one refresh.
    poll_unit="brokers",
    # A drill writes records to a topic of its own, acks=all, and reads them back.
    probe="dbops.engines.kafka.probe:KafkaProbe",
    # What the timeline reports when it changes (EngineSpec.facts).
    facts="dbops.engines.kafka.assess:facts",
)
