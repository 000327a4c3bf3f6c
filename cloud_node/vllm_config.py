"""Settings of a cloud node that serves its target with vLLM (``--engine vllm``).

Plain data, no vLLM import: the node's config (``cloud_node.node.CloudConfig``) nests it, so the
flags exist in every environment; only starting the engine needs vLLM (``scripts/setup-vllm``).
The parallel layout passes through to vLLM unchanged; it is untested here (a CPU-only machine),
see docs/vllm.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GIB = 1 << 30


@dataclass(frozen=True)
class VllmSettings:
    """How vLLM runs the target: parallel layout, memory, and how verify rounds use its cache."""

    # GPUs each layer is split across (vLLM tensor parallelism); 1 on a CPU
    tensor_parallel_size: int = 1
    # stages the layers are split into (vLLM pipeline parallelism, across machines with Ray)
    pipeline_parallel_size: int = 1
    # how vLLM runs its workers: "" (vLLM picks), "mp" (processes), "ray" (a Ray cluster)
    executor: str = ""
    ray_address: str = ""  # Ray cluster to join (exported as RAY_ADDRESS for vLLM); empty: none
    dtype: str = "float32"  # weights and activations; "auto" or "bfloat16" on GPUs
    max_model_len: int = 2048  # longest sequence the engine admits, prompt and output together
    block_size: int = 32  # tokens per KV-cache block; prefix reuse works in whole blocks
    kv_cache_gib: float = 0.5  # memory for the KV cache, GiB (0: vLLM's own sizing)
    # fraction of each GPU's memory vLLM may take; 0 keeps vLLM's default (CPU: see kv_cache_gib)
    gpu_memory_utilization: float = 0.0
    enforce_eager: bool = True  # no torch.compile: the engine starts in seconds, not minutes
    max_num_seqs: int = 64  # sequences one engine step holds at the most
    # verify rounds read vLLM's prefix cache, so a round recomputes only what the cache lacks
    # (the context's last partial block and the drafts); off: every round rescores its context
    prefix_reuse: bool = True
    residual_batch: int = 8  # candidates drawn per call when resampling after a rejection
    residual_limit: int = 512  # candidates at the most before the exact resampling gives up

    def __post_init__(self) -> None:
        if min(self.tensor_parallel_size, self.pipeline_parallel_size) < 1:
            raise ValueError("tensor_parallel_size and pipeline_parallel_size must be >= 1")
        if self.executor not in ("", "mp", "ray"):
            raise ValueError(f"executor must be '', 'mp' or 'ray', got {self.executor!r}")
        if self.max_model_len < 16 or self.block_size < 1 or self.max_num_seqs < 1:
            raise ValueError("max_model_len >= 16, block_size >= 1 and max_num_seqs >= 1")
        if self.kv_cache_gib < 0 or not 0 <= self.gpu_memory_utilization <= 1:
            raise ValueError("kv_cache_gib >= 0 and gpu_memory_utilization in [0, 1]")
        if not 1 <= self.residual_batch <= self.residual_limit:
            raise ValueError("1 <= residual_batch <= residual_limit")

    def engine_args(self, model: str, seed: int = 0) -> dict[str, Any]:
        """Keyword arguments of vLLM's ``AsyncEngineArgs`` for ``model`` (a local directory)."""
        args: dict[str, Any] = {
            "model": model,
            "dtype": self.dtype,
            "max_model_len": self.max_model_len,
            "block_size": self.block_size,
            "enable_prefix_caching": True,
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "enforce_eager": self.enforce_eager,
            "max_num_seqs": self.max_num_seqs,
            # sampled logprobs after temperature and top-p: p(x) exactly as the request samples
            "logprobs_mode": "processed_logprobs",
            "generation_config": "vllm",  # no sampling defaults from the checkpoint's files
            "seed": seed,
        }
        if self.executor:
            args["distributed_executor_backend"] = self.executor
        if self.kv_cache_gib > 0:
            args["kv_cache_memory_bytes"] = int(self.kv_cache_gib * GIB)
        if self.gpu_memory_utilization > 0:
            args["gpu_memory_utilization"] = self.gpu_memory_utilization
        return args

    def capabilities(self) -> str:
        """The layout as the node advertises it (``ModelInfo.backend``, free text)."""
        return (
            f"vllm;tensor_parallel_size={self.tensor_parallel_size}"
            f";pipeline_parallel_size={self.pipeline_parallel_size}"
            f";executor={self.executor or 'default'};ray_address={self.ray_address}"
        )
