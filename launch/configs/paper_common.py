"""The AgentGym-RL recipe of the reference study (Xi, Guo et al. 2026), shared by the paper_* configs:
Qwen2.5-3B/7B-Instruct from a local HF folder, GRPO with groups of 8, clip 0.2, KL loss 1e-3 (k3), lr 1e-6,
entropy 1e-3, free-text ReAct (`generate`), loss on agent tokens only, each env's own turn cap.

Not a launch config itself: paper_cross_env.py, paper_sequential.py and paper_difficulty.py import it.
"""

from agentgen_jax.config import default_config

ENVS = ["webshop", "searchqa", "textcraft", "alfworld", "babyai"]


def recipe(model: str = "/path/to/Qwen2.5-3B-Instruct"):
  c = default_config()
  c.model = model                   # a local HF folder (config.json + *.safetensors)
  c.dtype = "bfloat16"
  c.seed = 0
  c.pool_size, c.workers = 64, 16   # 8 tasks x group 8 per iteration
  c.env_timeout_s = 300.0
  c.rollout.mode = "generate"
  c.rollout.max_turns = 0           # each env's own cap (docs/ENVIRONMENTS.md)
  c.rollout.max_new_tokens = 512
  c.rollout.max_episode_tokens = 8192
  c.rollout.temperature = 1.0
  c.learner.estimator = "grpo"
  c.group_size = 8
  c.tasks_per_iteration = 8
  c.iterations = 150
  c.learner.lr = 1e-6
  c.learner.clip_low = c.learner.clip_high = 0.2
  c.learner.kl_coef = 1e-3
  c.learner.kl_estimator = "k3"
  c.learner.kl_mode = "loss"
  c.learner.entropy_coef = 1e-3
  c.learner.micro_batch_size = 4
  c.learner.mini_batch_size = 32
  c.learner.epochs = 1
  c.eval.split = "test"
  c.eval.tasks = 200
  c.eval.k = 8
  c.eval.temperature = 1.0
  c.checkpoint_every = 10
  c.max_to_keep = 2
  c.export_hf = True
  return c
