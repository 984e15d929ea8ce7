"""Kafka: brokers, partitions and consumer lag through aiokafka (imported only when a Kafka cluster is configured)."""
