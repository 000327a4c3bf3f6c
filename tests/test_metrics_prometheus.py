"""Prometheus /metrics on the edge, the cloud and the coordinator, scraped after real requests."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai_support import EdgeCluster
from prometheus_client.parser import text_string_to_metric_families

from cloud_node.prometheus import instrument
from models import task
from node_runtime.metrics import MetricsServer, NodeMetrics

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy/grafana/tandem-dashboard.json"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(address: str) -> Samples:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def families(address: str) -> set[str]:
    """Every metric family a node declares, with or without samples yet."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        return {f.name for f in text_string_to_metric_families(r.read().decode())}


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


@pytest.fixture(scope="module")
def cluster() -> Iterator[EdgeCluster]:
    c = EdgeCluster(front_door=True)
    yield c
    c.close()


def test_every_node_serves_metrics_that_match_the_requests(cluster: EdgeCluster) -> None:
    cloud_metrics = NodeMetrics("cloud", "cloud-a")
    instrument(cloud_metrics, cluster.cloud.engine, "target")
    server = MetricsServer(cloud_metrics, "127.0.0.1", 0)
    cloud_address = cluster.threads.run(server.start())
    try:
        edge = openai.OpenAI(base_url=cluster.base_url, api_key="x", max_retries=0)
        front = openai.OpenAI(base_url=cluster.front_url, api_key="x", max_retries=0)
        accounts = []
        problems = task.generate(4, task.HELDOUT_SEED)
        for i, p in enumerate(problems):
            client = edge if i % 2 == 0 else front
            r = client.chat.completions.create(
                model="drafter",
                messages=[{"role": "user", "content": p.question}],
                temperature=0,
                extra_body={"mode": "speculation"},
            )
            accounts.append(r.model_extra["tandem"])
        with pytest.raises(openai.NotFoundError):
            edge.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])

        e = scrape(cluster.address)
        assert total(e, "tandem_requests_total", kind="solve", outcome="ok") == len(problems)
        drafted = sum(a["drafted_tokens"] for a in accounts)
        accepted = sum(a["accepted_tokens"] for a in accounts)
        assert total(e, "tandem_tokens_total", kind="drafted") == drafted
        assert total(e, "tandem_pair_drafted_tokens_total", drafter="drafter") == drafted
        assert total(e, "tandem_pair_accepted_tokens_total", drafter="drafter") == accepted
        ratio = total(e, "tandem_acceptance_ratio", drafter="drafter")
        assert ratio == pytest.approx(accepted / drafted)
        sent = sum(a["bytes_sent"] for a in accounts)
        assert total(e, "tandem_link_bytes_total", direction="sent") == sent
        assert total(e, "tandem_request_duration_seconds_count", kind="solve") == len(problems)
        assert total(e, "tandem_http_requests_total", status="404") == 1
        assert total(e, "tandem_http_requests_total", status="200") == len(problems) // 2
        assert total(e, "tandem_active_requests") == 0

        c = scrape(cloud_address)
        rounds = sum(a["verify_rounds"] for a in accounts)
        assert total(c, "tandem_target_verify_rounds_total") == rounds
        assert total(c, "tandem_target_tokens_total", kind="accepted") == accepted
        assert total(c, "tandem_verify_batched_rounds_total") == rounds
        assert 1 <= total(c, "tandem_verify_batches_total") <= rounds
        assert total(c, "tandem_queue_depth") == 0

        k = scrape(cluster.http.address)
        assert total(k, "tandem_nodes", role="edge") == 1
        assert total(k, "tandem_nodes", role="cloud") == 1
        assert total(k, "tandem_coordinator_jobs_total") == len(problems) // 2
        assert total(k, "tandem_http_requests_total", status="200") == len(problems) // 2

        exported = set().union(
            *(families(a) for a in (cluster.address, cloud_address, cluster.http.address))
        )
        queried = {
            re.sub(r"_(total|bucket|count|sum)$", "", name)
            for name in re.findall(r"tandem_[a-z_]+", DASHBOARD.read_text())
        }
        assert queried and not queried - exported, "the dashboard asks for metrics nobody exports"
    finally:
        cluster.threads.run(server.stop())
