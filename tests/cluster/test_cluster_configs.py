"""The files in cluster/ are valid for the tools that read them, and agree with the recipe.

- Launcher YAMLs: Ray's own schema (ray/autoscaler/ray-schema.json, shipped in the installed ray)
  and Ray's own config preparation and validation (the first steps of `ray up`); mutated copies
  must be rejected. Plus the project's rules: token auth on, dashboard on 127.0.0.1, setup via
  cluster/install.sh, image pinned to the installed Ray, one GPU worker type enabled.
- runtime_env.yaml: only `ray.runtime_env.RuntimeEnv` fields, constructible, read by the same
  function `ray job submit --runtime-env` uses, and its excludes really keep local state out of
  the uploaded package.
- The KubeRay RayJob: a field model of the ray.io/v1 RayJob / RayCluster CRDs (below) rejects
  unknown and missing required keys; the entrypoint names recipes/comet_32k.py with flags the
  recipe accepts, and the GPU count matches --num-workers.

Offline and fast: no cluster is started, nothing is downloaded.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
RECIPE = "recipes/comet_32k.py"
LAUNCHERS = ["aws-gpu.yaml", "gcp-gpu.yaml"]
RAYJOB = "kuberay-rayjob-comet-32k.yaml"

# GPUs per instance for the AWS instance types the launcher YAML may use (AWS node types declare
# no resources; Ray reads them from EC2 at `ray up`). Extend when adding a type.
AWS_GPUS = {"g5.12xlarge": 4, "g5.48xlarge": 8, "g6.12xlarge": 4, "g6e.12xlarge": 4,
            "p4d.24xlarge": 8, "p4de.24xlarge": 8, "p5.48xlarge": 8}
# The documented submission: `--num-workers 8 --use-gpu`.
DOCUMENTED_GPU_WORKERS = 8


def load(name: str):
    with open(CLUSTER / name) as f:
        return yaml.safe_load(f)


# --------------------------------------------------------------------------- launcher YAMLs

@pytest.fixture(scope="module")
def ray_schema():
    path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    assert path.is_file(), f"ray {ray.__version__} ships no {path}"
    return json.loads(path.read_text())


def ray_util():
    try:
        from ray.autoscaler._private import util
    except ImportError as err:  # private module: moved or renamed in a later Ray
        pytest.skip(f"ray.autoscaler._private.util is not importable in ray {ray.__version__}: {err}")
    if not (hasattr(util, "prepare_config") and hasattr(util, "validate_config")):
        pytest.skip(f"ray {ray.__version__} has no prepare_config/validate_config in autoscaler._private.util")
    return util


def ray_up_checks(cfg: dict) -> dict:
    """What `ray up` does to a config before touching the cloud: fill in the provider's defaults,
    merge setup commands, check Docker settings, then validate against the schema and the
    cross-field rules (head type exists, sum of min_workers <= max_workers, ...)."""
    util = ray_util()
    prepared = util.prepare_config(copy.deepcopy(cfg))
    util.validate_config(prepared)
    return prepared


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_matches_ray_schema(name, ray_schema):
    errors = [e.message for e in jsonschema.validators.validator_for(ray_schema)(ray_schema).iter_errors(load(name))]
    assert errors == []


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_passes_ray_up_validation(name):
    prepared = ray_up_checks(load(name))
    assert prepared["head_node_type"] in prepared["available_node_types"]


def _first_worker(cfg):
    return next(v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"])


MUTATIONS = {
    "misspelled top-level key": lambda c: c.__setitem__("max_wrokers", 2),
    "unknown node-type key": lambda c: _first_worker(c).__setitem__("gpus", 4),
    "node type without node_config": lambda c: _first_worker(c).pop("node_config"),
    "max_workers of the wrong type": lambda c: c.__setitem__("max_workers", "two"),
    "unknown docker key": lambda c: c["docker"].__setitem__("imagee", "rayproject/ray"),
    "fractional resource": lambda c: _first_worker(c).__setitem__("resources", {"GPU": 0.5}),
    "setup_commands not a list": lambda c: c.__setitem__("setup_commands", "bash cluster/install.sh"),
}


@pytest.mark.parametrize("name", LAUNCHERS)
@pytest.mark.parametrize("what", sorted(MUTATIONS))
def test_mutated_launcher_is_rejected(name, what, ray_schema):
    cfg = load(name)
    MUTATIONS[what](cfg)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cfg, ray_schema)
    # `ray up` stops too: by a schema error, or (a string where a list belongs) already while
    # merging setup commands, before the schema check.
    with pytest.raises((jsonschema.ValidationError, TypeError)):
        ray_up_checks(cfg)


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_cross_field_rules_are_enforced(name):
    """Rules outside the JSON schema, checked by Ray's validate_config."""
    cfg = load(name)
    cfg["head_node_type"] = "no-such-type"
    with pytest.raises(ValueError, match="head_node_type"):
        ray_up_checks(cfg)
    cfg = load(name)
    _first_worker(cfg)["min_workers"] = cfg["max_workers"] + 1
    with pytest.raises(ValueError, match="max_workers"):
        ray_up_checks(cfg)


