"""Sampler tests: greedy decoding against transformers.generate, sampler log-probs against a full forward,
multi-turn extend, stops, top-p, padding, seeds, sharding over 8 simulated devices, and recompilation."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from agentgen_jax import models, sampling

VOCAB = 96


def _hf_model(kind: str, seed: int):
  """A random tiny HF model (Llama: untied, no bias; Qwen2: tied, qkv bias)."""
  torch.manual_seed(seed)
  common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                rms_norm_eps=1e-6, rope_theta=10000.0)
  if kind == "llama":
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(tie_word_embeddings=False, **common))
  else:
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(tie_word_embeddings=True, **common))
  with torch.no_grad():
    for name, p in model.named_parameters():
      # Larger weights than the default init so that the argmax is decisive (no near ties) and
      # biases and norms are not trivially zero / one.
      if "norm" in name:
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
      else:
        p.copy_(0.15 * torch.randn_like(p) if p.ndim == 2 else 0.3 * torch.randn_like(p))
  return model.eval()


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def hf_and_ours(request, tmp_path_factory):
  model = _hf_model(request.param, seed=0)
  folder = tmp_path_factory.mktemp(request.param)
  model.save_pretrained(folder)
  cfg, params = models.load(str(folder))
  return model, cfg, params


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
  model = _hf_model("llama", seed=1)
  folder = tmp_path_factory.mktemp("llama1")
  model.save_pretrained(folder)
  return models.load(str(folder))


SLOTS, NEW = 64, 8  # most tests share these shapes (and batch 3) so that they share compiled code
PROMPTS = [[5, 17, 33, 2, 9, 41, 7], [60, 3, 3, 12], [8, 80, 44, 23, 19, 1, 70, 65, 30, 11, 4]]


def _pad(rows: list[list[int]], left: bool = False):
  width = max(len(r) for r in rows)
  tokens = np.zeros((len(rows), width), np.int32)
  valid = np.zeros((len(rows), width), bool)
  for i, r in enumerate(rows):
    sl = slice(width - len(r), width) if left else slice(0, len(r))
    tokens[i, sl], valid[i, sl] = r, True
  return tokens, valid


def _prefill(cfg, params, rows: list[list[int]], left: bool = False):
  ctx = sampling.new_context(cfg, len(rows), SLOTS)
  return sampling.extend(cfg, params, ctx, *_pad(rows, left))


def _decode(cfg, params, ctx, seed=0, temperature=0.0, top_p=1.0, active=None, **kw):
  active = np.ones(ctx.next_pos.shape, bool) if active is None else active
  return sampling.decode(cfg, params, ctx, jax.random.key(seed), active,
                         max_new_tokens=kw.pop("max_new_tokens", NEW), temperature=temperature, top_p=top_p,
                         eos_ids=kw.pop("eos_ids", ()), **kw)


@pytest.mark.parametrize("form", ["stacked", "split"])
def test_greedy_matches_transformers_generate(hf_and_ours, form):
  # "split": per-layer params (sampler_params, the sampler's form on CPU under layer_loop auto).
  model, cfg, params = hf_and_ours
  cfg = cfg.replace(sampler_layers=form)
  params = sampling.sampler_params(cfg, params)
  assert models.is_split(params) == (form == "split")
  _, out = _decode(cfg, params, _prefill(cfg, params, PROMPTS))
  for row, prompt in enumerate(PROMPTS):
    with torch.no_grad():
      ref = model.generate(torch.tensor([prompt]), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                           pad_token_id=0, eos_token_id=None)[0, len(prompt):].numpy()
    np.testing.assert_array_equal(np.asarray(out.tokens[row]), ref, err_msg=f"row {row}")
  np.testing.assert_array_equal(np.asarray(out.lengths), NEW)


def _behaviour_logprobs(logits: np.ndarray, tokens: np.ndarray, temperature: float, top_p: float = 1.0):
  """float64 reference: log-prob of each token under softmax(logits / temperature), restricted to the
  nucleus (the most likely tokens until the mass before one reaches top_p) and renormalised. [N, V], [N]."""
  scaled = np.asarray(logits, np.float64) / temperature
  out = []
  for row, token in zip(scaled, tokens):
    order = np.argsort(-row)
    probs = np.exp(row[order] - row.max())
    probs /= probs.sum()
    keep = order[(np.cumsum(probs) - probs) < top_p]
    kept = row[keep]
    assert token in keep, "the sampled token lies outside the nucleus"
    out.append(row[token] - (kept.max() + np.log(np.exp(kept - kept.max()).sum())))
  return np.array(out)


@pytest.mark.parametrize("top_p", [1.0, 0.8])
@pytest.mark.parametrize("form", ["stacked", "split"])
def test_sampled_logprobs_are_those_of_the_tempered_nucleus(llama, top_p, form):
  """Behaviour log-probs: the distribution actually sampled from (logits / 0.7, the top-p nucleus
  renormalised), checked against a float64 reference from one full forward without a cache (on the
  stacked params, whichever form the sampler ran on)."""
  cfg, params = llama
  run = sampling.sampler_params(cfg.replace(sampler_layers=form), params)
  _, out = _decode(cfg, run, _prefill(cfg, run, PROMPTS), seed=3, temperature=0.7, top_p=top_p)
  # Right-padded: padding after a token cannot change its causal logits.
  seqs, _ = _pad([p + list(np.asarray(out.tokens[r])) for r, p in enumerate(PROMPTS)])
  full = np.asarray(models.logits(cfg, params, jnp.asarray(seqs)))
  for row, prompt in enumerate(PROMPTS):
    tokens = np.asarray(out.tokens[row])
    ref = _behaviour_logprobs(full[row, len(prompt) - 1:len(prompt) - 1 + NEW], tokens, 0.7, top_p)
    np.testing.assert_allclose(np.asarray(out.logprobs[row]), ref, atol=2e-4, err_msg=f"row {row}")
  assert np.all(np.asarray(out.logprobs) <= 0)


def test_greedy_logprobs_are_the_untempered_log_softmax(llama):
  cfg, params = llama
  _, out = _decode(cfg, params, _prefill(cfg, params, PROMPTS))
  seqs, _ = _pad([p + list(np.asarray(out.tokens[r])) for r, p in enumerate(PROMPTS)])
  full = np.asarray(models.logits(cfg, params, jnp.asarray(seqs)))
  for row, prompt in enumerate(PROMPTS):
    logits = full[row, len(prompt) - 1:len(prompt) - 1 + NEW]
    ref = _behaviour_logprobs(logits, np.asarray(out.tokens[row]), 1.0)
    np.testing.assert_allclose(np.asarray(out.logprobs[row]), ref, atol=2e-4)


def test_extend_then_decode_equals_prefill_of_concatenation(llama):
  cfg, params = llama
  first, second = [[5, 17, 33, 2], [60, 3], [7]], [[9, 41, 7], [12, 12, 12, 40], [2]]
  # Turn 1: prompt and generated answer; turn 2: an observation appended to the same context.
  ctx = _prefill(cfg, params, first)
  ctx, turn1 = _decode(cfg, params, ctx)
  ctx = sampling.extend(cfg, params, ctx, *_pad(second))
  ctx, turn2 = _decode(cfg, params, ctx)
  whole = [f + list(np.asarray(turn1.tokens[i])) + s for i, (f, s) in enumerate(zip(first, second))]
  ctx_ref, ref = _decode(cfg, params, _prefill(cfg, params, whole))
  np.testing.assert_array_equal(np.asarray(turn2.tokens), np.asarray(ref.tokens))
  np.testing.assert_allclose(np.asarray(turn2.logprobs), np.asarray(ref.logprobs), atol=1e-4)
  np.testing.assert_array_equal(np.asarray(ctx.next_pos), [len(w) + NEW for w in whole])
  np.testing.assert_allclose(np.asarray(ctx.last_logits), np.asarray(ctx_ref.last_logits), atol=1e-4)


def test_a_chunk_in_pieces_equals_one_call_and_compiles_per_window_only(llama):
  """extend in pieces of 8 (rows of different lengths, the last piece partly padding): the same logits,
  next positions, cache index and cached keys as one call; then chunks of other lengths at the same
  window reuse the programs (one per window, whatever the chunk's length)."""
  cfg, params = llama
  rows = [list(range(3, 24)), list(range(40, 53)), [7, 9]]
  tokens, valid = _pad(rows)
  one = sampling.extend(cfg, params, sampling.new_context(cfg, 3, SLOTS), tokens, valid, piece=None)
  pieces = sampling.extend(cfg, params, sampling.new_context(cfg, 3, SLOTS), tokens, valid, piece=8)
  assert int(pieces.cache.index) == int(one.cache.index) == 21
  np.testing.assert_array_equal(np.asarray(pieces.next_pos), [21, 13, 2])
  np.testing.assert_allclose(np.asarray(pieces.last_logits), np.asarray(one.last_logits), atol=1e-5)
  live = np.asarray(one.cache.valid)[:, :21]
  np.testing.assert_array_equal(np.asarray(pieces.cache.valid)[:, :21], live)
  mask = live[None, :, None, :, None]   # cache.k is [L, B, Hkv, S, Dh]
  for name in ("k", "v"):
    ours, ref = (np.asarray(getattr(c.cache, name))[:, :, :, :21] for c in (pieces, one))
    np.testing.assert_allclose(ours * mask, ref * mask, atol=1e-5)
  programs = sampling._extend_jit._cache_size()
  for length in (9, 5):   # the pieces of 9 and 5 tokens fall in windows compiled above
    sampling.extend(cfg, params, sampling.new_context(cfg, 3, SLOTS), np.full((3, length), 3),
                    np.ones((3, length), bool), piece=8)
  assert sampling._extend_jit._cache_size() == programs


def test_a_large_context_decodes_like_a_small_one(llama):
  """A context allocates the live part of its cache (128 slots here), not its max_len: a 1024-slot context
  holds 128 slots and gives the tokens, log-probs and cache contents of a 64-slot one."""
  cfg, params = llama
  outs = {}
  for slots in (SLOTS, 1024):
    ctx = sampling.extend(cfg, params, sampling.new_context(cfg, len(PROMPTS), slots), *_pad(PROMPTS))
    ctx, out = _decode(cfg, params, ctx, seed=5, temperature=1.0)
    outs[slots] = (out, ctx)
  (small, small_ctx), (large, large_ctx) = outs[SLOTS], outs[1024]
  assert sampling.live_window(16 + NEW, 1024) == 128 and sampling.live_window(300, 1024) == 384
  assert (small_ctx.capacity, small_ctx.limit) == (SLOTS, SLOTS)
  assert (large_ctx.capacity, large_ctx.limit) == (128, 1024) and large_ctx.cache.k.shape[3] == 128
  np.testing.assert_array_equal(np.asarray(small.tokens), np.asarray(large.tokens))
  np.testing.assert_allclose(np.asarray(small.logprobs), np.asarray(large.logprobs), atol=1e-5)
  used = int(small_ctx.cache.index)   # slots past it hold invalid padding (a 128-token piece in the big one)
  np.testing.assert_allclose(np.asarray(small_ctx.cache.k)[:, :, :, :used],
                             np.asarray(large_ctx.cache.k)[:, :, :, :used], atol=1e-5)
  assert int(large_ctx.cache.index) == used and not np.asarray(large_ctx.cache.valid)[:, used:].any()


@pytest.mark.parametrize("form", ["stacked", "split"])
def test_a_growing_cache_gives_what_a_full_size_one_gives(llama, form):
  """Turns appended and decoded into a context that starts at 128 slots and grows by buckets (128 -> 192
  -> 256 -> 384) give the tokens, log-probs and cache contents of one allocated at its full 512 slots
  from the start (the layout before contexts grew), in both cache forms; growth stops at max_len."""
  cfg, params = llama
  cfg = cfg.replace(sampler_layers=form)
  params = sampling.sampler_params(cfg, params)
  full = sampling._context_maker(cfg, 3, 512, None)().replace(max_len=512)
  grown = sampling.new_context(cfg, 3, 512)
  assert grown.capacity == 128 and full.capacity == 512 and grown.cache.split == (form == "split")
  capacities, results = [], {}
  for name, ctx in (("grown", grown), ("full", full)):
    outs = []
    for turn in range(4):   # 4 turns of a 70-token chunk and 24 sampled tokens: 376 slots in use
      chunk = np.random.default_rng(turn).integers(3, 200, (3, 70))
      ctx = sampling.extend(cfg, params, ctx, chunk, np.ones((3, 70), bool), piece=32)
      ctx, out = _decode(cfg, params, ctx, seed=turn, temperature=1.0, max_new_tokens=24)
      outs.append(out)
      if name == "grown":
        capacities.append(ctx.capacity)
    results[name] = (outs, ctx)
  assert capacities == [128, 192, 384, 384]
  for a, b in zip(results["grown"][0], results["full"][0]):
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=1e-5)
  used = int(results["full"][1].cache.index)
  assert used == 4 * (70 + 24) and int(results["grown"][1].cache.index) == used
  keys = [np.asarray(c.cache.k if not c.cache.split else np.stack(c.cache.k))[..., :used, :]
          for c in (results["grown"][1], results["full"][1])]
  np.testing.assert_allclose(keys[0], keys[1], atol=1e-5)
  big = sampling.grow(results["grown"][1], 10_000)   # past max_len: the cache stops at 512 slots
  assert big.capacity == 512 and not np.asarray(big.cache.valid)[:, used:].any()
  if form == "split":   # a split cache with the stacked params: a one-line error, not a wrong answer
    with pytest.raises(ValueError, match="sampler_params"):
      sampling.extend(cfg, llama[1], sampling.new_context(cfg, 3, 64), np.ones((3, 4)), np.ones((3, 4)))


