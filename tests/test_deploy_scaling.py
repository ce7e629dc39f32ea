"""Scale-out configuration, checked statically (no cluster, no Docker engine here) against the app's own code:
the autoscalers read metrics the service really exports, pods drain within their grace period, GPUs are
requested explicitly, and the compose load tester runs its own image and writes where its user may."""

from __future__ import annotations

import re

import yaml

from app.metrics import Metrics
from app.settings import Settings
from tests.conftest import REPO

K8S = REPO / "deploy/k8s"
DOCS = {d["kind"]: d for d in yaml.safe_load_all((K8S / "k2d.yaml").read_text())}
POD = DOCS["Deployment"]["spec"]["template"]["spec"]
CONTAINER = POD["containers"][0]
ENV = {e["name"]: e["value"] for e in CONTAINER["env"]}
GAUGES = {family.name for family in Metrics().registry.collect() if family.type == "gauge"}
MAX_WINDOW_S = 30.0  # VAD cuts audio into windows of at most 30 s


def _hpa_targets() -> dict[str, float]:
    return {m["pods"]["metric"]["name"]: float(m["pods"]["target"]["averageValue"]) for m in DOCS["HorizontalPodAutoscaler"]
            ["spec"]["metrics"]}


def test_the_hpa_scales_on_the_services_own_queue_gauges_not_cpu():
    hpa = DOCS["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == DOCS["Deployment"]["metadata"]["name"]
    assert all(m["type"] == "Pods" for m in hpa["spec"]["metrics"])  # no CPU utilisation on GPU pods
    targets = _hpa_targets()
    assert set(targets) == {"k2d_queue_depth", "k2d_in_flight_requests"} <= GAUGES
    # pods are added before admission control sheds load: the per-pod target is under the queue bound
    bound = Settings(**({"max_queue_audio_s": float(ENV["K2D_MAX_QUEUE_AUDIO_S"])} if "K2D_MAX_QUEUE_AUDIO_S" in ENV
                        else {})).max_queue_audio_s
    assert targets["k2d_queue_depth"] * MAX_WINDOW_S < bound
    assert targets["k2d_queue_depth"] >= int(ENV["K2D_MAX_BATCH_SIZE"])  # a full batch waiting, not one window
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 120


def test_prometheus_adapter_and_keda_expose_the_same_gauges_with_the_same_targets():
    adapter = yaml.safe_load((K8S / "prometheus-adapter-values.yaml").read_text())
    rules = adapter["rules"]["custom"]
    assert {r["name"]["as"] for r in rules} == set(_hpa_targets())
    for rule in rules:
        assert re.fullmatch(r"\^(\w+)\$", rule["name"]["matches"]).group(1) == rule["name"]["as"]
        assert rule["seriesQuery"].startswith(rule["name"]["as"] + "{")
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    keda = yaml.safe_load((K8S / "keda-scaledobject.yaml").read_text())
    assert keda["spec"]["scaleTargetRef"]["name"] == DOCS["Deployment"]["metadata"]["name"]
    triggers = {re.search(r"\b(k2d_[a-z_]+)\b", t["metadata"]["query"]).group(1): float(t["metadata"]["threshold"])
                for t in keda["spec"]["triggers"]}
    assert triggers == _hpa_targets()
    # the labels both select on are the ones the scrape job writes
    scrape = yaml.safe_load((K8S / "prometheus-scrape.yaml").read_text())["scrape_configs"][0]
    written = {r["target_label"] for r in scrape["relabel_configs"] if "target_label" in r}
    assert {"namespace", "pod", "app"} <= written
    for trigger in keda["spec"]["triggers"]:
        assert set(re.findall(r"(\w+)=", trigger["metadata"]["query"])) <= written
    assert DOCS["Deployment"]["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"


def test_pods_drain_on_prestop_within_their_grace_period():
    grace = Settings(request_timeout_s=float(ENV["K2D_REQUEST_TIMEOUT_S"]),
                     shutdown_grace_s=float(ENV["K2D_SHUTDOWN_GRACE_S"])).drain_grace_s
    assert grace >= float(ENV["K2D_REQUEST_TIMEOUT_S"])
    command = CONTAINER["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and int(command[1]) >= 5  # endpoint removal propagates before SIGTERM
    assert POD["terminationGracePeriodSeconds"] >= int(command[1]) + grace + 5
    assert CONTAINER["readinessProbe"]["httpGet"]["path"] == "/readyz"  # 503 while draining


def test_each_pod_requests_a_gpu_explicitly():
    resources = CONTAINER["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1
    assert ENV["K2D_DEVICE"] == "cuda"
    assert any(t["key"] == "nvidia.com/gpu" for t in POD["tolerations"])


def test_the_training_job_fills_the_claim_the_deployment_reads_like_compose_does():
    job = DOCS["Job"]["spec"]["template"]["spec"]
    train = job["containers"][0]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["train"]
    assert train["args"] == compose["command"] and train["image"] == compose["image"]
    claim = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in job["volumes"]}
    assert claim == {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in POD["volumes"]}
    assert not train["volumeMounts"][0].get("readOnly") and CONTAINER["volumeMounts"][0]["readOnly"]
    assert job["securityContext"]["fsGroup"] == 10001 and job["restartPolicy"] == "OnFailure"
    assert train["resources"]["requests"]["nvidia.com/gpu"] == train["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_the_compose_load_tester_runs_its_own_image_and_writes_where_its_user_owns():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    loadtest = compose["services"]["loadtest"]
    dockerfile = (REPO / loadtest["build"]["dockerfile"]).read_text()
    assert loadtest["image"] != compose["services"]["asr"]["image"]
    out = loadtest["command"][loadtest["command"].index("--out") + 1]
    volume, _, target = next(v for v in loadtest["volumes"] if v.split(":")[1] == out).partition(":")
    assert target == out and volume in compose["volumes"]  # a named volume: it starts as the image's folder
    user = re.search(r"^USER (\S+)$", dockerfile, re.M).group(1)
    assert user not in ("root", "0")
    assert re.search(rf"mkdir -p {out} && chown {user}:{user} {out}", dockerfile)
    assert re.search(r'^ENTRYPOINT \["python", "-m", "loadtest"\]$', dockerfile, re.M)
    assert "MPLCONFIGDIR=/tmp/" in dockerfile  # plots work under any --user, even without a writable home
    assert "/data/manifest.jsonl" in loadtest["command"] and "./tests/data:/data:ro" in loadtest["volumes"]
