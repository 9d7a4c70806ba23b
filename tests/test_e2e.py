"""The main job end to end, at smoke size, as a user runs it: `launch.train` for 2 iterations in each action
mode, `launch.evaluate` on its workdir, the HF export loaded back by `transformers`, a kill -9 mid-run then a
rerun ending bit-identical, and a sequential study whose every stage starts from its parent's final params.

Runs share one trained workdir per action mode (module-scoped fixtures) and one XLA compilation cache, so a
later command does not compile again what an earlier one compiled (the same executables: the same numbers).
"""

import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests import test_train_faults as faults

pytestmark = pytest.mark.e2e

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join("tests", "train_config_tiny.py")  # TextCraft easy, tiny model, 2 turns of 8 tokens
GENERATE = ["--config.iterations=2", "--config.export_hf=True"]
# BabyAI only (weight 0 on TextCraft: the mixture weights decide what is trained on), choose mode.
CHOOSE = ["--config.iterations=2", "--config.rollout.mode=choose", "--config.envs=('babyai', 'textcraft')",
          "--config.env_weights=(1.0, 0.0)", "--config.eval.envs=('babyai',)"]


@pytest.fixture(scope="module")
def xla_env(tmp_path_factory):
  return faults.shared_compile_cache(tmp_path_factory.mktemp("xla"))


def _run(cmd: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
  done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
  assert done.returncode == 0, done.stderr[-3000:]
  return done


def _train_cmd(workdir, overrides) -> list[str]:
  return [sys.executable, "-m", "launch.train", f"--config={CONFIG}", *overrides, f"--workdir={workdir}"]


def _results(workdir) -> dict:
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    return json.load(f)


@pytest.fixture(scope="module")
def generate_run(tmp_path_factory, xla_env):
  workdir = tmp_path_factory.mktemp("generate") / "run"
  _run(_train_cmd(workdir, GENERATE), xla_env)
  return workdir


@pytest.fixture(scope="module")
def choose_run(tmp_path_factory, xla_env):
  workdir = tmp_path_factory.mktemp("choose") / "run"
  _run(_train_cmd(workdir, CHOOSE), xla_env)
  return workdir


@pytest.mark.parametrize("run, env", [("generate_run", "textcraft"), ("choose_run", "babyai")])
def test_train_writes_results_checkpoints_logs_and_tensorboard(run, env, request):
  workdir = request.getfixturevalue(run)
  results = _results(workdir)
  assert [(e["stage"], e["env"]) for e in results["evals"]] == [("base", env), ("rl", env)]
  assert [p["iteration"] for p in results["curves"]] == [0, 1]
  assert len(results["final_params_digest"]) == 64
  assert os.path.isdir(workdir / "checkpoints" / "2")
  assert glob.glob(str(workdir / "tb" / "events.out.tfevents.*")), "no TensorBoard event file"
  with open(workdir / "log.jsonl", encoding="utf-8") as f:
    iterations = [r["iteration"] for r in map(json.loads, f) if "global_iteration" in r]
  assert iterations == [0, 1]
  assert os.path.getsize(workdir / "report.md") > 0


def test_mixture_weights_decide_which_env_is_trained_on(choose_run):
  trained = set()
  for path in glob.glob(str(choose_run / "trajectories" / "train_*.jsonl")):
    with open(path, encoding="utf-8") as f:
      trained |= {json.loads(line)["env"] for line in f}
  assert trained == {"babyai"}  # TextCraft has weight 0


def test_evaluate_on_the_training_workdir_reproduces_its_final_greedy_evaluation(generate_run, xla_env,
                                                                                  tmp_path):
  out = tmp_path / "eval"
  _run([sys.executable, "-m", "launch.evaluate", f"--checkpoint={generate_run}", "--envs=textcraft",
        "--k=1", "--tasks=2", "--difficulty=easy", "--temperature=0", "--pool_size=4", "--workers=1",
        f"--workdir={out}"], xla_env)
  ours = _results(out)["evals"]
  trained = [e for e in _results(generate_run)["evals"] if e["stage"] == "rl"]
  keys = ("env", "n_tasks", "k", "avg_success", "avg_score", "mean_turns", "mean_tokens", "invalid_rate")
  # Greedy decoding of the same params on the same tasks: the same episodes.
  assert [{k: e.get(k) for k in keys} for e in ours] == [{k: e.get(k) for k in keys} for e in trained]


def test_hf_export_loads_in_transformers_with_the_final_params_logits(generate_run):
  import torch
  import transformers

  from agentgen_jax import checkpoint, models
  ckpt = checkpoint.Checkpointer(str(generate_run / "checkpoints"), read_only=True)
  state, _ = ckpt.restore_raw()
  ckpt.close()
  assert checkpoint.params_digest(state["params"]) == _results(generate_run)["final_params_digest"]
  cfg, _ = models.load("tiny")
  hf = transformers.AutoModelForCausalLM.from_pretrained(str(generate_run / "hf_export"),
                                                         dtype=torch.float32).eval()
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 24)).astype(np.int32)
  with torch.no_grad():
    ref = hf(torch.tensor(tokens, dtype=torch.long)).logits.numpy().astype(np.float64)
  ours = np.asarray(models.logits(cfg, state["params"], tokens), np.float64)
  # Two float32 forwards that differ only in summation order: each dot product of length n <= 256 errs by
  # ~sqrt(n) eps relative, over ~10 sequential stages: ~2e-5 of the largest logit; 1000 eps (1.2e-4)
  # bounds it.
  tol = 1000 * np.finfo(np.float32).eps * np.abs(ref).max()
  assert np.abs(ours - ref).max() < tol, (np.abs(ours - ref).max(), tol)