def test_rows_without_valid_tokens_and_inactive_rows_are_unchanged(llama):
  cfg, params = llama
  ctx = _prefill(cfg, params, PROMPTS)
  before = np.asarray(ctx.last_logits[1]).copy()
  ctx = sampling.extend(cfg, params, ctx, np.full((3, 2), 4), np.array([[1, 1], [0, 0], [1, 0]], bool))
  np.testing.assert_array_equal(np.asarray(ctx.last_logits[1]), before)
  ctx, out = _decode(cfg, params, ctx, active=np.array([True, False, True]))
  np.testing.assert_array_equal(np.asarray(out.lengths), [NEW, 0, NEW])
  np.testing.assert_array_equal(np.asarray(out.tokens[1]), 0)
  np.testing.assert_array_equal(np.asarray(ctx.next_pos), np.array([2, 0, 1]) + [len(p) for p in PROMPTS]
                                + [NEW, 0, NEW])


def test_left_and_right_padding_give_each_row_its_own_tokens(llama):
  cfg, params = llama
  # Alone: a batch holding only copies of that prompt, so no row of it is padded.
  alone = [np.asarray(_decode(cfg, params, _prefill(cfg, params, [p] * 3))[1].tokens[0]) for p in PROMPTS]
  for left in (False, True):
    _, out = _decode(cfg, params, _prefill(cfg, params, PROMPTS, left=left))
    for row in range(len(PROMPTS)):
      np.testing.assert_array_equal(np.asarray(out.tokens[row]), alone[row], err_msg=f"left={left}")


