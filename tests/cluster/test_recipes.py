"""The cluster recipes (docs/cluster.md, examples/cluster/) are well-formed and agree with the code:
the launcher config passes Ray's own schema, the RayJob uses only documented KubeRay v1 fields,
both put trial drivers on the head via the trial-driver resource and run `hsjp-study run`, and
every `hsjp-study` command the guide shows exists in the CLI."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from orchestrator.cli.main import build_parser

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "examples" / "cluster" / "cluster-launcher.yaml"
RAYJOB = REPO / "examples" / "cluster" / "kuberay-rayjob.yaml"
GUIDE = REPO / "docs" / "cluster.md"
TRIAL_RESOURCE = "hsjp_trial_driver"

# KubeRay ray.io/v1 API reference (ray-project/kuberay, docs/reference/api.md): the fields of each
# type. Pod templates are Kubernetes PodTemplateSpecs, not checked here.
RAYJOB_SPEC = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
    "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint",
    "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus",
    "entrypointNumGpus", "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend", "schedule",
}  # fmt: skip
RAYCLUSTER_SPEC = {
    "suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations", "enableInTreeAutoscaling",
    "gcsFaultToleranceOptions", "headGroupSpec", "rayVersion", "workerGroupSpecs",
}  # fmt: skip
HEAD_GROUP_SPEC = {"template", "headService", "enableIngress", "rayStartParams", "serviceType"}
WORKER_GROUP_SPEC = {
    "suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
    "rayStartParams", "template", "scaleStrategy", "numOfHosts",
}  # fmt: skip


def load(path: Path) -> dict:
    with open(path) as f:
        doc = yaml.safe_load(f)
    assert isinstance(doc, dict), f"{path}: not a YAML mapping"
    return doc


@pytest.mark.parametrize("path", [LAUNCHER, RAYJOB], ids=lambda p: p.name)
def test_recipe_parses(path):
    load(path)


# ----------------------------------------------------------------------------- cluster launcher
def test_launcher_config_passes_rays_schema():
    jsonschema = pytest.importorskip("jsonschema")
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    if not schema_path.is_file():
        pytest.skip(f"this Ray does not ship {schema_path}")
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(load(LAUNCHER), schema)


def test_launcher_config_passes_rays_own_validation():
    """What `ray up` does before launching: fill the provider defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(load(LAUNCHER)))


