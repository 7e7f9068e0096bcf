"""logs: the log aggregator (flynn-logaggregator.service) and its sinks; see docs/logs.md."""
