"""The deployment files in ``deploy/`` checked without a container engine or a cluster: the Kubernetes manifests
against the Kubernetes API schemas (``kubernetes-validate``, offline), the KubeRay resources and the compose file by
structure, and across all of them (Dockerfile, compose, manifests, systemd unit) every ``alutwin`` command line
against the real CLI parser, every settings file they mount against its config class, every port against the
settings' ports. Also ``alutwin health``, the probe the health checks run."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate  # the `deploy` extra (pip install kubernetes-validate==1.37.0)
import pytest
import yaml
from packaging.requirements import Requirement

import alutwin
import alutwin.cli
from alutwin.health import check
from controller.config import ControllerConfig
from plant.config import PlantConfig
from twin.config import TwinConfig
from twin.historian import BridgeConfig

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.37.0"
CACHE = "/var/cache/alutwin"

CONFIG_FLAGS = {
    ("plant", "serve"): ("config", PlantConfig),
    ("twin", "serve"): ("config", TwinConfig),
    ("twin", "ingest"): ("config", BridgeConfig),
    ("control",): ("mpc_config", ControllerConfig),
}
"""The commands that read a settings file: the flag's dest and the config class."""


# ---------------------------------------------------------------------------------------------------------------
# reading the files


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    """``(file name, document)`` of every resource the kustomization lists, in order."""
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for name in kust["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc is not None:
                docs.append((name, doc))
    return docs


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in _manifests() if d["kind"] == kind}


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _dockerfile() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of the Dockerfile, continuation lines joined, comments dropped."""
    lines, out, pending = (DEPLOY / "Dockerfile").read_text().splitlines(), [], ""
    for line in lines:
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        word, _, rest = text.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _systemd(path: Path) -> tuple[dict[str, dict[str, list[str]]], str]:
    """The unit's sections as ``{section: {key: [values]}}`` (keys may repeat) and its comment text."""
    sections: dict[str, dict[str, list[str]]] = {}
    comments, current = [], None
    for line in path.read_text().splitlines():
        s = line.strip()
        if s.startswith(("#", ";")):
            comments.append(s.lstrip("#; "))
        elif s.startswith("["):
            current = sections.setdefault(s.strip("[]"), {})
        elif s:
            assert current is not None, f"{path.name}: {s!r} outside a section"
            key, sep, value = s.partition("=")
            assert sep, f"{path.name}: not key=value: {s!r}"
            current.setdefault(key.strip(), []).append(value.strip())
    return sections, "\n".join(comments)


def _port(address: str) -> tuple[str, int]:
    host, _, port = address.removeprefix("dns:///").rpartition(":")
    return host, int(port)


# ---------------------------------------------------------------------------------------------------------------
# every alutwin command line and the settings files its flags name


