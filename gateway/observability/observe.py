"""The fault observer at the gateway's edge: a turn's observation (`policies.observation`, made
by the pure turn step) and its recalls' outcomes go to the audit streams (gateway.observability.audit) and the
metrics; the faults are summed up in the `x-clawvm-faults` header by `Observation.header`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from gateway.observability.audit import AuditLog
from gateway.observability.metrics import Metrics
from gateway.store.memory import WriteReport
from gateway.store.store import StoreError
from gateway.wire.recall import Paging
from policies import faults
from policies.faults import Tally
from policies.observation import Observation, recall_events, recall_hits, served_pages

log = logging.getLogger("clawvm.gateway")


async def record(
    metrics: Metrics,
    audit: AuditLog,
    tenant: str,
    session: str,
    policy_ns: int,
    written: WriteReport | None,
    observation: Observation,
) -> None:
    """The turn's decisions and events to the audit streams, its counts to the metrics. An audit
    write that fails is logged, never the request's failure: the turn itself is committed."""
    metrics.policy_time(policy_ns / 1e9)
    if observation.residency is not None:
        metrics.residency(observation.residency)
    for event in observation.faults:
        metrics.faults(event.kind.value, 1)
    if observation.event:
        metrics.lifecycle(observation.event)
    if written is not None:
        metrics.writeback(len(written.committed), written.rejected)
    await _audit(audit, tenant, session, observation)


async def record_recalls(metrics: Metrics, audit: AuditLog, paging: Paging) -> None:
    """After the response: each recall's reason code, silent recalls and refetches observed, and
    the pages served counted as hits in the session's tally."""
    if not paging.log:
        return
    served = served_pages(paging.log)
    try:
        earlier = await audit.served(paging.tenant, paging.session, served)
    except StoreError as exc:
        log.warning("recalls of session %s not noted: %s", paging.session, type(exc).__name__)
        earlier = set()
    observation = recall_events(paging.log, earlier)
    for outcome in paging.log:
        metrics.recall(outcome.code)
    for event in observation.faults:
        metrics.faults(event.kind.value, 1)
    counts = faults.add(Tally(), observation.faults, hits=recall_hits(paging.log)).counts()
    await _audit(audit, paging.tenant, paging.session, observation, counts)


async def _audit(
    audit: AuditLog, tenant: str, session: str, observation: Observation, counts: Mapping[str, int] | None = None
) -> None:
    try:
        await audit.record(tenant, session, observation.decisions, observation.events)
        if counts:
            await audit.count(tenant, session, counts)
    except StoreError as exc:
        log.warning("audit records of session %s not written: %s", session, type(exc).__name__)
