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
import logging
import math
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from agentgen_jax import distributed, models, parallel, sampling

MODES = ("generate", "choose")
# Why an episode ended before the env said done: its next turn would pass max_episode_tokens, or the
# batch's KV cache (RolloutConfig.slots()) has no room for it.
TRUNCATION_REASONS = ("episode_tokens", "cache")
_SENTINEL = "\u2063AGENTGEN_TURN\u2063"


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  mode: str = "generate"
  max_turns: int | None = None          # None: the env's own cap (pool.info(name)["max_turns"])
  max_new_tokens: int = 64              # per agent turn (generate mode)
  max_episode_tokens: int = 2048        # prompt + all turns; an episode past it ends as truncated
  # Sampling temperature (both modes); episodes record log-probs of the tempered distribution (and of the
  # renormalised top-p nucleus in generate mode): the learner must use the same temperature. 0 = greedy
  # (generate) / argmax (choose), untempered log-probs (evaluation).
  temperature: float = 1.0
  top_p: float = 1.0                    # generate mode only; RL training refuses top_p < 1
  # choose mode: 0 scores every listed valid action; n > 0 keeps the first n (listed order), warns once and
  # counts the cut actions per episode (Episode.candidates_cut): a cut action can never be chosen.
  max_candidates: int = 0
  system_prompt: str | None = None
  # KV-cache slots per batch of episodes; 0 derives them from max_episode_tokens (every row takes the
  # slots of the longest chunk and decode steps run for the longest row, so the slots outnumber the
  # tokens). Episodes that cannot fit another turn end as truncated (truncated_reason "cache"). The cost of
  # attention follows the slots in use, not this capacity.
  cache_slots: int = 0
  # Tokens per prefill call (sampling.extend's piece; choose mode packs candidates into pieces of it too):
  # every call has one shape, so a run compiles one program per attention window. 0: each turn's chunk in
  # one call padded to its bucket (a program per (chunk bucket, window) pair).
  prefill_piece: int = sampling.PIECE

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"unknown action mode {self.mode!r}; valid: {', '.join(MODES)}")
    if self.max_candidates < 0 or self.cache_slots < 0 or self.prefill_piece < 0:
      raise ValueError(f"max_candidates={self.max_candidates}, cache_slots={self.cache_slots} and "
                       f"prefill_piece={self.prefill_piece} must be >= 0 (0: all candidates / derived from "
                       "max_episode_tokens / one call per chunk)")

  def slots(self) -> int:
    """The KV-cache capacity of a batch (cache_slots, or derived from max_episode_tokens)."""
    return self.cache_slots or sampling.bucket(2 * self.max_episode_tokens + 4 * self.max_new_tokens)


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
  truncated_reason: str = ""      # why a truncated episode ended: TRUNCATION_REASONS
  candidates_cut: int = 0         # choose mode: listed valid actions dropped by max_candidates
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

  def truncate(self, reason: str) -> None:
    """Ends the episode before the env did, for `reason` in TRUNCATION_REASONS."""
    if reason not in TRUNCATION_REASONS:
      raise ValueError(f"unknown truncation reason {reason!r}; valid: {', '.join(TRUNCATION_REASONS)}")
    self.done, self.truncated, self.truncated_reason = True, True, reason

  def record(self, tag: str = "") -> dict[str, Any]:
    """The episode as a data.py record (also what study/ reads)."""
    return {"tokens": np.asarray(self.tokens, np.int32), "loss_mask": np.asarray(self.loss_mask, np.int8),
            "logprobs": np.asarray(self.logprobs, np.float32),
            "rewards": np.asarray(self.rewards, np.float32),
            "turn_ids": np.asarray(self.turn_ids, np.int32), "env": self.env, "task": self.task,
            "success": self.success, "score": float(self.score), "turns": self.turns,
            "n_tokens": len(self.tokens), "invalid": self.invalid, "env_error": bool(self.env_error),
            "truncated": self.truncated, "truncated_reason": self.truncated_reason,
            "candidates_cut": self.candidates_cut,
            "tag": tag, "transcript": json.dumps({"messages": self.messages, "actions": self.actions,
                                                   "step_invalid": self.step_invalid,
                                                   "truncated": self.truncated,
                                                   "truncated_reason": self.truncated_reason,
                                                   "candidates_cut": self.candidates_cut,
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


@functools.partial(jax.jit, static_argnums=0, static_argnames="window")
def _score_candidates(cfg, params, ctx, tokens, valid, attn_mask, positions, first, temperature, *,
                      window: int):
  """Log-probs of candidate tokens continuing each row's context: (untempered, tempered) [B, T], under
  log_softmax(logits) and log_softmax(logits / temperature) (temperature 0: untempered twice). The
  candidates attend to the cached prefix (its first `window` slots) and are never written to the cache, so
  any number of them fits.

  tokens/valid/positions/first [B,T]: candidates packed per row; attn_mask [B,T,T] lets each candidate see
  only itself; first marks a candidate's first token (predicted by the context's last logits).
  """
  logits, _, _ = models.forward(cfg, params, tokens, positions, valid, ctx.cache, attn_mask, window=window,
                                append=False)
  prev = jnp.concatenate([ctx.last_logits[:, None], logits[:, :-1]], axis=1)
  prev = jnp.where(first[..., None], ctx.last_logits[:, None], prev)
  prev = prev.astype(jnp.float32)
  scale = jnp.where(temperature > 0, temperature, 1.0)
  def picked(logits):
    logp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0] * valid
  return picked(prev), picked(prev / scale)


def _candidate_starts(cands: list[list[int]], size: int) -> list[int]:
  """Where each of a row's candidates starts when they are packed in order into pieces of `size` tokens, a
  candidate that would straddle two pieces moved to the next one (the one packing rule of
  _candidate_pieces and _pack_candidates)."""
  starts, i = [], 0
  for cand in cands:
    if i % size + len(cand) > size:
      i += size - i % size
    starts.append(i)
    i += len(cand)
  return starts


def _candidate_pieces(candidates: list[list[list[int]]], piece: int) -> tuple[int, int]:
  """(piece length, pieces): the layout _pack_candidates uses for these rows. A piece is `piece` tokens,
  or the bucket of the longest candidate if that is longer (0: one piece of the longest row's bucket)."""
  if not piece:
    return sampling.bucket(max([sum(len(c) for c in cands) for cands in candidates] + [1])), 1
  size = max(piece, sampling.bucket(max([len(c) for cands in candidates for c in cands] + [1])))
  count = max([_candidate_starts(cands, size)[-1] // size + 1 for cands in candidates if cands] + [1])
  return size, count


def _pack_candidates(candidates: list[list[list[int]]], next_pos: np.ndarray, size: int, count: int):
  """Packs each row's candidate token lists into `count` pieces of `size` tokens (_candidate_pieces), none
  straddling two pieces: tokens/valid/positions/first/segment [B, count * size] and a block-diagonal
  causal mask per piece, attn [B, count, size, size]."""
  b, t = len(candidates), count * size
  tokens = np.zeros((b, t), np.int32)
  valid = np.zeros((b, t), bool)
  positions = np.zeros((b, t), np.int32)
  first = np.zeros((b, t), bool)
  segment = np.full((b, t), -1, np.int32)
  for row, cands in enumerate(candidates):
    for c, (cand, i) in enumerate(zip(cands, _candidate_starts(cands, size))):
      n = len(cand)
      tokens[row, i:i + n] = cand
      valid[row, i:i + n] = True
      positions[row, i:i + n] = next_pos[row] + np.arange(n)
      first[row, i] = True
      segment[row, i:i + n] = c
  pieces = segment.reshape(b, count, size)
  causal = np.tril(np.ones((size, size), bool))
  attn = (pieces[..., :, None] == pieces[..., None, :]) & (pieces[..., None, :] >= 0) & causal
  return tokens, valid, positions, first, segment, attn


def _score_packed(cfg, params, ctx, packed, temperature: float, mesh=None):
  """(untempered, tempered) log-probs [rows, count * size] (this process's rows) of the candidates that
  _pack_candidates laid out, one _score_candidates call per piece: every call has the shape [B, size], so
  the compiled program depends on the cache's capacity only. The candidates attend over the whole allocated
  cache (it grows with the context: sampling.grow), as extend and decode do: a smaller window would be
  copied out of it."""
  tokens, valid, positions, first, _, attn = packed
  size = attn.shape[-1]
  window = ctx.capacity
  scored = []
  for j in range(attn.shape[1]):
    cut = slice(j * size, (j + 1) * size)
    placed = parallel.from_process_rows((tokens[:, cut], valid[:, cut], attn[:, j], positions[:, cut],
                                         first[:, cut]), mesh, ctx.cache.valid.shape[0])
    scored.append(_score_candidates(cfg, params, ctx, *placed, jnp.float32(temperature), window=window))
  return tuple(np.concatenate([np.asarray(parallel.own_rows(x[i])) for x in scored], axis=1)
               for i in range(2))


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
    self._warned_cut = False

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
    """Context rows for n episodes per process: each process's block a multiple of its share of the mesh's
    batch axes (the extra rows stay empty); all the processes' blocks together."""
    processes = jax.process_count()
    shards = parallel.batch_divisor(self.mesh) // processes
    return -(-n // shards) * shards * processes

  @staticmethod
  def _own_rows(ctx) -> int:
    """The context rows this process fills (its block, parallel.process_rows; all of them on one)."""
    return ctx.cache.valid.shape[0] // jax.process_count()

  def _extend(self, params, ctx, chunks: list[list[int]]):
    # Every process pads to the same length: the job's longest chunk (sampling.extend appends it in
    # pieces of prefill_piece tokens and moves the cache index by this length only).
    t = distributed.global_max(max([len(c) for c in chunks] + [1]))
    rows = self._own_rows(ctx)  # padding rows (see _rows) get no tokens
    tokens = np.zeros((rows, t), np.int32)
    valid = np.zeros((rows, t), bool)
    for row, chunk in enumerate(chunks):
      tokens[row, :len(chunk)] = chunk
      valid[row, :len(chunk)] = True
    return sampling.extend(self.cfg, params, ctx, tokens, valid, piece=self.rcfg.prefill_piece or None)

  def _slots_left(self, ctx) -> int:
    return ctx.limit - int(ctx.cache.index)

  # ---- the episode loop --------------------------------------------------------------------------

  def run(self, params, tasks: Sequence[tuple[str, str]], rng: jax.Array, tag: str = "") -> list[Episode]:
    """Plays one episode per (env, task) (at most pool.size at a time); returns them in task order.

    On several processes every one passes the same tasks and gets back every episode: each plays its
    share of a batch (pool.size per process; a contiguous block of the tasks, in the rows it holds) on its
    own pool, in lockstep with the others. With as many episodes as batch rows, a batch's rows (and so its
    random draws) are those of a single process: the same episodes.
    """
    episodes: list[Episode] = []
    size = self.pool.size * jax.process_count()
    params = sampling.sampler_params(self.cfg, params, self.mesh)
    for start in range(0, len(tasks), size):
      rng, sub = jax.random.split(rng)
      episodes += self._run_batch(params, list(tasks[start:start + size]), sub)
    return episodes

  def _run_batch(self, params, batch_tasks, rng) -> list[Episode]:
    """The episodes of batch_tasks (every process's share, gathered)."""
    share = -(-len(batch_tasks) // jax.process_count())
    rows = self._rows(share)
    block, _ = parallel.process_rows(self.mesh, rows)
    episodes = self._play(params, batch_tasks[block * share:(block + 1) * share], rows, rng)
    if jax.process_count() == 1:
      return episodes
    for ep in episodes:  # what only the loop needed (an Observation holds the env's objects)
      ep.last_obs, ep.pending = None, []
    shares = dict(distributed.allgather((block, episodes)))
    return [ep for b in sorted(shares) for ep in shares[b]]

  def _play(self, params, tasks, rows: int, rng) -> list[Episode]:
    """This process's episodes of a batch, in its rows of a `rows`-row context."""
    rcfg = self.rcfg
    with self._timed("env"):
      observations = self.pool.reset(tasks) if tasks else []
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
    with self._timed("generate"):
      ctx = self._synced(sampling.new_context(self.cfg, rows, rcfg.slots(), mesh=self.mesh))
    while True:
      # choose mode: this turn's candidates (token lists per row, [] for ended episodes) and names.
      candidates, names = self._candidates(episodes) if rcfg.mode == "choose" else (None, None)
      if not self._truncate_what_cannot_fit(ctx, episodes, candidates):
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
        ctx, actions = self._choose_turn(params, ctx, episodes, candidates, names, sub)
      with self._timed("env"):
        steps = self.pool.step(actions, parse=rcfg.mode == "generate") if actions else []
      for ep, action, step in zip(episodes, actions, steps):
        if action is None or step is None:
          continue
        self._after_step(ep, action, step)
    return episodes

  def _truncate_what_cannot_fit(self, ctx, episodes: list[Episode], candidates) -> bool:
    """Ends the episodes whose next turn (env chunk + agent turn) would pass max_episode_tokens, then all of
    them if the batch's shared cache has no room for the turn. The agent turn is bounded by max_new_tokens
    (generate) or by the episode's longest candidate (choose). Returns whether an episode of the batch (of
    any process) still runs."""
    rcfg = self.rcfg
    def agent_len(row: int) -> int:
      if candidates is None:
        return rcfg.max_new_tokens
      return max([len(c) for c in candidates[row]] + [1])
    for row, ep in enumerate(episodes):
      if not ep.done and len(ep.tokens) + len(ep.pending) + agent_len(row) > rcfg.max_episode_tokens:
        ep.truncate("episode_tokens")
    live = [row for row, ep in enumerate(episodes) if not ep.done]
    # Every row writes the same slots: the chunk is padded to the longest one, the agent turn takes the
    # longest's slots (decode steps run while any row does; the chosen candidates are one padded chunk).
    # On several processes, the longest of the whole batch: all take the same decision.
    longest = (max([len(episodes[row].pending) for row in live], default=0),
               max([agent_len(row) for row in live], default=0))
    if jax.process_count() > 1:
      everyone = [(len(r) > 0, p, a) for r, p, a in distributed.allgather((live, *longest))]
      if not any(e[0] for e in everyone):
        return False
      longest = (max(e[1] for e in everyone), max(e[2] for e in everyone))
    elif not live:
      return False
    if self._slots_left(ctx) < sampling.bucket(longest[0]) + longest[1]:
      for row in live:
        episodes[row].truncate("cache")
      return False
    return True

  def _candidates(self, episodes: list[Episode]) -> tuple[list[list[list[int]]], list[list[str]]]:
    """Choose mode: each running episode's listed valid actions (cut to max_candidates if set: warned once,
    counted per episode) and their token lists (action + end of turn)."""
    rcfg = self.rcfg
    candidates, names = [], []
    for ep in episodes:
      valid_actions = list(ep.last_obs.valid_actions or []) if not ep.done else []
      if not ep.done and not valid_actions:
        raise ValueError(f"env {ep.env!r} lists no valid actions: the choose mode needs them "
                         "(use mode='generate')")
      if rcfg.max_candidates and len(valid_actions) > rcfg.max_candidates:
        ep.candidates_cut += len(valid_actions) - rcfg.max_candidates
        if not self._warned_cut:
          logging.warning("choose mode: %s lists %d valid actions, max_candidates=%d keeps the first %d; "
                          "cut actions can never be chosen (counted in each episode's candidates_cut)",
                          ep.env, len(valid_actions), rcfg.max_candidates, rcfg.max_candidates)
          self._warned_cut = True
        valid_actions = valid_actions[:rcfg.max_candidates]
      names.append(valid_actions)
      with self._timed("tokenize"):
        candidates.append([self.chat.encode(a) + self.chat.end_of_turn for a in valid_actions])
    return candidates, names

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
    active = np.zeros(self._own_rows(ctx), bool)
    active[:len(episodes)] = [not ep.done for ep in episodes]
    with self._timed("generate"):
      ctx, gen = sampling.decode(self.cfg, params, ctx, rng, active,
                                 max_new_tokens=rcfg.max_new_tokens, temperature=rcfg.temperature,
                                 top_p=rcfg.top_p, eos_ids=self.chat.eos_ids)
      tokens, logprobs, lengths = (parallel.own_rows(x) for x in (gen.tokens, gen.logprobs, gen.lengths))
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

  def _choose_turn(self, params, ctx, episodes, candidates, names, rng):
    rcfg = self.rcfg
    with self._timed("generate"):
      next_pos = parallel.own_rows(ctx.next_pos)
      padded = candidates + [[]] * (len(next_pos) - len(candidates))  # mesh padding rows (see _rows)
      # Every process packs to the same layout: the batch's largest.
      size, count = _candidate_pieces(padded, rcfg.prefill_piece)
      size, count = distributed.global_max(size), distributed.global_max(count)
      packed = _pack_candidates(padded, next_pos, size, count)
      segment = packed[4]
      logp, tempered_logp = _score_packed(self.cfg, params, ctx, packed, rcfg.temperature, self.mesh)
    seed = np.asarray(jax.random.key_data(rng)).ravel().tolist()
    # On several processes each draws its rows' choices from its own stream (the draws of one process
    # follow its rows in order: not those of a single-process run).
    rng = np.random.default_rng(seed + ([jax.process_index()] if jax.process_count() > 1 else []))
    # One uniform per row, drawn up front: a row's draw does not depend on which other rows are still
    # playing, so two policies sampled with the same rng make the same draw on the same (row, turn) (common
    # random numbers: the evaluations of two stages are paired).
    uniforms = rng.random(len(episodes))
    actions: list[str | None] = []
    chosen_tokens: list[list[int]] = []
    for row, ep in enumerate(episodes):
      if ep.done:
        actions.append(None)
        chosen_tokens.append([])
        continue
      # A candidate's score is the sum of its tokens' (untempered) log-probs; the turn's action is drawn
      # from softmax(scores / temperature), whose log-prob is recorded (rl.policy.choice_scores recomputes
      # it at the same temperature); temperature 0 takes the argmax and records softmax(scores).
      scores = np.array([logp[row][segment[row] == c].sum() for c in range(len(candidates[row]))],
                        np.float64)
      tempered = scores / (rcfg.temperature or 1.0)
      log_probs = tempered - _logsumexp(tempered)
      if rcfg.temperature == 0:
        choice = int(np.argmax(scores))
      else:
        cdf = np.cumsum(np.exp(log_probs))
        choice = min(int(np.searchsorted(cdf / cdf[-1], uniforms[row], side="right")), len(scores) - 1)
      cand = candidates[row][choice]
      # Each chosen token carries its log-prob under the tempered token distribution (as in generate mode).
      token_lp = tempered_logp[row][segment[row] == choice]
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
