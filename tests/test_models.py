"""The decoder and its KV cache: incremental decoding, extends, holes and candidate masks all reproduce the
plain forward; presets, param counts and the value head."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentgen_jax import models

# Small enough to compile in a second or two; GQA (4 query heads on 2 KV heads), untied, qkv bias.
CFG = models.ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                         num_kv_heads=2, head_dim=8, qkv_bias=True, tie_embeddings=False,
                         rope_theta=500.0, architecture="qwen2")
forward = jax.jit(models.forward, static_argnums=0)


@pytest.fixture(scope="module")
def params():
  return models.init_params(CFG, jax.random.PRNGKey(0))


def _tokens(batch, length, seed=1):
  return np.asarray(jax.random.randint(jax.random.PRNGKey(seed), (batch, length), 0, CFG.vocab_size),
                    np.int32)


def _positions(batch, length, start=0):
  return np.broadcast_to(np.arange(start, start + length, dtype=np.int32), (batch, length))


def test_presets_have_the_documented_sizes():
  tiny, small = models.preset("tiny"), models.preset("small")
  assert 1e6 <= tiny.num_params() <= 5e6
  assert 4e6 <= small.num_params() <= 6e6
  assert hash(tiny) == hash(models.preset("tiny"))
  with pytest.raises(ValueError, match="unknown preset 'huge'.*tiny"):
    models.preset("huge")


def test_num_params_counts_the_param_tree(params):
  assert sum(x.size for x in jax.tree.leaves(params)) == CFG.num_params()
  assert params["layers"]["q_proj"]["kernel"].shape == (2, 32, 32)
  assert params["layers"]["k_proj"]["bias"].shape == (2, 16)


def test_same_seed_same_params():
  a = models.init_params(CFG, 3)
  b = models.init_params(CFG, jax.random.PRNGKey(3))
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_forward_outputs_float32_and_shapes(params):
  tokens = _tokens(2, 7)
  logits, hidden, cache = forward(CFG, params, tokens, _positions(2, 7))
  assert logits.shape == (2, 7, 97) and logits.dtype == jnp.float32
  assert hidden.shape == (2, 7, 32) and hidden.dtype == jnp.float32
  assert cache is None
  np.testing.assert_allclose(models.logits(CFG, params, tokens), logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(models.lm_head(CFG, params, hidden), logits, rtol=1e-6, atol=1e-6)
  tied = CFG.replace(tie_embeddings=True)
  tied_params = {k: v for k, v in params.items() if k != "lm_head"}
  logits, hidden, _ = forward(tied, tied_params, tokens, _positions(2, 7))
  np.testing.assert_allclose(models.lm_head(tied, tied_params, hidden), logits, rtol=1e-6, atol=1e-6)


def test_causality_future_tokens_do_not_change_earlier_logits(params):
  tokens = _tokens(1, 8)
  changed = tokens.copy()
  changed[0, 5:] = (changed[0, 5:] + 1) % CFG.vocab_size
  a, b = models.logits(CFG, params, tokens), models.logits(CFG, params, changed)
  np.testing.assert_allclose(a[:, :5], b[:, :5], atol=1e-5)
  assert np.abs(np.asarray(a[:, 5:] - b[:, 5:])).max() > 1e-3


def test_token_by_token_decode_equals_full_forward(params):
  tokens = _tokens(2, 9)
  full = models.logits(CFG, params, tokens)
  cache = models.init_cache(CFG, 2, 12)
  step = jax.jit(models.forward, static_argnums=0)
  steps, sizes = [], []
  for i in range(9):
    out, _, cache = step(CFG, params, tokens[:, i:i + 1], _positions(2, 1, i), None, cache)
    steps.append(out)
    sizes.append(step._cache_size())  # shared across jax.jit wrappers of forward: compare, not count
  assert int(cache.index) == 9 and cache.index.dtype == jnp.int32
  assert len(set(sizes)) == 1  # the index is an array: advancing it never recompiles
  np.testing.assert_allclose(jnp.concatenate(steps, 1), full, rtol=1e-4, atol=1e-5)


def test_extend_then_decode_equals_prefill_of_the_concatenation(params):
  tokens = _tokens(2, 12, seed=2)
  full = models.logits(CFG, params, tokens)
  cache = models.init_cache(CFG, 2, 16)
  a, _, cache = forward(CFG, params, tokens[:, :5], _positions(2, 5), None, cache)
  b, _, cache = forward(CFG, params, tokens[:, 5:11], _positions(2, 6, 5), None, cache)
  c, _, cache = forward(CFG, params, tokens[:, 11:], _positions(2, 1, 11), None, cache)
  np.testing.assert_allclose(jnp.concatenate([a, b, c], 1), full, rtol=1e-4, atol=1e-5)
  assert cache.valid[:, :12].all() and not cache.valid[:, 12:].any()


def test_holes_change_nothing(params):
  """Invalid slots (padding in the middle, at the start, at the end) are invisible to every query."""
  real = _tokens(1, 6, seed=3)[0]
  want = models.logits(CFG, params, real[None])[0]
  layout = np.array([0, 1, 0, 1, 1, 0, 0, 1, 1, 1, 0], bool)   # 6 real tokens among 11 slots
  tokens = np.full(layout.shape, 5, np.int32)
  tokens[layout] = real
  positions = np.maximum(np.cumsum(layout) - 1, 0).astype(np.int32)
  got, _, _ = forward(CFG, params, tokens[None], positions[None], layout[None])
  np.testing.assert_allclose(got[0][layout], want, rtol=1e-4, atol=1e-5)
  # The same through the cache in two chunks, the first one ending with a hole.
  cache = models.init_cache(CFG, 1, 16)
  a, _, cache = forward(CFG, params, tokens[None, :6], positions[None, :6], layout[None, :6], cache)
  b, _, cache = forward(CFG, params, tokens[None, 6:], positions[None, 6:], layout[None, 6:], cache)
  np.testing.assert_allclose(jnp.concatenate([a, b], 1)[0][layout], want, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(cache.valid[0, :11], layout)


def test_rows_with_different_padding_are_independent(params):
  """Left-padded and unpadded rows in one batch give the logits each gives alone."""
  real = _tokens(2, 5, seed=4)
  tokens = np.concatenate([np.zeros((2, 3), np.int32), real], 1)
  valid = np.ones((2, 8), bool)
  valid[0, :3] = False                      # row 0 left-padded; row 1 sees the 3 extra tokens
  positions = np.stack([np.maximum(np.arange(8) - 3, 0), np.arange(8)]).astype(np.int32)
  got, _, _ = forward(CFG, params, tokens, positions, valid)
  np.testing.assert_allclose(got[0, 3:], models.logits(CFG, params, real[:1])[0], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got[1], models.logits(CFG, params, tokens[1:])[0], rtol=1e-4, atol=1e-5)


def test_attn_mask_candidate_scoring_equals_separate_forwards(params):
  context = _tokens(1, 5, seed=5)
  cands = [_tokens(1, 2, seed=6)[0], _tokens(1, 3, seed=7)[0]]
  cache = models.init_cache(CFG, 1, 16)
  _, _, cache = forward(CFG, params, context, _positions(1, 5), None, cache)
  packed = np.concatenate(cands)[None]
  positions = np.concatenate([np.arange(5, 7), np.arange(5, 8)]).astype(np.int32)[None]
  block = np.zeros((5, 5), bool)
  block[:2, :2] = np.tril(np.ones((2, 2), bool))
  block[2:, 2:] = np.tril(np.ones((3, 3), bool))
  got, _, after = forward(CFG, params, packed, positions, None, cache, block[None])
  for cand, rows in zip(cands, [slice(0, 2), slice(2, 5)]):
    want = models.logits(CFG, params, np.concatenate([context[0], cand])[None])[0, 5:]
    np.testing.assert_allclose(got[0, rows], want, rtol=1e-4, atol=1e-5)
  assert int(after.index) == 10


def test_attn_mask_without_cache_is_used_verbatim(params):
  """A full mask (bidirectional) differs from the causal default; the causal mask equals the default."""
  tokens = _tokens(1, 6, seed=8)
  pos = _positions(1, 6)
  causal = np.tril(np.ones((6, 6), bool))[None]
  default, _, _ = forward(CFG, params, tokens, pos)
  np.testing.assert_allclose(forward(CFG, params, tokens, pos, None, None, causal)[0], default, atol=1e-6)
  full, _, _ = forward(CFG, params, tokens, pos, None, None, np.ones((1, 6, 6), bool))
  assert np.abs(np.asarray(full[:, :-1] - default[:, :-1])).max() > 1e-3


def test_bfloat16_compute_stays_close_to_float32(params):
  tokens = _tokens(1, 6, seed=9)
  bf = CFG.replace(dtype="bfloat16")
  got = models.logits(bf, params, tokens)
  assert got.dtype == jnp.float32
  want = np.asarray(models.logits(CFG, params, tokens))
  # bfloat16 keeps 8 significant bits: each rounding of an activation or weight is off by at most
  # eps = 2^-8 of its size. Along the path to the logits values are rounded about twice per layer
  # (attention and MLP outputs) plus the embedding and the final norm, so the logits' error is a few
  # eps of their scale: 2 * num_layers + 2 roundings of eps * max|logit|. Measured: 1.2-1.9 eps *
  # max|logit| over four token draws (2.2e-3 with logits within +-0.41), a 3x margin under the bound.
  err = np.abs(np.asarray(got) - want).max()
  bound = (2 * CFG.num_layers + 2) * 2.0**-8 * np.abs(want).max()
  assert 0 < err <= bound, (err, bound)  # > 0: the bfloat16 path really computes in bfloat16
  cache = models.init_cache(bf, 1, 8)
  assert cache.k.dtype == jnp.bfloat16


def test_value_head_shapes_and_linearity():
  head = models.value.init_value_head(CFG, 0)
  hidden = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 32))
  v = models.value.values(head, hidden)
  assert v.shape == (2, 3) and v.dtype == jnp.float32
  want = np.asarray(hidden, np.float64) @ np.asarray(head["kernel"], np.float64) + float(head["bias"])
  np.testing.assert_allclose(v, want, rtol=1e-5, atol=1e-6)
  grads = jax.grad(lambda h: models.value.values(h, hidden).sum())(head)
  np.testing.assert_allclose(grads["kernel"], np.asarray(hidden).sum((0, 1)), rtol=1e-5)


def test_blockwise_causal_attention_computes_the_full_masked_attention(params, monkeypatch):
  """Without a cache, causal attention runs in query blocks over the keys up to each block's end (2 blocks
  of 16 here): the logits and gradients of the whole masked [T, T] attention, padded rows included; a
  forward with an explicit attn_mask (any pattern) keeps the whole attention."""
  from agentgen_jax.models import transformer
  tokens, positions = _tokens(2, 32, seed=12), _positions(2, 32)
  valid = np.ones((2, 32), bool)
  valid[1, 20:] = False

  def loss(p):
    logits = models.forward(CFG, p, tokens, positions, valid)[0]
    return (logits * np.linspace(-1, 1, CFG.vocab_size)).sum(), logits

  monkeypatch.setattr(transformer, "CAUSAL_BLOCK", 1024)   # no blocks: one [32, 32] attention
  (_, whole), g_whole = jax.value_and_grad(loss, has_aux=True)(params)
  monkeypatch.setattr(transformer, "CAUSAL_BLOCK", 16)
  (_, blocks), g_blocks = jax.value_and_grad(loss, has_aux=True)(params)
  np.testing.assert_allclose(blocks, whole, rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g_blocks, g_whole)
  calls = []
  monkeypatch.setattr(transformer, "_attend", lambda q, *a: calls.append(q.shape[1]) or
                      jnp.zeros(q.shape[:2] + (q.shape[2] * q.shape[3],), q.dtype))
  jax.eval_shape(lambda p: models.forward(CFG, p, tokens, positions, valid), params)
  assert calls and set(calls) == {16}   # only 16-query blocks
  calls.clear()
  full = np.ones((2, 32, 32), bool)
  jax.eval_shape(lambda p: models.forward(CFG, p, tokens, positions, valid, attn_mask=full), params)
  assert set(calls) == {32}


def test_remat_gives_the_same_gradients(params):
  tokens = _tokens(1, 5, seed=10)
  def loss(p, cfg):
    return models.logits(cfg, p, tokens).mean()
  plain = jax.grad(loss)(params, CFG)
  for policy in ("full", "dots", True):  # True: the older boolean flag, read as "full"
    remat = jax.grad(loss)(params, CFG.replace(remat=policy))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), plain, remat)


def _prefill_and_step(cfg, params, tokens, split_cache=False):
  """A cached prefill of tokens[:, :5], then tokens[:, 5:] as one step: (its logits, the cache after)."""
  cache = models.init_cache(cfg, tokens.shape[0], 16, split=split_cache)
  _, _, cache = forward(cfg, params, tokens[:, :5], _positions(2, 5), cache=cache)
  step, _, after = forward(cfg, params, tokens[:, 5:], _positions(2, 1, 5), cache=cache)
  return step, after, cache


def test_unrolled_layers_compute_the_scanned_function(params):
  # Same params, same forward, cached decode and gradients, whether the layers are a loop or unrolled.
  unrolled = CFG.replace(unroll_layers="all")
  tokens = _tokens(2, 6, seed=11)
  np.testing.assert_allclose(models.logits(unrolled, params, tokens), models.logits(CFG, params, tokens),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(_prefill_and_step(unrolled, params, tokens)[0],
                             _prefill_and_step(CFG, params, tokens)[0], rtol=1e-5, atol=1e-6)
  grads = [jax.grad(lambda p, cfg=cfg: models.logits(cfg, p, tokens).std())(params)
           for cfg in (CFG, unrolled)]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), grads[0], grads[1])


def test_per_layer_params_compute_the_stacked_function(params):
  # models.split_layers: the layers as L separate trees (the sampler's form on CPU); the plain forward, a
  # cached prefill + decode, a continuation scored without appending, and a LoRA-attached tree all give the
  # stacked params' outputs.
  split = models.split_layers(params)
  assert models.is_split(split) and not models.is_split(params) and models.split_layers(split) is split
  assert len(split["layers"]) == CFG.num_layers
  for i in (0, CFG.num_layers - 1):
    jax.tree.map(lambda s, p, i=i: np.testing.assert_array_equal(s, p[i]), split["layers"][i],
                 params["layers"])
  tokens = _tokens(2, 6, seed=13)
  np.testing.assert_allclose(models.logits(CFG, split, tokens), models.logits(CFG, params, tokens),
                             rtol=1e-5, atol=1e-6)
  outs = []
  for p in (params, split):
    step, after, cache = _prefill_and_step(CFG, p, tokens)
    scored, _, _ = models.forward(CFG, p, tokens[:, 3:], _positions(2, 3, 5), cache=cache, append=False)
    outs.append((step, after.k, after.v, scored))
  for a, b in zip(*outs):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
  # A split cache (per-layer buffers, the sampler's form with split params): the same step, and each
  # layer's buffer holds what the stacked cache holds at [layer].
  step, after, cache = _prefill_and_step(CFG, split, tokens, split_cache=True)
  assert after.split and len(after.k) == CFG.num_layers and after.k[0].shape == outs[0][1].shape[1:]
  np.testing.assert_allclose(step, outs[0][0], rtol=1e-5, atol=1e-6)
  for name, stacked in (("k", outs[0][1]), ("v", outs[0][2])):
    np.testing.assert_allclose(np.stack(getattr(after, name)), stacked, rtol=1e-5, atol=1e-6)
  scored, _, _ = models.forward(CFG, split, tokens[:, 3:], _positions(2, 3, 5), cache=cache, append=False)
  np.testing.assert_allclose(scored, outs[0][3], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="split KV cache"):
    models.forward(CFG, params, tokens[:, 5:], _positions(2, 1, 5), cache=cache)
  lora_cfg = models.LoraConfig(rank=2, targets=("q", "down"))
  adapters = jax.tree.map(lambda a: a + 0.05, models.lora.init(CFG, lora_cfg, 3))  # B != 0: not the base
  attached = [models.lora.attach(p, adapters, lora_cfg) for p in (params, split)]
  with_lora = [models.logits(CFG, p, tokens) for p in attached]
  np.testing.assert_allclose(with_lora[1], with_lora[0], rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(with_lora[0]) - np.asarray(models.logits(CFG, params, tokens))).max() > 1e-3


@pytest.mark.parametrize("layer_loop, backend, form", [
    ("auto", "cpu", "split"), ("auto", "gpu", "stacked"), ("auto", "tpu", "stacked"),
    ("scan", "cpu", "stacked"), ("unroll", "gpu", "split")])
def test_layer_loop_setting_decides_the_sampler_params_form(layer_loop, backend, form):
  from agentgen_jax.models import config as models_config
  assert models_config.sampler_layers(layer_loop, backend) == form
  cfg = models_config.apply_layer_loop(CFG, layer_loop, backend)
  assert cfg.sampler_layers == form and cfg.unroll_layers == models_config.unroll_layers(layer_loop, 2)
  with pytest.raises(ValueError, match="sampler_layers='per_layer'; valid: stacked, split"):
    CFG.replace(sampler_layers="per_layer")
  with pytest.raises(ValueError, match="layer_loop='loop'; valid: auto, scan, unroll"):
    models_config.sampler_layers("loop", backend)


@pytest.mark.parametrize("layer_loop, layers, unrolled", [
    ("auto", 4, "learner"), ("auto", 8, "learner"), ("auto", 9, "none"), ("scan", 4, "none"),
    ("unroll", 30, "all")])
def test_layer_loop_setting_decides_unrolling(layer_loop, layers, unrolled):
  from agentgen_jax.models import config as models_config
  assert models_config.unroll_layers(layer_loop, layers) == unrolled
  with pytest.raises(ValueError, match="unroll_layers='some'; valid: none, learner, all"):
    CFG.replace(unroll_layers="some")


def test_learner_unrolling_leaves_the_sampler_a_loop(params):
  # "learner": forwards without a cache (the update) unrolled, cached ones (the sampler) a loop.
  cfg = CFG.replace(unroll_layers="learner")
  tokens = _tokens(1, 4, seed=12)
  plain = jax.jit(lambda p: models.logits(cfg, p, tokens)).lower(params).as_text()
  cached = jax.jit(lambda p: forward(cfg, p, tokens, _positions(1, 4), cache=models.init_cache(cfg, 1, 8))[0]
                   ).lower(params).as_text()
  assert "while" not in plain and "while" in cached


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("dtype, out_dtype", [("float32", None), ("bfloat16", None), ("bfloat16", "float32")])
def test_linear_has_the_einsums_value_and_gradients(transposed, dtype, out_dtype):
  # models.linear writes its backward out by hand (for XLA:CPU's layouts): it must be the einsum's own
  # derivative, in every dtype combination the layers and the head use; checked against float64 numpy.
  rng = np.random.default_rng(0)
  x64, w64 = rng.normal(size=(2, 3, 5)), rng.normal(size=(4, 5) if transposed else (5, 4))
  g64 = rng.normal(size=(2, 3, 4))
  x, w = jnp.asarray(x64, dtype), jnp.asarray(w64, dtype)
  out = jnp.dtype(out_dtype) if out_dtype else None
  y, vjp = jax.vjp(lambda x, w: models.linear(x, w, transposed, out), x, w)
  dx, dw = vjp(jnp.asarray(g64, y.dtype))
  assert y.dtype == (out or x.dtype) and dx.dtype == x.dtype and dw.dtype == w.dtype
  xr, wr = np.asarray(x, np.float64), np.asarray(w, np.float64)   # the rounded inputs
  wm = wr.T if transposed else wr                                 # [in, out]
  tol = 1e-5 if dtype == "float32" else 3e-2
  np.testing.assert_allclose(np.asarray(y, np.float64), xr @ wm, rtol=tol, atol=tol)
  np.testing.assert_allclose(np.asarray(dx, np.float64), g64 @ wm.T, rtol=tol, atol=tol)
  dwm = np.einsum("bti,bto->io", xr, g64)
  np.testing.assert_allclose(np.asarray(dw, np.float64), dwm.T if transposed else dwm, rtol=tol, atol=tol)


def test_unknown_remat_policy_names_the_choices():
  with pytest.raises(ValueError, match="remat='some'; valid: none, full, dots"):
    CFG.replace(remat="some")


def _attention64(q, k, v, mask):
  """Masked softmax attention in float64 numpy: q [B, T, H, Dh], k, v [B, Hkv, S, Dh] -> [B, T, H * Dh]."""
  b, t, h, dh = q.shape
  g = h // k.shape[1]
  kh, vh = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)   # query head j reads KV head j // g
  s = np.einsum("bthd,bhsd->bhts", q, kh) / np.sqrt(dh)
  s = np.where(mask[:, None], s, -1e30)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bhts,bhsd->bthd", p, vh).reshape(b, t, h * dh)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_attention_has_the_softmax_attentions_value_and_gradients(dtype):
  # The attention's backward is written out (recomputed probabilities, dS = P (dP - rowsum(dO O))): value
  # and gradients must be those of plain masked softmax attention, checked against float64 numpy central
  # differences; GQA (4 heads on 2), a padded key, and a query row that sees nothing (uniform, as softmax).
  from agentgen_jax.models import transformer
  rng = np.random.default_rng(0)
  b, t, s, h, kv, dh = 2, 3, 5, 4, 2, 8
  q64 = rng.normal(size=(b, t, h, dh))
  k64, v64 = rng.normal(size=(b, kv, s, dh)), rng.normal(size=(b, kv, s, dh))
  ct = rng.normal(size=(b, t, h * dh))
  mask = rng.random((b, t, s)) < 0.7
  mask[:, :, 0] = True
  mask[1, 2] = False
  args = [jnp.asarray(x, dtype) for x in (q64, k64, v64)]
  out, vjp = jax.vjp(lambda q, k, v: transformer._attend(q, k, v, jnp.asarray(mask), jnp.dtype(dtype)), *args)
  grads = vjp(jnp.asarray(ct, out.dtype))
  assert out.dtype == jnp.dtype(dtype) and all(g.dtype == jnp.dtype(dtype) for g in grads)
  rounded = [np.asarray(x, np.float64) for x in args]
  tol = 1e-5 if dtype == "float32" else 5e-2
  np.testing.assert_allclose(np.asarray(out, np.float64), _attention64(*rounded, mask), rtol=tol, atol=tol)
  for i, grad in enumerate(grads):
    want = np.zeros_like(rounded[i])
    for j in np.ndindex(want.shape):
      plus, minus = [x.copy() for x in rounded], [x.copy() for x in rounded]
      plus[i][j] += 1e-6
      minus[i][j] -= 1e-6
      want[j] = np.sum((_attention64(*plus, mask) - _attention64(*minus, mask)) * ct) / 2e-6
    np.testing.assert_allclose(np.asarray(grad, np.float64), want, rtol=tol, atol=tol)
