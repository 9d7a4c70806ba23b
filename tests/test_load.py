"""Loading and export against PyTorch transformers: logits and greedy decoding of random Llama / Qwen2 models
(GQA, qkv bias, tied/untied, rope scaling), GGUF files, the embedded SmolLM2, save_hf, and the load errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from agentgen_jax import models, tokenizer  # noqa: E402

SMALL = dict(vocab_size=101, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
             num_key_value_heads=2, head_dim=8, max_position_embeddings=256)
CONFIGS = {
    "llama_untied_llama3_rope": ("llama", dict(
        tie_word_embeddings=False, rope_theta=500.0,
        rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16})),
    "llama_tied_linear_rope_bias": ("llama", dict(
        tie_word_embeddings=True, attention_bias=True, rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "qwen2_tied": ("qwen2", dict(tie_word_embeddings=True, rope_theta=1e6)),
    "qwen2_untied_mha": ("qwen2", dict(tie_word_embeddings=False, num_key_value_heads=6)),
}
forward = jax.jit(models.forward, static_argnums=0)


def _hf_model(arch, overrides, seed=0):
  """A random transformers model whose weights (norms and biases too) are far from their init values."""
  config_cls = transformers.LlamaConfig if arch == "llama" else transformers.Qwen2Config
  model_cls = transformers.LlamaForCausalLM if arch == "llama" else transformers.Qwen2ForCausalLM
  torch.manual_seed(seed)
  model = model_cls(config_cls(**{**SMALL, **overrides}, bos_token_id=1, eos_token_id=2, pad_token_id=0))
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      p.copy_(1.0 + 0.2 * noise if "norm" in name else 0.15 * noise)
  return model.eval()


def _hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()


def _assert_close(ours, ref, rel=1e-4):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape
  err = np.abs(ours - ref).max() / np.abs(ref).max()
  assert err < rel, f"max error {err:.2e} of the largest logit"
  np.testing.assert_allclose(ours, ref, rtol=rel, atol=rel * np.abs(ref).max())


def _greedy(cfg, params, prompt, steps):
  """Greedy decoding through the KV cache: one prefill, then one token per forward."""
  b, t = prompt.shape
  cache = models.init_cache(cfg, b, t + steps)
  logits, _, cache = forward(cfg, params, prompt, np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)), None,
                             cache)
  out = []
  for i in range(steps):
    token = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
    out.append(token)
    logits, _, cache = forward(cfg, params, token[:, None], jnp.full((b, 1), t + i, jnp.int32), None, cache)
  return np.stack(out, axis=1)


@pytest.fixture(scope="module", params=list(CONFIGS))
def hf_pair(request, tmp_path_factory):
  arch, overrides = CONFIGS[request.param]
  model = _hf_model(arch, overrides)
  folder = str(tmp_path_factory.mktemp(request.param))
  model.save_pretrained(folder)
  cfg, params = models.load(folder)
  return request.param, model, cfg, params


def test_config_read_from_the_checkpoint(hf_pair):
  name, model, cfg, _ = hf_pair
  assert cfg.architecture == CONFIGS[name][0]
  assert cfg.tie_embeddings == model.config.tie_word_embeddings
  assert cfg.num_kv_heads == model.config.num_key_value_heads
  assert cfg.qkv_bias == (cfg.architecture == "qwen2" or "bias" in name)
  assert cfg.o_bias == ("bias" in name)
  assert (cfg.rope_scaling is not None) == ("rope" in name)


def test_logits_match_transformers(hf_pair):
  _, model, cfg, params = hf_pair
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 40)).astype(np.int32)
  # 40 positions run past original_max_position_embeddings=16, so the llama3 scaling is exercised.
  _assert_close(models.logits(cfg, params, tokens), _hf_logits(model, tokens))


def test_greedy_decoding_matches_transformers_generate(hf_pair):
  _, model, cfg, params = hf_pair
  prompt = np.random.default_rng(1).integers(3, cfg.vocab_size, (2, 7)).astype(np.int32)
  with torch.no_grad():
    want = model.generate(torch.tensor(prompt, dtype=torch.long), max_new_tokens=12, do_sample=False,
                          eos_token_id=None, pad_token_id=0, min_new_tokens=12)[:, 7:].numpy()
  np.testing.assert_array_equal(_greedy(cfg, params, prompt, 12), want)


def test_sharded_checkpoint_loads_the_same(tmp_path):
  model = _hf_model("qwen2", CONFIGS["qwen2_untied_mha"][1], seed=3)
  model.save_pretrained(tmp_path, max_shard_size="20KB")
  assert os.path.exists(tmp_path / "model.safetensors.index.json")
  assert len(list(tmp_path.glob("*.safetensors"))) > 2
  cfg, params = models.load(str(tmp_path))
  tokens = np.arange(12, dtype=np.int32)[None] * 7 % cfg.vocab_size
  _assert_close(models.logits(cfg, params, tokens), _hf_logits(model, tokens))


def test_bfloat16_checkpoint_loads(tmp_path):
  model = _hf_model("llama", dict(tie_word_embeddings=True), seed=5).to(torch.bfloat16)
  model.save_pretrained(tmp_path)
  cfg, params = models.load(str(tmp_path))
  want = model.model.embed_tokens.weight.detach().float().numpy()
  np.testing.assert_array_equal(params["embed"]["embedding"], want)  # bf16 -> f32 is exact
  assert params["embed"]["embedding"].dtype == jnp.float32 and cfg.tie_embeddings


def test_place_receives_host_arrays_and_its_result_is_the_params(tmp_path):
  # A mesh's parallel.place_params gets numpy arrays: each device then receives only its own shard.
  cfg, params = models.load("tiny")
  models.save_hf(cfg, params, str(tmp_path))
  seen = []
  def place(tree):
    seen.extend(jax.tree.leaves(tree))
    return jax.tree.map(lambda x: jnp.asarray(x) + 1, tree)
  _, placed = models.load(str(tmp_path), place=place)
  assert seen and all(isinstance(x, np.ndarray) for x in seen)
  np.testing.assert_array_equal(placed["embed"]["embedding"], np.asarray(params["embed"]["embedding"]) + 1)


@pytest.mark.parametrize("name", ["tiny", "qwen2_untied"])
def test_save_hf_loads_in_transformers_with_the_same_logits(name, tmp_path):
  if name == "tiny":
    cfg, params = models.load("tiny")
    tok = tokenizer.load("tiny")
  else:
    cfg = models.ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                             num_kv_heads=2, head_dim=8, qkv_bias=True, tie_embeddings=False,
                             rope_theta=500.0, architecture="qwen2",
                             rope_scaling=(("factor", 2.0), ("rope_type", "linear")))
    params = jax.tree.map(lambda x: x * 5.0, models.init_params(cfg, 1))
    tok = None
  models.save_hf(cfg, params, str(tmp_path), tokenizer=tok)
  hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
  tokens = np.random.default_rng(2).integers(0, cfg.vocab_size, (1, 20)).astype(np.int32)
  _assert_close(models.logits(cfg, params, tokens), _hf_logits(hf, tokens))
  cfg2, params2 = models.load(str(tmp_path))
  assert cfg2 == cfg
  jax.tree.map(np.testing.assert_array_equal, params2, params)
  if tok is not None:
    assert len(transformers.AutoTokenizer.from_pretrained(str(tmp_path))) == cfg.vocab_size


def _write_gguf(path, model, arch, quantize):
  """A GGUF as llama.cpp's converter writes it: its names, Llama's q/k rows permuted for its rotary, and
  (quantize) matrices in Q8_0. The model's matrices are first rounded to Q8_0 values, so that it stays the
  exact reference for what the file holds."""
  import gguf
  c = model.config
  q8 = gguf.GGMLQuantizationType.Q8_0
  if quantize:
    with torch.no_grad():
      for p in model.parameters():
        if p.ndim == 2:
          p.copy_(torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(p.numpy(), q8), q8)))
  writer = gguf.GGUFWriter(str(path), arch)
  writer.add_block_count(c.num_hidden_layers)
  writer.add_context_length(c.max_position_embeddings)
  writer.add_embedding_length(c.hidden_size)
  writer.add_feed_forward_length(c.intermediate_size)
  writer.add_head_count(c.num_attention_heads)
  writer.add_head_count_kv(c.num_key_value_heads)
  writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
  writer.add_layer_norm_rms_eps(c.rms_norm_eps)
  writer.add_vocab_size(c.vocab_size)
  writer.add_key_length(c.head_dim)
  writer.add_bos_token_id(1)
  writer.add_eos_token_id(2)

  def permute(w, heads):  # llama.cpp convert_hf_to_gguf.LlamaModel.permute
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

  names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
           "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
           "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
           "post_attention_layernorm": "ffn_norm"}
  def add(name, w):
    if quantize and w.ndim == 2:
      writer.add_tensor(name, gguf.quants.quantize(w, q8), raw_dtype=q8)
    else:
      writer.add_tensor(name, w)

  for name, p in model.state_dict().items():
    w = p.numpy().astype(np.float32)
    if name == "model.embed_tokens.weight":
      add("token_embd.weight", w)
    elif name == "model.norm.weight":
      add("output_norm.weight", w)
    elif name == "lm_head.weight":
      if not c.tie_word_embeddings:
        add("output.weight", w)
    else:
      _, _, i, *rest = name.split(".")
      module, kind = ".".join(rest[:-1]), rest[-1]
      if arch == "llama" and module == "self_attn.q_proj":
        w = permute(w, c.num_attention_heads)
      elif arch == "llama" and module == "self_attn.k_proj":
        w = permute(w, c.num_key_value_heads)
      add(f"blk.{i}.{names[module]}.{kind}", w)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


@pytest.mark.parametrize("arch,quantize", [("llama", False), ("qwen2", True)])
def test_gguf_file_loads_to_the_model_it_was_written_from(arch, quantize, tmp_path, monkeypatch):
  monkeypatch.setenv("AGENTGEN_JAX_CACHE", str(tmp_path / "cache"))
  # Q8_0 blocks are 32 wide: every matrix's input width (64, 96) is a multiple of 32.
  shape = dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, head_dim=16)
  model = _hf_model(arch, dict(tie_word_embeddings=(arch == "qwen2"), **shape), seed=4)
  _write_gguf(tmp_path / "m.gguf", model, arch, quantize)
  tokens = np.random.default_rng(3).integers(0, 101, (1, 16)).astype(np.int32)
  for _ in range(2):  # the second load reads the converted-weight cache
    cfg, params = models.load(str(tmp_path / "m.gguf"))
    assert cfg.architecture == arch and cfg.qkv_bias == (arch == "qwen2")
    assert cfg.tie_embeddings == (arch == "qwen2") and cfg.num_kv_heads == 2 and cfg.eos_token_ids == (2,)
    _assert_close(models.logits(cfg, params, tokens), _hf_logits(model, tokens))
  assert len(list((tmp_path / "cache").glob("m.gguf.*.npz"))) == 1


# ---------------------------------------------------------------------------------------------------- errors

def test_missing_folder_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="no_such_model.*not a preset .*tiny"):
    models.load(str(tmp_path / "no_such_model"))


def test_folder_without_config_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="has no config.json"):
    models.load(str(tmp_path))


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
  config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="unsupported architecture 'gpt2'.*LlamaForCausalLM, Qwen2ForCausalLM"):
    models.load(str(tmp_path))


def test_unsupported_rope_scaling_is_named(tmp_path):
  model = _hf_model("llama", dict(rope_scaling={"rope_type": "yarn", "factor": 2.0}))
  model.save_pretrained(tmp_path)
  with pytest.raises(ValueError, match="rope_type='yarn' is not supported; valid: default, linear, llama3"):
    models.load(str(tmp_path))


def test_corrupt_safetensors_is_named(tmp_path):
  cfg, params = models.load("tiny")
  models.save_hf(cfg, params, str(tmp_path))
  path = tmp_path / "model.safetensors"
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  with pytest.raises(ValueError, match="corrupt safetensors file .*model.safetensors"):
    models.load(str(tmp_path))
  path.write_bytes(b"\x00" * 4)
  with pytest.raises(ValueError, match="corrupt safetensors file"):
    models.load(str(tmp_path))


def test_save_hf_refuses_bias_layouts_transformers_cannot_express(tmp_path):
  cfg = models.ModelConfig(vocab_size=11, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=2,
                           num_kv_heads=1, head_dim=4, architecture="qwen2", qkv_bias=False)
  with pytest.raises(ValueError, match="qwen2 in transformers has q/k/v biases.*qkv_bias=False"):
    models.save_hf(cfg, {}, str(tmp_path))
  with pytest.raises(ValueError, match="llama's attention_bias covers q/k/v and o_proj together"):
    models.save_hf(cfg.replace(architecture="llama", qkv_bias=True), {}, str(tmp_path))


def test_vocab_mismatch_between_tokenizer_and_model():
  tok = tokenizer.load("tiny")
  tokenizer.check_compatible(tok, models.preset("tiny"))
  tokenizer.check_compatible(tok, models.preset("tiny", vocab_size=5000))  # padded embeddings are fine
  with pytest.raises(ValueError, match="vocab mismatch: the tokenizer has 4096 tokens .* vocab_size is 101"):
    tokenizer.check_compatible(tok, models.preset("tiny", vocab_size=101))


def test_dtype_is_the_compute_dtype_and_params_stay_float32():
  cfg, params = models.load("tiny", dtype="bfloat16")
  assert cfg.dtype == "bfloat16" and cfg.param_dtype == "float32"
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  cfg, params = models.load("tiny", dtype="bfloat16", param_dtype="bfloat16")
  assert params["embed"]["embedding"].dtype == jnp.bfloat16
  cfg, params = models.load("tiny")
  assert cfg.param_dtype == "float32" and cfg.dtype == "float32"  # on CPU


def test_architecture_presets_are_shape_only():
  with pytest.raises(ValueError, match="'qwen2.5-7b' is a shape-only architecture preset"):
    models.load("qwen2.5-7b")
  cfg = models.load_config("qwen2.5-7b", dtype="bfloat16")
  assert cfg.dtype == "bfloat16" and cfg.param_dtype == "float32" and cfg.num_layers == 28


# ------------------------------------------------------------------------------------- the embedded SmolLM2

@pytest.mark.e2e  # in CI: seconds on an idle 2-core CPU
def test_embedded_model_says_paris():
  cfg, params = models.load("smollm2-135m-instruct")
  tok = tokenizer.load("smollm2-135m-instruct")
  tokenizer.check_compatible(tok, cfg)
  text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                 tokenize=False, add_generation_prompt=True)
  prompt = np.asarray([tok.encode(text, add_special_tokens=False)], np.int32)
  answer = tok.decode(_greedy(cfg, params, prompt, 12)[0], skip_special_tokens=True)
  assert "Paris" in answer, answer


@pytest.mark.e2e  # in CI: seconds on an idle 2-core CPU
def test_embedded_model_logits_match_transformers_gguf_loader():
  pytest.importorskip("accelerate")  # transformers needs it to read GGUF
  from agentgen_jax.models.load import embedded_path
  path = embedded_path("smollm2-135m-instruct")
  cfg, params = models.load("smollm2-135m-instruct")
  hf = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
  tokens = np.asarray([[1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 2, 198]], np.int32)
  _assert_close(models.logits(cfg, params, tokens), _hf_logits(hf, tokens))
