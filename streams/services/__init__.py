"""Kafka-free state machines of the workers: batches of decoded events in, effects out."""
