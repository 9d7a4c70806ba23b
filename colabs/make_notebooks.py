"""Writes the three colabs (run from the repo root: python colabs/make_notebooks.py)."""

import nbformat as nbf

SETUP = """# In Colab: clone the repository, then install it (PyTorch is only needed for parity tests).
# !git clone <your fork of agentgen_jax> && cd agentgen_jax && bash launch/install.sh
import os, sys
ROOT = os.path.abspath(os.environ.get("AGENTGEN_ROOT", ".."))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.chdir(ROOT)
# AGENTGEN_SMOKE=1 (set by the test that executes this notebook) shrinks every size to seconds.
SMOKE = os.environ.get("AGENTGEN_SMOKE") == "1"
WORKDIR = os.environ.get("AGENTGEN_WORKDIR", "runs/colab")"""

SHRINK = """def shrink(c):
    \"\"\"The smallest sizes that still run every step (for the smoke test).\"\"\"
    c.iterations = 1
    c.tasks_per_iteration, c.group_size = 2, 2
    c.sft.tasks, c.sft.epochs = min(c.sft.tasks, 8), 1
    c.eval.tasks, c.eval.k = 2, 1
    c.rollout.max_turns = 3
    c.pool_size = 4
    c.study.warm_start_tasks_per_env = min(c.study.warm_start_tasks_per_env, 4)
    return c"""


def nb(cells, path):
    book = nbf.v4.new_notebook()
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    book.cells = [nbf.v4.new_markdown_cell(c[3:]) if c.startswith("md:") else nbf.v4.new_code_cell(c)
                  for c in cells]
    nbf.write(book, path)


nb(["md:# Quickstart: train a small agent and read its transcripts\n\n"
    "Evaluates the `tiny` policy on BabyAI (easy levels), warm-starts it on expert demonstrations (SFT), trains it with "
    "GRPO in the `choose` action mode, evaluates again, and shows what the agent did.",
    SETUP, SHRINK,
    """from launch.configs import quickstart
import agentgen_jax
c = quickstart.get_config()
if SMOKE:
    c = shrink(c)
workdir = os.path.join(WORKDIR, "quickstart")
results = agentgen_jax.run_job(agentgen_jax.resolve(c), workdir)""",
    """for e in results["evals"]:
    print(f"{e['stage']:5s} {e['env']:10s} success {e['avg_success']:.2f}  score {e['avg_score']:.2f}  "
          f"pass@{e['k']} {e['pass_at_k']:.2f}  turns {e['mean_turns']:.1f}")""",
    "md:## Transcripts\nEvery evaluation is stored as a TFDS array_record dataset (random access, no TensorFlow).",
    """import json, glob
from agentgen_jax import data
folder = sorted(glob.glob(os.path.join(workdir, "trajectories", "eval_*")))[-1]
episodes = data.read_episodes(folder)
ep = data.decode_record(episodes[0])
print(ep["env"], ep["task"], "success:", bool(ep["success"]), "turns:", int(ep["turns"]))
for m in json.loads(ep["transcript"])["messages"][:6]:
    print(f"--- {m['role']}\\n{m['content'][:400]}")""",
    """from IPython.display import Markdown
Markdown(open(os.path.join(workdir, "report.md")).read())"""], "colabs/quickstart.ipynb")

nb(["md:# The cross-environment transfer matrix\n\n"
    "Trains one agent per environment from the same warm-started base and evaluates every agent on every "
    "environment (held-in on the diagonal). Set `RESULTS` to load a finished study instead of running one.",
    SETUP, SHRINK,
    """import json
from launch.configs import study_cross_env_small
import agentgen_jax
RESULTS = os.environ.get("AGENTGEN_RESULTS", "")  # a results.json of a finished study, to only plot it
workdir = os.path.join(WORKDIR, "cross_env")
if RESULTS:
    results = json.load(open(RESULTS))
else:
    c = study_cross_env_small.get_config()
    if SMOKE:
        c = shrink(c)
    results = agentgen_jax.run_study(agentgen_jax.resolve(c), workdir)""",
    """from agentgen_jax.study import metrics
for stage, t in metrics.transfer(results["evals"]).items():
    print(stage, "held-in", t["held_in"], "held-out", t["held_out"], t["delta"])""",
    """from agentgen_jax.study import report
from IPython.display import Image
path = report.plot_transfer_heatmap(results, os.path.join(workdir, "transfer_heatmap.png"))
Image(path)"""], "colabs/transfer_matrix.ipynb")

nb(["md:# Sequential training and forgetting\n\n"
    "Trains through TextCraft → BabyAI, evaluating both after every stage (the R matrix), and compares with "
    "joint mixture training of the same budget.",
    SETUP, SHRINK,
    """from launch.configs import study_sequential_small
import agentgen_jax
c = study_sequential_small.get_config()
if SMOKE:
    c = shrink(c)
workdir = os.path.join(WORKDIR, "sequential")
results = agentgen_jax.run_study(agentgen_jax.resolve(c), workdir)
m = results["metrics"]
print("BWT", m.get("bwt"), "FWT", m.get("fwt"), "forgetting", m.get("forgetting"))""",
    """seq = results["metrics"]["sequences"][0]
for stage, row in zip(seq["stages"], seq["r"]):
    print(f"{stage:28s}", "  ".join(f"{v:.2f}" for v in row))""",
    """from IPython.display import Image
Image(os.path.join(workdir, "r_matrix_0.png"))"""], "colabs/sequential.ipynb")
