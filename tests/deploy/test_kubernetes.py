"""deploy/kubernetes: every manifest is valid Kubernetes, and says what the agent really does.

The kustomizations are rendered by :func:`render`, a small pure-Python subset of ``kustomize
build`` (resources, namespace, images, JSON 6902 patches: what the files use; any other field is
an error here), compared with ``kubectl kustomize`` where kubectl is installed. The rendered
objects are validated against the Kubernetes JSON schemas of ``kubernetes-validate`` (bundled
with it: no network) for :data:`K8S_VERSIONS`, then checked against the agent: its flags parse
with the agent's own parser, ports, socket paths, secret paths and images agree everywhere, and
the agent starts from the DaemonSet's exact arguments, passes the probes, serves metrics on the
annotated port and classifies for the example guest Pod's exact command and environment.

Each ``*_problems`` check returns what is wrong; ``test_checks_catch_drift`` edits one thing in
the rendered manifests and asserts that the check responsible for it notices.
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML comes with kubernetes-validate (test extra)")

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"
#: Every kustomization an operator applies (docs/operations.md).
KUSTOMIZATIONS = ["base", "overlays/orin", "monitoring", "examples/guest"]
#: The oldest Kubernetes the manifests are meant for, and the newest schemas bundled.
MIN_K8S = "1.30"
#: Kinds without a namespace (kustomize leaves them alone).
CLUSTER_SCOPED = {"Namespace", "RuntimeClass"}
NAMESPACED = {"DaemonSet", "Service", "Pod", "ServiceMonitor"}
#: Custom resources: their schema is not Kubernetes' (see test_custom_resources_are_checked).
CUSTOM_KINDS = {"ServiceMonitor"}
#: Agent flags that name files the agent reads (they must come from mounted Secrets).
SECRET_FLAGS = ("--tls-cert", "--tls-key", "--tls-client-ca", "--token-file", "--admin-token-file")


# Rendering: a subset of `kustomize build` ------------------------------------------------------
def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _pointer(path: str) -> list[str]:
    assert path.startswith("/"), f"JSON pointer {path!r} must start with /"
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def apply_json_patch(obj: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    """RFC 6902 add / replace / remove, as kustomize applies them."""
    for op in ops:
        *parents, last = _pointer(op["path"])
        node: Any = obj
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        kind = op["op"]
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if kind == "add":
                node.insert(index, copy.deepcopy(op["value"]))
            elif kind == "replace":
                node[index] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del node[index]
            else:
                raise AssertionError(f"JSON patch op {kind!r} is not supported by render()")
        elif kind in ("add", "replace"):
            if kind == "replace":
                assert last in node, f"replace of missing {op['path']}"
            node[last] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del node[last]
        else:
            raise AssertionError(f"JSON patch op {kind!r} is not supported by render()")


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] == "Pod":
        return obj["spec"]
    if obj["kind"] in {"DaemonSet", "Deployment", "StatefulSet", "Job"}:
        return obj["spec"]["template"]["spec"]
    return None


def split_image(image: str) -> tuple[str, str]:
    """``registry/name:tag`` as (``registry/name``, ``tag``)."""
    name, colon, tag = image.rpartition(":")
    if not colon or "/" in tag:
        return image, ""
    return name, tag


def _retag(objs: list[dict[str, Any]], images: list[dict[str, str]]) -> None:
    for obj in objs:
        spec = pod_spec(obj)
        for container in (spec or {}).get("containers", []) + (spec or {}).get(
            "initContainers", []
        ):
            name, tag = split_image(container["image"])
            for rule in images:
                if rule["name"] == name:
                    name = rule.get("newName", name)
                    tag = rule.get("newTag", tag)
            container["image"] = f"{name}:{tag}" if tag else name


def _matches(obj: dict[str, Any], target: dict[str, str]) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    wanted = {"group": group, "version": version, "kind": obj["kind"]}
    wanted["name"] = obj["metadata"]["name"]
    return all(wanted.get(key) == value for key, value in target.items())


def render(folder: Path) -> list[dict[str, Any]]:
    """What ``kustomize build folder`` gives, for the fields these kustomizations use."""
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    supported = {"apiVersion", "kind", "namespace", "resources", "images", "patches"}
    unknown = set(spec) - supported
    assert not unknown, f"{folder}: kustomization fields {unknown} are not supported by render()"
    objs: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = folder / entry
        objs += render(path) if path.is_dir() else load_all(path)
    for patch in spec.get("patches", []):
        ops = yaml.safe_load((folder / patch["path"]).read_text())
        assert isinstance(ops, list), f"{patch['path']}: render() applies JSON 6902 patches only"
        targets = [obj for obj in objs if _matches(obj, patch["target"])]
        assert targets, f"{patch['path']}: no object matches {patch['target']}"
        for obj in targets:
            apply_json_patch(obj, ops)
    _retag(objs, spec.get("images", []))
    if "namespace" in spec:
        for obj in objs:
            assert obj["kind"] in CLUSTER_SCOPED | NAMESPACED, f"scope of {obj['kind']}?"
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = spec["namespace"]
    return objs


def by_key(objs: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in objs}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(KUBE / name) for name in KUSTOMIZATIONS}


def every(rendered: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The objects a full deployment applies: the orin overlay, monitoring and the guest."""
    return rendered["overlays/orin"] + rendered["monitoring"] + rendered["examples/guest"]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def agent_container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    spec = pod_spec(one(objs, "DaemonSet", "vaccel-agent"))
    assert spec is not None
    return next(c for c in spec["containers"] if c["name"] == "agent")