def test_eos_and_stop_sequences_end_rows(llama):
  cfg, params = llama
  _, free = _decode(cfg, params, _prefill(cfg, params, PROMPTS))
  free = np.asarray(free.tokens)
  eos, stop = int(free[0, 3]), (int(free[1, 4]), int(free[1, 5]))

  def first_end(r):
    hit = lambda i: free[r, i] == eos or (i >= 1 and tuple(free[r, i - 1:i + 1]) == stop)
    return next((i + 1 for i in range(NEW) if hit(i)), NEW)

  ctx, out = _decode(cfg, params, _prefill(cfg, params, PROMPTS), eos_ids=(eos,), stop_seqs=(stop,))
  expected = [first_end(r) for r in range(3)]
  assert expected[0] <= 4 and expected[1] <= 6
  np.testing.assert_array_equal(np.asarray(out.lengths), expected)
  np.testing.assert_array_equal(np.asarray(ctx.next_pos), [len(p) + n for p, n in zip(PROMPTS, expected)])
  for r in range(3):
    np.testing.assert_array_equal(np.asarray(out.tokens[r, :expected[r]]), free[r, :expected[r]])
    np.testing.assert_array_equal(np.asarray(out.tokens[r, expected[r]:]), 0)
    # The slots decoded after the row stopped are not valid (the longest prompt's 11 slots: extend pads the
    # chunk to its bucket of 16 but moves the index by 11; then one slot per step).
    start = max(len(p) for p in PROMPTS)
    np.testing.assert_array_equal(np.asarray(ctx.cache.valid[r, start:start + max(expected)]),
                                  np.arange(max(expected)) < expected[r])
  assert int(ctx.cache.index) == start + max(expected)


