"""The end-to-end benchmark's split of an RL iteration: every part is measured and the parts account for
the iteration's wall time (nothing big is left out or counted twice)."""

import pytest

from launch.benchmarks import e2e


@pytest.mark.e2e  # a whole RL iteration (rollout, update, checkpoint) of the tiny model: ~30-50 s
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


def test_baseline_comparison_rows_hold_medians_and_the_speedup_target():
  def run(wall, rollout, learn):
    return {"tiny generate": {"wall": wall, "parts": {"learn": learn}, "facts": {"rollout_s": rollout}}}
  runs = {"baseline": [run(30.0, 20.0, 9.0), run(36.0, 24.0, 11.0), run(90.0, 60.0, 29.0)],
          "current": [run(10.0, 4.0, 5.0), run(12.0, 5.0, 6.0), run(11.0, 4.5, 5.5)]}
  rows = e2e.compare_rows(runs, ["tiny generate"], "a2df838", "abc1234", (0.5, 0.7), timed=2)
  by_metric = {r["metric"]: r for r in rows}
  iteration = by_metric["iteration"]
  assert (iteration["ours"], iteration["reference"]) == (11.0, 36.0)
  assert iteration["met"] and "3.27x faster" in iteration["notes"]
  rollout = by_metric["rollout (generation + env + chat template)"]
  assert (rollout["ours"], rollout["reference"]) == (4.5, 24.0)
  runs["current"] = [run(13.0, 4.0, 5.0)] * 3
  assert not e2e.compare_rows(runs, ["tiny generate"], "a2df838", "abc1234", (0.5,), 2)[0]["met"]
