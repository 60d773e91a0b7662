"""Metrics as a user sees them: real processes scraped by a real Prometheus, queried with the dashboard's own
expressions, and checked by promtool."""

import json
import re
import subprocess
import time
import urllib.parse

import pytest
import yaml

from a3c.local import free_port, write_scrape_targets
from tests.processes import ROOT, LocalRun, http_get, stop, tool, wait_for

DEPLOY = ROOT / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
PROMETHEUS_CONFIGS = sorted((DEPLOY / "prometheus").glob("*.yml"))


@pytest.fixture
def cluster(tmp_path):
    """A CartPole learner and two actors as real processes."""
    run = LocalRun(tmp_path)
    run.start_learner()
    run.start_actor()
    run.start_actor()
    yield run
    run.close()


def panel_expressions():
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                yield panel["title"], target["expr"].replace("$__rate_interval", "1m")


def test_promtool_accepts_the_shipped_prometheus_configs():
    assert PROMETHEUS_CONFIGS
    for config in PROMETHEUS_CONFIGS:
        result = subprocess.run([tool("promtool"), "check", "config", "--syntax-only", str(config)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_shipped_config_discovers_every_actor_replica_by_dns():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"learner", "actor"}
    for name, job in jobs.items():
        assert "static_configs" not in job
        assert job["dns_sd_configs"][0]["names"] == [name]


def test_dashboard_shows_what_a_person_looks_for_first():
    titles = [title for title, _ in panel_expressions()]
    for wanted in ("Mean return", "Frames per second", "Updates per second", "staleness", "RPC latency p99",
                   "Rejected gradients", "Actors up", "Learner CPU and memory"):
        assert any(wanted in title for title in titles), wanted


@pytest.mark.slow
def test_real_prometheus_scrapes_everything_the_dashboard_queries(cluster, tmp_path):
    targets = tmp_path / "targets.json"
    write_scrape_targets(targets, cluster.learner_metrics, cluster.actor_metrics)
    # The shipped config with its discovery swapped for this run's endpoints: same jobs, same metrics.
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["scrape_configs"] = [{"job_name": "a3c", "file_sd_configs": [{"files": [str(targets)]}]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    web = free_port()
    prometheus = subprocess.Popen([tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{web}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def query(expr: str) -> list:
        url = f"http://127.0.0.1:{web}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        reply = json.loads(http_get(url))
        assert reply["status"] == "success", reply
        return reply["data"]["result"]

    try:
        wait_for(lambda: "Ready" in http_get(f"http://127.0.0.1:{web}/-/ready", timeout=1), 30,
                 "Prometheus to start")
        wait_for(lambda: len(query("up == 1")) == 3, 60, "three targets up")
        wait_for(lambda: query('count_over_time(up{job="learner"}[1m]) >= 6'), 60, "six scrapes")
        # Every panel shows data within a minute (on a loaded machine the actors' first pushes can lag).
        panels, deadline = list(panel_expressions()), time.monotonic() + 60
        while (empty := [(title, expr) for title, expr in panels if not query(expr)]) and time.monotonic() < deadline:
            time.sleep(1)
        assert not empty, f"dashboard expressions with no series: {empty}"
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)


@pytest.mark.slow
def test_promtool_accepts_what_both_services_serve(cluster):
    wait_for(lambda: cluster.learner_metric("a3c_learner_updates_total") > 0, 60, "a first update")
    for port in [cluster.learner_metrics, *cluster.actor_metrics]:
        # The first update proves one actor is up, not both: a loaded machine can still be starting the other.
        text = wait_for(lambda: http_get(f"http://127.0.0.1:{port}/metrics"), 60, f"metrics on port {port}",
                        cluster.processes)
        result = subprocess.run([tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "process_resident_memory_bytes" in text and "process_cpu_seconds_total" in text


@pytest.mark.slow
def test_learner_counters_agree_with_what_the_actors_saw(cluster):
    wait_for(lambda: cluster.learner_metric("a3c_learner_updates_total") >= 50, 60, "50 updates")
    stop(*cluster.actors)
    accepted = frames = 0
    for index in range(len(cluster.actors)):
        match = re.search(r"stopped after (\d+) accepted pushes \((\d+) frames\)", cluster.log(f"actor-{index}"))
        assert match, cluster.log(f"actor-{index}")
        accepted += int(match.group(1))
        frames += int(match.group(2))
    assert cluster.learner_metric("a3c_learner_updates_total") == accepted
    assert cluster.learner_metric("a3c_learner_env_frames_total") == frames
    assert cluster.learner_metric("a3c_learner_param_version") == accepted