def test_truncate_at_stop_strings():
  assert sampling.truncate_at_stop_strings("Thought: x\nAction: go\nObservation: y", ["\nObservation:"]) == (
      "Thought: x\nAction: go", True)
  assert sampling.truncate_at_stop_strings("abc STOP def END", ["END", "STOP"]) == ("abc ", True)
  assert sampling.truncate_at_stop_strings("nothing here", ["END", ""]) == ("nothing here", False)


def test_top_p_samples_only_the_nucleus_in_proportion():
  n, vocab = 4000, 50
  probs = np.array([0.4, 0.25, 0.15, 0.1] + [0.1 / (vocab - 4)] * (vocab - 4))
  logits = jnp.broadcast_to(jnp.log(jnp.asarray(probs, jnp.float32)), (n, vocab))
  sample = jax.jit(lambda *args: sampling._sample(*args)[0])
  tokens = np.asarray(sample(logits, jax.random.key(7), jnp.float32(1.0), jnp.float32(0.6)))
  # Mass before token 1 is 0.40 < 0.6 (kept); before token 2 it is 0.65 (dropped).
  assert set(np.unique(tokens)) == {0, 1}
  share = np.mean(tokens == 0)
  assert abs(share - 0.4 / 0.65) < 4 * np.sqrt(0.615 * 0.385 / n), share
  # top_p = 1 and a temperature: every token is reachable, frequencies follow softmax(logits / T).
  tokens = np.asarray(sample(logits, jax.random.key(8), jnp.float32(2.0), jnp.float32(1.0)))
  tempered = probs ** 0.5 / np.sum(probs ** 0.5)
  assert abs(np.mean(tokens == 0) - tempered[0]) < 4 * np.sqrt(tempered[0] * (1 - tempered[0]) / n)
  assert len(np.unique(tokens)) > 30
  greedy = np.asarray(sample(logits, jax.random.key(9), jnp.float32(0.0), jnp.float32(0.6)))
  np.testing.assert_array_equal(greedy, 0)


