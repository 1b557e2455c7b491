"""The metrics endpoint of the lab's two real daemons, scraped by a real HTTP client (urllib) and read with
prometheus_client's own parser: the pause histogram counts every checkpoint, as colodctl status does."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from colod.testing.lab import Node
from tests.cluster import ClusterTestCase, wait
from tests.rig import async_test, sleep


def scrape(node: Node, path: str = "/metrics") -> dict[str, float]:
    """The node's samples, by name with their labels (``name{label=value,...}``)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}{path}", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{key}={value}" for key, value in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


class MetricsTests(ClusterTestCase):
    @async_test
    async def test_a_scrape_counts_every_pause(self) -> None:
        lab = await self.start_cluster(metrics=True)
        lab.primary.ctl("pause", "lab")  # still, so that a scrape and a status see the same checkpoints
        await sleep(0.5)
        status = lab.primary.ctl_status()["domains"][0]
        number = status["checkpoint"]["number"]
        samples = scrape(lab.primary)
        count = samples['colod_checkpoint_pause_seconds_count{domain=lab}']
        self.assertEqual(count, number)
        self.assertEqual(samples['colod_checkpoint_pause_seconds_bucket{domain=lab,le=+Inf}'], number)
        self.assertEqual(status["pause"]["count"], number)
        self.assertLessEqual(samples['colod_checkpoint_pause_seconds_bucket{domain=lab,le=0.001}'], number)
        self.assertAlmostEqual(samples['colod_checkpoint_pause_seconds_sum{domain=lab}'],
                               status["pause"]["sum_s"], places=6)
        self.assertEqual(samples['colod_checkpoint_bytes_count{domain=lab}'], number)
        self.assertEqual(samples['colod_checkpoint_pages_count{domain=lab}'], number)
        self.assertEqual(samples['colod_checkpoints_total{domain=lab,trigger=first}'], 1)
        self.assertEqual(samples['colod_checkpoints_total{domain=lab,trigger=interval}'], number - 1)
        for name in ("peer_link_up", "protected", "checkpoints_paused"):
            self.assertEqual(samples[f"colod_{name}{{domain=lab}}"], 1, name)
        self.assertGreater(samples['colod_peer_round_trip_seconds{domain=lab}'], 0)
        self.assertEqual(samples['colod_replication_errors_total{domain=lab}'], 0)
        # A checkpoint on request is counted as one, and in the histogram.
        lab.primary.ctl("checkpoint", "lab")
        samples = scrape(lab.primary)
        self.assertEqual(samples['colod_checkpoints_total{domain=lab,trigger=request}'], 1)
        self.assertEqual(samples['colod_checkpoint_pause_seconds_count{domain=lab}'], number + 1)
        secondary = scrape(lab.secondary)
        self.assertEqual(secondary['colod_checkpoint_pause_seconds_count{domain=lab}'], 0)
        self.assertEqual(secondary['colod_checkpoints_total{domain=lab,trigger=primary}'], number + 1)
        with self.assertRaises(urllib.error.HTTPError) as missing:
            scrape(lab.primary, "/")
        self.assertEqual(missing.exception.code, 404)

    @async_test
    async def test_a_takeover_and_an_error_are_counted(self) -> None:
        lab = await self.start_cluster(metrics=True)
        lab.lose_primary_host()
        await wait(lab.until(lab.secondary, lambda s: s["failed_over"], lab.heartbeat_timeout + 10.0,
                             "takeover"))
        samples = scrape(lab.secondary)
        self.assertEqual(samples['colod_failovers_total{domain=lab}'], 1)
        self.assertEqual(samples['colod_replication_errors_total{domain=lab}'], 1)  # "primary lost"
        self.assertEqual((samples['colod_peer_link_up{domain=lab}'], samples['colod_protected{domain=lab}']),
                         (0, 0))
