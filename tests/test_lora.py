"""LoRA adapters: the attached (unmerged) forward equals the merged-weights forward, trains the adapters only,
and exports to transformers (merged) and to peft (adapter folder) with the same logits."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentgen_jax import models
from agentgen_jax.models import lora

QWEN = models.ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                          num_kv_heads=2, head_dim=8, qkv_bias=True, tie_embeddings=False,
                          rope_theta=500.0, architecture="qwen2")
LLAMA = models.ModelConfig(vocab_size=89, hidden_size=24, intermediate_size=40, num_layers=3, num_heads=3,
                           num_kv_heads=1, head_dim=8, tie_embeddings=True)
CASES = {"qwen2_all_targets": (QWEN, models.LoraConfig(rank=4, alpha=8.0)),
         "llama_q_v_down": (LLAMA, models.LoraConfig(rank=2, alpha=5.0, targets=("q", "v", "down")))}
forward = jax.jit(models.forward, static_argnums=0)


def _trained_adapters(cfg, lora_cfg, seed=1):
  """Adapters as after training: B non-zero (fresh adapters have B = 0 and change nothing)."""
  adapters = lora.init(cfg, lora_cfg, seed)
  keys = iter(jax.random.split(jax.random.PRNGKey(seed + 100), len(adapters)))
  return {name: {"a": ab["a"], "b": 0.3 * jax.random.normal(next(keys), ab["b"].shape)}
          for name, ab in adapters.items()}


def _tokens(cfg, batch=2, length=9, seed=3):
  return np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, length)).astype(np.int32)


def _positions(batch, length, start=0):
  return np.broadcast_to(np.arange(start, start + length, dtype=np.int32), (batch, length))


def _rel_err(ours, ref):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return np.abs(ours - ref).max() / np.abs(ref).max()


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
  cfg, lora_cfg = CASES[request.param]
  return cfg, lora_cfg, models.init_params(cfg, 0), _trained_adapters(cfg, lora_cfg)


def test_config_names_the_valid_choices():
  with pytest.raises(ValueError, match="targets.*among q, k, v, o, gate, up, down"):
    models.LoraConfig(rank=4, targets=("q", "query"))
  with pytest.raises(ValueError, match="rank=-1.*>= 0"):
    models.LoraConfig(rank=-1)
  with pytest.raises(ValueError, match="dropout=1.0"):
    models.LoraConfig(rank=4, dropout=1.0)
  with pytest.raises(ValueError, match="alpha=0"):
    models.LoraConfig(rank=4, alpha=0)
  assert models.LoraConfig(rank=4, targets="q, v").modules == ("q_proj", "v_proj")
  assert models.LoraConfig(rank=4, targets=("(q, v)",)).targets == ("q", "v")  # absl tuple flag
  assert not models.LoraConfig().enabled
  assert hash(models.LoraConfig(rank=2)) == hash(models.LoraConfig(rank=2))


def test_fresh_adapters_are_float32_start_at_the_base_and_count_their_params():
  cfg, lora_cfg = QWEN, models.LoraConfig(rank=4)
  base = models.init_params(cfg, 0)
  adapters = lora.init(cfg, lora_cfg, 0)
  assert adapters["q_proj"]["a"].shape == (2, 32, 4) and adapters["k_proj"]["b"].shape == (2, 4, 16)
  assert adapters["down_proj"]["a"].shape == (2, 64, 4) and adapters["down_proj"]["b"].shape == (2, 4, 32)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(adapters))
  assert float(jnp.abs(adapters["q_proj"]["a"]).max()) <= 1 / np.sqrt(32)
  assert sum(x.size for x in jax.tree.leaves(adapters)) == lora.num_params(cfg, lora_cfg)
  tokens = _tokens(cfg)
  np.testing.assert_array_equal(models.logits(cfg, lora.attach(base, adapters, lora_cfg), tokens),
                                models.logits(cfg, base, tokens))


def test_split_separates_the_trainable_factors_and_join_rebuilds_the_tree():
  cfg, lora_cfg = QWEN, models.LoraConfig(rank=4, dropout=0.1, targets=("q", "up"))
  base, adapters = models.init_params(cfg, 0), _trained_adapters(cfg, lora_cfg)
  attached = lora.attach(base, adapters, lora_cfg)
  frozen, trainable = lora.split(attached)
  assert set(trainable) == {"q_proj", "up_proj"} and set(trainable["q_proj"]) == {"a", "b"}
  assert set(frozen["lora"]["q_proj"]) == {"scale", "dropout"}
  assert frozen["layers"] is base["layers"]  # no copy of the base
  jax.tree.map(np.testing.assert_array_equal, lora.join(frozen, trainable), attached)
  jax.tree.map(np.testing.assert_array_equal, lora.detach(attached), base)


def test_adapter_forward_equals_merged_weights_forward(case):
  cfg, lora_cfg, base, adapters = case
  tokens = _tokens(cfg)
  attached = models.logits(cfg, lora.attach(base, adapters, lora_cfg), tokens)
  merged = models.logits(cfg, lora.merge(base, adapters, lora_cfg), tokens)
  assert _rel_err(attached, merged) < 1e-5
  assert _rel_err(attached, models.logits(cfg, base, tokens)) > 1e-2  # the adapters do change the model


def test_merge_is_w_plus_scaled_a_b_on_the_targets_only(case):
  cfg, lora_cfg, base, adapters = case
  merged = lora.merge(base, adapters, lora_cfg)
  for name in lora.kernel_shapes(cfg):
    w = np.asarray(base["layers"][name]["kernel"], np.float64)
    if name in adapters:
      a, b = (np.asarray(adapters[name][k], np.float64) for k in "ab")
      w = w + lora_cfg.alpha / lora_cfg.rank * np.einsum("lir,lro->lio", a, b)
    np.testing.assert_allclose(merged["layers"][name]["kernel"], w, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(merged["embed"]["embedding"], base["embed"]["embedding"])


def test_jitted_merge_equals_the_traced_merge_and_shares_every_other_leaf(case):
  # lora.merged (what a rollout decodes on) is jitted and merges one layer at a time.
  cfg, lora_cfg, base, adapters = case
  attached = lora.attach(base, adapters, lora_cfg)
  merged = lora.merged(attached)
  jax.tree.map(np.testing.assert_array_equal, merged, lora.merge_attached(attached))
  assert merged["embed"]["embedding"] is base["embed"]["embedding"]
  untouched = set(lora.kernel_shapes(cfg)) - set(lora_cfg.modules)
  assert all(merged["layers"][n]["kernel"] is base["layers"][n]["kernel"] for n in untouched)
  assert lora.merged(base) is base


def test_adapters_decode_through_the_kv_cache_as_the_merged_model(case):
  cfg, lora_cfg, base, adapters = case
  tokens = _tokens(cfg, 2, 8)
  full = models.logits(cfg, lora.merge(base, adapters, lora_cfg), tokens)
  attached = lora.attach(base, adapters, lora_cfg)
  cache = models.init_cache(cfg, 2, 10)
  logits, _, cache = forward(cfg, attached, tokens[:, :5], _positions(2, 5), None, cache)
  steps = [logits]
  for t in range(5, 8):
    logits, _, cache = forward(cfg, attached, tokens[:, t:t + 1], _positions(2, 1, t), None, cache)
    steps.append(logits)
  assert _rel_err(np.concatenate(steps, axis=1), full) < 1e-5


def test_gradient_reaches_the_adapters_only_and_matches_the_merged_gradient():
  cfg, lora_cfg = CASES["qwen2_all_targets"]
  base, adapters = models.init_params(cfg, 0), _trained_adapters(cfg, lora_cfg)
  tokens = _tokens(cfg)
  targets = jax.nn.one_hot(np.roll(tokens, -1, axis=1), cfg.vocab_size)

  def loss(params):
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(models.logits(cfg, params, tokens)) * targets, -1))

  via_branch = jax.grad(lambda ad: loss(lora.attach(base, ad, lora_cfg)))(adapters)
  via_merge = jax.grad(lambda ad: loss(lora.merge(base, ad, lora_cfg)))(adapters)
  for name in adapters:
    for k in "ab":
      assert _rel_err(via_branch[name][k], via_merge[name][k]) < 1e-4, (name, k)
  assert float(jnp.abs(via_branch[next(iter(adapters))]["b"]).max()) > 0


def test_dropout_only_with_an_rng_and_deterministic_given_it():
  cfg, lora_cfg = QWEN, models.LoraConfig(rank=4, dropout=0.5)
  base, adapters = models.init_params(cfg, 0), _trained_adapters(cfg, lora_cfg)
  tokens = _tokens(cfg)
  run = lambda rng: models.logits(cfg, lora.attach(base, adapters, lora_cfg, rng), tokens)
  eval_mode = models.logits(cfg, lora.merge(base, adapters, lora_cfg), tokens)
  assert _rel_err(run(None), eval_mode) < 1e-5
  dropped = run(jax.random.PRNGKey(0))
  assert _rel_err(dropped, eval_mode) > 1e-3
  np.testing.assert_array_equal(dropped, run(jax.random.PRNGKey(0)))
  assert _rel_err(dropped, run(jax.random.PRNGKey(1))) > 1e-3
  no_dropout = models.LoraConfig(rank=4)
  assert _rel_err(models.logits(cfg, lora.attach(base, adapters, no_dropout, jax.random.PRNGKey(0)), tokens),
                  eval_mode) < 1e-5


# --- training the adapters only: the learner and SFT under LoRA ---

def _rl_batch(cfg, b=4, t=16, seed=0):
  rng = np.random.default_rng(seed)
  loss_mask = np.zeros((b, t), np.float32)
  loss_mask[:, 6:12] = 1.0
  return dict(tokens=rng.integers(0, cfg.vocab_size, (b, t)).astype(np.int32), positions=_positions(b, t),
              valid=np.ones((b, t), bool), loss_mask=loss_mask,
              advantages=(rng.normal(size=(b, 1)) * loss_mask).astype(np.float32),
              returns=(rng.normal(size=(b, 1)) * loss_mask).astype(np.float32))


def _numpy_copy(tree):
  return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def test_lora_rl_update_trains_the_adapters_only_against_the_base_as_reference():
  from agentgen_jax.rl import learner
  cfg, lora_cfg = QWEN, models.LoraConfig(rank=4, alpha=8.0, dropout=0.1)
  base = models.init_params(cfg, 0)
  before = _numpy_copy(base)
  lcfg = learner.LearnerConfig(lr=1e-2, kl_coef=0.1, kl_estimator="k3", critic="separate",
                               estimator="token_gae", micro_batch_size=2, mini_batch_size=4)
  state = learner.init_state(cfg, lora.attach(base, lora.init(cfg, lora_cfg, 1), lora_cfg), lcfg,
                             jax.random.PRNGKey(0))
  assert state.ref_params is None and state.frozen["layers"] is base["layers"]  # one copy of the weights
  assert set(state.params) == set(lora_cfg.modules) and set(state.critic_params["trunk"]) == set(state.params)
  batch = _rl_batch(cfg)
  ev = learner.evaluate_batch(cfg, state, batch, "generate", 4, lcfg)
  np.testing.assert_array_equal(ev["logprobs"], ev["ref_logprobs"])  # B = 0: the adapted model is the base
  batch.update(old_logprobs=ev["logprobs"], old_values=ev["old_values"], ref_logprobs=ev["ref_logprobs"])
  update = learner.make_update(cfg, lcfg, mode="generate")
  for _ in range(3):
    state, metrics = update(state, batch)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["kl"]) > 0
  jax.tree.map(np.testing.assert_array_equal, base, before)  # the base is bit-identical
  jax.tree.map(np.testing.assert_array_equal, state.frozen["layers"], before["layers"])
  assert float(jnp.abs(state.params["q_proj"]["b"]).max()) > 0
  assert float(jnp.abs(state.critic_params["trunk"]["up_proj"]["b"]).max()) > 0
  after = learner.evaluate_batch(cfg, state, batch, "generate", 4, lcfg)
  np.testing.assert_array_equal(after["ref_logprobs"], ev["ref_logprobs"])
  assert np.abs(after["logprobs"] - ev["logprobs"]).max() > 1e-3
  # Checkpoints hold the adapters, their optimiser state and the critic, not the base.
  saved = state.checkpointable()
  assert saved.frozen is None
  not_adapter_sized = [x.shape for x in jax.tree.leaves(saved)
                       if x.size > cfg.hidden_size + 2 and lora_cfg.rank not in x.shape[-2:]]
  assert not not_adapter_sized


def test_lora_sft_lowers_the_loss_and_leaves_the_base_bit_identical():
  from agentgen_jax.rl import learner, sft
  cfg, lora_cfg = QWEN, models.LoraConfig(rank=4, alpha=8.0, targets=("q", "v", "down"))
  base = models.init_params(cfg, 0)
  before = _numpy_copy(base)
  lcfg = learner.LearnerConfig(lr=3e-2, micro_batch_size=2)
  state = learner.init_state(cfg, lora.attach(base, lora.init(cfg, lora_cfg, 1), lora_cfg), lcfg,
                             jax.random.PRNGKey(0))
  step = sft.make_sft_step(cfg, lcfg)
  batch = _rl_batch(cfg)
  losses = []
  for _ in range(8):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0] - 0.1, losses
  jax.tree.map(np.testing.assert_array_equal, base, before)
  adapted = learner.policy_params(state)
  assert lora.is_attached(adapted) and adapted["layers"] is base["layers"]


# --- export: transformers (merged) and peft (adapter folder) ---

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()


def test_save_hf_writes_merged_weights_transformers_loads_to_the_adapted_logits(case, tmp_path):
  cfg, lora_cfg, base, adapters = case
  tokens = _tokens(cfg, 1, 12)
  attached = lora.attach(base, adapters, lora_cfg)
  models.save_hf(cfg, attached, str(tmp_path))
  hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
  assert _rel_err(_hf_logits(hf, tokens), models.logits(cfg, attached, tokens)) < 1e-4


def test_peft_adapter_folder_has_peft_names_and_layouts(tmp_path):
  from safetensors.numpy import load_file
  cfg, lora_cfg = CASES["llama_q_v_down"]
  adapters = _trained_adapters(cfg, lora_cfg)
  models.save_peft(adapters, lora_cfg, str(tmp_path), base_model="some/base")
  config = json.load(open(os.path.join(tmp_path, "adapter_config.json")))
  assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 2, 5.0)
  assert config["target_modules"] == ["q_proj", "v_proj", "down_proj"]
  assert config["base_model_name_or_path"] == "some/base"
  weights = load_file(os.path.join(tmp_path, "adapter_model.safetensors"))
  assert len(weights) == 3 * 3 * 2
  np.testing.assert_array_equal(weights["base_model.model.model.layers.2.mlp.down_proj.lora_A.weight"],
                                np.asarray(adapters["down_proj"]["a"][2]).T)  # [r, in]
  assert weights["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"].shape == (8, 2)  # [out, r]
  with pytest.raises(ValueError, match="do not match lora targets"):
    models.save_peft(adapters, models.LoraConfig(rank=2), str(tmp_path))


def test_peft_loads_the_adapter_folder_onto_the_base_with_the_same_logits(case, tmp_path):
  peft = pytest.importorskip("peft")
  cfg, lora_cfg, base, adapters = case
  models.save_hf(cfg, base, str(tmp_path / "base"))
  models.save_peft(adapters, lora_cfg, str(tmp_path / "adapter"), base_model=str(tmp_path / "base"))
  hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"), dtype=torch.float32)
  model = peft.PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval()
  tokens = _tokens(cfg, 1, 12)
  assert _rel_err(_hf_logits(model, tokens), models.logits(cfg, lora.attach(base, adapters, lora_cfg),
                                                            tokens)) < 1e-4


# --- a LoRA training run through the config schema (--config.lora.rank=...) ---

@pytest.mark.slow
def test_lora_training_run_moves_only_the_adapters_and_checkpoints_them_alone(tmp_path):
  from agentgen_jax import agent, checkpoint, config, logs, rl_loop, tasks
  from tests import train_config_tiny
  c = train_config_tiny.get_config()
  c.iterations, c.lora.rank, c.lora.alpha, c.lora.targets = 2, 4, 8.0, ("q", "v", "up")
  c.learner.lr = 1e-2
  cfg = config.resolve(c)
  assert cfg.lora == models.LoraConfig(rank=4, alpha=8.0, targets=("q", "v", "up"))
  policy = agent.from_config(cfg)
  base_before = _numpy_copy(lora.detach(policy.params))
  logger = logs.Logger(str(tmp_path))
  with tasks.make_pool(cfg, cfg.envs) as pool:
    params, _ = rl_loop.rl_train(cfg, policy, policy.params, pool, logs.StageOutput(str(tmp_path), logger))
  logger.close()
  jax.tree.map(np.testing.assert_array_equal, lora.detach(params), base_before)
  _, adapters = lora.split(params)
  assert set(adapters) == {"q_proj", "v_proj", "up_proj"}
  assert float(jnp.abs(adapters["up_proj"]["b"]).max()) > 0
  saved, meta = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), read_only=True).restore_raw()
  assert meta["base_model"] == "tiny"
  leaves = jax.tree.leaves(saved)
  assert sum(np.size(x) for x in leaves) < 4 * lora.num_params(policy.cfg, cfg.lora) + 1000


_MESH_SCRIPT = """
import json, sys
import jax, numpy as np
sys.path.insert(0, {root!r})
from agentgen_jax import models, parallel
from agentgen_jax.models import lora
from agentgen_jax.rl import learner
from tests import test_lora as tl
assert jax.device_count() == 8
cfg, lora_cfg = tl.QWEN, models.LoraConfig(rank=4, alpha=8.0)
attached = lora.attach(models.init_params(cfg, 0), lora.init(cfg, lora_cfg, 1), lora_cfg)
lcfg = learner.LearnerConfig(lr=1e-2, kl_coef=0.1, critic="shared", micro_batch_size=8, mini_batch_size=16)
mesh = parallel.make_mesh(axes=("data",))
batch = tl._rl_batch(cfg, b=16)
out = {{}}
for name, m in (("one", None), ("eight", mesh)):
  state = learner.init_state(cfg, attached, lcfg, jax.random.PRNGKey(0), mesh=m)
  ev = learner.evaluate_batch(cfg, state, batch, "generate", 8, lcfg, mesh=m)
  b = dict(batch, old_logprobs=ev["logprobs"], old_values=ev["old_values"], ref_logprobs=ev["ref_logprobs"])
  update = learner.make_update(cfg, lcfg, "generate", mesh=m)
  for _ in range(2):
    state, metrics = update(state, b)
  out[name] = jax.device_get(state.params)
err = max(tl._rel_err(a, b) for a, b in zip(jax.tree.leaves(out["eight"]), jax.tree.leaves(out["one"])))
print("RESULT" + json.dumps(dict(err=float(err))))
"""


@pytest.mark.slow
def test_lora_update_on_8_simulated_devices_equals_1_device():
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
             PYTHONPATH=root)
  proc = subprocess.run([sys.executable, "-c", _MESH_SCRIPT.format(root=root)], env=env, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout.split("RESULT", 1)[1])["err"] < 1e-5