def _commands(cfg, key) -> str:
    return "\n".join(cfg.get(key) or [])


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_keeps_ray_private_and_authenticated(name):
    cfg = load(name)
    head, worker = _commands(cfg, "head_start_ray_commands"), _commands(cfg, "worker_start_ray_commands")
    assert "--head" in head and "--dashboard-host=127.0.0.1" in head, (
        "the head must bind the dashboard/job API to 127.0.0.1 (reach it with `ray dashboard`)")
    assert "0.0.0.0" not in head
    for text in (head, worker):
        starts = [line for line in text.split(";") if "ray start" in line]
        assert starts and all("RAY_AUTH_MODE=token" in s for s in starts), \
            f"every `ray start` must run with RAY_AUTH_MODE=token: {text!r}"
    remotes = {r.rstrip("/") for r in cfg["file_mounts"]}
    assert "~/.ray/auth_token" in remotes, "the token file must be mounted on every node"
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_installs_the_repository(name):
    cfg = load(name)
    repo_mounts = [remote for remote, local in cfg["file_mounts"].items() if local in (".", "./")]
    assert len(repo_mounts) == 1, "mount the repository ('.', relative to where `ray up` runs) once"
    setup = _commands(cfg, "setup_commands")
    assert f"cd {repo_mounts[0]} && bash cluster/install.sh" in setup
    assert (REPO / "cluster" / "install.sh").is_file()
    for pattern in (".git", "outputs", "mlruns", "mlflow.db"):
        assert pattern in cfg["rsync_exclude"], f"{pattern} should not be rsynced to the cluster"


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_image_matches_installed_ray(name):
    image = load(name)["docker"]["image"]
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3\d+-(gpu|cu\d+)", image)
    assert match, f"{image}: expected rayproject/ray:<ray version>-py3XX-gpu"
    assert match.group(1) == ray.__version__, (
        f"{name} runs Ray {match.group(1)} but this environment has ray {ray.__version__}; "
        "`ray up` and `ray job submit` need the same Ray on both sides: update the image tag")


def _gpu_types(cfg) -> dict[str, tuple[int, int]]:
    """node type -> (GPUs per node, max_workers) for every worker type."""
    out = {}
    for key, node in cfg["available_node_types"].items():
        if key == cfg["head_node_type"]:
            continue
        nc = node["node_config"]
        if cfg["provider"]["type"] == "aws":
            assert nc["InstanceType"] in AWS_GPUS, f"{key}: {nc['InstanceType']} is not a known GPU type"
            gpus = AWS_GPUS[nc["InstanceType"]]
        else:
            gpus = node["resources"].get("GPU", 0)
            assert gpus > 0, f"{key}: GCP node types must declare their GPUs in resources"
            assert {"onHostMaintenance": "TERMINATE"} in nc.get("scheduling", []), \
                f"{key}: GPU VMs need scheduling onHostMaintenance: TERMINATE"
            if nc["machineType"].startswith("n1-"):
                accel = nc.get("guestAccelerators") or []
                assert sum(a["acceleratorCount"] for a in accel) == gpus, \
                    f"{key}: N1 machines get GPUs only from guestAccelerators"
        out[key] = (gpus, node.get("max_workers", cfg["max_workers"]))
    return out


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_gpu_workers(name):
    cfg = load(name)
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head.get("max_workers", 0) == 0 and not head["resources"].get("GPU"), "the head is a CPU node"
    types = _gpu_types(cfg)
    enabled = {k: v for k, v in types.items() if v[1] > 0}
    assert len(enabled) == 1, f"exactly one GPU worker type may be enabled (no mixed GPUs in one job): {enabled}"
    (gpus, max_nodes), = enabled.values()
    assert gpus * min(max_nodes, cfg["max_workers"]) >= DOCUMENTED_GPU_WORKERS, \
        f"the enabled type cannot host --num-workers {DOCUMENTED_GPU_WORKERS} --use-gpu"


