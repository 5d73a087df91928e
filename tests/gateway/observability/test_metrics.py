"""gateway.observability.metrics: what each recording method adds, and the text exposition."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from gateway.observability.metrics import POLICY_BUCKETS, Metrics


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_each_instance_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.request("acme", 200)
    assert value(a, "clawvm_requests_total", tenant="acme", status="200") == 1
    assert value(b, "clawvm_requests_total", tenant="acme", status="200") is None


def test_requests_and_tokens_per_tenant() -> None:
    m = Metrics()
    m.request("acme", 200)
    m.request("acme", 200)
    m.request("acme", "429")
    m.tokens("acme", prompt_in=1000, prompt_out=400)
    m.tokens("acme", prompt_in=500, prompt_out=300)
    assert value(m, "clawvm_requests_total", tenant="acme", status="200") == 2
    assert value(m, "clawvm_requests_total", tenant="acme", status="429") == 1
    assert value(m, "clawvm_prompt_tokens_received_total", tenant="acme") == 1500
    assert value(m, "clawvm_prompt_tokens_forwarded_total", tenant="acme") == 700


def test_residency_is_the_last_prompt_only() -> None:
    m = Metrics()
    m.residency({("evidence", "pointer"): 7, ("bootstrap", "full"): 1})
    m.residency({("evidence", "full"): 2, ("bootstrap", "full"): 1})
    assert value(m, "clawvm_resident_pages", type="evidence", level="pointer") == 0
    assert value(m, "clawvm_resident_pages", type="evidence", level="full") == 2
    assert value(m, "clawvm_resident_pages", type="bootstrap", level="full") == 1


def test_faults_recalls_lifecycle_and_writeback() -> None:
    m = Metrics()
    m.faults("refetch", 2)
    m.faults("refetch")
    m.faults("flush_miss", 0)
    m.recall("ok", 3)
    m.recall("no_match")
    m.lifecycle("compaction")
    m.writeback(4, {"DESTRUCTIVE_OP": 1, "SCOPE_DENIED": 0})
    assert value(m, "clawvm_faults_total", kind="refetch") == 3
    assert value(m, "clawvm_faults_total", kind="flush_miss") is None
    assert value(m, "clawvm_recalls_total", code="ok") == 3
    assert value(m, "clawvm_recalls_total", code="no_match") == 1
    assert value(m, "clawvm_lifecycle_events_total", event="compaction") == 1
    assert value(m, "clawvm_writeback_committed_total") == 4
    assert value(m, "clawvm_writeback_rejected_total", reason="DESTRUCTIVE_OP") == 1
    assert value(m, "clawvm_writeback_rejected_total", reason="SCOPE_DENIED") is None


def test_policy_time_buckets_span_microseconds_to_tens_of_milliseconds() -> None:
    assert POLICY_BUCKETS[0] == 5e-6 and POLICY_BUCKETS[-1] == 5e-2
    m = Metrics()
    for seconds in (3e-6, 40e-6, 40e-6, 0.2):
        m.policy_time(seconds)
    assert value(m, "clawvm_policy_seconds_bucket", le="5e-06") == 1
    assert value(m, "clawvm_policy_seconds_bucket", le="5e-05") == 3
    assert value(m, "clawvm_policy_seconds_bucket", le="0.05") == 3
    assert value(m, "clawvm_policy_seconds_count") == 4


def test_render_is_the_text_format_with_every_name_prefixed() -> None:
    m = Metrics()
    m.request("acme", 200)
    m.policy_time(1e-5)
    body, content_type = m.render()
    assert content_type.startswith("text/plain")
    families = {f.name for f in text_string_to_metric_families(body.decode())}
    assert "clawvm_requests" in families and "clawvm_policy_seconds" in families
    assert all(name.startswith("clawvm_") for name in families)
