"""The rollout driver: KV-cache turns give the same log-probs the learner recomputes on the whole episode
(token and choice mode), masks cover agent tokens only, expert episodes solve their tasks."""

import dataclasses
import json
import logging

import jax
import numpy as np
import pytest

import envs
from agentgen_jax import agent as agent_lib
from agentgen_jax import models, rollout, sampling
from agentgen_jax import tokenizer as tokenizer_lib
from agentgen_jax.demos import expert_episodes
from agentgen_jax.evaluation import Evaluator
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


@pytest.mark.parametrize("mode", ["generate", "choose"])
def test_per_layer_sampler_params_play_the_same_episodes(setup, mode):
  # sampler_layers "split" (layer_loop auto on CPU): Roller.run splits the layer params once per call; the
  # episodes, their sampler log-probs and the choices are those of the stacked params.
  cfg, params, tok, pool, tasks = setup
  rcfg = rollout.RolloutConfig(mode=mode, max_turns=3, max_new_tokens=12, max_episode_tokens=1024)
  runs = [rollout.Roller(c, tok, pool, rcfg).run(params, tasks, jax.random.PRNGKey(0))
          for c in (cfg.replace(sampler_layers="stacked"), cfg.replace(sampler_layers="split"))]
  assert [ep.tokens for ep in runs[0]] == [ep.tokens for ep in runs[1]]
  assert [ep.actions for ep in runs[0]] == [ep.actions for ep in runs[1]]
  for a, b in zip(*runs):
    np.testing.assert_allclose(b.logprobs, a.logprobs, atol=1e-5)
  assert not models.is_split(params)  # the caller's params are left as they were


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


