"""tokenizer.load: a transformers tokenizer with its chat template for an HF folder, a .gguf file, the
embedded SmolLM2 name or the tiny presets' BPE; check_compatible guards the model's vocabulary size."""

from __future__ import annotations

import hashlib
import importlib
import os

from agentgen_jax.models import config as config_lib

# By module path: the package attribute `models.load` is the load function, not this module.
load_lib = importlib.import_module("agentgen_jax.models.load")

TINY_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "tiny_tokenizer")


def _from_pretrained(folder: str, **kwargs):
  import transformers  # heavy; only needed here

  return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True, **kwargs)


def _from_gguf(path: str):
  """transformers builds the tokenizer from the GGUF metadata (slow: ~30 s), so the result is saved once
  under the model cache, keyed by path+size+mtime, and read from there afterwards."""
  stat = os.stat(path)
  key = hashlib.sha256(f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}|tok1".encode()).hexdigest()
  cached = os.path.join(load_lib.cache_dir(), "tokenizers", f"{os.path.basename(path)}.{key[:16]}")
  if os.path.exists(os.path.join(cached, "tokenizer_config.json")):
    try:
      return _from_pretrained(cached)
    except (OSError, ValueError):
      pass  # rebuilt below
  tok = _from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
  try:
    tmp = f"{cached}.{os.getpid()}.tmp"
    tok.save_pretrained(tmp)
    os.replace(tmp, cached)
  except OSError:
    pass  # a read-only cache only costs speed
  return tok


def load(name_or_path: str):
  """A transformers tokenizer (with chat_template and a pad token) for a preset name ("tiny", "small"),
  an embedded name ("smollm2-135m-instruct"), an HF folder or a .gguf file. Offline."""
  name_or_path = os.fspath(name_or_path)
  if name_or_path in config_lib.preset_names():
    tok = _from_pretrained(TINY_DIR)
  else:
    path = (load_lib.embedded_path(name_or_path) if name_or_path in load_lib.EMBEDDED
            else os.path.expanduser(name_or_path))
    if not os.path.exists(path):
      raise FileNotFoundError(
          f"tokenizer {name_or_path!r} not found: not a preset ({', '.join(config_lib.preset_names())}), "
          f"not an embedded name ({', '.join(load_lib.EMBEDDED)}), and no such folder or .gguf file")
    if path.endswith(".gguf") and os.path.isfile(path):
      tok = _from_gguf(path)
    elif os.path.isdir(path):
      tok = _from_pretrained(path)
    else:
      raise ValueError(f"tokenizer path {path!r} is neither an HF folder nor a .gguf file")
  if tok.pad_token is None:
    tok.pad_token = tok.eos_token
  return tok


def check_compatible(tok, cfg: config_lib.ModelConfig) -> None:
  """Raises if the tokenizer can produce ids the model has no embedding for (the model may have more rows)."""
  if len(tok) > cfg.vocab_size:
    raise ValueError(f"vocab mismatch: the tokenizer has {len(tok)} tokens but the model's vocab_size is "
                     f"{cfg.vocab_size}; load the tokenizer that belongs to this model")
