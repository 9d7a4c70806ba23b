"""The rollout driver: KV-cache turns give the same log-probs the learner recomputes on the whole episode
(token and choice mode), masks cover agent tokens only, expert episodes solve their tasks."""

import jax
import numpy as np
import pytest

import envs
from agentgen_jax import models, rollout
from agentgen_jax import tokenizer as tokenizer_lib
from agentgen_jax.demos import expert_episodes
from agentgen_jax.rl import batch as rl_batch
from agentgen_jax.rl import learner


@pytest.fixture(scope="module")
def setup():
  cfg, params = models.load("tiny")
  tok = tokenizer_lib.load("tiny")
  pool = envs.EnvPool("textcraft", size=4, workers=1)
  tasks = [("textcraft", t) for t in pool.tasks("textcraft", "train", "easy")[:4]]
  yield cfg, params, tok, pool, tasks
  pool.close()


def _run(setup, mode, **kw):
  cfg, params, tok, pool, tasks = setup
  rcfg = rollout.RolloutConfig(mode=mode, max_turns=3, max_new_tokens=12, max_episode_tokens=1024, **kw)
  return rollout.Roller(cfg, tok, pool, rcfg).run(params, tasks, jax.random.PRNGKey(0))


def test_generate_logprobs_match_learner_recompute(setup):
  cfg, params, _, _, _ = setup
  episodes = _run(setup, "generate")
  batch = rl_batch.token_batch(episodes)
  lcfg = learner.LearnerConfig()
  state = learner.init_state(cfg, params, lcfg, jax.random.PRNGKey(1))
  out = learner.evaluate_batch(cfg, state, batch, "generate", lcfg=lcfg)
  mask = batch["loss_mask"] > 0
  assert mask.sum() > 0
  assert np.abs(out["logprobs"][mask] - batch["old_logprobs"][mask]).mean() < 1e-3


def test_agent_tokens_decode_to_the_actions_sent(setup):
  _, _, tok, _, _ = setup
  for ep in _run(setup, "generate"):
    assert ep.turns >= 1 and len(ep.tokens) == len(ep.loss_mask) == len(ep.logprobs)
    turns = sorted(set(t for t in ep.turn_ids if t >= 0))
    assert turns == list(range(ep.turns))
    for k, action in enumerate(ep.actions):
      agent = [t for t, tid in zip(ep.tokens, ep.turn_ids) if tid == k]
      assert tok.decode(agent, skip_special_tokens=True) == action
    # env tokens are never in the loss
    assert all(m == 0 for m, tid in zip(ep.loss_mask, ep.turn_ids) if tid < 0)


def test_same_seed_same_episodes(setup):
  a, b = _run(setup, "generate"), _run(setup, "generate")
  assert [ep.tokens for ep in a] == [ep.tokens for ep in b]


def test_choice_logprobs_match_learner_recompute(setup):
  cfg, params, _, _, _ = setup
  episodes = _run(setup, "choose")
  for ep in episodes:
    assert ep.actions and len(ep.choices) == ep.turns
    assert ep.invalid == 0  # every chosen action is a listed valid action
  batch = rl_batch.choice_batch(episodes)
  lcfg = learner.LearnerConfig()
  state = learner.init_state(cfg, params, lcfg, jax.random.PRNGKey(1))
  out = learner.evaluate_batch(cfg, state, batch, "choose", micro_batch_size=2, lcfg=lcfg)
  mask = batch["unit_mask"] > 0
  assert np.abs(out["logprobs"][mask] - batch["old_logprobs"][mask]).max() < 1e-3
  # choice log-probs are proper: every turn's distribution sums to one over its candidates
  assert (batch["old_logprobs"][mask] <= 1e-6).all()


def test_greedy_choose_takes_the_highest_scoring_candidate(setup):
  episodes = _run(setup, "choose", temperature=0.0)
  for ep in episodes:
    for cands, choice, lp in ep.choices:
      # the argmax of a softmax over n candidates has probability >= 1/n
      assert 0 <= choice < len(cands) and lp >= np.log(1.0 / len(cands)) - 1e-6


def test_episode_token_budget_truncates(setup):
  cfg, params, tok, pool, tasks = setup
  rcfg = rollout.RolloutConfig(mode="generate", max_turns=10, max_new_tokens=12, max_episode_tokens=400)
  for ep in rollout.Roller(cfg, tok, pool, rcfg).run(params, tasks, jax.random.PRNGKey(0)):
    assert len(ep.tokens) <= 400
    assert ep.truncated or ep.done


def test_expert_episodes_succeed_with_agent_masks(setup):
  _, _, tok, pool, tasks = setup
  chat = rollout.ChatFormat(tok)
  eps = expert_episodes(pool, chat, tasks, mode="generate")
  assert len(eps) == len(tasks) and all(ep.success for ep in eps)
  for ep in eps:
    agent = tok.decode([t for t, m in zip(ep.tokens, ep.loss_mask) if m], skip_special_tokens=True)
    assert agent.count("Action:") == ep.turns


def test_unknown_mode_is_a_clear_error():
  with pytest.raises(ValueError, match="valid: generate, choose"):
    rollout.RolloutConfig(mode="pick")
