"""Prometheus metrics of one service, on its own registry (no process-wide globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """What ``GET /metrics`` exposes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("vitkit_requests", "HTTP requests answered, by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("vitkit_request_latency_seconds", "time from request to response, by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram("vitkit_queue_time_seconds", "time an image waited for its batch to start",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.inference = Histogram("vitkit_batch_inference_seconds", "time of one forward (a batch)",
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("vitkit_batch_size", "images per forward", buckets=BATCH_BUCKETS, registry=r)
        self.batch_tokens = Histogram("vitkit_batch_tokens", "tokens per forward",
                                      buckets=(64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536), registry=r)
        self.batch_errors = Counter("vitkit_batch_errors", "forwards that failed, by kind", ["kind"], registry=r)
        self.queue_depth = Gauge("vitkit_queue_depth", "images waiting for a batch", registry=r)
        self.in_flight = Gauge("vitkit_requests_in_flight", "requests being answered", registry=r)
        self.ready = Gauge("vitkit_ready", "1 when the model is loaded and warmed and the service not draining",
                           registry=r)
