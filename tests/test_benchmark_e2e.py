"""The end-to-end benchmark's split of an RL iteration: every part is measured and the parts account for
the iteration's wall time (nothing big is left out or counted twice)."""

from launch.benchmarks import e2e


def test_iteration_parts_are_positive_and_add_up_to_the_wall_time():
  setting = e2e.Setting("test", "tiny", "generate", tasks=1, group=2, max_turns=1, max_new_tokens=8)
  # One warm-up iteration: the first one also compiles small helpers (PRNG splits) outside the parts.
  result = e2e.measure(setting, warmup=1, timed=1)
  parts, wall = result["parts"], result["wall"]
  assert set(e2e.PARTS) < set(parts)
  for part in ("generate", "env", "learn", "checkpoint"):
    assert parts[part] > 0, (part, parts)
  measured = sum(parts[k] for k in e2e.PARTS)
  assert abs(measured - wall) <= 0.10 * wall, (parts, wall)
  assert result["facts"]["env_steps"] == 2 and result["facts"]["agent_tokens"] > 0
  rows = e2e.rows(result, (0.0, 0.0))
  share = [r for r in rows if r["metric"] == "env share"][0]
  assert abs(share["ours"] - 100 * parts["env"] / wall) < 1e-9
