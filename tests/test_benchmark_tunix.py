"""The Tunix benchmark compares like with like: the weights copied from Tunix's Qwen2 give its logits, both
samplers produce the same greedy tokens, single-turn and over episodes (our KV cache kept across turns, Tunix
re-sampling the conversation), and without Tunix the suite refuses in one line naming the install command."""

import sys

import numpy as np
import pytest

from agentgen_jax import models
from launch.benchmarks import tunix as bench

PROMPT, OBSERVATION, NEW, TURNS = 16, 8, 6, 3


@pytest.fixture(scope="module")
def weights():
  # The modules the suite imports (launch/install.sh installs Tunix best effort, without its dependencies).
  for module in ("tunix.generate.sampler", "tunix.models.qwen2.model"):
    pytest.importorskip(module, reason=f"{module} does not import: Tunix 0.1.7 is not installed")
  cfg = bench.model_config(quick=True)
  model = bench.tunix_model(cfg, seed=0)
  return cfg, model, bench.params_from_tunix(cfg, model)


@pytest.fixture(scope="module")
def samplers(weights):
  """Tunix samplers, one per turn (each compiles its own programs; the first also serves the single turn)."""
  cfg, model, _ = weights
  return [bench.tunix_sampler(cfg, model, length + NEW)
          for length in bench.episode_lengths(PROMPT, OBSERVATION, NEW, TURNS)]


def _tokens(cfg, *shape, seed=0):
  return np.random.default_rng(seed).integers(3, cfg.vocab_size, shape).astype(np.int32)


def test_copied_weights_give_the_tunix_models_logits(weights):
  cfg, model, params = weights
  tokens = _tokens(cfg, 2, 24)
  ours = np.asarray(models.logits(cfg, params, tokens))
  ref = bench.tunix_logits(model, tokens)
  assert np.abs(ref).max() > 1.0       # logits all near 0 would pass anything
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-3)


def test_both_samplers_give_the_same_greedy_tokens(weights, samplers):
  cfg, _, params = weights
  prompts = _tokens(cfg, 2, PROMPT, seed=1)
  ours = bench.ours_generate(cfg, params, prompts, NEW)
  assert ours.shape == (2, NEW) and len(np.unique(ours)) > 1
  np.testing.assert_array_equal(ours, bench.tunix_generate(samplers[0], prompts, NEW))


def test_episodes_with_our_cache_reuse_match_tunix_resampling_the_conversation(weights, samplers):
  cfg, _, params = weights
  prompts, observations = _tokens(cfg, 2, PROMPT, seed=2), _tokens(cfg, TURNS - 1, 2, OBSERVATION, seed=3)
  ours = bench.ours_episodes(cfg, params, prompts, observations, NEW)
  assert ours.shape == (2, TURNS * NEW)
  np.testing.assert_array_equal(ours, bench.tunix_episodes(samplers, prompts, observations, NEW))


def test_without_tunix_the_suite_exits_naming_the_install_command(monkeypatch):
  monkeypatch.setitem(sys.modules, "tunix.generate", None)   # makes `from tunix.generate import ...` fail
  monkeypatch.setitem(sys.modules, "tunix", None)
  with pytest.raises(SystemExit, match="pip install --no-deps google-tunix==0.1.7 ") as exit_info:
    bench.run(quick=True)
  assert "\n" not in str(exit_info.value)
