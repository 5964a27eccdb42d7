"""The calls that differ between full TensorRT (``tensorrt``) and TensorRT-RTX (``tensorrt_rtx_bindings``).

Everything else in the builder uses the API surface both modules share.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ckptfmt.errors import CheckpointError

log = logging.getLogger("ckpt_build")

RTX_MODULES = ("tensorrt_rtx_bindings", "tensorrt_rtx")
INSTALL_HINT = (
    "pip install 'ckpt-build[rtx]' (= tensorrt-rtx-cu13-libs==1.7.1.116 "
    "tensorrt-rtx-cu13-bindings==1.7.1.116, builds on CPU) or pip install tensorrt (full TensorRT, "
    "needs the target GPU)"
)
# smallest compute capability (x10) each precision needs. float32: TensorRT-RTX 1.7 refuses FP32 GEMMs for
# Turing (seen building SmolLM2 in float32: "Cannot compile ... for Turing (SM75): FP32 GEMM is not supported").
MIN_SM = {"float32": 80, "bfloat16": 80, "int4": 80, "fp8": 89}


@dataclass
class TrtModule:
    """A loaded TensorRT module and what it can target."""

    trt: ModuleType
    name: str  # "tensorrt" | "tensorrt_rtx"

    @property
    def version(self) -> str:
        return str(getattr(self.trt, "__version__", "unknown"))

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt_rtx"

    def supported_targets(self) -> list[str]:
        """Compute capabilities a plan can be built for (``sm80``...); full TensorRT: the local GPU only."""
        if not self.is_rtx:
            return [local_gpu_target()]
        return [n.lower() for n in self.trt.ComputeCapability.__members__ if n.startswith("SM")]

    def set_targets(self, builder_config, targets: list[str]) -> None:
        if not self.is_rtx:
            return  # full TensorRT always builds for the GPU it runs on
        cc = self.trt.ComputeCapability
        builder_config.num_compute_capabilities = len(targets)
        for i, target in enumerate(targets):
            builder_config.set_compute_capability(cc.__members__[target.upper()], i)

    def serialize(self, builder, network, builder_config, writer) -> bool:
        """Build the plan into ``writer`` (a ``trt.IStreamWriter``): streamed where the module can, else
        through one in-memory plan (modules without ``build_serialized_network_to_stream``)."""
        if hasattr(builder, "build_serialized_network_to_stream"):
            return bool(builder.build_serialized_network_to_stream(network, builder_config, writer))
        plan = builder.build_serialized_network(network, builder_config)
        if plan is None:
            return False
        view = memoryview(plan)
        for start in range(0, len(view), 64 << 20):
            writer.write(bytes(view[start : start + (64 << 20)]))
        return True


def _import_first(names: tuple[str, ...]) -> ModuleType | None:
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "Builder"):
            return module
    return None


def load_trt(backend: str = "auto") -> TrtModule:
    """``auto``: full TensorRT when importable and a GPU is visible (users' GPU images), else TensorRT-RTX,
    else full TensorRT anyway (its own error then says what is missing)."""
    if backend not in ("auto", "tensorrt", "tensorrt_rtx"):
        raise CheckpointError(f"--backend: unknown {backend!r} (auto, tensorrt, tensorrt_rtx)")
    full = _import_first(("tensorrt",)) if backend in ("auto", "tensorrt") else None
    if backend == "tensorrt" and full is None:
        raise CheckpointError("--backend tensorrt: module 'tensorrt' is not installed (pip install tensorrt)")
    if full is not None and (backend == "tensorrt" or gpu_visible()):
        return TrtModule(full, "tensorrt")
    rtx = _import_first(RTX_MODULES)
    if rtx is not None:
        return TrtModule(rtx, "tensorrt_rtx")
    if full is not None:
        return TrtModule(full, "tensorrt")
    what = "no TensorRT module installed" if backend == "auto" else "module tensorrt_rtx_bindings not installed"
    raise CheckpointError(f"{what}: {INSTALL_HINT}")


def gpu_visible() -> bool:
    """An NVIDIA GPU device node exists (no CUDA call needed)."""
    return Path("/dev/nvidia0").exists() or Path("/dev/dxg").exists()


def local_gpu_target() -> str:
    """``smXY`` of GPU 0 (full TensorRT binds plans to it), via torch when available."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return f"sm{major}{minor}"
    except ImportError:
        pass
    return "local-gpu"


def target_sm(target: str) -> int:
    return int(target[2:]) if target.startswith("sm") and target[2:].isdigit() else 0


def resolve_targets(module: TrtModule, requested: list[str] | None, needs: list[str]) -> list[str]:
    """Targets to build for: the requested ones (each must support ``needs``), else every supported one
    that does. Errors name the offending target."""
    supported = module.supported_targets()
    if not module.is_rtx:
        if requested:
            log.warning("--target is ignored with full TensorRT: it builds for the local GPU")
        return supported
    floor = max((MIN_SM.get(n, 0) for n in needs), default=0)
    if requested:
        for t in requested:
            if t not in supported:
                raise CheckpointError(
                    f"--target: {t} not supported by {module.name} {module.version} (supported: {','.join(supported)})"
                )
            for need in needs:
                if target_sm(t) < MIN_SM.get(need, 0):
                    raise CheckpointError(f"--target: {t} cannot run {need} (needs sm{MIN_SM[need]} or newer)")
        return list(requested)
    return [t for t in supported if target_sm(t) >= floor]
