"""One string names a model and its backend: ``load_lm("onnx:drafter")``.

Specs:
- ``torch:NAME_OR_DIR``  a safetensors checkpoint (bundled name or directory), torch fp32;
- ``onnx:NAME_OR_FILE``  a bundled name or directory (its int8 graph) or a .onnx file; a directory
  written by ``tandem export-onnx hf:...`` (or a graph in one) loads with its own tokenizer;
- ``hf:DIR_OR_GGUF``     a local transformers directory or .gguf file;
- a bare bundled name: ``target``, ``drafter`` (torch) or ``NAME-int8`` such as ``drafter-int8``
  (the ONNX int8 export of NAME).

Backends are imported only when their spec is used, so ``onnx:`` works on an edge without torch.
"""

from __future__ import annotations

from models.base import CausalLM, Tokenizer

PREFIXES = ("torch", "onnx", "hf")
INT8_SUFFIX = "-int8"


def _task_tokenizer(lm: CausalLM) -> Tokenizer:
    """The bundled models' word tokenizer, checked against the model's vocabulary."""
    from models.task import WordTokenizer

    tok = WordTokenizer()
    if lm.vocab_size < tok.vocab_size:
        raise ValueError(
            f"model {lm.name!r} has {lm.vocab_size} token ids, the task tokenizer needs "
            f"{tok.vocab_size}: it was not trained on the bundled task"
        )
    return tok


def _load_torch(target: str) -> tuple[CausalLM, Tokenizer]:
    from models.torch_backend import load_torch

    lm = load_torch(target)
    return lm, _task_tokenizer(lm)


def _load_onnx(target: str) -> tuple[CausalLM, Tokenizer]:
    from models.onnx_backend import load_onnx
    from models.onnx_lm import is_export_dir, load_export

    if is_export_dir(target):
        return load_export(target)

    lm = load_onnx(target, int8=True)
    return lm, _task_tokenizer(lm)


def _load_hf(target: str) -> tuple[CausalLM, Tokenizer]:
    from models.hf_backend import load_hf

    return load_hf(target)


def load_lm(spec: str) -> tuple[CausalLM, Tokenizer]:
    """The model and tokenizer a spec names (see the module docstring for the forms)."""
    prefix, sep, target = spec.partition(":")
    if not sep:
        if spec.endswith(INT8_SUFFIX):
            return _load_onnx(spec.removesuffix(INT8_SUFFIX))
        return _load_torch(spec)
    if not target:
        raise ValueError(f"model spec {spec!r} names no model after {prefix!r}:")
    if prefix == "torch":
        return _load_torch(target)
    if prefix == "onnx":
        return _load_onnx(target)
    if prefix == "hf":
        return _load_hf(target)
    raise ValueError(f"unknown model backend {prefix!r} in {spec!r}; use one of {PREFIXES}")
