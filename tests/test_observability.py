"""Metrics as a user sees them: real processes scraped by a real Prometheus, queried with the dashboard's own
expressions, and checked by promtool."""

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from apps.local import write_scrape_targets
from tests.dashboard import panel_expressions, prometheus_query
from tests.deployment import POD_MONITOR, manifest, rendered_manifests
from tests.processes import ROOT, LocalRun, free_port, http_get, stop, tool, wait_for

DEPLOY = ROOT / "deploy"
PROMETHEUS_CONFIGS = sorted((DEPLOY / "prometheus").glob("*.yml"))


def start_cluster(tmp: Path, evaluator: bool = False):
    """A CartPole learner and two actors (and an evaluator) as real processes."""
    run = LocalRun(tmp)
    run.start_learner()
    run.start_actor()
    run.start_actor()
    if evaluator:
        run.start_evaluator()
    return run


@pytest.fixture
def cluster(tmp_path):
    run = start_cluster(tmp_path)
    yield run
    run.close()


@pytest.fixture(scope="module")
def scraped_cluster(tmp_path_factory):
    """One cluster for every way of scraping it: each test only reads its metrics."""
    run = start_cluster(tmp_path_factory.mktemp("cluster"), evaluator=True)
    yield run
    run.close()


def test_promtool_accepts_the_shipped_prometheus_configs(tmp_path):
    assert PROMETHEUS_CONFIGS
    for path in PROMETHEUS_CONFIGS:
        # Debian builds Prometheus without Kubernetes discovery: its promtool checks the rest of such a config.
        config = yaml.safe_load(path.read_text())
        for job in config["scrape_configs"]:
            if "kubernetes_sd_configs" in job:
                assert [sd["role"] for sd in job.pop("kubernetes_sd_configs")] == ["pod"]
                job["file_sd_configs"] = [{"files": ["pods.json"]}]
        checked = tmp_path / path.name
        checked.write_text(yaml.safe_dump(config))
        result = subprocess.run([tool("promtool"), "check", "config", "--syntax-only", str(checked)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_shipped_config_discovers_every_actor_replica_by_dns():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"learner", "actor", "evaluator"}
    for name, job in jobs.items():
        assert "static_configs" not in job
        assert job["dns_sd_configs"][0]["names"] == [name]


def test_dashboard_shows_what_a_person_looks_for_first():
    titles = [title for title, _ in panel_expressions()]
    for wanted in ("Mean return", "Frames per second", "Updates per second", "staleness", "RPC latency p99",
                   "Rejected gradients", "Actors up", "Learner CPU and memory", "Evaluation return"):
        assert any(wanted in title for title in titles), wanted


def meta_name(key: str) -> str:
    """A Kubernetes label or annotation key as service discovery names it in a meta label."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def pod_target_groups(run: LocalRun, targets: Path) -> None:
    """What Kubernetes pod discovery would find for this run's processes deployed by deploy/k8s, as file_sd
    groups: one target per container port carrying the pod's labels and annotations; the ports are this run's."""
    docs, groups = rendered_manifests(), []
    for name, metrics_ports in (("learner", [run.learner_metrics]), ("actor", run.actor_metrics),
                                ("evaluator", [run.evaluator_metrics])):
        pod = manifest(docs, "Deployment", name)["spec"]["template"]
        container = pod["spec"]["containers"][0]
        for index, local in enumerate(metrics_ports):
            meta = {f"__meta_kubernetes_pod_label_{meta_name(k)}": v for k, v in pod["metadata"]["labels"].items()}
            meta |= {f"__meta_kubernetes_pod_annotation_{meta_name(k)}": v
                     for k, v in pod["metadata"]["annotations"].items()}
            meta |= {"__meta_kubernetes_pod_annotation_prometheus_io_port": str(local),
                     "__meta_kubernetes_namespace": "a3c", "__meta_kubernetes_pod_name": f"{name}-{index}",
                     "__meta_kubernetes_pod_container_name": container["name"]}
            for port in container["ports"]:
                local_port = local if port["name"] == "metrics" else run.grpc_port
                groups.append({"targets": [f"127.0.0.1:{local_port}"],
                               "labels": {**meta, "__meta_kubernetes_pod_container_port_name": port["name"]}})
    targets.write_text(json.dumps(groups))


def scrape_a3c_train(run: LocalRun, targets: Path) -> list[dict]:
    # What `a3c train --evaluator` writes.
    write_scrape_targets(targets, run.learner_metrics, run.actor_metrics, [run.evaluator_metrics])
    return [{"job_name": "a3c", "file_sd_configs": [{"files": [str(targets)]}]}]


def scrape_compose(run: LocalRun, targets: Path) -> list[dict]:
    """The shipped compose config, its DNS discovery answered with this run's addresses."""
    jobs = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    ports = {"learner": [run.learner_metrics], "actor": run.actor_metrics, "evaluator": [run.evaluator_metrics]}
    for job in jobs:
        found = targets.with_name(f"{job['job_name']}.json")
        found.write_text(json.dumps([{"targets": [f"127.0.0.1:{p}" for p in ports[job.pop("dns_sd_configs")[0]
                                                                                   ["names"][0]]]}]))
        job["file_sd_configs"] = [{"files": [str(found)]}]
    return jobs


def scrape_kubernetes_annotations(run: LocalRun, targets: Path) -> list[dict]:
    """deploy/prometheus/kubernetes.yml, its pod discovery answered as the cluster would."""
    (job,) = yaml.safe_load((DEPLOY / "prometheus" / "kubernetes.yml").read_text())["scrape_configs"]
    del job["kubernetes_sd_configs"]
    pod_target_groups(run, targets)
    return [{**job, "file_sd_configs": [{"files": [str(targets)]}]}]


def scrape_pod_monitor(run: LocalRun, targets: Path) -> list[dict]:
    """The scrape config the Prometheus Operator generates from the shipped PodMonitor (its relabelings for the
    fields the PodMonitor uses: selector, port, path, jobLabel), on pod discovery answered as the cluster would."""
    monitor = yaml.safe_load(POD_MONITOR.read_text())
    spec, (endpoint,) = monitor["spec"], monitor["spec"]["podMetricsEndpoints"]
    namespace, name = monitor["metadata"]["namespace"], monitor["metadata"]["name"]
    relabel = [{"source_labels": [f"__meta_kubernetes_pod_label_{meta_name(k)}"], "regex": v, "action": "keep"}
               for k, v in spec["selector"]["matchLabels"].items()]
    relabel += [{"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": endpoint["port"],
                 "action": "keep"},
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                {"target_label": "job", "replacement": f"{namespace}/{name}"},
                {"source_labels": [f"__meta_kubernetes_pod_label_{meta_name(spec['jobLabel'])}"], "regex": "(.+)",
                 "target_label": "job", "replacement": "${1}"}]
    pod_target_groups(run, targets)
    return [{"job_name": f"podMonitor/{namespace}/{name}/0", "metrics_path": endpoint["path"],
             "relabel_configs": relabel, "file_sd_configs": [{"files": [str(targets)]}]}]


@pytest.mark.slow
@pytest.mark.parametrize("scrape", [scrape_a3c_train, scrape_compose, scrape_kubernetes_annotations,
                                    scrape_pod_monitor], ids=lambda f: f.__name__.removeprefix("scrape_"))
def test_real_prometheus_scrapes_everything_the_dashboard_queries(scraped_cluster, tmp_path, scrape):
    """Each way of deploying gives the series the labels the dashboard filters on (job learner, actor and
    evaluator)."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["scrape_configs"] = scrape(scraped_cluster, tmp_path / "targets.json")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    web = free_port()
    prometheus = subprocess.Popen([tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{web}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def query(expr: str) -> list:
        return prometheus_query(f"127.0.0.1:{web}", expr)

    try:
        wait_for(lambda: "Ready" in http_get(f"http://127.0.0.1:{web}/-/ready", timeout=1), 30,
                 "Prometheus to start")
        wait_for(lambda: len(query("up == 1")) == 4, 60, "four targets up")
        assert {s["metric"]["job"]: s["value"][1] for s in query("count by (job) (up)")} == {"learner": "1",
                                                                                           "actor": "2",
                                                                                           "evaluator": "1"}
        wait_for(lambda: query('count_over_time(up{job="learner"}[1m]) >= 2'), 60, "two scrapes (a rate needs two)")
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