# --------------------------------------------------------------------------- runtime_env.yaml

def public_runtime_env_fields() -> set[str]:
    from ray.runtime_env import RuntimeEnv

    return {f for f in RuntimeEnv.known_fields if not f.startswith("_")}


def check_runtime_env(env: dict, working_dir: str) -> None:
    from ray.runtime_env import RuntimeEnv

    unknown = set(env) - public_runtime_env_fields()
    # RuntimeEnv accepts unknown keys (they are taken as plugin names), so check them here.
    assert not unknown, f"not RuntimeEnv fields: {sorted(unknown)}"
    RuntimeEnv(**{**env, "working_dir": working_dir})  # raises TypeError/ValueError on bad values
    assert all(isinstance(v, str) for v in env.get("env_vars", {}).values())
    assert env["env_vars"].get("RAY_TRAIN_V2_ENABLED") == "1"


def test_runtime_env_is_a_valid_ray_runtime_env():
    env = load("runtime_env.yaml")
    assert env["working_dir"] == "."
    check_runtime_env(env, working_dir=str(REPO))
    leaked = {k for k in env["env_vars"] if re.search(r"PASSWORD|SECRET|TOKEN$|ACCESS_KEY", k)}
    assert not leaked, f"credentials do not belong in an uploaded runtime_env: {leaked}"
    assert "MLFLOW_TRACKING_URI" not in env["env_vars"], \
        "a fixed tracking URI here would override the nodes' MLFLOW_TRACKING_URI and --tracking-uri docs"


def test_runtime_env_file_is_what_ray_job_submit_reads():
    """`ray job submit --runtime-env FILE` loads the file with this function (Ray 2.60)."""
    sdk = pytest.importorskip("ray.dashboard.modules.dashboard_sdk")
    path = str(CLUSTER / "runtime_env.yaml")
    assert sdk.parse_runtime_env_args(runtime_env=path) == load("runtime_env.yaml")
    # --working-dir on the command line wins over the file's working_dir.
    assert sdk.parse_runtime_env_args(runtime_env=path, working_dir="/elsewhere")["working_dir"] == "/elsewhere"


def test_runtime_env_excludes_keep_local_state_out_of_the_upload(tmp_path):
    """Zip the repository the way Ray packages a working_dir and look inside."""
    packaging = pytest.importorskip("ray._private.runtime_env.packaging")
    if not hasattr(packaging, "_zip_files"):
        pytest.skip(f"ray {ray.__version__} has no packaging._zip_files")
    import zipfile

    env = load("runtime_env.yaml")
    for must in (".git", "outputs", "mlruns", "mlflow.db"):
        assert must in env["excludes"]
    assert any(p.startswith(".venv") for p in env["excludes"])
    # A stand-in for local state a laptop run leaves behind.
    work = tmp_path / "repo"
    for rel in (RECIPE, "framework/__init__.py", "cluster/install.sh"):
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text("x")
    for rel in ("outputs/ray/ckpt.bin", "mlruns/1/meta.yaml", "mlflow.db", ".venv/bin/python",
                ".venv-gpu/lib/x.py", ".git/HEAD", "framework/__pycache__/a.pyc"):
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text("x")
    out = tmp_path / "pkg.zip"
    packaging._zip_files(str(work), env["excludes"], str(out), include_gitignore=False)
    names = set(zipfile.ZipFile(out).namelist())
    assert {RECIPE, "framework/__init__.py", "cluster/install.sh"} <= names
    leaked = [n for n in names if n.split("/")[0] in {"outputs", "mlruns", "mlflow.db", ".git"}
              or n.startswith(".venv") or "__pycache__" in n]
    assert not leaked, f"excludes let these through: {leaked}"


