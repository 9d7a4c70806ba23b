"""The multi-turn episode driver: a batch of episodes over an EnvPool, the jitted sampler extending each
episode's KV cache turn by turn (the conversation prefix is never re-encoded), and per-episode records.

Token layout of an episode: [chat prompt: instruction + obs_1][agent_1][env tokens: end of turn + obs_2 +
generation prompt][agent_2]...; loss_mask is 1 on agent tokens only; the step reward sits on the last token
of each agent turn. Two action modes: `generate` (free text parsed by the env) and `choose` (the policy's
distribution over the env's listed valid actions; GLAM, Carta et al. 2023).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from agentgen_jax import models, parallel, sampling

MODES = ("generate", "choose")
_SENTINEL = "\u2063AGENTGEN_TURN\u2063"


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  mode: str = "generate"
  max_turns: int | None = None          # None: the env's own cap (pool.info(name)["max_turns"])
  max_new_tokens: int = 64              # per agent turn (generate mode)
  max_episode_tokens: int = 2048        # prompt + all turns; an episode past it ends as truncated
  temperature: float = 1.0              # 0 = greedy (generate) / argmax (choose)
  top_p: float = 1.0
  max_candidates: int = 32              # choose mode: valid actions beyond this are cut (listed order)
  system_prompt: str | None = None

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"unknown action mode {self.mode!r}; valid: {', '.join(MODES)}")


@dataclasses.dataclass
class Episode:
  """One episode under construction (host side)."""

  env: str
  task: str
  max_turns: int
  messages: list[dict[str, str]]
  tokens: list[int] = dataclasses.field(default_factory=list)
  loss_mask: list[int] = dataclasses.field(default_factory=list)
  logprobs: list[float] = dataclasses.field(default_factory=list)
  rewards: list[float] = dataclasses.field(default_factory=list)
  turn_ids: list[int] = dataclasses.field(default_factory=list)
  turns: int = 0
  invalid: int = 0
  done: bool = False
  success: bool = False
  score: float = 0.0
  env_error: str = ""
  truncated: bool = False
  actions: list[str] = dataclasses.field(default_factory=list)
  step_invalid: list[bool] = dataclasses.field(default_factory=list)
  out_of_turns: bool = False
  ended_by_env: bool = False
  # choose mode: per turn (candidate token lists, chosen index, logprob of the choice)
  choices: list[tuple[list[list[int]], int, float]] = dataclasses.field(default_factory=list)
  pending: list[int] = dataclasses.field(default_factory=list)   # env tokens not yet in the cache
  last_obs: Any = None                                          # the env's latest Observation

  def add(self, tokens: Sequence[int], agent: bool, logprobs: Sequence[float] | None = None) -> None:
    self.tokens += list(tokens)
    self.loss_mask += [int(agent)] * len(tokens)
    self.logprobs += list(logprobs) if logprobs is not None else [0.0] * len(tokens)
    self.rewards += [0.0] * len(tokens)
    self.turn_ids += [self.turns if agent else -1] * len(tokens)

  def record(self, tag: str = "") -> dict[str, Any]:
    """The episode as a data.py record (also what study/ reads)."""
    return {"tokens": np.asarray(self.tokens, np.int32), "loss_mask": np.asarray(self.loss_mask, np.int8),
            "logprobs": np.asarray(self.logprobs, np.float32),
            "rewards": np.asarray(self.rewards, np.float32),
            "turn_ids": np.asarray(self.turn_ids, np.int32), "env": self.env, "task": self.task,
            "success": self.success, "score": float(self.score), "turns": self.turns,
            "n_tokens": len(self.tokens), "invalid": self.invalid, "env_error": bool(self.env_error),
            "tag": tag, "transcript": json.dumps({"messages": self.messages, "actions": self.actions,
                                                   "step_invalid": self.step_invalid,
                                                   "truncated": self.truncated,
                                                   "out_of_turns": self.out_of_turns,
                                                   "ended_by_env": self.ended_by_env,
                                                   "max_turns": self.max_turns,
                                                   "env_error": self.env_error}, ensure_ascii=False)}


class ChatFormat:
  """Turns conversations into token ids with the model's chat template, incrementally per turn."""

  def __init__(self, tokenizer, system_prompt: str | None = None):
    self.tokenizer = tokenizer
    self.system_prompt = system_prompt
    self.eos_ids = self._eos_ids()
    # What the template puts between an assistant message and the next user message: its first token
    # is the end-of-turn marker (ChatML: <|im_end|>), which a model that stopped on it already emitted.
    probe = self._render([{"role": "user", "content": "x"}, {"role": "assistant", "content": _SENTINEL},
                          {"role": "user", "content": "y"}], generation_prompt=True)
    tail = probe.split(_SENTINEL, 1)[1]
    self._end_of_turn = self.encode(tail.split("y", 1)[0])[:1]

  def _eos_ids(self) -> tuple[int, ...]:
    ids = {self.tokenizer.eos_token_id}
    for token in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>"):
      tid = self.tokenizer.convert_tokens_to_ids(token)
      if isinstance(tid, int) and tid != self.tokenizer.unk_token_id and tid is not None:
        ids.add(tid)
    return tuple(sorted(i for i in ids if i is not None))

  def _render(self, messages, generation_prompt: bool) -> str:
    return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                              add_generation_prompt=generation_prompt)

  def encode(self, text: str) -> list[int]:
    return list(self.tokenizer.encode(text, add_special_tokens=False))

  def first_messages(self, instruction: str, observation: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
    return messages + [{"role": "user", "content": f"{instruction}\n\n{observation}".strip()}]

  def prompt(self, messages) -> list[int]:
    return self.encode(self._render(messages, generation_prompt=True))

  def continuation(self, messages, agent_tokens: Sequence[int]) -> list[int]:
    """Env tokens after an agent turn: end of turn (unless the model emitted it), the new user message,
    and the generation prompt. `messages` ends with that assistant and user message."""
    *head, assistant, user = messages
    text = self._render(head + [dict(assistant, content=_SENTINEL), user], generation_prompt=True)
    tokens = self.encode(text.split(_SENTINEL, 1)[1])
    if agent_tokens and tokens[:1] == self._end_of_turn and agent_tokens[-1] == self._end_of_turn[0]:
      tokens = tokens[1:]
    return tokens

  @property
  def end_of_turn(self) -> list[int]:
    return list(self._end_of_turn)

  def decode(self, tokens: Sequence[int]) -> str:
    return self.tokenizer.decode(list(tokens), skip_special_tokens=True)


@functools.partial(jax.jit, static_argnums=0)
def _score_candidates(cfg, params, ctx, tokens, valid, attn_mask, positions, first):
  """Log-probs of candidate continuations appended to each row's context (the cache is not changed).

  tokens/valid/positions/first [B,T]: candidates packed per row; attn_mask [B,T,T] lets each candidate see
  only itself; first marks a candidate's first token (predicted by the context's last logits).
  """
  logits, _, _ = models.forward(cfg, params, tokens, positions, valid, ctx.cache, attn_mask)
  prev = jnp.concatenate([ctx.last_logits[:, None], logits[:, :-1]], axis=1)
  prev = jnp.where(first[..., None], ctx.last_logits[:, None], prev)
  logp = jax.nn.log_softmax(prev.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0] * valid


def _pack_candidates(candidates: list[list[list[int]]], next_pos: np.ndarray):
  """Packs each row's candidate token lists into one chunk with a block-diagonal causal mask."""
  lengths = [sum(len(c) for c in cands) for cands in candidates]
  t = sampling.bucket(max(lengths + [1]))
  b = len(candidates)
  tokens = np.zeros((b, t), np.int32)
  valid = np.zeros((b, t), bool)
  positions = np.zeros((b, t), np.int32)
  first = np.zeros((b, t), bool)
  segment = np.full((b, t), -1, np.int32)
  for row, cands in enumerate(candidates):
    i = 0
    for c, cand in enumerate(cands):
      n = len(cand)
      tokens[row, i:i + n] = cand
      valid[row, i:i + n] = True
      positions[row, i:i + n] = next_pos[row] + np.arange(n)
      first[row, i] = True
      segment[row, i:i + n] = c
      i += n
  causal = np.tril(np.ones((t, t), bool))
  attn = (segment[:, :, None] == segment[:, None, :]) & (segment[:, None, :] >= 0) & causal
  return tokens, valid, positions, first, segment, attn


class Roller:
  """Runs batches of episodes of a policy over an EnvPool.

  `timings` accumulates the seconds run() spends in the model ("generate": prefill, decode, candidate
  scoring, waited for), in the EnvPool ("env": reset, step, info) and in the chat template ("tokenize");
  the rest is host bookkeeping. The parts are exact with `profile=True`, which waits for the device after
  each model call (launch/benchmarks/e2e.py); without it, training and evaluation never wait for the device
  where they need not, and device time may count in whichever part next waits for it. Set it to {} to start
  over.
  """

  def __init__(self, cfg, tokenizer, pool, rollout_cfg: RolloutConfig, mesh=None, profile: bool = False):
    self.cfg = cfg
    self.pool = pool
    self.rcfg = rollout_cfg
    self.chat = ChatFormat(tokenizer, rollout_cfg.system_prompt)
    self.mesh = mesh
    self.profile = profile
    self.timings: dict[str, float] = {}

  # ---- helpers -----------------------------------------------------------------------------------

  @contextlib.contextmanager
  def _timed(self, part: str):
    start = time.perf_counter()
    try:
      yield
    finally:
      self.timings[part] = self.timings.get(part, 0.0) + time.perf_counter() - start

  def _synced(self, x):
    """x, once the device has computed it when profiling (so the timed part holds its device time)."""
    return jax.block_until_ready(x) if self.profile else x

  def _rows(self, n: int) -> int:
    """Context rows for n episodes: a multiple of the mesh's batch axes (the extra rows stay empty)."""
    shards = parallel.batch_divisor(self.mesh)
    return -(-n // shards) * shards

  def _extend(self, params, ctx, chunks: list[list[int]]):
    t = sampling.bucket(max([len(c) for c in chunks] + [1]))
    rows = ctx.cache.valid.shape[0]  # padding rows (see _rows) get no tokens
    tokens = np.zeros((rows, t), np.int32)
    valid = np.zeros((rows, t), bool)
    for row, chunk in enumerate(chunks):
      tokens[row, :len(chunk)] = chunk
      valid[row, :len(chunk)] = True
    return sampling.extend(self.cfg, params, ctx, jnp.asarray(tokens), jnp.asarray(valid))

  def _slots_left(self, ctx) -> int:
    return ctx.cache.valid.shape[1] - int(ctx.cache.index)

  # ---- the episode loop --------------------------------------------------------------------------

  def run(self, params, tasks: Sequence[tuple[str, str]], rng: jax.Array, tag: str = "") -> list[Episode]:
    """Plays one episode per (env, task) (at most pool.size at a time); returns them in task order."""
    episodes: list[Episode] = []
    size = self.pool.size
    for start in range(0, len(tasks), size):
      rng, sub = jax.random.split(rng)
      episodes += self._run_batch(params, list(tasks[start:start + size]), sub)
    return episodes

  def _run_batch(self, params, tasks, rng) -> list[Episode]:
    rcfg = self.rcfg
    with self._timed("env"):
      observations = self.pool.reset(tasks)
    episodes = []
    for (name, task), obs in zip(tasks, observations):
      with self._timed("env"):
        info = self.pool.info(name)
      max_turns = rcfg.max_turns or int(info["max_turns"])
      with self._timed("tokenize"):
        ep = Episode(env=name, task=task, max_turns=max_turns,
                     messages=self.chat.first_messages(info["instruction"], obs.text))
        ep.pending = self.chat.prompt(ep.messages)
      ep.last_obs = obs
      episodes.append(ep)
    # Slots: every turn uses a bucketed chunk plus the decoded tokens; holes are masked.
    max_len = sampling.bucket(2 * rcfg.max_episode_tokens + 4 * rcfg.max_new_tokens)
    with self._timed("generate"):
      ctx = self._synced(sampling.new_context(self.cfg, self._rows(len(tasks)), max_len, mesh=self.mesh))
    while True:
      active = [ep for ep in episodes if not ep.done]
      if not active:
        break
      # End episodes that cannot fit another turn.
      for ep in active:
        need = len(ep.tokens) + len(ep.pending) + rcfg.max_new_tokens
        if need > rcfg.max_episode_tokens:
          ep.done, ep.truncated = True, True
      chunk_len = sampling.bucket(max([len(ep.pending) for ep in episodes] + [1]))
      if self._slots_left(ctx) < chunk_len + 2 * rcfg.max_new_tokens + 64:
        for ep in episodes:
          if not ep.done:
            ep.done, ep.truncated = True, True
      if all(ep.done for ep in episodes):
        break
      chunks = [ep.pending if not ep.done else [] for ep in episodes]
      for ep, chunk in zip(episodes, chunks):
        if chunk:
          ep.add(chunk, agent=False)
          ep.pending = []
      with self._timed("generate"):
        ctx = self._synced(self._extend(params, ctx, chunks))
      rng, sub = jax.random.split(rng)
      if rcfg.mode == "generate":
        ctx, actions = self._generate_turn(params, ctx, episodes, sub)
      else:
        ctx, actions = self._choose_turn(params, ctx, episodes, sub)
      with self._timed("env"):
        steps = self.pool.step(actions, parse=rcfg.mode == "generate")
      for ep, action, step in zip(episodes, actions, steps):
        if action is None or step is None:
          continue
        self._after_step(ep, action, step)
    return episodes

  def _after_step(self, ep: Episode, action: str, step) -> None:
    ep.turns += 1
    ep.actions.append(action)
    ep.step_invalid.append(bool(step.info.get("invalid")))
    ep.invalid += int(ep.step_invalid[-1])
    # The step reward sits on the last agent token of the turn.
    ep.rewards[-1] += float(step.reward)
    ep.score = float(step.score)
    ep.success = bool(step.success)
    ep.messages.append({"role": "assistant", "content": action})
    if step.info.get("env_error"):
      ep.env_error = str(step.info["env_error"])
    if step.done or ep.turns >= ep.max_turns:
      ep.done = True
      ep.ended_by_env = step.done
      ep.out_of_turns = not step.done
      return
    ep.messages.append({"role": "user", "content": step.observation.text})
    agent_tokens = [t for t, m in zip(ep.tokens, ep.loss_mask) if m][-1:]
    with self._timed("tokenize"):
      ep.pending = self.chat.continuation(ep.messages, agent_tokens)
    ep.last_obs = step.observation

  def _generate_turn(self, params, ctx, episodes, rng):
    rcfg = self.rcfg
    active = np.zeros(ctx.cache.valid.shape[0], bool)
    active[:len(episodes)] = [not ep.done for ep in episodes]
    with self._timed("generate"):
      ctx, gen = sampling.decode(self.cfg, params, ctx, rng, jnp.asarray(active),
                                 max_new_tokens=rcfg.max_new_tokens, temperature=rcfg.temperature,
                                 top_p=rcfg.top_p, eos_ids=self.chat.eos_ids)
      tokens, logprobs, lengths = jax.device_get((gen.tokens, gen.logprobs, gen.lengths))
      ctx = self._synced(ctx)
    actions: list[str | None] = []
    for row, ep in enumerate(episodes):
      if ep.done:
        actions.append(None)
        continue
      n = int(lengths[row])
      ep.add(tokens[row, :n], agent=True, logprobs=logprobs[row, :n])
      with self._timed("tokenize"):
        actions.append(self.chat.decode(tokens[row, :n]))
    return ctx, actions

  def _choose_turn(self, params, ctx, episodes, rng):
    rcfg = self.rcfg
    candidates: list[list[list[int]]] = []
    names: list[list[str]] = []
    for ep in episodes:
      valid_actions = (ep.last_obs.valid_actions or [])[:rcfg.max_candidates] if not ep.done else []
      if not ep.done and not valid_actions:
        raise ValueError(f"env {ep.env!r} lists no valid actions: the choose mode needs them "
                         "(use mode='generate')")
      names.append(valid_actions)
      with self._timed("tokenize"):
        candidates.append([self.chat.encode(a) + self.chat.end_of_turn for a in valid_actions])
    with self._timed("generate"):
      next_pos = np.asarray(jax.device_get(ctx.next_pos))
      padded = candidates + [[]] * (len(next_pos) - len(candidates))
      tokens, valid, positions, first, segment, attn = _pack_candidates(padded, next_pos)
      logp = np.asarray(jax.device_get(_score_candidates(
          self.cfg, params, ctx, jnp.asarray(tokens), jnp.asarray(valid), jnp.asarray(attn),
          jnp.asarray(positions), jnp.asarray(first))))
    rng = np.random.default_rng(np.asarray(jax.random.key_data(rng)).ravel().tolist())
    actions: list[str | None] = []
    chosen_tokens: list[list[int]] = []
    for row, ep in enumerate(episodes):
      if ep.done:
        actions.append(None)
        chosen_tokens.append([])
        continue
      scores = np.array([logp[row][segment[row] == c].sum() for c in range(len(candidates[row]))])
      log_probs = scores - _logsumexp(scores)
      if rcfg.temperature == 0:
        choice = int(np.argmax(scores))
      else:
        tempered = scores / rcfg.temperature
        choice = int(rng.choice(len(scores), p=np.exp(tempered - _logsumexp(tempered))))
      cand = candidates[row][choice]
      token_lp = logp[row][segment[row] == choice]
      ep.add(cand, agent=True, logprobs=token_lp)
      ep.choices.append((candidates[row], choice, float(log_probs[choice])))
      chosen_tokens.append(cand)
      actions.append(names[row][choice])
    with self._timed("generate"):
      ctx = self._synced(self._extend(params, ctx, chosen_tokens))
    return ctx, actions


def _logsumexp(x: np.ndarray) -> float:
  m = float(np.max(x))
  return m + math.log(float(np.sum(np.exp(x - m))))
