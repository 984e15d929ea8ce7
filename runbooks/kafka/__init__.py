"""Runbooks for Kafka: consumer offsets, leader election, broker-down triage."""