# --------------------------------------------------------------------------- KubeRay RayJob
#
# A field model of the ray.io/v1 CRDs, transcribed from ray-project/kuberay
# ray-operator/apis/ray/v1/rayjob_types.go and raycluster_types.go (KubeRay 1.5/1.6 line:
# authOptions, deletionStrategy, SidecarMode included) and, for pods, from the core/v1 fields a
# RayJob commonly sets. It is a JSON schema with additionalProperties: false at every level that
# is modelled, so an unknown key or a missing required key fails; subtrees owned by Kubernetes
# itself (affinity, probes, securityContext, ...) are accepted as-is (ANY).

STR, INT, BOOL, NUM, ANY = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}, {"type": "number"}, {}
QTY = {"type": ["string", "integer", "number"]}  # a Kubernetes resource quantity


def obj(props: dict, required=()) -> dict:
    return {"type": "object", "properties": props, "required": list(required), "additionalProperties": False}


def arr(item: dict) -> dict:
    return {"type": "array", "items": item}


def mapof(value: dict) -> dict:
    return {"type": "object", "additionalProperties": value}


def enum(*values) -> dict:
    return {"enum": list(values)}


KEY_REF = obj({"name": STR, "key": STR, "optional": BOOL}, ["key"])
ENV_VAR = obj({"name": STR, "value": STR,
               "valueFrom": obj({"secretKeyRef": KEY_REF, "configMapKeyRef": KEY_REF,
                                 "fieldRef": ANY, "resourceFieldRef": ANY})}, ["name"])
NAME_REF = obj({"name": STR, "optional": BOOL})
ENV_FROM = obj({"prefix": STR, "secretRef": NAME_REF, "configMapRef": NAME_REF})
VOLUME_MOUNT = obj({"name": STR, "mountPath": STR, "readOnly": BOOL, "subPath": STR, "subPathExpr": STR,
                    "mountPropagation": STR, "recursiveReadOnly": STR}, ["name", "mountPath"])
CONTAINER = obj({
    "name": STR, "image": STR, "imagePullPolicy": enum("Always", "IfNotPresent", "Never"),
    "command": arr(STR), "args": arr(STR), "workingDir": STR, "env": arr(ENV_VAR), "envFrom": arr(ENV_FROM),
    "resources": obj({"limits": mapof(QTY), "requests": mapof(QTY), "claims": ANY}),
    "ports": arr(obj({"containerPort": INT, "name": STR, "protocol": STR, "hostPort": INT, "hostIP": STR},
                     ["containerPort"])),
    "volumeMounts": arr(VOLUME_MOUNT), "lifecycle": ANY, "livenessProbe": ANY, "readinessProbe": ANY,
    "startupProbe": ANY, "securityContext": ANY, "stdin": BOOL, "tty": BOOL,
    "terminationMessagePath": STR, "terminationMessagePolicy": STR,
}, ["name", "image"])
VOLUME = obj({"name": STR, "emptyDir": obj({"medium": STR, "sizeLimit": QTY}), "secret": ANY, "configMap": ANY,
              "persistentVolumeClaim": ANY, "hostPath": ANY, "csi": ANY, "projected": ANY, "nfs": ANY,
              "ephemeral": ANY}, ["name"])
TOLERATION = obj({"key": STR, "operator": enum("Exists", "Equal"), "value": STR,
                  "effect": enum("NoSchedule", "PreferNoSchedule", "NoExecute"), "tolerationSeconds": INT})
