"""`dhrd serve`: exported classifiers over HTTP, in three rooms whose imports go one way:
`http` (the edge) -> `engine` (queues, batches, the engine process) -> `device` (forward passes). At the
top: the entry points (`cli`, `supervisor`) and what every room shares (`settings`, `errors`,
`metrics`, `generation`, `gc_heap`, `exit_codes`). ARCHITECTURE.md traces a request through them."""
