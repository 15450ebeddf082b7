"""The only code that talks to Kafka for the workers: the consumer loop, offsets, decoding
and dead letters, the deletion barrier, the outbox and snapshot scheduling
(docs/architecture.md)."""
