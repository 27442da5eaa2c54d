"""The Helm chart, rendered by real Helm and checked against the Kubernetes API schemas.

Each value set an operator is likely to use is rendered; every object must pass
kubernetes-validate (strict: no unknown fields) and the chart must lint clean. The
semantic checks tie the manifests to the code: probe paths are routes the services
serve, env variables are settings the services accept, ports are their defaults, and
the broker config is what ``edgeserve.broker`` renders.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, cast

import pytest

from tests.deploy.conftest import CHART, NAMESPACE, Manifest, Render, find, one

kubernetes_validate = pytest.importorskip("kubernetes_validate")
helm = pytest.importorskip("helm_python")

KUBE_VERSION = "1.30.0"
SECRETS = {
    "gateway": {"tenants": {"existingSecret": "gw-tenants"}, "tls": {"existingSecret": "gw-tls"}}
}
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "gpu": {"gateway": {"gpu": {"enabled": True, "count": 2, "runtimeClassName": "nvidia"}}},
    "gateway-only": {"sync": {"enabled": False}, "mosquitto": {"enabled": False}},
    "sync-only": {
        "gateway": {"enabled": False},
        "mosquitto": {"enabled": False},
        "sync": {"broker": {"host": "mqtt.example.net"}, "operatorKeySecret": "op-key"},
    },
    "mosquitto-only": {"gateway": {"enabled": False}, "sync": {"enabled": False}},
    "service-monitor": {"metrics": {"serviceMonitor": {"enabled": True}}},
    "network-policy": {
        "networkPolicy": {
            "enabled": True,
            "metricsNamespaceSelector": {"kubernetes.io/metadata.name": "monitoring"},
        }
    },
    "everything": {
        **SECRETS,
        "metrics": {"serviceMonitor": {"enabled": True}},
        "networkPolicy": {"enabled": True},
        "mosquitto": {"service": {"type": "NodePort", "nodePort": 30883}},
    },
    "queue-depth-hpa": {"gateway": {"autoscaling": {"queueDepth": {"enabled": True}}}},
    "models-pvc": {
        "gateway": {"models": {"existingClaim": "models"}, "autoscaling": {"enabled": False}}
    },
}
POD_KINDS = ("Deployment", "StatefulSet")


def pod_specs(manifests: list[Manifest]) -> list[tuple[Manifest, dict[str, Any]]]:
    return [(m, m["spec"]["template"]["spec"]) for m in manifests if m["kind"] in POD_KINDS]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_rendered_object_passes_the_kubernetes_schema(render: Render, name: str) -> None:
    manifests = render(VALUE_SETS[name])
    assert manifests
    for manifest in manifests:
        if manifest["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # no schema in kubernetes-validate: checked by the ServiceMonitor tests
        try:
            kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            first = str(exc).splitlines()[0]
            pytest.fail(f"{manifest['kind']} {manifest['metadata']['name']}: {first}")


@pytest.mark.parametrize("name", ["defaults", "everything", "gpu"])
def test_chart_lints_strict_without_errors_or_warnings(name: str) -> None:
    report = helm.lint(CHART, VALUE_SETS[name], strict=True)
    assert report["errors"] == []
    # severity 1 is INFO ("icon is recommended"); 2 WARNING and 3 ERROR must not occur.
    assert [m for m in report["messages"] if m["severity"] > 1] == []


def test_values_and_chart_files_pass_yamllint() -> None:
    from yamllint import linter  # type: ignore[import-untyped]
    from yamllint.config import YamlLintConfig  # type: ignore[import-untyped]

    # Helm's own files start without "---"; everything else is yamllint's default.
    config = YamlLintConfig(
        "extends: default\nrules:\n  line-length: {max: 100}\n  document-start: disable\n"
    )
    for name in ("values.yaml", "Chart.yaml"):
        problems = list(linter.run((CHART / name).read_text(), config))
        assert problems == [], f"{name}: {[str(p) for p in problems]}"


@pytest.mark.parametrize(
    "values",
    [
        {"gateway": {"replicaCount": "two"}},
        {"gateway": {"gpu": {"enabled": "yes"}}},
        {"gateway": {"replicas": 3}},
        {"mosquitto": {"service": {"type": "Ingress"}}},
        {"sync": {"config": {"rolloutMaxFailureRate": 2}}},
    ],
    ids=["replicas-as-text", "gpu-flag-as-text", "misspelt-key", "bad-type", "rate-above-1"],
)
def test_bad_values_are_refused_by_the_schema(render: Render, values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError, match="schema"):
        render(values)
    assert helm.lint(CHART, values, strict=True)["errors"]


def test_sync_without_the_charts_broker_needs_a_broker_host(render: Render) -> None:
    with pytest.raises(helm.HelmError, match=r"sync\.broker\.host is required"):
        render({"mosquitto": {"enabled": False}})


@pytest.mark.parametrize(
    ("values", "components"),
    [
        (VALUE_SETS["defaults"], {"gateway", "redis", "sync", "mosquitto"}),
        (VALUE_SETS["gateway-only"], {"gateway", "redis"}),
        (VALUE_SETS["sync-only"], {"sync"}),
        (VALUE_SETS["mosquitto-only"], {"mosquitto"}),
    ],
)
def test_each_component_can_be_turned_off(
    render: Render, values: dict[str, Any], components: set[str]
) -> None:
    rendered = {
        m["metadata"]["labels"].get("app.kubernetes.io/component")
        for m in render(values)
        if m["kind"] != "ServiceAccount"
    }
    assert rendered == components


@pytest.mark.parametrize("name", ["defaults", "everything"])
def test_services_select_the_pods_of_their_component(render: Render, name: str) -> None:
    manifests = render(VALUE_SETS[name])
    for service in find(manifests, "Service"):
        component = service["metadata"]["labels"]["app.kubernetes.io/component"]
        selector = service["spec"]["selector"]
        matched = [
            (workload, pod)
            for workload, pod in pod_specs(manifests)
            if selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert [w["metadata"]["name"] for w, _ in matched] == [
            one(manifests, w["kind"], component)["metadata"]["name"] for w, _ in matched
        ]
        assert len(matched) == 1, f"{service['metadata']['name']} selects {len(matched)} workloads"
        ports = {p["name"] for c in matched[0][1]["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports


def test_workload_selectors_match_their_pod_template(render: Render) -> None:
    for workload, _ in pod_specs(render(VALUE_SETS["everything"])):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_probes_use_named_container_ports(render: Render) -> None:
    for _, pod in pod_specs(render(VALUE_SETS["everything"])):
        for container in pod["containers"]:
            names = {p["name"] for p in container["ports"]}
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                probe = container[kind]
                action = probe.get("httpGet") or probe["tcpSocket"]
                assert action["port"] in names, f"{container['name']} {kind}"


def test_gateway_probes_are_routes_of_the_gateway(render: Render) -> None:
    from cloud_gateway.rest import HEALTH_ROUTES
    from cloud_gateway.rest_api import router

    routes = {getattr(route, "path", None) for route in router.routes} | set(HEALTH_ROUTES)
    gateway = one(render({}), "Deployment", "gateway")["spec"]["template"]["spec"]
    container = gateway["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[kind]["httpGet"]["path"] in routes


def test_sync_probes_are_routes_of_the_admin_api(render: Render) -> None:
    from sync.admin_api import AdminState, create_admin_app

    # The route table is built without touching the state, so none is needed to read it.
    app = create_admin_app(cast(AdminState, None))
    routes = {getattr(route, "path", None) for route in app.routes}
    sync = one(render({}), "StatefulSet", "sync")["spec"]["template"]["spec"]["containers"][0]
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert sync[kind]["httpGet"]["path"] in routes


def test_container_ports_are_the_services_default_ports(render: Render) -> None:
    from cloud_gateway.config import GatewayConfig
    from edgeserve.broker.config import production_config
    from sync.config import SyncConfig

    manifests = render({})
    gateway = one(manifests, "Deployment", "gateway")["spec"]["template"]["spec"]["containers"][0]
    defaults = GatewayConfig.model_fields
    assert {p["name"]: p["containerPort"] for p in gateway["ports"]} == {
        "http": defaults["http_port"].default,
        "grpc": defaults["grpc_port"].default,
        "grpc-mtls": defaults["grpc_mtls_port"].default,
    }
    sync = one(manifests, "StatefulSet", "sync")["spec"]["template"]["spec"]["containers"][0]
    assert sync["ports"][0]["containerPort"] == SyncConfig.model_fields["admin_port"].default
    assert env_of(sync)["EDGESERVE_SYNC_BROKER_PORT"] == str(production_config().port)
    broker = one(manifests, "StatefulSet", "mosquitto")["spec"]["template"]["spec"]
    assert broker["containers"][0]["ports"][0]["containerPort"] == production_config().port


@pytest.mark.parametrize(
    ("component", "kind", "config_class"),
    [
        ("gateway", "Deployment", "cloud_gateway.config:GatewayConfig"),
        ("sync", "StatefulSet", "sync.config:SyncConfig"),
    ],
)
def test_rendered_env_is_accepted_by_the_services_config(
    render: Render,
    monkeypatch: pytest.MonkeyPatch,
    component: str,
    kind: str,
    config_class: str,
) -> None:
    module, _, name = config_class.partition(":")
    config_type = getattr(importlib.import_module(module), name)
    prefix = config_type.model_config["env_prefix"]
    workload = one(render(VALUE_SETS["everything"]), kind, component)
    env = env_of(workload["spec"]["template"]["spec"]["containers"][0])
    ours = {key: value for key, value in env.items() if key.startswith(prefix)}
    unknown = {key for key in ours if key[len(prefix) :].lower() not in config_type.model_fields}
    assert unknown == set()
    for key in [k for k in os.environ if k.startswith(prefix)]:
        monkeypatch.delenv(key)
    for key, value in ours.items():
        monkeypatch.setenv(key, value)
    config = config_type()  # raises if a value does not parse
    assert str(config.state_dir).startswith("/var/lib/edgeserve/")


def test_gateway_device_tls_comes_from_the_operators_secret_mounted_read_only(
    render: Render,
) -> None:
    pod = one(render(VALUE_SETS["everything"]), "Deployment", "gateway")["spec"]["template"]
    gateway = pod["spec"]["containers"][0]
    mount = next(m for m in gateway["volumeMounts"] if m["name"] == "tls")
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "tls")
    files = {item["path"] for item in volume["secret"]["items"]}
    env = env_of(gateway)
    wanted = ("TLS_CERT", "TLS_KEY", "CLIENT_CA")
    paths = [env[f"EDGESERVE_GATEWAY_{name}"] for name in wanted]
    assert volume["secret"]["secretName"] == "gw-tls" and mount["readOnly"] is True
    assert [p.rpartition("/") for p in paths] == [
        (mount["mountPath"], "/", f) for f in ("tls.crt", "tls.key", "ca.crt")
    ]
    assert files == {"tls.crt", "tls.key", "ca.crt"}  # the kubernetes.io/tls (+ca.crt) layout
    plain = one(render({}), "Deployment", "gateway")["spec"]["template"]["spec"]
    assert not any(k.startswith("EDGESERVE_GATEWAY_TLS") for k in env_of(plain["containers"][0]))


def test_every_container_runs_unprivileged_and_read_only(render: Render) -> None:
    manifests = render(VALUE_SETS["everything"])
    for workload, pod in pod_specs(manifests):
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        for container in containers(pod):
            context = container["securityContext"]
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert context["seccompProfile"]["type"] == "RuntimeDefault", where
    assert one(manifests, "ServiceAccount", None)["automountServiceAccountToken"] is False


def test_gpu_adds_a_gpu_limit_the_gpu_image_and_gpu_node_scheduling(render: Render) -> None:
    plain = one(render({}), "Deployment", "gateway")["spec"]["template"]["spec"]
    pod = one(render(VALUE_SETS["gpu"]), "Deployment", "gateway")["spec"]["template"]["spec"]
    gateway = pod["containers"][0]
    assert "nvidia.com/gpu" not in plain["containers"][0]["resources"].get("limits", {})
    assert gateway["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert gateway["resources"]["limits"]["memory"] == "4Gi"  # the other limits stay
    assert gateway["image"].endswith("-gpu")
    assert env_of(gateway)["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert "runtimeClassName" not in plain and "nodeSelector" not in plain


def test_service_monitors_select_their_service_and_name_one_of_its_ports(render: Render) -> None:
    manifests = render(VALUE_SETS["everything"])
    monitors = find(manifests, "ServiceMonitor")
    assert {m["metadata"]["labels"]["app.kubernetes.io/component"] for m in monitors} == {
        "gateway",
        "sync",
    }
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        spec = monitor["spec"]
        assert set(spec) == {"selector", "namespaceSelector", "endpoints"}
        assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        selector = spec["selector"]["matchLabels"]
        services = [
            s
            for s in find(manifests, "Service")
            if selector.items() <= s["metadata"]["labels"].items()
        ]
        assert len(services) == 1
        port_names = {p["name"] for p in services[0]["spec"]["ports"]}
        for endpoint in spec["endpoints"]:
            assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
            assert endpoint["port"] in port_names
            assert endpoint["path"] == "/metrics"


def test_service_monitors_are_rendered_only_when_asked(render: Render) -> None:
    assert find(render({}), "ServiceMonitor") == []


def test_hpa_scales_the_gateway_on_cpu_and_the_real_queue_depth_metric(render: Render) -> None:
    from cloud_gateway.metrics import GatewayMetrics

    manifests = render(VALUE_SETS["queue-depth-hpa"])
    hpa = one(manifests, "HorizontalPodAutoscaler", "gateway")
    deployment = one(manifests, "Deployment", "gateway")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    kinds = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert kinds["Resource"]["resource"]["name"] == "cpu"
    metric = kinds["Pods"]["pods"]["metric"]["name"]
    exported = GatewayMetrics()
    exported.watch_queues(dict)
    assert f"# TYPE {metric} gauge" in exported.render().decode()


def test_pod_disruption_budget_covers_the_gateway_pods(render: Render) -> None:
    manifests = render({})
    pdb = one(manifests, "PodDisruptionBudget", "gateway")
    labels = one(manifests, "Deployment", "gateway")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_network_policies_keep_the_sync_admin_api_inside_the_namespace(render: Render) -> None:
    manifests = render(VALUE_SETS["network-policy"])
    policies = {
        p["metadata"]["labels"]["app.kubernetes.io/component"]: p["spec"]
        for p in find(manifests, "NetworkPolicy")
    }
    assert set(policies) == {"gateway", "redis", "sync", "mosquitto"}
    (redis_peers,) = policies["redis"]["ingress"][0]["from"]  # the gateway pods, nobody else
    assert redis_peers["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    assert "from" not in policies["gateway"]["ingress"][0]  # open to all, on its ports only
    assert {p["port"] for p in policies["gateway"]["ingress"][0]["ports"]} == {
        "http",
        "grpc",
        "grpc-mtls",
    }
    sources = policies["sync"]["ingress"][0]["from"]
    assert {"podSelector": {}} in sources
    assert all("ipBlock" not in source for source in sources)
    monitoring = {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    assert {"namespaceSelector": monitoring} in sources
    assert {"ipBlock": {"cidr": "0.0.0.0/0"}} in policies["mosquitto"]["ingress"][0]["from"]


def test_broker_config_is_what_edgeserve_broker_renders(render: Render) -> None:
    from edgeserve.broker.acl import render_acl
    from edgeserve.broker.config import MosquittoConfig, render_mosquitto_conf

    manifests = render({})
    data = one(manifests, "ConfigMap", "mosquitto")["data"]
    pod = one(manifests, "StatefulSet", "mosquitto")["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    certs = Path(mounts["certs"])
    expected = MosquittoConfig(
        port=8883,
        ca=certs / "ca.pem",
        cert=certs / "server.pem",
        key=certs / "server.key",
        password_file=certs / "passwd",
        acl_file=Path(mounts["config"]) / "acl",
        persistence_dir=Path(mounts["data"]),
        log_file=None,
        bind=None,
    )
    assert data["mosquitto.conf"] == render_mosquitto_conf(expected)
    assert data["acl"] == render_acl()
    secret_items = {i["key"] for v in pod["volumes"] if "secret" in v for i in v["secret"]["items"]}
    assert secret_items == {"ca.pem", "server.pem", "server.key", "passwd"}


def test_broker_service_can_face_devices_on_a_fixed_node_port(render: Render) -> None:
    service = one(render(VALUE_SETS["everything"]), "Service", "mosquitto")["spec"]
    assert service["type"] == "NodePort"
    assert service["ports"][0]["nodePort"] == 30883


def test_sync_runs_one_replica_on_a_persistent_volume(render: Render) -> None:
    from edgeserve.security.signing import PRIVATE_NAME

    sync = one(render(VALUE_SETS["sync-only"]), "StatefulSet", "sync")
    assert sync["spec"]["replicas"] == 1
    claim = sync["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    mounts = sync["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    state = env_of(sync["spec"]["template"]["spec"]["containers"][0])["EDGESERVE_SYNC_STATE_DIR"]
    assert {"name": claim, "mountPath": state} in mounts
    key_mount = next(m for m in mounts if m["name"] == "operator-key")
    # where the service's ensure_operator_key looks for the key
    assert key_mount["mountPath"] == f"{state}/keys/{PRIVATE_NAME}"


def test_gateway_replicas_share_their_token_buckets_through_the_charts_redis(
    render: Render,
) -> None:
    manifests = render({})
    gateway = one(manifests, "Deployment", "gateway")["spec"]["template"]["spec"]
    store = env_of(gateway["containers"][0])["EDGESERVE_GATEWAY_RATE_LIMIT_STORE"]
    service = one(manifests, "Service", "redis")
    port = service["spec"]["ports"][0]["port"]
    assert store == f"redis://{service['metadata']['name']}:{port}/0"


def test_an_external_rate_limit_store_replaces_the_charts_redis(render: Render) -> None:
    values = {"gateway": {"config": {"rateLimitStore": "rediss://cache.example:6380/2"}}}
    gateway = one(render(values), "Deployment", "gateway")["spec"]["template"]["spec"]
    env = env_of(gateway["containers"][0])
    assert env["EDGESERVE_GATEWAY_RATE_LIMIT_STORE"] == "rediss://cache.example:6380/2"