def test_kill_9_mid_run_then_rerun_ends_with_the_uninterrupted_params(generate_run, xla_env, tmp_path):
  work = tmp_path / "killed"
  cmd = _train_cmd(work, GENERATE)
  ckpt = work / "checkpoints"
  # After checkpoint 1 is written, during iteration 2 (or its save, or the final evaluation).
  faults.kill_9_when(cmd, xla_env, tmp_path / "kill.log", lambda: faults.has_step(ckpt, 1))
  assert not os.path.exists(work / "results.json")
  _run(cmd, xla_env)
  assert faults.final_digest(work) == faults.final_digest(generate_run)
  with open(work / "log.jsonl", encoding="utf-8") as f:
    assert [r["iteration"] for r in map(json.loads, f) if r.get("event") == "resumed"] == [1]


# ---- a study: sequential over two envs, with lineage -----------------------------------------------------

STUDY = [sys.executable, "-m", "launch.study", "--config=launch/configs/study_sequential_small.py",
         "--config.iterations=1", "--config.tasks_per_iteration=2", "--config.group_size=2",
         "--config.sft.epochs=1", "--config.eval.tasks=2", "--config.eval.k=1",
         "--config.rollout.max_turns=2", "--config.pool_size=4", "--config.study.warm_start_tasks_per_env=4",
         "--config.study.mixture_baseline=False", "--config.study.single_env_baselines=False",
         "--config.learner.entropy_coef=0.01"]  # every update moves the params, even with all-fail groups


@pytest.fixture(scope="module")
def study_run(tmp_path_factory, xla_env):
  workdir = tmp_path_factory.mktemp("study") / "run"
  _run(STUDY + [f"--workdir={workdir}"], xla_env)
  return workdir


def test_list_stages_prints_the_plan_without_running(tmp_path, xla_env):
  out = _run(STUDY + ["--list_stages", f"--workdir={tmp_path / 'study'}"], xla_env).stdout
  assert [line.split("\t")[:2] for line in out.strip().splitlines()] == [
      ["after:textcraft", "parent=base"], ["after:textcraft>babyai", "parent=after:textcraft"]]
  assert not os.path.exists(tmp_path / "study" / "stages")


def _finals(workdir) -> dict[str, dict]:
  out = {}
  for path in glob.glob(str(workdir / "stages" / "*" / "final.json")):
    with open(path, encoding="utf-8") as f:
      final = json.load(f)
    out[final["stage"]] = final
  return out


def test_every_stage_starts_from_its_parents_final_params(study_run):
  finals = _finals(study_run)
  assert set(finals) == {"base", "after:textcraft", "after:textcraft>babyai"}
  for name, final in finals.items():
    if name == "base":
      assert final["parent"] is None
      continue
    parent = finals[final["parent"]]
    assert final["parent_params_digest"] == parent["params_digest"], name
    assert final["start_params_digest"] == parent["params_digest"], name
    assert final["params_digest"] != final["start_params_digest"], f"{name} did not train"
  assert finals["after:textcraft>babyai"]["parent"] == "after:textcraft"
  # The base stage's warm start moved the params away from the model's initialisation.
  assert finals["base"]["params_digest"] != finals["base"]["start_params_digest"]


def test_merge_rebuilds_the_report_from_the_finished_stages(study_run, xla_env, tmp_path):
  workdir = tmp_path / "copy"
  shutil.copytree(study_run, workdir)
  before = _results(workdir)
  os.remove(workdir / "results.json")
  os.remove(workdir / "report.md")
  _run(STUDY + ["--merge", f"--workdir={workdir}"], xla_env)
  after = _results(workdir)
  assert after["evals"] == before["evals"] and after["metrics"] == before["metrics"]
  assert after["final_params_digest"] == before["final_params_digest"]
  assert os.path.getsize(workdir / "report.md") > 0
