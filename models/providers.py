"""onnxruntime execution providers, chosen by config with the CPU as the fallback.

A node lists the providers it would like (``onnx_providers`` in its config, or the
``TANDEM_ORT_PROVIDERS`` environment variable, comma-separated): short names (``cuda``,
``tensorrt``, ``openvino``, ``coreml``, ``xnnpack``, ``acl``) or onnxruntime's own. Those this
onnxruntime build does not have are skipped, and the CPU provider always comes last, so a graph
loads everywhere; a session that fails to start on the wanted providers starts on the CPU alone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

log = logging.getLogger("models.providers")
CPU = "CPUExecutionProvider"
PROVIDERS_ENV = "TANDEM_ORT_PROVIDERS"
SHORT = {
    "cpu": CPU,
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "acl": "ACLExecutionProvider",
    "dml": "DmlExecutionProvider",
}
_configured: tuple[str, ...] | None = None


def set_providers(names: Sequence[str]) -> None:
    """The providers this process's sessions try first (a node's config sets them at start)."""
    global _configured
    _configured = tuple(names)


def wanted() -> tuple[str, ...]:
    """The configured providers, else the environment's, else none (CPU only)."""
    if _configured:
        return _configured
    return tuple(n.strip() for n in os.environ.get(PROVIDERS_ENV, "").split(",") if n.strip())


def choose(available: Sequence[str], names: Sequence[str]) -> list[str]:
    """The wanted providers this build has, in the order asked, then the CPU provider."""
    out: list[str] = []
    for name in names:
        full = SHORT.get(name.lower(), name)
        if full in available and full != CPU and full not in out:
            out.append(full)
        elif full != CPU and full not in available:
            log.warning("onnx provider %s is not in this onnxruntime build; skipped", full)
    return [*out, CPU]
