"""The cloud node's Prometheus metrics, read at scrape time from the engine's own counters."""

from __future__ import annotations

from cloud_node.engine import VerifyEngine
from node_runtime.metrics import NodeMetrics


def instrument(metrics: NodeMetrics, engine: VerifyEngine, model: str) -> None:
    """Rounds, tokens, batches, queue depth and sessions of ``engine`` serving ``model``."""
    st = engine.stats
    m = metrics
    m.watch(
        "tandem_queue_depth",
        "Verify rounds and generations waiting",
        lambda: float(engine.queue_depth),
    )
    m.watch("tandem_active_sessions", "Open verify sessions", lambda: float(len(engine.sessions)))
    m.watch(
        "tandem_active_generations",
        "Cloud-only generations in progress",
        lambda: float(engine.generations.active),
    )
    m.watch(
        "tandem_target_verify_rounds",
        "Verify rounds this target served",
        lambda: float(st.rounds),
        "counter",
    )
    m.watch(
        "tandem_target_tokens",
        "Tokens by kind: drafted (received), accepted, generated (cloud-only)",
        lambda: {
            ("drafted",): float(st.drafted),
            ("accepted",): float(st.accepted),
            ("generated",): float(st.generated_tokens),
        },
        "counter",
        ("kind",),
    )
    m.watch(
        "tandem_target_acceptance_ratio",
        "Accepted / drafted tokens of every round this target verified",
        lambda: {(model,): st.accepted / st.drafted if st.drafted else 0.0},
        labels=("target",),
    )
    m.watch(
        "tandem_verify_batches",
        "Forward passes that held verify rounds (mean batch size: rounds / batches)",
        lambda: float(st.batches),
        "counter",
    )
    m.watch(
        "tandem_verify_batched_rounds",
        "Verify rounds served inside batched passes",
        lambda: float(st.batched_rounds),
        "counter",
    )
    m.watch(
        "tandem_model_iterations",
        "Forward passes of the model loop",
        lambda: float(st.iterations),
        "counter",
    )
    m.watch(
        "tandem_model_seconds",
        "Model wall seconds charged, by work kind",
        lambda: {("verify",): st.verify_model_s, ("generate",): st.generate_model_s},
        "counter",
        ("kind",),
    )
    m.watch(
        "tandem_model_cpu_seconds",
        "CPU seconds of the model thread",
        lambda: engine.thread.cpu_s,
        "counter",
    )
    m.watch(
        "tandem_rejected_requests",
        "Requests refused with a status",
        lambda: float(st.rejected),
        "counter",
    )
    m.watch(
        "tandem_expired_sessions",
        "Sessions swept after their TTL",
        lambda: float(st.expired_sessions),
        "counter",
    )
