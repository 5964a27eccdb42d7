"""Before any plan is deserialized: is this machine able to run the engines, and if not, what to do.

``probe_runtime`` gathers the facts (TensorRT modules importable and their versions, the GPU torch sees and
its compute capability); ``check_bound_to`` compares them with the engine config's ``bound_to`` and raises one
``EngineMismatch`` listing every problem with what to install or rebuild. A plan deserialized by the wrong
TensorRT, or on an unsupported GPU, would fail (or crash) inside TensorRT instead.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from types import ModuleType

from ckptfmt.engine import BoundTo

from .backends.base import RunnerError

# Python module names per ``bound_to.module`` (first importable wins)
MODULES = {"tensorrt": ("tensorrt",), "tensorrt_rtx": ("tensorrt_rtx_bindings", "tensorrt_rtx")}
INSTALL = {
    "tensorrt": "pip install tensorrt=={version}",
    "tensorrt_rtx": "pip install tensorrt-rtx-cu13-libs=={version} tensorrt-rtx-cu13-bindings=={version}",
}
# GPUs TensorRT-RTX 1.7 runs plans on (its ComputeCapability targets); it refuses sm90 (H100/H200) at load.
RTX_TARGETS = ("sm75", "sm80", "sm86", "sm89", "sm120", "sm121")
UNCHECKED_TARGET = "local-gpu"  # what ckpt-build records when it could not ask torch for the GPU


class EngineMismatch(RunnerError):
    """The engines cannot run here; the message says what to install or rebuild."""


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    target: str  # "sm90"


@dataclass
class RuntimeFacts:
    """What this process can run engines with."""

    modules: dict[str, str | None] = field(default_factory=dict)  # bound_to.module -> installed version or None
    gpu: Gpu | None = None
    no_gpu_reason: str = ""
    rtx_targets: tuple[str, ...] = RTX_TARGETS


def _find_module(kind: str) -> tuple[str, ModuleType] | None:
    for name in MODULES[kind]:
        if importlib.util.find_spec(name) is None:
            continue
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "Runtime"):
            return name, module
    return None


def probe_runtime(device_index: int = 0) -> RuntimeFacts:
    """TensorRT modules (both kinds) and the GPU ``device_index`` as torch sees it."""
    facts = RuntimeFacts()
    for kind in MODULES:
        found = _find_module(kind)
        facts.modules[kind] = str(getattr(found[1], "__version__", "unknown")) if found else None
        if kind == "tensorrt_rtx" and found and hasattr(found[1], "ComputeCapability"):
            facts.rtx_targets = tuple(n.lower() for n in found[1].ComputeCapability.__members__ if n.startswith("SM"))
    try:
        import torch
    except ImportError:
        facts.no_gpu_reason = "torch is not installed (pip install torch with CUDA)"
        return facts
    if torch.version.cuda is None:
        facts.no_gpu_reason = f"torch {torch.__version__} is a CPU-only build (install a CUDA build of torch)"
    elif not torch.cuda.is_available():
        facts.no_gpu_reason = "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    elif device_index >= torch.cuda.device_count():
        facts.no_gpu_reason = f"GPU {device_index} requested but only {torch.cuda.device_count()} visible"
    else:
        major, minor = torch.cuda.get_device_capability(device_index)
        facts.gpu = Gpu(device_index, torch.cuda.get_device_name(device_index), f"sm{major}{minor}")
    return facts


def _versions_match(built: str, installed: str) -> bool:
    """Plans load only in the TensorRT release that built them: compare major.minor.patch(.build)."""
    return built.split("+")[0] == installed.split("+")[0]


def check_bound_to(bound: BoundTo, facts: RuntimeFacts, engine_dir: str = "engine") -> None:
    """Raise one ``EngineMismatch`` naming every reason the engines of ``engine_dir`` cannot run here."""
    built = f"{bound.module} {bound.module_version}"
    targets = ",".join(bound.compute_capabilities)
    problems: list[str] = []
    if bound.module not in MODULES:
        raise EngineMismatch(
            f"{engine_dir}: bound_to.module {bound.module!r} is unknown (expected one of "
            f"{', '.join(MODULES)}); rebuild the engines with ckpt-build"
        )
    installed = facts.modules.get(bound.module)
    other = next((k for k, v in facts.modules.items() if v and k != bound.module), None)
    install = INSTALL[bound.module].format(version=bound.module_version)
    if installed is None:
        also = f" (only {other} {facts.modules[other]} is installed)" if other else ""
        rebuild = (
            f", or rebuild the engines with the installed TensorRT (ckpt-build --backend {other})" if other else ""
        )
        problems.append(f"{bound.module} is not installed{also}: {install}{rebuild}")
    elif not _versions_match(bound.module_version, installed):
        problems.append(
            f"{bound.module} {installed} is installed but plans load only in the release that built "
            f"them: {install}, or rebuild the engines with ckpt-build here"
        )
    if facts.gpu is None:
        problems.append(
            f"{facts.no_gpu_reason or 'no GPU'}: TensorRT engines run only on a CUDA GPU "
            "(without one, run the checkpoint with --backend torch)"
        )
    else:
        gpu = facts.gpu
        here = f"GPU {gpu.index} ({gpu.name}) is {gpu.target}"
        if bound.module == "tensorrt_rtx" and gpu.target not in facts.rtx_targets:
            problems.append(
                f"{here}, which TensorRT-RTX does not run on (it runs on {','.join(facts.rtx_targets)}): "
                "install full TensorRT (pip install tensorrt) and rebuild with "
                "ckpt-build --backend tensorrt on this machine"
            )
        elif UNCHECKED_TARGET not in bound.compute_capabilities and gpu.target not in bound.compute_capabilities:
            how = (
                f"ckpt-build --backend tensorrt_rtx --target {gpu.target}"
                if bound.module == "tensorrt_rtx"
                else "ckpt-build --backend tensorrt on this machine"
            )
            problems.append(f"{here} but the engines target {targets}: rebuild them ({how})")
    if problems:
        raise EngineMismatch(
            f"{engine_dir}: engines built by {built} for {targets} cannot run here: " + "; ".join(problems)
        )


def import_runtime(bound: BoundTo) -> ModuleType:
    """The TensorRT module the engines were built with (``check_bound_to`` has passed)."""
    found = _find_module(bound.module)
    if found is None:
        raise EngineMismatch(
            f"{bound.module} is not importable: {INSTALL[bound.module].format(version=bound.module_version)}"
        )
    return found[1]