def _log_softmax64(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  m = x.max(axis=-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def test_choose_mode_records_logprobs_of_the_tempered_distribution(setup):
  """At temperature 0.7, each turn's choice log-prob is that of softmax(scores / 0.7) over the candidates
  (score: the sum of the candidate's untempered token log-probs, as rl.policy.choice_scores computes it), and
  the chosen tokens carry log_softmax(logits / 0.7) token log-probs: both checked against a float64
  reference from full forwards without a cache."""
  cfg, params, _, _, _ = setup
  temperature = 0.7
  checked = 0
  for ep in _run(setup, "choose", temperature=temperature)[:2]:
    turn_ids = np.asarray(ep.turn_ids)
    for k, (cands, choice, lp) in enumerate(ep.choices):
      start = int(np.nonzero(turn_ids == k)[0][0])
      seqs = [ep.tokens[:start] + c for c in cands]
      width = sampling.bucket(max(len(x) for x in seqs))
      padded = np.zeros((len(seqs), width), np.int32)
      for i, x in enumerate(seqs):
        padded[i, :len(x)] = x
      logits = np.asarray(models.logits(cfg, params, padded), np.float64)
      steps = [start - 1 + np.arange(len(c)) for c in cands]
      logp, tempered = _log_softmax64(logits), _log_softmax64(logits / temperature)
      scores = np.array([logp[i, s, c].sum() for i, (s, c) in enumerate(zip(steps, cands))]) / temperature
      np.testing.assert_allclose(lp, _log_softmax64(scores)[choice], atol=2e-4)
      np.testing.assert_allclose(ep.logprobs[start:start + len(cands[choice])],
                                 tempered[choice, steps[choice], cands[choice]], atol=2e-4)
      checked += 1
  assert checked >= 2


class _EndsRowZeroEarly:
  """The pool, except that row 0's episode ends (as a failure) after its first step."""

  def __init__(self, pool):
    self.pool, self.size = pool, pool.size

  def __getattr__(self, name):
    return getattr(self.pool, name)

  def step(self, actions, parse=True):
    steps = self.pool.step(actions, parse=parse)
    if actions[0] is not None and steps[0] is not None:
      steps[0] = dataclasses.replace(steps[0], done=True, success=False, reward=0.0, score=0.0)
    return steps


def test_choose_draws_of_a_row_do_not_depend_on_the_other_rows(setup):
  """Common random numbers: each row's choice comes from its own uniform of the turn, so when row 0 ends
  early the other rows still make exactly the draws they made before (earlier, the rows still playing
  consumed one stream in order, and every row after an ended one drew different numbers)."""
  cfg, params, tok, pool, tasks = setup
  # Temperature 30: the random tiny model's scores differ by tens of nats (the shortest action takes every
  # draw at temperature 1); flattened, the draws matter.
  rcfg = rollout.RolloutConfig(mode="choose", max_turns=3, max_episode_tokens=1024, temperature=30.0)
  full = rollout.Roller(cfg, tok, pool, rcfg).run(params, tasks, jax.random.PRNGKey(3))
  cut = rollout.Roller(cfg, tok, _EndsRowZeroEarly(pool), rcfg).run(params, tasks, jax.random.PRNGKey(3))
  assert cut[0].turns == 1 < full[0].turns
  assert len({c for ep in full for _, c, _ in ep.choices}) > 3   # the draws are not all one choice
  for a, b in zip(full[1:], cut[1:]):
    assert [c for _, c, _ in a.choices] == [c for _, c, _ in b.choices]
    assert a.tokens == b.tokens


def test_evaluation_draws_do_not_depend_on_the_stage_name(setup):
  """Every stage's evaluation of an env uses the same random numbers (paired stages): the same params give
  the same episodes under two stage names, and an evaluator with another seed draws other episodes."""
  cfg, params, tok, pool, _ = setup
  agent = agent_lib.Agent(cfg, params, tok, rollout.ChatFormat(tok))
  rcfg = rollout.RolloutConfig(mode="choose", max_turns=2, max_episode_tokens=1024, temperature=30.0)
  ev = Evaluator(agent, pool, ["textcraft"], rcfg, split="test", difficulties=("easy",), n_tasks=2, k=2)
  a, b = ev.run(params, "base"), ev.run(params, "after:textcraft")
  assert [r["transcript"] for r in a.records] == [r["transcript"] for r in b.records]
  other = Evaluator(agent, pool, ["textcraft"], rcfg, split="test", difficulties=("easy",), n_tasks=2, k=2,
                    seed=1).run(params, "base")
  assert [r["transcript"] for r in a.records] != [r["transcript"] for r in other.records]


def test_greedy_choose_takes_the_highest_scoring_candidate(setup):
  episodes = _run(setup, "choose", temperature=0.0)
  for ep in episodes:
    for cands, choice, lp in ep.choices:
      # the argmax of a softmax over n candidates has probability >= 1/n
      assert 0 <= choice < len(cands) and lp >= np.log(1.0 / len(cands)) - 1e-6


@pytest.mark.parametrize("layout", ["one piece", "pieces"])
def test_candidate_scores_are_those_of_the_real_context_however_full_the_cache(setup, layout):
  """Candidates totalling more tokens than the cache has slots left are scored against the cached prefix
  (never written past the end): same log-probs as with a roomy cache and as a float64 full forward; packed
  in one piece or spread over pieces (no candidate straddling two)."""
  cfg, params, _, _, _ = setup
  prompts = [list(range(30, 50)), list(range(60, 73))]
  candidates = [[[5, 6, 7], [8, 9, 10, 11], [12] * 6], [[3] * 10, [4, 5]]]
  # 10-token pieces: row 0 packs [3 + 4] then [6], row 1 [10] then [2]; a third piece stays empty.
  size, count = (16, 1) if layout == "one piece" else (10, 3)
  assert rollout._candidate_pieces(candidates, 0 if layout == "one piece" else 8) == (16, 1)
  tokens, valid = np.zeros((2, 20), np.int32), np.zeros((2, 20), bool)
  for row, p in enumerate(prompts):
    tokens[row, :len(p)], valid[row, :len(p)] = p, True
  scores = {}
  for slots in (32, 512):   # the prompt chunk takes 20 slots: 12 are left for 13 + 12 candidate tokens
    ctx = sampling.extend(cfg, params, sampling.new_context(cfg, 2, slots), tokens, valid)
    packed = rollout._pack_candidates(candidates, np.asarray(ctx.next_pos), size, count)
    segment = packed[4]
    if layout == "pieces":
      assert segment[0, :7].tolist() == [0] * 3 + [1] * 4 and segment[0, 10:16].tolist() == [2] * 6
      assert segment[1, 10:12].tolist() == [1, 1] and (segment[:, 20:] == -1).all()
    scores[slots] = rollout._score_packed(cfg, params, ctx, packed, 1.0)[0]
  np.testing.assert_allclose(scores[32], scores[512], atol=1e-5)
  for row, (p, cands) in enumerate(zip(prompts, candidates)):
    for c, cand in enumerate(cands):
      logp = _log_softmax64(np.asarray(models.logits(cfg, params, np.asarray([p + cand]))))[0]
      ref = logp[len(p) - 1 + np.arange(len(cand)), cand]
      np.testing.assert_allclose(scores[32][row][segment[row] == c], ref, atol=2e-4)


def test_choose_turn_past_the_cache_capacity_ends_truncated_and_counted(setup):
  cfg, params, tok, pool, tasks = setup
  chat = rollout.ChatFormat(tok)
  prompts = [chat.prompt(chat.first_messages(pool.info(name)["instruction"], obs.text))
             for (name, _), obs in zip(tasks, pool.reset(tasks))]
  # Room for the first prompt chunk and 4 more slots: no listed action (plus end of turn) fits.
  slots = sampling.bucket(max(len(p) for p in prompts)) + 4
  rcfg = rollout.RolloutConfig(mode="choose", max_turns=3, max_episode_tokens=1024, cache_slots=slots)
  for ep in rollout.Roller(cfg, tok, pool, rcfg).run(params, tasks, jax.random.PRNGKey(0)):
    assert ep.truncated and ep.truncated_reason == "cache" and ep.turns == 0
    record = ep.record()
    assert record["truncated"] and record["truncated_reason"] == "cache"
    assert json.loads(record["transcript"])["truncated_reason"] == "cache"


def test_max_candidates_cut_warns_once_and_is_counted(setup, caplog):
  cfg, params, tok, pool, tasks = setup
  rcfg = rollout.RolloutConfig(mode="choose", max_turns=2, max_episode_tokens=1024, max_candidates=1)
  with caplog.at_level(logging.WARNING):
    episodes = rollout.Roller(cfg, tok, pool, rcfg).run(params, tasks, jax.random.PRNGKey(0))
  assert sum("max_candidates=1" in r.getMessage() for r in caplog.records) == 1
  for ep in episodes:
    assert all(len(cands) == 1 for cands, _, _ in ep.choices)
    assert ep.candidates_cut > 0 and ep.record()["candidates_cut"] == ep.candidates_cut
  # The default keeps every listed action.
  assert rollout.RolloutConfig().max_candidates == 0


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