POD_SPEC = obj({
    "containers": {**arr(CONTAINER), "minItems": 1}, "initContainers": arr(CONTAINER), "volumes": arr(VOLUME),
    "tolerations": arr(TOLERATION), "nodeSelector": mapof(STR), "affinity": ANY, "serviceAccountName": STR,
    "securityContext": ANY, "imagePullSecrets": arr(obj({"name": STR})), "priorityClassName": STR,
    "restartPolicy": STR, "schedulerName": STR, "terminationGracePeriodSeconds": INT, "runtimeClassName": STR,
    "hostNetwork": BOOL, "dnsPolicy": STR, "enableServiceLinks": BOOL, "topologySpreadConstraints": ANY,
}, ["containers"])
META = obj({"name": STR, "generateName": STR, "namespace": STR, "labels": mapof(STR), "annotations": mapof(STR)})
POD_TEMPLATE = obj({"metadata": META, "spec": POD_SPEC}, ["spec"])
HEAD_GROUP = obj({
    "template": POD_TEMPLATE, "headService": ANY, "enableIngress": BOOL, "ingressOptions": ANY,
    "resources": mapof(STR), "labels": mapof(STR), "rayStartParams": mapof(STR), "serviceType": STR,
}, ["template"])
WORKER_GROUP = obj({
    "suspend": BOOL, "groupName": STR, "replicas": INT, "minReplicas": INT, "maxReplicas": INT,
    "idleTimeoutSeconds": INT, "priority": INT, "resources": mapof(STR), "labels": mapof(STR),
    "rayStartParams": mapof(STR), "template": POD_TEMPLATE, "scaleStrategy": obj({"workersToDelete": arr(STR)}),
    "numOfHosts": INT,
}, ["groupName", "template"])
RAY_CLUSTER_SPEC = obj({
    "upgradeStrategy": ANY, "authOptions": obj({"mode": enum("disabled", "token"), "secretName": STR,
                                                "enableK8sTokenAuth": BOOL}),
    "suspend": BOOL, "managedBy": STR,
    "autoscalerOptions": obj({"resources": ANY, "image": STR, "imagePullPolicy": STR, "securityContext": ANY,
                              "idleTimeoutSeconds": INT,
                              "upscalingMode": enum("Default", "Aggressive", "Conservative"),
                              "version": enum("v1", "v2"), "env": arr(ENV_VAR), "envFrom": arr(ENV_FROM),
                              "volumeMounts": arr(VOLUME_MOUNT), "command": arr(STR), "args": arr(STR)}),
    "headServiceAnnotations": mapof(STR), "enableInTreeAutoscaling": BOOL, "gcsFaultToleranceOptions": ANY,
    "historyServerOptions": ANY, "networkPolicy": ANY, "tlsOptions": ANY,
    "headGroupSpec": HEAD_GROUP, "rayVersion": STR, "workerGroupSpecs": arr(WORKER_GROUP),
}, ["headGroupSpec"])
RAY_JOB_SPEC = {**obj({
    "activeDeadlineSeconds": INT, "backoffLimit": INT, "rayClusterSpec": RAY_CLUSTER_SPEC,
    "submitterPodTemplate": POD_TEMPLATE, "metadata": mapof(STR), "clusterSelector": mapof(STR),
    "submitterConfig": obj({"backoffLimit": INT}),
    "managedBy": enum("ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"),
    "deletionStrategy": obj({"onSuccess": ANY, "onFailure": ANY, "deletionRules": arr(ANY)}),
    "entrypoint": STR, "runtimeEnvYAML": STR, "jobId": STR,
    "submissionMode": enum("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"),
    "entrypointResources": STR, "entrypointNumCpus": NUM, "entrypointNumGpus": NUM,
    "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0}, "shutdownAfterJobFinishes": BOOL,
    "suspend": BOOL,
}, ["entrypoint"]),
    # A RayJob either brings its own cluster or selects a running one.
    "anyOf": [{"required": ["rayClusterSpec"]}, {"required": ["clusterSelector"]}]}
RAY_JOB = obj({
    "apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayJob"},
    "metadata": {**META, "required": ["name"]}, "spec": RAY_JOB_SPEC,
}, ["apiVersion", "kind", "metadata", "spec"])


jsonschema.Draft202012Validator.check_schema(RAY_JOB)
RAY_JOB_VALIDATOR = jsonschema.Draft202012Validator(RAY_JOB)


def validate_rayjob(doc: dict) -> None:
    RAY_JOB_VALIDATOR.validate(doc)


def test_rayjob_matches_kuberay_fields():
    errors = [f"{list(e.path)}: {e.message}" for e in RAY_JOB_VALIDATOR.iter_errors(load(RAYJOB))]
    assert errors == []


def _spec(d):
    return d["spec"]


def _cluster(d):
    return d["spec"]["rayClusterSpec"]


def _worker(d):
    return _cluster(d)["workerGroupSpecs"][0]


def _worker_container(d):
    return _worker(d)["template"]["spec"]["containers"][0]


