"""launch/benchmarks/model.py's decode floor: the jax and torch weight-matmul chains it times do the same
work (the same logits from the same weights), against a float64 numpy chain."""

import numpy as np
import pytest

from agentgen_jax import models
from launch.benchmarks import model as model_bench


def _numpy_chain(cfg, params, x):
  for i in range(cfg.num_layers):
    k = {name: np.asarray(params["layers"][name]["kernel"][i], np.float64)
         for name in model_bench._STEP_KERNELS}
    x = x + (x @ k["q_proj"]) @ k["o_proj"] + 1e-9 * ((x @ k["k_proj"]).sum() + (x @ k["v_proj"]).sum())
    gate = x @ k["gate_proj"]
    x = x + (gate / (1 + np.exp(-gate)) * (x @ k["up_proj"])) @ k["down_proj"]
  head = params["embed"]["embedding"] if cfg.tie_embeddings else np.asarray(params["lm_head"]).T
  return x @ np.asarray(head, np.float64).T


@pytest.mark.parametrize("tied", [True, False])
def test_weight_matmul_floor_runs_the_same_chain_in_jax_and_torch(tied):
  cfg = models.preset("tiny", tie_embeddings=tied)
  params = models.init_params(cfg, 0)
  runs = model_bench._weight_matmul_runs(cfg, params, batch=4)
  x0 = np.random.default_rng(0).standard_normal((4, cfg.hidden_size))
  ref = _numpy_chain(cfg, params, x0)
  assert ref.shape == (4, cfg.vocab_size)
  for name, fn in runs.items():
    np.testing.assert_allclose(fn(), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max(), err_msg=name)