def _pod_commands(source: str, spec: dict[str, Any], configmaps: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for c in spec["containers"]:
        if not c["image"].startswith("alutwin"):
            continue
        files = {}
        for m in c.get("volumeMounts", []):
            cm = volumes[m["name"]].get("configMap")
            if cm is not None:
                data = configmaps[cm["name"]]["data"]
                items = cm.get("items") or [{"key": k, "path": k} for k in data]
                files.update({f"{m['mountPath']}/{i['path']}": data[i["key"]] for i in items})
        if "args" in c:
            found.append({"source": f"{source} {c['name']}", "argv": list(c["args"]), "files": files})
    return found


def _commands() -> list[dict[str, Any]]:
    """Every ``alutwin`` command line in deploy/: ``source``, ``argv`` (after ``alutwin``), ``files`` (path in the
    container or on the host -> the text of the settings file that will be there)."""
    cmds: list[dict[str, Any]] = []
    # Dockerfile: ENTRYPOINT ["alutwin"] + CMD, the HEALTHCHECK, and the settings files COPY puts into the image
    instr = _dockerfile()
    image_files = {}
    for word, rest in instr:
        if word == "COPY" and rest.endswith("/etc/alutwin/"):
            for src in rest.split()[:-1]:
                image_files[f"/etc/alutwin/{Path(src).name}"] = (ROOT / src).read_text()
    entry = [json.loads(r) for w, r in instr if w == "ENTRYPOINT"]
    assert entry == [["alutwin"]]
    cmds.append({"source": "Dockerfile CMD", "argv": json.loads(dict(instr)["CMD"]), "files": image_files})
    health = dict(instr)["HEALTHCHECK"]
    argv = json.loads(health[health.index("CMD ") + 4 :])
    assert argv[0] == "alutwin"
    cmds.append({"source": "Dockerfile HEALTHCHECK", "argv": argv[1:], "files": image_files})
    # compose: each service's command and health check, its mounted files over the image's
    for name, svc in _compose()["services"].items():
        files = dict(image_files)
        for vol in svc.get("volumes", []):
            src, dst = vol.split(":")[:2]
            if src.startswith("."):
                files[dst] = (DEPLOY / src).read_text()
        cmds.append({"source": f"compose {name}", "argv": list(svc["command"]), "files": files})
        test = svc.get("healthcheck", {}).get("test")
        if test:
            assert test[:2] == ["CMD", "alutwin"], (name, test)
            cmds.append({"source": f"compose {name} healthcheck", "argv": test[2:], "files": files})
    # Kubernetes: containers of our image, and the RayJob's entry point
    configmaps = _by_kind("ConfigMap")
    for _, doc in _manifests():
        if doc["kind"] in ("Deployment", "StatefulSet"):
            cmds += _pod_commands(f"k8s {doc['metadata']['name']}", doc["spec"]["template"]["spec"], configmaps)
        if doc["kind"] == "RayJob":
            argv = shlex.split(doc["spec"]["entrypoint"])
            assert argv[0] == "alutwin"
            cmds.append({"source": f"k8s RayJob {doc['metadata']['name']}", "argv": argv[1:], "files": {}})
    # systemd: ExecStart, with the files its install notes put into /etc/alutwin
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        sections, notes = _systemd(unit)
        files = {dst: (ROOT / src).read_text() for src, dst in re.findall(r"install .*?(deploy/\S+) (/\S+)", notes)}
        (exec_start,) = sections["Service"]["ExecStart"]
        argv = shlex.split(exec_start)
        assert Path(argv[0]).name == "alutwin" and Path(argv[0]).is_absolute(), exec_start
        cmds.append({"source": f"systemd {unit.name}", "argv": argv[1:], "files": files})
    return cmds


def _parse(argv: list[str]) -> tuple[Any, str]:
    """The CLI's namespace for ``argv`` (None when it does not parse) and argparse's message."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            return alutwin.cli.build_parser().parse_args(argv), ""
        except SystemExit:
            return None, err.getvalue().strip().splitlines()[-1]


def _command_path(args: Any) -> tuple[str, ...]:
    path = [args.command]
    for key in ("plant_command", "twin_command", "fleet_command"):
        if getattr(args, key, None):
            path.append(getattr(args, key))
    return tuple(path)


@pytest.fixture(scope="module")
def parsed() -> list[dict[str, Any]]:
    """Every command line with its parsed arguments (``args`` None when it does not parse, ``error`` why)."""
    out = []
    for cmd in _commands():
        args, error = _parse(cmd["argv"])
        out.append({**cmd, "args": args, "error": error})
    return out


def _settings(cmd: dict[str, Any], tmp_path: Path) -> Any:
    """The validated settings of ``cmd`` (None for a command that reads none)."""
    path = _command_path(cmd["args"])
    if path not in CONFIG_FLAGS:
        return None
    dest, cls = CONFIG_FLAGS[path]
    name = getattr(cmd["args"], dest)
    assert name is not None, f"{cmd['source']}: {' '.join(cmd['argv'])} names no settings file"
    assert str(name) in cmd["files"], f"{cmd['source']}: {name} is neither mounted from deploy/ nor in the image"
    return cls.from_mapping(
        yaml.safe_load(cmd["files"][str(name)]), source=f"{cmd['source']}:{name}", base_dir=tmp_path
    )


def test_every_command_line_parses_with_the_real_cli(parsed):
    assert len(parsed) >= 12  # Dockerfile 2, compose 7, k8s 3, systemd 1: a file that went missing shows here
    failing = [f"{c['source']}: alutwin {shlex.join(c['argv'])}: {c['error']}" for c in parsed if c["args"] is None]
    assert not failing, "command lines the CLI does not accept:\n" + "\n".join(failing)


def test_every_mounted_settings_file_validates_with_its_config_class(parsed, tmp_path):
    checked = set()
    for cmd in parsed:
        if cmd["args"] is not None and (cfg := _settings(cmd, tmp_path)) is not None:
            checked.add(type(cfg).__name__)
    assert checked == {"PlantConfig", "TwinConfig", "BridgeConfig", "ControllerConfig"}


def test_servers_in_containers_bind_every_interface_and_require_their_token(parsed, tmp_path):
    for cmd in parsed:
        if cmd["args"] is None or (cfg := _settings(cmd, tmp_path)) is None or not hasattr(cfg, "host"):
            continue
        assert cfg.host == "0.0.0.0" and not cfg.loopback, cmd["source"]
        assert cfg.token is None and cfg.token_env in ("ALUTWIN_PLANT_TOKEN", "ALUTWIN_TWIN_TOKEN"), cmd["source"]


def _server_ports(parsed, tmp_path) -> dict[str, dict[str, Any]]:
    """Per deployment (Dockerfile, compose, k8s, systemd): the settings of its plant and twin servers."""
    out: dict[str, dict[str, Any]] = {}
    for cmd in parsed:
        if cmd["args"] is not None and _command_path(cmd["args"]) in (("plant", "serve"), ("twin", "serve")):
            out.setdefault(cmd["source"].split()[0], {})[cmd["args"].command] = _settings(cmd, tmp_path)
    return out


def test_health_checks_and_clients_name_the_servers_ports(parsed, tmp_path):
    servers = _server_ports(parsed, tmp_path)
    assert set(servers["compose"]) == set(servers["k8s"]) == {"plant", "twin"} and set(servers["Dockerfile"]) == {
        "twin"
    }
    hosts = {
        "compose": {"plant": "plant", "twin": "twin"},
        "k8s": {"alutwin-plant": "plant", "alutwin-twin": "twin"},
        "Dockerfile": {},
    }
    seen = 0
    for cmd in parsed:
        args, where = cmd["args"], cmd["source"].split()[0]
        if args is None or where not in hosts:
            continue
        if args.command == "health":  # a container checks its own server on loopback
            own = "twin" if where == "Dockerfile" else cmd["source"].split()[1]
            assert _port(args.address) == ("127.0.0.1", servers[where][own].port), cmd["source"]
            seen += 1
        for flag in ("address", "twin", "plant"):
            value = getattr(args, flag, None)
            if args.command != "health" and isinstance(value, str) and ":" in value:
                host, port = _port(value)
                assert port == servers[where][hosts[where][host]].port, (cmd["source"], flag, value)
                seen += 1
    bridge = next(_settings(c, tmp_path) for c in parsed if c["source"] == "compose bridge")
    for address, server in ((bridge.plant, "plant"), (bridge.twin, "twin")):
        assert _port(address) == (server, servers["compose"][server].port)
    assert seen >= 8  # 3 health checks, 4 client addresses in compose, the RayJob's --twin


def test_dockerfile_pins_torch_like_the_makefile_and_runs_unprivileged(tmp_path):
    instr = _dockerfile()
    text = (DEPLOY / "Dockerfile").read_text()
    make_pins = re.findall(r"torch==([\w.+]+)", (ROOT / "Makefile").read_text())
    docker_pins = re.findall(r"torch==([\w.+]+)", " ".join(r for w, r in instr if w == "RUN"))
    assert len(set(make_pins)) == 1 and docker_pins == make_pins[:1], (make_pins, docker_pins)
    assert "--index-url https://download.pytorch.org/whl/cpu" in text
    runs = [r for w, r in instr if w == "RUN"]
    torch_at = next(i for i, r in enumerate(runs) if "torch==" in r)
    project_at = next(i for i, r in enumerate(runs) if "/wheels/alutwin-" in r)
    assert torch_at < project_at and "-e " not in runs[project_at]  # torch first; not editable
    assert any("gcc" in r for r in runs)
    assert {r.split(" AS ")[0] for w, r in instr if w == "FROM"} == {"${PYTHON_IMAGE}"}
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    (user,) = [r for w, r in instr if w == "USER"]
    assert int(user.split(":")[0]) >= 1000
    env = " ".join(r for w, r in instr if w == "ENV")
    assert f"ALUTWIN_CACHE={CACHE}" in env and f"chown -R 10001:10001 /var/lib/alutwin {CACHE}" in text
    (volume,) = [json.loads(r) for w, r in instr if w == "VOLUME"]
    twin = TwinConfig.from_yaml(DEPLOY / "container" / "twin.yaml")
    assert any(twin.store.is_relative_to(v) for v in volume)
    exposed = {int(p) for w, r in instr if w == "EXPOSE" for p in r.split()}
    assert exposed == {twin.port, twin.metrics_port}


def test_dockerignore_keeps_the_context_to_what_the_image_copies():
    allowed = [ln[1:].rstrip("/") for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.startswith("!")]
    copied = [src for w, r in _dockerfile() if w == "COPY" and "--from" not in r for src in r.split()[:-1]]
    for src in copied:
        assert any(src == a or src.startswith(a + "/") for a in allowed), src
        assert (ROOT / src).exists(), src
    assert "*" in (ROOT / ".dockerignore").read_text().splitlines()  # everything else stays out


# ---------------------------------------------------------------------------------------------------------------
# compose


def test_compose_topology_healthchecks_and_start_order():
    doc = _compose()
    services = doc["services"]
    assert {"plant", "twin", "bridge", "worker", "controller"} <= set(services)
    version = alutwin.__version__
    healthy = set()
    for name, svc in services.items():
        assert svc["image"] == f"alutwin:{version}", name
        assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file(), name
        hc = svc["healthcheck"]
        if hc.get("disable"):
            assert set(hc) == {"disable"}, name
        else:
            assert hc["test"][:3] == ["CMD", "alutwin", "health"], name
            assert all(re.fullmatch(r"\d+s", str(hc[k])) for k in ("interval", "timeout", "start_period")), name
            healthy.add(name)
    assert healthy == {"plant", "twin"}
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, svc in services.items():
        for dep, spec in svc.get("depends_on", {}).items():
            assert dep in services and dep != name and spec["condition"] in conditions, (name, dep)
            if spec["condition"] == "service_healthy":
                assert dep in healthy, (name, dep)
            if spec["condition"] == "service_completed_successfully":
                assert services[dep]["restart"] == "no", (name, dep)
    for name in ("bridge", "worker", "controller"):
        assert {"plant", "twin"} & set(services[name]["depends_on"]), name
    for name in ("worker", "controller"):  # they need the registered model
        assert services[name]["depends_on"]["register"]["condition"] == "service_completed_successfully"
    for vol in (v.split(":")[0] for s in services.values() for v in s.get("volumes", [])):
        assert vol.startswith("./") or vol in doc["volumes"], vol


def test_compose_tokens_come_from_the_environment_and_are_required():
    for name, svc in _compose()["services"].items():
        for key, value in svc.get("environment", {}).items():
            if key.endswith("_TOKEN"):
                assert re.fullmatch(rf"\$\{{{key}:\?[^}}]+\}}", value), (name, key, value)
    twin_env = _compose()["services"]["twin"]["environment"]
    assert "ALUTWIN_TWIN_TOKEN" in twin_env and "ALUTWIN_PLANT_TOKEN" in _compose()["services"]["plant"]["environment"]


def test_compose_ports_and_grace_periods_match_the_servers_settings(parsed, tmp_path):
    servers = _server_ports(parsed, tmp_path)["compose"]
    for name, cfg in servers.items():
        svc = _compose()["services"][name]
        assert float(svc["stop_grace_period"].removesuffix("s")) > cfg.grace_s, name
        assert {int(p) for p in svc["expose"]} == {cfg.port, cfg.metrics_port}, name
        for published in svc.get("ports", []):
            assert published.startswith("127.0.0.1:") and int(published.rpartition(":")[2]) == cfg.port, name


# ---------------------------------------------------------------------------------------------------------------
# Kubernetes


def _no_network(*_args: Any, **_kwargs: Any) -> None:
    raise OSError("the schema check must work offline")


def test_kustomization_lists_every_manifest():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kust["kind"] == "Kustomization" and kust["namespace"] == "alutwin"
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kust["resources"]) == sorted(files)
    images = {i["name"] for i in kust["images"]}
    for _, doc in _manifests():
        for c in _containers(doc):
            name, _, tag = c["image"].partition(":")
            if name.startswith("alutwin"):
                assert name in images and tag == alutwin.__version__, c["image"]


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {})
    templates = [spec.get("template")]
    if doc["kind"] == "RayCluster":
        templates = [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]
    if doc["kind"] == "RayJob":
        templates = [spec.get("submitterPodTemplate")]
    return [c for t in templates if t for c in t["spec"]["containers"]]


def test_core_manifests_validate_against_the_kubernetes_schemas_offline(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    core = [(f, d) for f, d in _manifests() if not d["apiVersion"].startswith("ray.io/")]
    kinds = {d["kind"] for _, d in core}
    assert {"Deployment", "Service", "ConfigMap", "PersistentVolumeClaim", "StatefulSet"} <= kinds
    for name, doc in core:
        assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == "1.37", name
    # the validator does reject a mistake: a probe field misspelt, and a string for the replica count
    bad = copy.deepcopy(_by_kind("Deployment")["alutwin-twin"])
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"]["prot"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    bad = copy.deepcopy(_by_kind("Deployment")["alutwin-twin"])
    bad["spec"]["replicas"] = "2"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_kuberay_resources_by_structure_and_their_pod_templates_by_schema(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    (cluster,) = _by_kind("RayCluster").values()
    assert cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", spec["rayVersion"])
    templates = [spec["headGroupSpec"]["template"]]
    assert all(isinstance(v, str) for v in spec["headGroupSpec"]["rayStartParams"].values())
    assert spec["workerGroupSpecs"]
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
        templates.append(group["template"])
    for t in templates:  # a pod template as Kubernetes will see it
        doc = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "ray"}, "template": t}
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        assert t["spec"]["securityContext"]["runAsNonRoot"] is True
        assert all(c["resources"]["requests"] and c["resources"]["limits"] for c in t["spec"]["containers"])


def test_rayjob_runs_fleet_fit_on_the_ray_cluster_with_the_twins_token(parsed, monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    (job,) = _by_kind("RayJob").values()
    (cluster,) = _by_kind("RayCluster").values()
    assert job["apiVersion"] == "ray.io/v1" and "rayClusterSpec" not in job["spec"]
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert job["spec"]["submitterConfig"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] > 0
    template = job["spec"]["submitterPodTemplate"]
    doc = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "submitter"}, "template": template}
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert template["spec"]["securityContext"]["runAsNonRoot"] is True
    (cmd,) = [c for c in parsed if c["source"] == f"k8s RayJob {job['metadata']['name']}"]
    args = cmd["args"]
    assert args is not None and _command_path(args) == ("fleet", "fit"), cmd["error"]
    assert args.address == "auto" and not args.sequential and args.cells == 300
    assert _port(args.twin)[0] == "alutwin-twin"  # its port: test_health_checks_and_clients_name_the_servers_ports
    # the driver runs on the head: the token variable the command reads is set there, from the tokens secret
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in head["env"]}
    assert env[args.twin_token_env]["valueFrom"]["secretKeyRef"] == {"name": "alutwin-tokens", "key": "twin-token"}
    # each cell's task fits on a worker pod
    for group in cluster["spec"]["workerGroupSpecs"]:
        (worker,) = group["template"]["spec"]["containers"]
        assert args.threads <= float(worker["resources"]["limits"]["cpu"]), group["groupName"]


def test_kuberay_version_is_the_ray_the_fleet_extra_installs():
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(r"^fleet\s*=\s*(\[.*\])", text, flags=re.MULTILINE)
    assert match, "pyproject.toml has no `fleet` extra (pip install .[fleet]: Ray)"
    rays = [Requirement(r) for r in json.loads(match.group(1)) if Requirement(r).name == "ray"]
    assert len(rays) == 1, match.group(1)
    (cluster,) = _by_kind("RayCluster").values()
    assert rays[0].specifier.contains(cluster["spec"]["rayVersion"]), (str(rays[0]), cluster["spec"]["rayVersion"])


def test_twin_deployment_probes_storage_and_hardening(parsed, tmp_path):
    twin_cfg = _server_ports(parsed, tmp_path)["k8s"]["twin"]
    dep = _by_kind("Deployment")["alutwin-twin"]
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": twin_cfg.port, "metrics": twin_cfg.metrics_port}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["grpc"]["port"] == twin_cfg.port, probe
    assert pod["terminationGracePeriodSeconds"] > twin_cfg.grace_s
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] >= 1000
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
    assert "emptyDir" in mounts[CACHE] and "emptyDir" in mounts["/tmp"]  # writable where gcc and the cache write
    env = {e["name"]: e for e in c["env"]}
    assert env["ALUTWIN_CACHE"]["value"] == CACHE
    assert env[twin_cfg.token_env]["valueFrom"]["secretKeyRef"]["name"] == "alutwin-tokens"
    claim = mounts[str(twin_cfg.store)]["persistentVolumeClaim"]["claimName"]
    pvc = _by_kind("PersistentVolumeClaim")[claim]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # every replica mounts the one store
    svc = _by_kind("Service")["alutwin-twin"]
    assert svc["spec"]["clusterIP"] == "None"  # headless: clients balance over the replicas themselves
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    grpc_port = next(p for p in svc["spec"]["ports"] if p["name"] == "grpc")
    assert grpc_port["port"] == twin_cfg.port and grpc_port["targetPort"] == "grpc"


def test_plant_and_postgres_manifests(parsed, tmp_path):
    plant_cfg = _server_ports(parsed, tmp_path)["k8s"]["plant"]
    pod = _by_kind("Deployment")["alutwin-plant"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
        "grpc": plant_cfg.port,
        "metrics": plant_cfg.metrics_port,
    }
    assert all(c[p]["grpc"]["port"] == plant_cfg.port for p in ("startupProbe", "livenessProbe", "readinessProbe"))
    svc = _by_kind("Service")["alutwin-plant"]
    assert {p["port"] for p in svc["spec"]["ports"]} == {plant_cfg.port, plant_cfg.metrics_port}
    pg = _by_kind("StatefulSet")["alutwin-postgres"]
    assert pg["spec"]["serviceName"] in _by_kind("Service") and pg["spec"]["volumeClaimTemplates"]
    (db,) = pg["spec"]["template"]["spec"]["containers"]
    db_env = {e["name"]: e for e in db["env"]}
    historian = _server_ports(parsed, tmp_path)["k8s"]["twin"].historian
    url = urlsplit(historian.url)
    assert (url.hostname, url.port, url.username, url.path) == (
        pg["spec"]["serviceName"],
        db["ports"][0]["containerPort"],
        db_env["POSTGRES_USER"]["value"],
        "/" + db_env["POSTGRES_DB"]["value"],
    )
    twin_pod = _by_kind("Deployment")["alutwin-twin"]["spec"]["template"]["spec"]
    twin_env = {e["name"]: e for e in twin_pod["containers"][0]["env"]}
    assert twin_env[historian.password_env]["valueFrom"] == db_env["POSTGRES_PASSWORD"]["valueFrom"]
    # the image the twin runs installs the extra of its historian
    extras = next(r for w, r in _dockerfile() if w == "ARG" and r.startswith("EXTRAS="))
    assert "postgres" in extras.partition("=")[2].split(",")
    assert re.search(r"^postgres\s*=", (ROOT / "pyproject.toml").read_text(), flags=re.MULTILINE)


# ---------------------------------------------------------------------------------------------------------------
# systemd


def test_systemd_unit_is_hardened_and_outlasts_the_grace(parsed, tmp_path):
    sections, notes = _systemd(DEPLOY / "systemd" / "alutwin-plant.service")
    svc = {k: v[-1] for k, v in sections["Service"].items()}
    assert svc["User"] == "alutwin" and svc["Restart"] == "on-failure" and svc["KillSignal"] == "SIGTERM"
    assert svc["NoNewPrivileges"] == "yes" and svc["ProtectSystem"] == "strict"
    env = dict(e.split("=", 1) for e in sections["Service"]["Environment"])
    assert env["ALUTWIN_CACHE"] in svc["ReadWritePaths"].split()
    assert sections["Install"]["WantedBy"] == ["multi-user.target"]
    cmd = next(c for c in parsed if c["source"].startswith("systemd"))
    cfg = _settings(cmd, tmp_path)
    assert float(svc["TimeoutStopSec"].removesuffix("s")) > cfg.grace_s
    assert cfg.token_env and svc["EnvironmentFile"].lstrip("-") in notes  # the token's file is documented
    assert f"alutwin health 127.0.0.1:{cfg.port}" in notes


# ---------------------------------------------------------------------------------------------------------------
# alutwin health


def test_health_reports_serving_and_not_serving(twin_server):
    server, _ = twin_server()
    assert check(server.address) == "SERVING"
    assert check(server.address, "alutwin.v1.PredictionService") == "NOT_SERVING"  # an empty store serves no model
    assert check(server.address, "no.such.Service") == "SERVICE_UNKNOWN"
    server.begin_shutdown()
    assert check(server.address) == "NOT_SERVING"


def test_health_command_exit_codes(plant_server):
    server, _ = plant_server()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    runs = {}
    for name, argv in {"up": [server.address], "down": [closed, "--timeout", "0.5"]}.items():
        code = "import sys; from alutwin.cli import main; sys.exit(main(sys.argv[1:]))"
        runs[name] = subprocess.run(
            [sys.executable, "-c", code, "health", *argv, "--quiet"], capture_output=True, text=True, timeout=60
        )
    assert runs["up"].returncode == 0 and runs["up"].stdout.strip() == f"{server.address}: SERVING"
    assert runs["down"].returncode == 1 and runs["down"].stdout.startswith(f"{closed}: ")
    assert "SERVING" not in runs["down"].stdout.replace("NOT_SERVING", "")
    with pytest.raises(ValueError, match="timeout must be > 0 s, got 0"):
        check(server.address, timeout=0)


def test_deploy_settings_files_validate_against_the_json_schema_they_name():
    files = [*sorted((DEPLOY / "container").glob("*.yaml")), DEPLOY / "systemd" / "plant.yaml"]
    assert len(files) == 4
    for path in files:
        first = path.read_text().splitlines()[0]
        match = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", first)
        assert match, path
        schema = json.loads((path.parent / match.group(1)).read_text())
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):  # the schema does reject a wrong key
        jsonschema.validate(
            {"store": "/s", "port": 1, "prot": 2}, json.loads((DEPLOY / "schemas" / "twin.schema.json").read_text())
        )


def test_compose_worker_reads_the_twins_historian_on_the_shared_volume(parsed, tmp_path):
    twin = _server_ports(parsed, tmp_path)["compose"]["twin"]
    worker = next(c["args"] for c in parsed if c["source"] == "compose worker")
    assert Path(worker.historian) == twin.historian_path and worker.model == "cell-sparse"
    services = _compose()["services"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in services["worker"]["volumes"]}
    assert twin.historian_path.is_relative_to(mounts["data"])
    assert mounts["data"] in [v.split(":")[1] for v in services["twin"]["volumes"]]