RAYJOB_MUTATIONS = {
    "unknown spec key": lambda d: _spec(d).__setitem__("entrypointt", "python x.py"),
    "unknown cluster key": lambda d: _cluster(d).__setitem__("enableAuth", True),
    "unknown worker-group key": lambda d: _worker(d).__setitem__("gpus", 4),
    "unknown container key": lambda d: _worker_container(d).__setitem__("gpu", 4),
    "missing headGroupSpec": lambda d: _cluster(d).pop("headGroupSpec"),
    "missing worker groupName": lambda d: _worker(d).pop("groupName"),
    "missing container image": lambda d: _worker_container(d).pop("image"),
    "missing entrypoint": lambda d: _spec(d).pop("entrypoint"),
    "no cluster at all": lambda d: _spec(d).pop("rayClusterSpec"),
    "replicas as a string": lambda d: _worker(d).__setitem__("replicas", "2"),
    "bad submissionMode": lambda d: _spec(d).__setitem__("submissionMode", "K8sJob"),
    "bad auth mode": lambda d: _cluster(d)["authOptions"].__setitem__("mode", "tokens"),
    "negative ttl": lambda d: _spec(d).__setitem__("ttlSecondsAfterFinished", -1),
    "wrong kind": lambda d: d.__setitem__("kind", "RayCluster"),
    "wrong apiVersion": lambda d: d.__setitem__("apiVersion", "ray.io/v1alpha1"),
}


@pytest.mark.parametrize("what", sorted(RAYJOB_MUTATIONS))
def test_mutated_rayjob_is_rejected(what):
    doc = load(RAYJOB)
    RAYJOB_MUTATIONS[what](doc)
    with pytest.raises(jsonschema.ValidationError):
        validate_rayjob(doc)


def _containers(doc):
    cluster = _cluster(doc)
    yield cluster["headGroupSpec"]["template"]["spec"]["containers"]
    for group in cluster.get("workerGroupSpecs", []):
        yield group["template"]["spec"]["containers"]


def test_rayjob_lifecycle_and_auth():
    doc = load(RAYJOB)
    spec, cluster = doc["spec"], _cluster(doc)
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True
    # KubeRay only honours ttlSecondsAfterFinished together with shutdownAfterJobFinishes.
    assert spec["ttlSecondsAfterFinished"] > 0
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["rayVersion"] == ray.__version__, (
        f"rayVersion {cluster['rayVersion']} != installed ray {ray.__version__}: update the manifest and image")
    for containers in _containers(doc):
        for c in containers:
            assert f"ray{ray.__version__}" in c["image"], f"{c['image']}: tag the image with the Ray it carries"


def test_rayjob_environment_comes_from_secrets():
    doc = load(RAYJOB)
    for containers in _containers(doc):
        for c in containers:
            env = {e["name"]: e for e in c.get("env", [])}
            uri = env["MLFLOW_TRACKING_URI"]["value"]
            assert uri.startswith(("http://", "https://")), "on a cluster MLflow must be an HTTP tracking server"
            for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                assert "value" not in env[name] and "secretKeyRef" in env[name]["valueFrom"], \
                    f"{name} must come from a Secret"


def test_rayjob_runtime_env_is_valid():
    doc = load(RAYJOB)
    env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
    assert os.path.isabs(env["working_dir"]), "working_dir is the source tree inside the image"
    # The image is built from this repository, so check the values against the repository.
    check_runtime_env(env, working_dir=str(REPO))


def entrypoint_args() -> list[str]:
    argv = shlex.split(load(RAYJOB)["spec"]["entrypoint"])
    assert argv[0] in ("python", "python3")
    return argv


def test_rayjob_entrypoint_runs_the_recipe_on_all_gpus():
    argv = entrypoint_args()
    assert argv[1] == RECIPE and (REPO / RECIPE).is_file()
    assert "--use-gpu" in argv
    num_workers = int(argv[argv.index("--num-workers") + 1])
    gpus = 0
    for group in _cluster(load(RAYJOB))["workerGroupSpecs"]:
        assert group["minReplicas"] == group["replicas"] == group["maxReplicas"], \
            "training wants a fixed set of GPU pods"
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        gpus += group["replicas"] * int(limits.get("nvidia.com/gpu", 0))
    assert gpus == num_workers, f"{gpus} GPUs for --num-workers {num_workers} (one GPU per worker)"
    storage = argv[argv.index("--launch.storage_path") + 1]
    assert storage.startswith(("s3://", "gs://")), "multi-node checkpoints need shared object storage"
    # --resume auto only finds the earlier attempt's checkpoints under a fixed run name.
    assert "--resume" in argv and "--run-name" in argv