def test_launcher_puts_trial_drivers_on_the_on_demand_head_and_gpus_on_spot():
    cfg = load(LAUNCHER)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get(TRIAL_RESOURCE, 0) >= 1
    assert head["resources"].get("GPU", 0) == 0
    assert "InstanceMarketOptions" not in head["node_config"], "the head must not be a spot node"
    workers = [t for name, t in types.items() if name != cfg["head_node_type"]]
    assert workers and all(t["resources"].get("GPU", 0) >= 1 for t in workers)
    assert all(TRIAL_RESOURCE not in t["resources"] for t in workers), "drivers on preemptible nodes"
    assert all(t["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot" for t in workers)
    setup = " ".join(cfg["setup_commands"])
    assert "pip install" in setup and "hsjp-study" in setup


# -------------------------------------------------------------------------------------- KubeRay
def _check_keys(where: str, obj: dict, allowed: set[str], required: set[str]) -> None:
    assert isinstance(obj, dict), f"{where}: expected a mapping"
    unknown, missing = set(obj) - allowed, required - set(obj)
    assert not unknown, f"{where}: fields not in the KubeRay v1 API: {sorted(unknown)}"
    assert not missing, f"{where}: missing {sorted(missing)}"


def test_rayjob_uses_documented_kuberay_v1_fields():
    job = load(RAYJOB)
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert set(job) == {"apiVersion", "kind", "metadata", "spec"}
    assert job["metadata"].get("name")
    spec = job["spec"]
    _check_keys("spec", spec, RAYJOB_SPEC, {"entrypoint", "rayClusterSpec"})
    cluster = spec["rayClusterSpec"]
    _check_keys("spec.rayClusterSpec", cluster, RAYCLUSTER_SPEC, {"headGroupSpec", "workerGroupSpecs"})
    head = cluster["headGroupSpec"]
    _check_keys("headGroupSpec", head, HEAD_GROUP_SPEC, {"template", "rayStartParams"})
    for i, group in enumerate(cluster["workerGroupSpecs"]):
        _check_keys(f"workerGroupSpecs[{i}]", group, WORKER_GROUP_SPEC, {"groupName", "template"})
    for group in [head, *cluster["workerGroupSpecs"]]:
        params = group["rayStartParams"]  # object (keys: string, values: string)
        assert all(isinstance(v, str) for v in params.values()), params
        assert group["template"]["spec"]["containers"], "a pod template without containers"
    yaml.safe_load(spec["runtimeEnvYAML"])  # a YAML document inside a string


def _custom_resources(params: dict) -> dict:
    """KubeRay's rayStartParams.resources format: '"{\\"name\\": n}"' (a quoted JSON string)."""
    text = params.get("resources", '"{}"')
    return json.loads(text.strip('"').replace('\\"', '"'))


def test_rayjob_runs_the_study_with_drivers_on_the_head():
    spec = load(RAYJOB)["spec"]
    entry = spec["entrypoint"]
    assert re.search(r"\bhsjp-study run \S*studies/paper\.yaml\b", entry), entry
    assert re.search(r"--storage s3://\S+", entry), "a multi-node study needs a shared store"
    cluster = spec["rayClusterSpec"]
    assert _custom_resources(cluster["headGroupSpec"]["rayStartParams"]).get(TRIAL_RESOURCE, 0) >= 1
    for group in cluster["workerGroupSpecs"]:
        assert TRIAL_RESOURCE not in _custom_resources(group["rayStartParams"])
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1


def test_trial_resource_name_matches_the_code():
    from orchestrator.ray.connect import TRIAL_RESOURCE as CODE_NAME

    assert CODE_NAME == TRIAL_RESOURCE


# ---------------------------------------------------------------------------------------- guide
def test_guide_commands_exist_in_the_cli(capsys):
    text = GUIDE.read_text()
    shown = set(re.findall(r"hsjp-study ([a-z][a-z-]*)", text))
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")  # argparse's subparsers action
    assert {"run", "plan", "status"} <= shown
    assert shown <= set(sub.choices), f"the guide shows unknown commands: {shown - set(sub.choices)}"
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    help_text = capsys.readouterr().out
    assert all(cmd in help_text for cmd in shown)
    run_flags = {opt for a in sub.choices["run"]._actions for opt in a.option_strings}
    for line in re.findall(r"hsjp-study run [^\n`]*", text):
        for flag in re.findall(r"(?<!\S)(--[a-z-]+)", line):
            assert flag in run_flags, f"docs/cluster.md: `{line}` uses {flag}, unknown to hsjp-study run"


def test_guide_names_the_examples_and_the_resource():
    text = GUIDE.read_text()
    for path in (LAUNCHER, RAYJOB):
        assert os.path.relpath(path, REPO) in text
    assert TRIAL_RESOURCE in text and "hsjp-stage-leases" in text


def test_run_joins_the_cluster_of_a_ray_job(monkeypatch):
    """`ray job submit -- hsjp-study run ...`: Ray sets RAY_ADDRESS for the entrypoint; without it being
    honoured, run_study would start a private local Ray on the head (address="local" ignores it)."""
    from orchestrator.cli.main import ray_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_address(None) is None  # plain `hsjp-study run`: a local Ray
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert ray_address(None) == "10.0.0.1:6379"
    assert ray_address("auto") == "auto"  # --address wins


def test_rayjob_gpu_workers_mount_a_memory_backed_dev_shm():
    """DataLoader workers share batches through /dev/shm (64 MB by default in a container)."""
    for group in load(RAYJOB)["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        assert "/dev/shm" in mounts, f"{group['groupName']}: no /dev/shm volume"
        volume = next(v for v in pod["volumes"] if v["name"] == mounts["/dev/shm"])
        assert volume["emptyDir"]["medium"] == "Memory" and volume["emptyDir"].get("sizeLimit")


def test_guide_gives_no_unlimited_retry_advice():
    text = GUIDE.read_text()
    assert "max_failures: -1` (unlimited) is refused" in text
    assert "(unlimited) or a generous number" not in text  # the advice this replaced
