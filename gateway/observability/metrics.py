"""Prometheus metrics of one gateway process, in a registry of its own.

Every metric is named `clawvm_*` and lives in the `CollectorRegistry` this object owns: no
global registry, so two apps in one process (tests, benchmarks) never collide, and nothing is
registered at import. The pipeline calls the recording methods; `/metrics` serves `render()`.

Labels stay bounded: tenants come from config.yaml, statuses are HTTP codes, kinds, codes and
events are the gateway's own vocabularies, residency is page type x fidelity level.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# 5 µs .. 50 ms, roughly 1-2-5 per decade: the policy engine's median is tens of microseconds.
POLICY_BUCKETS = (5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._requests = Counter(
            "clawvm_requests", "Chat requests by tenant and HTTP status.", ["tenant", "status"], registry=r
        )
        self._received = Counter(
            "clawvm_prompt_tokens_received", "Prompt tokens of the transcripts agents sent.", ["tenant"], registry=r
        )
        self._forwarded = Counter(
            "clawvm_prompt_tokens_forwarded", "Prompt tokens of the prompts forwarded upstream.", ["tenant"], registry=r
        )
        self._resident = Gauge(
            "clawvm_resident_pages",
            "Pages in the last assembled prompt, by page type and level.",
            ["type", "level"],
            registry=r,
        )
        self._faults = Counter("clawvm_faults", "Faults, alerts and insufficient turns, by kind.", ["kind"], registry=r)
        self._recalls = Counter(
            "clawvm_recalls", "Recalls resolved in the gateway, by reason code.", ["code"], registry=r
        )
        self._committed = Counter("clawvm_writeback_committed", "Write-back updates committed.", registry=r)
        self._rejected = Counter(
            "clawvm_writeback_rejected", "Write-back updates rejected, by reason code.", ["reason"], registry=r
        )
        self._policy = Histogram(
            "clawvm_policy_seconds",
            "Policy engine time per turn (ingest and assembly).",
            buckets=POLICY_BUCKETS,
            registry=r,
        )
        self._lifecycle = Counter("clawvm_lifecycle_events", "Lifecycle events seen, by event.", ["event"], registry=r)
        self._upstream_faults = Counter(
            "clawvm_upstream_faults",
            "Upstream faults: retries by reason (retry_429, retry_503, retry_timeout, retry_unreachable, ...), "
            "streams ended by an error event (stream_dropped, stream_timeout).",
            ["kind"],
            registry=r,
        )
        self._unavailable = Counter(
            "clawvm_store_unavailable",
            "Turns served without the store (STORE_UNAVAILABLE), by tenant.",
            ["tenant"],
            registry=r,
        )
        self._queued = Gauge(
            "clawvm_outage_queued", "Turns deferred while the store was unavailable, not yet committed.", registry=r
        )
        self._in_flight = Gauge(
            "clawvm_requests_in_flight",
            "Requests of a tenant in flight in this process (tenants.<name>.limits.max_concurrent_requests).",
            ["tenant"],
            registry=r,
        )
        self._shown: set[tuple[str, str]] = set()

    def request(self, tenant: str, status: int | str) -> None:
        self._requests.labels(tenant=tenant, status=str(status)).inc()

    def tokens(self, tenant: str, *, prompt_in: int, prompt_out: int) -> None:
        """Tokens the agent sent vs tokens forwarded, for one request."""
        self._received.labels(tenant=tenant).inc(max(prompt_in, 0))
        self._forwarded.labels(tenant=tenant).inc(max(prompt_out, 0))

    def residency(self, counts: Mapping[tuple[str, str], int]) -> None:
        """(page type, level) -> pages in the last prompt; pairs not given drop to zero."""
        for pair in self._shown - counts.keys():
            self._resident.labels(type=pair[0], level=pair[1]).set(0)
        for (page_type, level), n in counts.items():
            self._resident.labels(type=page_type, level=level).set(n)
        self._shown |= counts.keys()

    def faults(self, kind: str, n: int = 1) -> None:
        if n > 0:
            self._faults.labels(kind=kind).inc(n)

    def recall(self, code: str, n: int = 1) -> None:
        if n > 0:
            self._recalls.labels(code=code).inc(n)

    def writeback(self, committed: int, rejected: Mapping[str, int]) -> None:
        if committed > 0:
            self._committed.inc(committed)
        for reason, n in rejected.items():
            if n > 0:
                self._rejected.labels(reason=reason).inc(n)

    def policy_time(self, seconds: float) -> None:
        self._policy.observe(seconds)

    def lifecycle(self, event: str) -> None:
        self._lifecycle.labels(event=event).inc()

    def upstream_fault(self, kind: str) -> None:
        self._upstream_faults.labels(kind=kind).inc()

    def store_unavailable(self, tenant: str) -> None:
        self._unavailable.labels(tenant=tenant).inc()

    def outage_queued(self, n: int) -> None:
        self._queued.set(n)

    def in_flight(self, tenant: str, n: int) -> None:
        self._in_flight.labels(tenant=tenant).set(n)

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