def test_same_seed_same_tokens_other_seed_other_tokens(llama):
  cfg, params = llama
  run = lambda seed: np.asarray(_decode(cfg, params, _prefill(cfg, params, PROMPTS), seed=seed,
                                        temperature=1.5)[1].tokens)
  a, b, c = run(11), run(11), run(12)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_no_recompilation_within_a_bucket(llama):
  cfg, params = llama
  ctx = _prefill(cfg, params, PROMPTS)   # the shapes every other test uses: compiled already
  ctx, _ = _decode(cfg, params, ctx)
  decodes = sampling._decode_jit._cache_size()
  ctx = sampling.new_context(cfg, 3, SLOTS)
  programs = []
  for length in (17, 23):   # both in the bucket of 24 (the 128-token piece does not fit in 64 slots)
    ctx = sampling.extend(cfg, params, ctx, np.full((3, length), 3), np.ones((3, length), bool))
    programs.append(sampling._extend_jit._cache_size())
  assert programs[1] == programs[0]   # the second chunk reused the first's program
  ctx, _ = _decode(cfg, params, ctx, temperature=0.7, top_p=0.9)
  # New temperature and top_p values are new inputs, not new programs.
  assert sampling._decode_jit._cache_size() == decodes
  # The index moved by the chunks' own lengths, not their bucket: 64 - 17 - 23 - 8 = 16 slots left.
  assert int(ctx.cache.index) == 48
  with pytest.raises(ValueError, match="cache slots left"):
    sampling.extend(cfg, params, ctx, np.ones((3, 17)), np.ones((3, 17)))


def test_bucket_sizes():
  assert [sampling.bucket(n) for n in (1, 16, 17, 24, 25, 33, 48, 49, 100)] == [16, 16, 24, 24, 32, 48, 48,
                                                                                  64, 128]
  assert sampling.bucket(3, minimum=1) == 3 and sampling.bucket(5, minimum=1) == 6


def _word_tokenizer():
  """A whitespace word-level tokenizer over VOCAB ids (id 1 = EOS), independent of any model hub."""
  from tokenizers import Tokenizer, decoders, pre_tokenizers
  from tokenizers import models as tok_models
  vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2} | {f"w{i}": i for i in range(3, VOCAB)}
  tok = Tokenizer(tok_models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
  hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>",
                                            unk_token="<unk>")
  hf.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
  return hf