def flag_values(args: list[str], flag: str) -> list[str]:
    """Values of ``--flag=value`` / ``--flag value`` in ``args``."""
    values = []
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            values.append(arg.split("=", 1)[1])
        elif arg == flag and i + 1 < len(args):
            values.append(args[i + 1])
    return values


def addresses(args: list[str], scheme: str) -> list[str]:
    from vaccel_core.transport import Address

    found = flag_values(args, "--server-address") + flag_values(args, "-a")
    return [a for a in found if Address.parse(a).scheme == scheme]


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.split("://", 1)[1].rpartition(":")
    return host.strip("[]"), int(port)


def mounts(objs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """mountPath -> the volume mounted there."""
    spec = pod_spec(next(o for o in objs if container in (pod_spec(o) or {}).get("containers", [])))
    assert spec is not None
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    return {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts", [])}


def volume_at(objs: list[dict[str, Any]], container: dict[str, Any], path: str) -> Any:
    """(mountPath, volume) of the mount holding ``path``, or (None, None)."""
    best = (None, None)
    for mount_path, volume in mounts(objs, container).items():
        inside = path == mount_path or path.startswith(mount_path.rstrip("/") + "/")
        if inside and (best[0] is None or len(mount_path) > len(best[0])):
            best = (mount_path, volume)
    return best


def containerfile_images() -> set[str]:
    """Image names the Containerfiles tell to build (``-t NAME`` in their build lines)."""
    names = set()
    for path in (ROOT / "deploy" / "container").glob("Containerfile.*"):
        for match in re.finditer(r"build -f deploy/container/\S+ -t (\S+)", path.read_text()):
            names.add(split_image(match[1])[0])
    return names


def project_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        return str(tomllib.load(fh)["project"]["version"])


def health_command(container: dict[str, Any]) -> list[str]:
    commands = [container[p]["exec"]["command"] for p in PROBES if p in container]
    assert commands and all(c == commands[0] for c in commands), "probes differ"
    return list(commands[0])


PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


# The checks -----------------------------------------------------------------------------------
def agent_args_problems(objs: list[dict[str, Any]]) -> list[str]:
    """The agent's command and every argument, as the agent's own parser reads them."""
    from vaccel_agent.cli import build_parser, make_config

    container = agent_container(objs)
    with (ROOT / "pyproject.toml").open("rb") as fh:
        scripts = tomllib.load(fh)["project"]["scripts"]
    problems = []
    if container.get("command") != ["vaccel-agent"] or "vaccel-agent" not in scripts:
        problems.append(f"command {container.get('command')} is not the vaccel-agent script")
    args = container.get("args", [])
    if any(not isinstance(a, str) for a in args):
        problems.append(f"non-string args: {args}")
        return problems
    err = io.StringIO()
    try:
        with redirect_stderr(err):
            parsed = build_parser().parse_args(args)
        make_config(parsed)
    except SystemExit:
        problems.append(f"vaccel-agent rejects {args}: {err.getvalue().strip()}")
    except Exception as exc:  # a VaccelError naming the bad setting
        problems.append(f"vaccel-agent rejects {args}: {exc}")
    return problems


def port_problems(objs: list[dict[str, Any]]) -> list[str]:
    """Ports in args, containerPorts, annotations, the Service, the ServiceMonitor and the
    guest's VACCEL_RPC_ADDRESS agree."""
    problems = []
    ds = one(objs, "DaemonSet", "vaccel-agent")
    container = agent_container(objs)
    args = container["args"]
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    (tcp,) = addresses(args, "tcp")
    (metrics,) = flag_values(args, "--metrics-address")
    if ports.get("grpc-tls") != host_port(tcp)[1]:
        problems.append(f"containerPort grpc-tls {ports.get('grpc-tls')} != {tcp}")
    if ports.get("metrics") != host_port(metrics)[1]:
        problems.append(f"containerPort metrics {ports.get('metrics')} != {metrics}")
    notes = ds["spec"]["template"]["metadata"].get("annotations", {})
    if notes.get("prometheus.io/port") != str(host_port(metrics)[1]):
        problems.append(f"annotation prometheus.io/port {notes.get('prometheus.io/port')}")
    if notes.get("prometheus.io/scrape") != "true" or notes.get("prometheus.io/path") != "/metrics":
        problems.append(f"prometheus.io annotations {notes}")
    service = one(objs, "Service", "vaccel-agent")
    if service["spec"].get("clusterIP") != "None":
        problems.append("the Service is not headless (clusterIP: None)")
    labels = ds["spec"]["template"]["metadata"]["labels"]
    if not service["spec"]["selector"].items() <= labels.items():
        problems.append(f"Service selector {service['spec']['selector']} misses the agent pods")
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    for name, container_port in ports.items():
        sp = service_ports.get(name)
        target = sp and sp.get("targetPort")
        if sp is None or ports.get(target, target) != container_port:
            problems.append(f"Service port {name} does not reach containerPort {container_port}")
    for monitor in (o for o in objs if o["kind"] == "ServiceMonitor"):
        if (
            not monitor["spec"]["selector"]["matchLabels"].items()
            <= service["metadata"]["labels"].items()
        ):
            problems.append("ServiceMonitor selector misses the Service")
        for endpoint in monitor["spec"]["endpoints"]:
            if endpoint["port"] != "metrics" or endpoint.get("path", "/metrics") != "/metrics":
                problems.append(f"ServiceMonitor endpoint {endpoint} is not the metrics port")
    for pod in (o for o in objs if o["kind"] == "Pod"):
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env", [])}
        host, port = host_port(env["VACCEL_RPC_ADDRESS"])
        name, ns = service["metadata"]["name"], service["metadata"]["namespace"]
        if host not in {f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"}:
            problems.append(f"guest dials {host}, not the Service {name}.{ns}.svc")
        if port != service_ports["grpc-tls"]["port"]:
            problems.append(f"guest dials port {port}, the Service serves grpc-tls elsewhere")
        if env.get("VACCEL_RPC_TLS_SERVER_NAME") not in {f"{name}.{ns}.svc", None}:
            problems.append("guest checks a certificate name that is not the Service's")
    return problems


def path_problems(objs: list[dict[str, Any]]) -> list[str]:
    """The socket folder is the node's /run/vaccel at the same path, as the tmpfiles entry, the
    probes and the docs say; files the agent reads come from Secrets; what it writes is a
    volume (read-only root filesystem); the blob store fits its volume."""
    from vaccel_agent.limits import parse_size

    problems = []
    container = agent_container(objs)
    args = container["args"]
    (unix,) = addresses(args, "unix")
    socket = unix.split("://", 1)[1]
    folder = os.path.dirname(socket)
    mount_path, volume = volume_at(objs, container, socket)
    if mount_path != folder or "hostPath" not in (volume or {}):
        problems.append(f"socket {socket}: its folder is not a hostPath mount")
    elif volume["hostPath"]["path"] != folder:
        problems.append(f"hostPath {volume['hostPath']['path']} mounted at {folder}")
    tmpfiles = (KUBE / "node" / "vaccel-tmpfiles.conf").read_text()
    if not re.search(rf"^d {re.escape(folder)} 0750 65532 65532 ", tmpfiles, re.M):
        problems.append(f"node/vaccel-tmpfiles.conf does not create {folder} for uid 65532")
    security = pod_spec(one(objs, "DaemonSet", "vaccel-agent"))["securityContext"]  # type: ignore[index]
    if (security.get("runAsUser"), security.get("runAsGroup")) != (65532, 65532):
        problems.append(
            "the agent's user is not the one node/vaccel-tmpfiles.conf gives the folder"
        )
    if not any(unix in part for part in health_command(container)):
        problems.append(f"the probes do not check {unix}")
    if OPERATIONS_DOC.exists() and unix not in OPERATIONS_DOC.read_text():
        problems.append(f"docs/operations.md does not name {unix}")
    for flag in SECRET_FLAGS:
        for path in flag_values(args, flag):
            _, volume = volume_at(objs, container, path)
            if "secret" not in (volume or {}):
                problems.append(f"{flag} {path} is not in a mounted Secret")
    (blob_dir,) = flag_values(args, "--blob-dir")
    _, volume = volume_at(objs, container, blob_dir)
    quota = parse_size(flag_values(args, "--blob-quota")[0], "--blob-quota")
    limit = (volume or {}).get("emptyDir", {}).get("sizeLimit", "0")
    if "emptyDir" not in (volume or {}) or parse_size(limit.replace("i", ""), "sizeLimit") < quota:
        problems.append(f"--blob-dir {blob_dir}: not an emptyDir of at least --blob-quota")
    if not container["securityContext"].get("readOnlyRootFilesystem"):
        problems.append("the root filesystem is writable")
    if volume_at(objs, container, "/tmp")[0] != "/tmp":
        problems.append("/tmp is not a volume (read-only root filesystem)")
    env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
    for name in ("CUDA_CACHE_PATH", "VACCEL_IMAGENET_NETWORKS"):
        if name in env and volume_at(objs, container, env[name])[0] is None:
            problems.append(f"{name}={env[name]} is not on a volume")
    for pod in (o for o in objs if o["kind"] == "Pod"):
        guest = pod["spec"]["containers"][0]
        for item in guest.get("env", []):
            if item["name"].endswith(("_CA", "_CERT", "_KEY", "_FILE")):
                _, volume = volume_at(objs, guest, item["value"])
                if "secret" not in (volume or {}):
                    problems.append(f"guest {item['name']}={item['value']} is not in a Secret")
    return problems


def image_problems(objs: list[dict[str, Any]]) -> list[str]:
    """Images are those the Containerfiles build, tagged with the project's version."""
    problems = []
    built = containerfile_images()
    for obj in objs:
        for container in (pod_spec(obj) or {}).get("containers", []):
            name, tag = split_image(container["image"])
            if name.rsplit("/", 1)[-1] not in built:
                problems.append(f"image {name} is built by no Containerfile ({sorted(built)})")
            if tag != project_version():
                problems.append(f"image {container['image']}: tag is not {project_version()}")
    return problems


def runtime_problems(objs: list[dict[str, Any]]) -> list[str]:
    """The RuntimeClass names a containerd runtime of deploy/kata, schedules where the agents
    run, and is the one the guest asks for."""
    with (ROOT / "deploy" / "kata" / "containerd-runtimes.toml").open("rb") as fh:
        runtimes = tomllib.load(fh)["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]
    problems = []
    kata = one(objs, "RuntimeClass", "kata-vaccel")
    if kata["handler"] not in runtimes["runtimes"]:
        problems.append(f"handler {kata['handler']} is no containerd runtime of deploy/kata")
    elif "integrated" in kata["handler"]:
        problems.append("integrated mode embeds upstream's agent, which pyvaccel guests cannot use")
    spec = pod_spec(one(objs, "DaemonSet", "vaccel-agent"))
    assert spec is not None
    selector = kata["scheduling"]["nodeSelector"]
    if not selector.items() <= spec["nodeSelector"].items():
        problems.append(f"RuntimeClass nodes {selector} have no agent ({spec['nodeSelector']})")
    if kata["scheduling"].get("tolerations") != spec.get("tolerations"):
        problems.append("the agent does not tolerate what the RuntimeClass tolerates")
    if not kata.get("overhead", {}).get("podFixed"):
        problems.append("the RuntimeClass declares no overhead")
    for pod in (o for o in objs if o["kind"] == "Pod"):
        if pod["spec"].get("runtimeClassName") != kata["metadata"]["name"]:
            problems.append("the example guest does not run in the Kata vAccel runtime")
    return problems


def security_problems(objs: list[dict[str, Any]]) -> list[str]:
    """Pod Security "restricted" for every pod, but for the agent's hostPath volumes."""
    problems = []
    for obj in objs:
        spec = pod_spec(obj)
        if spec is None:
            continue
        name = obj["metadata"]["name"]
        pod = spec.get("securityContext", {})
        if not pod.get("runAsNonRoot") or not pod.get("runAsUser"):
            problems.append(f"{name}: may run as root")
        if pod.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: no RuntimeDefault seccomp profile")
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(key):
                problems.append(f"{name}: {key}")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{name}: mounts a service account token it never uses")
        for container in spec["containers"]:
            sc = container.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False or sc.get("privileged"):
                problems.append(f"{name}: may gain privileges")
            if sc.get("capabilities", {}).get("drop") != ["ALL"] or sc["capabilities"].get("add"):
                problems.append(f"{name}: keeps capabilities")
            if not sc.get("readOnlyRootFilesystem"):
                problems.append(f"{name}: writable root filesystem")
            if "memory" not in container.get("resources", {}).get("limits", {}):
                problems.append(f"{name}: no memory limit")
        allowed = {"/run/vaccel", "/usr/local/share/imagenet-models/networks"}
        for volume in spec.get("volumes", []):
            if "hostPath" in volume and volume["hostPath"]["path"] not in allowed:
                problems.append(f"{name}: hostPath {volume['hostPath']['path']}")
            if "hostPath" in volume and obj["kind"] == "Pod":
                problems.append(f"{name}: a guest with a hostPath")
    return problems


CHECKS: dict[str, Callable[[list[dict[str, Any]]], list[str]]] = {
    "agent_args": agent_args_problems,
    "ports": port_problems,
    "paths": path_problems,
    "images": image_problems,
    "runtime": runtime_problems,
    "security": security_problems,
}


# Rendering and schemas ------------------------------------------------------------------------
def test_every_kustomization_is_listed():
    found = {str(p.parent.relative_to(KUBE)) for p in KUBE.rglob("kustomization.yaml")}
    assert found == set(KUSTOMIZATIONS)
    listed = {str(p.relative_to(KUBE)) for p in KUBE.rglob("*.yaml")}
    used = {"/".join((k, "kustomization.yaml")) for k in KUSTOMIZATIONS}
    for k in KUSTOMIZATIONS:
        spec = yaml.safe_load((KUBE / k / "kustomization.yaml").read_text())
        used |= {str((KUBE / k / r).resolve().relative_to(KUBE)) for r in spec["resources"]}
        used |= {str((KUBE / k / p["path"]).relative_to(KUBE)) for p in spec.get("patches", [])}
    assert listed <= used, f"manifests no kustomization applies: {listed - used}"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_render_matches_kubectl_kustomize(rendered, name: str):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: render() is not compared with kustomize here")
    out = subprocess.run(
        [kubectl, "kustomize", str(KUBE / name)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert by_key([d for d in yaml.safe_load_all(out.stdout) if d]) == by_key(rendered[name])


def _validate(obj: dict[str, Any], version: str) -> None:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        raise AssertionError(
            f"{obj['kind']} {obj['metadata']['name']}: {where}: {exc.message}"
        ) from None


def k8s_versions() -> list[str]:
    from kubernetes_validate.utils import latest_version

    return [MIN_K8S, latest_version()]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_manifests_validate_against_kubernetes_schemas(rendered, name: str):
    pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate is in the test extra: pip install -e '.[test]'",
    )
    checked = 0
    for obj in rendered[name]:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        for version in k8s_versions():
            _validate(obj, version)
            checked += 1
    assert checked or all(o["kind"] in CUSTOM_KINDS for o in rendered[name])


def test_schema_validation_rejects_a_broken_manifest(rendered):
    """The validator really looks: a misspelt field and a wrong type fail."""
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the test extra")
    ds = copy.deepcopy(one(rendered["base"], "DaemonSet"))
    pod_spec(ds)["containers"][0]["securityContext"]["readOnlyRootFilesytem"] = True  # type: ignore[index]
    with pytest.raises(AssertionError, match="readOnlyRootFilesytem"):
        _validate(ds, MIN_K8S)
    ds = copy.deepcopy(one(rendered["base"], "DaemonSet"))
    pod_spec(ds)["containers"][0]["ports"][0]["containerPort"] = "65500"  # type: ignore[index]
    with pytest.raises(AssertionError, match="containerPort"):
        _validate(ds, MIN_K8S)


def test_custom_resources_are_checked(rendered):
    """The ServiceMonitor is a Prometheus Operator CRD, whose schema kubernetes-validate does
    not bundle (and which we do not vendor): it is checked field by field here instead, and
    port_problems checks that it selects the Service's metrics port."""
    (monitor,) = rendered["monitoring"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
        assert re.fullmatch(r"\d+(ms|s|m)", endpoint["interval"])
    assert (
        monitor["metadata"]["namespace"]
        == one(rendered["base"], "Service")["metadata"]["namespace"]
    )


# The checks on the real manifests, and on drifted ones -----------------------------------------
@pytest.mark.parametrize("check", sorted(CHECKS))
@pytest.mark.parametrize("base", ["overlays/orin", "base"])
def test_manifests_agree_with_the_agent(rendered, check: str, base: str):
    objs = rendered[base] + rendered["monitoring"] + rendered["examples/guest"]
    assert CHECKS[check](objs) == []


def test_orin_overlay_runs_the_orin_image_on_the_gpu(rendered):
    container = agent_container(rendered["overlays/orin"])
    assert split_image(container["image"])[0] == "pyvaccel-agent-orin"
    spec = pod_spec(one(rendered["overlays/orin"], "DaemonSet"))
    assert spec is not None
    assert (
        spec["runtimeClassName"]
        == one(rendered["overlays/orin"], "RuntimeClass", "nvidia")["metadata"]["name"]
    )
    assert spec["nodeSelector"]["kubernetes.io/arch"] == "arm64"
    env = {e["name"]: e["value"] for e in container["env"]}
    orin_image = (ROOT / "deploy" / "container" / "Containerfile.agent-orin").read_text()
    assert f"VACCEL_IMAGENET_NETWORKS={env['VACCEL_IMAGENET_NETWORKS']}" in orin_image
    assert "VACCEL_PLUGINS=jetson:noop" in orin_image  # the image picks the backends
    assert "--plugins" not in " ".join(container["args"])


def _set_arg(flag: str, value: str) -> Callable[[list[dict[str, Any]]], None]:
    def edit(objs: list[dict[str, Any]]) -> None:
        args = agent_container(objs)["args"]
        index = next(i for i, a in enumerate(args) if a.startswith(flag + "="))
        args[index] = f"{flag}={value}"

    return edit


def _edit(path: str, value: Any, kind: str = "DaemonSet") -> Callable[[list[dict[str, Any]]], None]:
    """Set ``path`` (dotted, list indexes as numbers) of the first object of ``kind``."""

    def edit(objs: list[dict[str, Any]]) -> None:
        node: Any = next(o for o in objs if o["kind"] == kind)
        *parents, last = path.split(".")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return edit


def _annotate(objs: list[dict[str, Any]], key: str, value: str) -> None:
    ds = next(o for o in objs if o["kind"] == "DaemonSet")
    ds["spec"]["template"]["metadata"]["annotations"][key] = value


POD = "spec.template.spec"
AGENT = f"{POD}.containers.0"
DRIFTS: dict[str, tuple[str, Callable[[list[dict[str, Any]]], None]]] = {
    "unknown flag": ("agent_args", lambda objs: agent_container(objs)["args"].append("--tls-ca=x")),
    "bad limit": ("agent_args", _set_arg("--blob-quota", "lots")),
    "not the agent": ("agent_args", _edit(f"{AGENT}.command", ["vaccel"])),
    "metrics annotation": ("ports", lambda objs: _annotate(objs, "prometheus.io/port", "9")),
    "metrics flag": ("ports", _set_arg("--metrics-address", "tcp://0.0.0.0:9465")),
    "tcp port": ("ports", _edit(f"{AGENT}.ports.0.containerPort", 65501)),
    "service port": ("ports", _edit("spec.ports.1.targetPort", 9465, "Service")),
    "service selector": ("ports", _edit("spec.selector", {"app": "x"}, "Service")),
    "monitor port": ("ports", _edit("spec.endpoints.0.port", "http", "ServiceMonitor")),
    "guest port": (
        "ports",
        _edit("spec.containers.0.env.1.value", "tcp://vaccel-agent.vaccel.svc:1", "Pod"),
    ),
    "guest host": ("ports", _edit("spec.containers.0.env.1.value", "tcp://agent:65500", "Pod")),
    "socket folder": ("paths", _set_arg("--server-address", "unix:///run/vaccel-agent.sock")),
    "host path": ("paths", _edit(f"{POD}.volumes.0.hostPath.path", "/var/run/vaccel")),
    "agent user": ("paths", _edit(f"{POD}.securityContext.runAsUser", 1000)),
    "token path": ("paths", _set_arg("--token-file", "/etc/vaccel/token")),
    "blob quota": ("paths", _set_arg("--blob-quota", "8G")),
    "writable root": ("paths", _edit(f"{AGENT}.securityContext.readOnlyRootFilesystem", False)),
    "guest secret": ("paths", _edit("spec.containers.0.env.5.value", "/token", "Pod")),
    "image name": ("images", _edit(f"{AGENT}.image", "pyvaccel/agent:0.1.0")),
    "image tag": ("images", _edit(f"{AGENT}.image", "pyvaccel-agent-orin:latest")),
    "runtime handler": ("runtime", _edit("handler", "kata-qemu", "RuntimeClass")),
    "runtime nodes": ("runtime", _edit(f"{POD}.nodeSelector", {"gpu": "yes"})),
    "guest runtime": ("runtime", _edit("spec.runtimeClassName", "kata", "Pod")),
    "capabilities": (
        "security",
        _edit(f"{AGENT}.securityContext.capabilities", {"add": ["NET_ADMIN"], "drop": ["ALL"]}),
    ),
    "root": ("security", _edit(f"{POD}.securityContext.runAsNonRoot", False)),
    "host network": ("security", _edit(f"{POD}.hostNetwork", True)),
    "guest escalation": (
        "security",
        _edit("spec.containers.0.securityContext.allowPrivilegeEscalation", True, "Pod"),
    ),
}


@pytest.mark.parametrize("drift", sorted(DRIFTS))
def test_checks_catch_drift(rendered, drift: str):
    check, edit = DRIFTS[drift]
    objs = copy.deepcopy(every(rendered))
    assert CHECKS[check](objs) == []
    edit(objs)
    assert CHECKS[check](objs), f"{check} did not notice: {drift}"


# The agent from the DaemonSet's own arguments --------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_pki(folder: Path, service_name: str) -> dict[str, Path]:
    """A CA, an agent certificate naming ``service_name`` and a guest certificate."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from tests.security.certs import _ca, _key, _leaf, _name, _write_cert, _write_key

    ca = _ca("vaccel CA")
    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    agent = (
        x509.CertificateBuilder()
        .subject_name(_name(service_name))
        .issuer_name(ca[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(service_name)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca[1], hashes.SHA256())
    )
    guest = _leaf("guest", ca, server=False)
    folder.mkdir(parents=True)
    return {
        "ca.crt": _write_cert(ca[0], folder / "ca.crt"),
        "tls.crt": _write_cert(agent, folder / "tls.crt"),
        "tls.key": _write_key(key, folder / "tls.key"),
        "guest.crt": _write_cert(guest[0], folder / "guest.crt"),
        "guest.key": _write_key(guest[1], folder / "guest.key"),
    }


@pytest.fixture
def node() -> Iterator[Path]:
    """A folder standing in for the node's and the container's file system."""
    pytest.importorskip("grpc", reason="the agent needs the remote extra")
    pytest.importorskip("prometheus_client", reason="--metrics-address needs the remote extra")
    pytest.importorskip("cryptography", reason="test certificates need cryptography (test extra)")
    root = Path(tempfile.mkdtemp(prefix="vk-"))  # short: unix socket paths are limited
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _relocate(text: str, root: Path, mount_paths: list[str]) -> str:
    """``text`` with every path under one of ``mount_paths`` moved under ``root``."""
    paths = "|".join(re.escape(p) for p in sorted(mount_paths, key=len, reverse=True))
    return re.sub(rf"(?<![\w.-])({paths})(?=/|$|\W)", lambda m: f"{root}{m[1]}", text)


def test_agent_starts_from_the_daemonset_arguments(rendered, node: Path):
    """The base DaemonSet's exact arguments (paths under ``node``, ports free), its Secrets'
    files as docs/operations.md creates them: the agent listens, the probe passes, metrics are
    served on the annotated path, and the example guest's exact command and environment
    classify through the tcp listener with mutual TLS and the token; once the agent is gone
    the probe fails with one line."""
    from tests.remote.conftest import agent_command, clean_env, start_agent

    objs = rendered["base"]
    container = agent_container(objs)
    mount_paths = list(mounts(objs, container))
    service = one(objs, "Service")["metadata"]
    service_name = f"{service['name']}.{service['namespace']}.svc"
    pki = _write_pki(node / "pki", service_name)
    # The Secrets' files, as docs/operations.md creates them.
    (node / "etc/vaccel/tls").mkdir(parents=True)
    for key in ("ca.crt", "tls.crt", "tls.key"):
        shutil.copy(pki[key], node / "etc/vaccel/tls" / key)
    (node / "etc/vaccel/tokens").mkdir(parents=True)
    (node / "etc/vaccel/tokens/token").write_text("a-token-for-every-guest-0123456789\n")
    (node / "etc/vaccel/tokens/admin-token").write_text("the-operators-token-0123456789\n")
    (node / "run/vaccel").mkdir(parents=True, mode=0o750)
    (node / "var/lib/vaccel").mkdir(parents=True)

    metrics_port = _free_port()
    args = []
    for arg in container["args"]:
        arg = _relocate(arg, node, mount_paths)
        arg = arg.replace(":65500", ":0").replace(":9464", f":{metrics_port}")
        args.append(arg)
    agent = start_agent([], args=args, command=agent_command(), env={"VACCEL_PLUGINS": "noop"})
    try:
        agent.wait_for_log(r"Listening on 'tcp://", timeout=30)
        (tcp_port,) = [
            int(m[1]) for m in re.finditer(r"Listening on 'tcp://[^']*:(\d+)'", agent.log)
        ]
        probe = [sys.executable] + [
            _relocate(p, node, mount_paths) for p in health_command(container)[1:]
        ]
        out = subprocess.run(probe, capture_output=True, text=True, timeout=30, env=clean_env())
        assert out.returncode == 0, out.stderr

        annotations = one(objs, "DaemonSet")["spec"]["template"]["metadata"]["annotations"]
        url = f"http://127.0.0.1:{metrics_port}{annotations['prometheus.io/path']}"
        with urllib.request.urlopen(url, timeout=10) as reply:
            assert "vaccel_agent_build_info" in reply.read().decode()

        guest_pod = one(rendered["examples/guest"], "Pod")["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in guest_pod["env"]}
        # No cluster DNS here: dial the agent, checking its certificate against the name the
        # guest dials (what the rpc backend does for a name that resolves to the agents).
        service_host, _ = host_port(env["VACCEL_RPC_ADDRESS"])
        env["VACCEL_RPC_ADDRESS"] = f"tcp://127.0.0.1:{tcp_port}"
        env["VACCEL_RPC_TLS_SERVER_NAME"] = service_host
        files = {
            "/etc/vaccel/tls/ca.crt": pki["ca.crt"],
            "/etc/vaccel/tls/tls.crt": pki["guest.crt"],
            "/etc/vaccel/tls/tls.key": pki["guest.key"],
            "/etc/vaccel/tokens/token": node / "etc/vaccel/tokens/token",
        }
        for name, value in env.items():
            env[name] = str(files.get(value, value))
        command = guest_pod["command"]
        assert command[0] == "classify"
        photo = ROOT / "examples" / "photos" / Path(command[1]).name
        out = subprocess.run(
            [sys.executable, "-m", "vaccel_core.examples.classify", str(photo), *command[2:]],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env(env),
        )
        assert out.returncode == 0, out.stderr
        assert "classification tags: This is a dummy classification tag!" in out.stdout

        # docs/operations.md's readiness check: vaccel status with the operator's token.
        (unix,) = addresses(args, "unix")
        admin = flag_values(args, "--admin-token-file")[0]
        status = ["status", unix, "--admin-token-file", admin, "--once", "--json"]
        out = subprocess.run(
            [sys.executable, "-m", "vaccel_core.cli", *status],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env(),
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)
    finally:
        stopped = agent.stop(signal.SIGTERM)
    assert stopped == 0, agent.log
    out = subprocess.run(probe, capture_output=True, text=True, timeout=30, env=clean_env())
    assert out.returncode != 0
    assert out.stderr.strip().startswith("vaccel-agent health: "), out.stderr


def test_guest_photo_is_in_the_guest_image(rendered):
    """The example Pod classifies a photo that Containerfile.guest copies into the image."""
    command = one(rendered["examples/guest"], "Pod")["spec"]["containers"][0]["command"]
    text = (ROOT / "deploy" / "container" / "Containerfile.guest").read_text()
    copy_line = re.search(r"^COPY examples/photos (\S+)$", text, re.M)
    assert copy_line and command[1] == f"{copy_line[1]}/{Path(command[1]).name}"
    assert (ROOT / "examples" / "photos" / Path(command[1]).name).is_file()


# docs/operations.md says what the files say -----------------------------------------------------
def _doc() -> str:
    return OPERATIONS_DOC.read_text()


def test_operations_doc_names_only_files_that_exist():
    doc = _doc()
    paths = {p.rstrip(".,:;") for p in re.findall(r"(?<![\w/])deploy/[\w./-]+", doc)}
    assert paths
    for path in paths:
        assert (ROOT / path).exists(), f"docs/operations.md names {path}, which does not exist"
    applied = re.findall(r"kubectl apply -k ([^\s`]+)", doc)
    assert {a.removeprefix("deploy/kubernetes/") for a in applied} == set(KUSTOMIZATIONS)
    for path in re.findall(r"kubectl apply -f ([^\s`]+)", doc):
        assert (ROOT / path).is_file(), path
    for target, anchor in re.findall(r"\]\(([\w.-]+\.md)(?:#([\w-]+))?\)", doc):
        linked = OPERATIONS_DOC.parent / target
        assert linked.is_file(), f"docs/operations.md links to {target}, which does not exist"
        headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.M)
        slugs = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
        assert not anchor or anchor in slugs, f"{target} has no heading for #{anchor}"


def test_operations_doc_creates_the_secrets_the_manifests_read(rendered):
    doc = re.sub(r"\\\n\s*", "", _doc())  # join continued command lines
    for obj in every(rendered):
        spec = pod_spec(obj)
        if spec is None:
            continue
        namespace = obj["metadata"]["namespace"]
        for container in spec["containers"]:
            values = container.get("args", []) + [
                e.get("value", "") for e in container.get("env", [])
            ]
            for volume_mount in container.get("volumeMounts", []):
                volume = next(v for v in spec["volumes"] if v["name"] == volume_mount["name"])
                if "secret" not in volume:
                    continue
                name = volume["secret"]["secretName"]
                command = re.search(
                    rf"kubectl -n {namespace} create secret generic {name} (.*)", doc
                )
                assert command, f"docs/operations.md does not create Secret {namespace}/{name}"
                keys = set(re.findall(r"--from-file=([\w.-]+)=", command[1]))
                prefix = volume_mount["mountPath"].rstrip("/") + "/"
                used = {
                    m[len(prefix) :]
                    for v in values
                    for m in re.findall(rf"{re.escape(prefix)}[\w.-]+", v)
                }
                assert used and used <= keys, f"Secret {name}: files {used}, doc creates {keys}"


def test_operations_doc_quotes_the_manifests(rendered):
    doc = _doc()
    container = agent_container(rendered["base"])
    args = dict(a.split("=", 1) for a in container["args"] if a.startswith("--") and "=" in a)
    for flag, value in re.findall(r"(--[a-z-]+)=([^\s`),]+)", doc):
        if flag in args and flag != "--server-address":
            assert value == args[flag], f"docs/operations.md: {flag}={value}, manifest {args[flag]}"
    for probe, period, after in re.findall(r"^\| (\w+) \| (\d+) s \| ([^|]+) \|", doc, re.M):
        spec = container[f"{probe}Probe"]
        assert int(period) == spec["periodSeconds"], probe
        total = spec["periodSeconds"] * spec["failureThreshold"]
        assert after.strip() in {f"{total} s", f"{spec['failureThreshold']} failures"} or (
            after.startswith(f"{spec['failureThreshold']} failures ({total // 60} min)")
        ), f"{probe}: {after}"
    kata = one(rendered["base"], "RuntimeClass", "kata-vaccel")["overhead"]["podFixed"]
    assert f"overhead of {kata['cpu']} CPU and {kata['memory']}" in doc
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert (
        f"requests {requests['cpu']} CPU and {requests['memory']} and may use {limits['memory']}"
        in doc
    )
    for image in ("pyvaccel-agent", "pyvaccel-agent-orin", "pyvaccel-guest"):
        build = re.search(rf"docker build -f (\S+) -t \S+/{image}:(\S+) \.", doc)
        assert build and build[2] == project_version(), image
        assert f"-t {image} ." in (ROOT / build[1]).read_text(), f"{build[1]} builds {image}?"