def recipe(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_ADDRESS": ""}
    return subprocess.run([sys.executable, RECIPE, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def recipe_help() -> str:
    res = recipe("--help")
    if res.returncode != 0:
        pytest.skip(f"`python {RECIPE} --help` fails (the recipe is being rewritten): {res.stderr[-500:]}")
    return res.stdout


def _listed(flag: str, help_text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text) is not None


def _flags(argv) -> tuple[list[str], list[str]]:
    flags = [a.split("=", 1)[0] for a in argv if a.startswith("--")]
    return [f for f in flags if "." not in f], [f for f in flags if "." in f]


@pytest.fixture(scope="module")
def entrypoint_config(recipe_help) -> str:
    """The config the recipe builds from the RayJob's entrypoint flags, printed by --help-config
    (which parses every flag and override, then exits without training)."""
    argv = entrypoint_args()[2:]
    top, dotted = _flags(argv)
    missing = [f for f in top if not _listed(f, recipe_help)]
    if missing:
        pytest.skip(f"`{RECIPE} --help` does not list {missing} (the recipe is being rewritten); "
                    "cannot check the entrypoint against it")
    if not _listed("--help-config", recipe_help):
        pytest.skip(f"`{RECIPE} --help` lists no --help-config; cannot check the overrides {dotted}")
    res = recipe(*argv, "--help-config")
    assert res.returncode == 0, f"the recipe rejects the RayJob entrypoint:\n{res.stderr[-2000:]}"
    return res.stdout


def test_rayjob_entrypoint_flags_are_accepted_by_the_recipe(entrypoint_config):
    argv = entrypoint_args()[2:]
    for flag in _flags(argv)[1]:
        value = argv[argv.index(flag) + 1]
        assert re.search(rf"^{re.escape(flag)} \"?{re.escape(value)}\"?\s", entrypoint_config, re.M), \
            f"{flag} {value} did not reach the config:\n{entrypoint_config}"
    # The top-level flags land in their config fields too.
    num_workers = argv[argv.index("--num-workers") + 1]
    assert re.search(rf"^--launch\.num_workers {num_workers}\s", entrypoint_config, re.M)
    assert re.search(r"^--launch\.use_gpu true\s", entrypoint_config, re.M)
    run_name = argv[argv.index("--run-name") + 1]
    assert re.search(rf"^--launch\.run_name \"{re.escape(run_name)}\"", entrypoint_config, re.M)


# --------------------------------------------------------------------------- docs/scaling.md

def scaling_doc() -> str:
    return (REPO / "docs" / "scaling.md").read_text()


def test_scaling_doc_points_at_existing_files():
    text = scaling_doc()
    mentioned = sorted(set(re.findall(r"\b(cluster/[\w.-]+\.(?:ya?ml|sh))\b", text)))
    assert {f"cluster/{n}" for n in [*LAUNCHERS, RAYJOB, "runtime_env.yaml"]} <= set(mentioned)
    for rel in mentioned:
        assert (REPO / rel).is_file(), f"docs/scaling.md mentions {rel}, which does not exist"


def test_scaling_doc_recipe_commands_use_real_flags(recipe_help, entrypoint_config):
    blocks = "\n".join(re.findall(r"```(?:bash|sh)\n(.*?)```", scaling_doc(), re.S))
    commands = re.findall(rf"python {re.escape(RECIPE)}((?:[^\n\\]|\\\n)*)", blocks)
    assert commands, "docs/scaling.md shows no recipe command"
    used: set[str] = set()
    for cmd in commands:
        used |= {tok.split("=", 1)[0] for tok in shlex.split(cmd.replace("\\\n", " ")) if tok.startswith("--")}
    top, dotted = _flags(sorted(used))
    unknown = [f for f in top if not _listed(f, recipe_help)]
    assert not unknown, f"docs/scaling.md uses flags that `{RECIPE} --help` does not list: {unknown}"
    fields = set(re.findall(r"^(--\w+\.\w+) ", entrypoint_config, re.M))
    assert set(dotted) <= fields, f"docs/scaling.md uses config fields the recipe lacks: {sorted(set(dotted) - fields)}"