def test_sampler_generate_text_stop_strings_and_chat(llama):
  cfg, params = llama
  tok = _word_tokenizer()
  sampler = sampling.Sampler(cfg, params, tok, max_len=SLOTS)
  assert set(sampler.eos_ids) == {1, *cfg.eos_token_ids}   # the tokenizer's <eos> and the model's
  prompts = [" ".join(tok.convert_ids_to_tokens(p)) for p in PROMPTS]
  assert [tok(p)["input_ids"] for p in prompts] == PROMPTS
  free = sampler.generate(prompts, max_new_tokens=NEW)
  _, ref = _decode(cfg, params, _prefill(cfg, params, PROMPTS))
  for row, res in enumerate(free):
    expected = list(np.asarray(ref.tokens[row]))
    ends = [i for i, t in enumerate(expected) if t in sampler.eos_ids]
    expected = expected[:ends[0] + 1] if ends else expected
    assert res.tokens == expected
    assert res.text == tok.decode(res.tokens, skip_special_tokens=True)
  # Stop on the text of the third generated word: the text is cut before it, tokens end with it.
  row = next(r for r, res in enumerate(free) if len(res.text.split()) >= 3)
  word = free[row].text.split()[2]
  stopped = sampler.generate(prompts, max_new_tokens=NEW, stop=[word])[row]
  assert stopped.text == free[row].text[:free[row].text.find(word)]
  assert len(stopped.tokens) == len(stopped.logprobs) <= 3
  assert stopped.tokens == free[row].tokens[:len(stopped.tokens)]
  chat = sampler.generate([[{"role": "user", "content": p}] for p in prompts], max_new_tokens=NEW)
  assert [c.tokens for c in chat] == [f.tokens for f in free]
  # On per-layer params (sampler_layers "split": the Sampler splits them itself) the same text comes out.
  split = sampling.Sampler(cfg.replace(sampler_layers="split"), params, tok, max_len=SLOTS)
  assert models.is_split(split.params)
  assert [r.tokens for r in split.generate(prompts, max_new_tokens=NEW)] == [f.tokens for f in free]


SHARDED_SCRIPT = textwrap.dedent("""
  import json, sys
  import jax, numpy as np
  from agentgen_jax import models, parallel, sampling
  import test_sampling
  cfg, params = models.load(sys.argv[1])
  assert len(jax.devices()) == 8
  rng = np.random.default_rng(0)
  lengths = rng.integers(3, 14, size=8)
  tokens = np.zeros((8, 16), np.int32); valid = np.arange(16)[None] < lengths[:, None]
  tokens[valid] = rng.integers(3, 90, size=int(valid.sum()))
  out = {}
  for name, mesh in (("one", None), ("eight", parallel.make_mesh())):
    p = params if mesh is None else jax.device_put(params, parallel.replicated(mesh))
    ctx = sampling.new_context(cfg, 8, 48, mesh=mesh)
    ctx = sampling.extend(cfg, p, ctx, tokens, valid)
    ctx, gen = sampling.decode(cfg, p, ctx, jax.random.key(0), np.ones(8, bool), max_new_tokens=8,
                               temperature=1.0, top_p=0.95, eos_ids=())
    if mesh is not None:
      assert len(ctx.cache.k.sharding.device_set) == 8, ctx.cache.k.sharding
      assert ctx.cache.k.addressable_shards[0].data.shape[1] == 1
    out[name] = np.asarray(gen.tokens).tolist()
    # A context that grows (128 -> 192 slots) keeps its rows sharded over the mesh.
    big = sampling.new_context(cfg, 8, 512, mesh=mesh)
    chunk = rng.integers(3, 90, size=(8, 150)) if name == "one" else out["chunk"]
    out["chunk"] = chunk
    big = sampling.extend(cfg, p, big, chunk, np.ones(chunk.shape, bool), piece=64)
    big, grown = sampling.decode(cfg, p, big, jax.random.key(1), np.ones(8, bool), max_new_tokens=8,
                                 temperature=1.0, top_p=0.95, eos_ids=())
    assert big.capacity == 192, big.capacity
    if mesh is not None:
      assert big.cache.k.addressable_shards[0].data.shape[1] == 1, big.cache.k.sharding
    out[name + "_grown"] = np.asarray(grown.tokens).tolist()
    # The text API: 3 prompts padded to a batch of 8 (a multiple of the data axis).
    sampler = sampling.Sampler(cfg, params, test_sampling._word_tokenizer(), max_len=64, mesh=mesh)
    texts = sampler.generate(["w5 w17 w33", "w60 w3", "w8 w80 w44 w23"], max_new_tokens=8,
                             temperature=0.8, seed=3)
    out[name + "_text"] = [r.tokens for r in texts]
  del out["chunk"]
  print(json.dumps(out))
""")


@pytest.mark.slow  # a fresh process compiling for 8 devices: ~40 s here
def test_sharded_generation_matches_one_device(tmp_path):
  model = _hf_model("llama", seed=1)
  model.save_pretrained(tmp_path / "m")
  here = os.path.dirname(os.path.abspath(__file__))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([here, os.path.dirname(here), os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT, str(tmp_path / "m")], env=env,
                        capture_output=True, text=True, timeout=300,
                        cwd=os.path.dirname(here))
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["one"] == out["eight"]
  assert out["one_grown"] == out["eight_grown"]
  assert out["one_text"] == out["eight_text"]
