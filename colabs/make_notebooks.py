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

SHRINK = """from launch.configs import study_small

def shrink(c, train=True):
    \"\"\"The smallest sizes that still run every cell (for the smoke test), over 2 seeds so that every score
    still gets its interval. train=False: no warm start and no RL iteration, every stage evaluated with its
    parent's weights (each stage's GRPO update is one more XLA compile, ~11 s on a CPU; tests/test_e2e.py
    and test_study_run.py train the study stages).\"\"\"
    c = study_small.smoke(c)
    if train:  # every distinct SFT/GRPO batch shape is one more compile (~10 s on a CPU): fewer, shorter
        c.rollout.max_turns, c.rollout.max_episode_tokens = 1, 512
    else:
        c.eval.tasks = 4
    c.sft.tasks = min(c.sft.tasks, 2)  # 1 demo may not fit max_episode_tokens
    c.iterations = 1 if train else 0
    c.study.warm_start_tasks_per_env = 1 if train else 0
    c.seeds = 2
    return c"""


def run_seeds(train: bool = True) -> str:
  """The run cell's config tail: 3 seeds (seed_<s>/ each, resumable, merged with intervals); smoke: shrink."""
  return f"""c.seeds = 3  # seeds 0, 1, 2: each runs in workdir/seed_<s>/ (resumable); the results are merged
if SMOKE:
    c = shrink(c{"" if train else ", train=False"})"""


# Every score, derived metric and paper finding of the merged results, as mean [95% interval].
INTERVAL_TABLES = """from IPython.display import Markdown
from agentgen_jax.study import report
Markdown("\\n".join(report.interval_sections(results)))"""


def print_intervals(families: str) -> str:
  """A cell printing the interval metrics of the given families (a tuple's source) as mean [lo, hi]."""
  return f"""boot = results["metrics"]["bootstrap"]
print(f"mean [95% interval] over seeds {{boot['seeds']}} and tasks ({{boot['replicates']}} resamples)")
for name, m in results["metrics"]["intervals"].items():
    if name.split("/")[0] in {families}:
        per_seed = ", ".join(f"{{v:.3f}}" for v in m["per_seed"].values())
        print(f"{{name:45s}} {{m['mean']:.3f}} [{{m['lo']:.3f}}, {{m['hi']:.3f}}]  per seed: {{per_seed}}")"""


def nb(cells, path):
  book = nbf.v4.new_notebook()
  book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
  book.cells = [nbf.v4.new_markdown_cell(c[3:]) if c.startswith("md:") else nbf.v4.new_code_cell(c)
                for c in cells]
  nbf.write(book, path)


nb(["md:# Quickstart: train a small agent and read its transcripts\n\n"
    "Evaluates the `tiny` policy on BabyAI (easy levels), warm-starts it on expert demonstrations (SFT), "
    "trains it with GRPO in the `choose` action mode, evaluates again, and shows what the agent did. The job "
    "runs once per seed (3 seeds, ~8 min each on a 2-core CPU), and every score comes with its 95% bootstrap "
    "interval over seeds and tasks.",
    SETUP, SHRINK,
    f"""from launch.configs import quickstart
import agentgen_jax
from agentgen_jax.study import seeds
c = quickstart.get_config()
{run_seeds()}
workdir = os.path.join(WORKDIR, "quickstart")
results = seeds.run_seeds(agentgen_jax.resolve(c), workdir, agentgen_jax.run_job)""",
    "md:## Held-in success, mean [95% interval] over seeds and tasks\nBabyAI is the training env, so every "
    "evaluation here is held-in: base model, after SFT, after GRPO.",
    print_intervals('("avg_success",)'),
    "md:## Transcripts\nEvery evaluation is stored as a TFDS array_record dataset (random access, no "
    "TensorFlow).",
    """import json, glob
from agentgen_jax import data
folder = sorted(glob.glob(os.path.join(seeds.seed_dir(workdir, c.seed), "trajectories", "eval_*")))[-1]
episodes = data.read_episodes(folder)
ep = data.decode_record(episodes[0])
print(ep["env"], ep["task"], "success:", bool(ep["success"]), "turns:", int(ep["turns"]))
for m in json.loads(ep["transcript"])["messages"][:6]:
    print(f"--- {m['role']}\\n{m['content'][:400]}")""",
    "md:## Every score with its interval, and the paper's findings at this scale\n"
    "The same tables open report.md (in the workdir), followed by the per-seed-mean evaluations and plots.",
    INTERVAL_TABLES], "colabs/quickstart.ipynb")

nb(["md:# The cross-environment transfer matrix\n\n"
    "Trains one agent per environment from the same warm-started base and evaluates every agent on every "
    "environment (held-in on the diagonal), once per seed (3 seeds, ~17 min each on a 2-core CPU): every "
    "transfer comes with its 95% bootstrap interval over seeds and tasks. Set `RESULTS` to load a finished "
    "study instead of running one.",
    SETUP, SHRINK,
    f"""import json
from launch.configs import study_cross_env_small
import agentgen_jax
from agentgen_jax.study import seeds
RESULTS = os.environ.get("AGENTGEN_RESULTS", "")  # a results.json of a finished study, to only show it
workdir = os.path.join(WORKDIR, "cross_env")
if RESULTS:
    results = json.load(open(RESULTS))
else:
    c = study_cross_env_small.get_config()
    {run_seeds(train=False).replace(chr(10), chr(10) + "    ")}
    results = seeds.run_seeds(agentgen_jax.resolve(c), workdir, agentgen_jax.run_study)""",
    "md:## Transfer (score − base score), mean [95% interval]\nPer env, held-in (the env trained on) and "
    "held-out (the others).",
    print_intervals('("transfer",)'),
    "md:## Every score and derived metric with its interval, and the paper's findings at this scale",
    INTERVAL_TABLES,
    """from agentgen_jax.study import metrics
from IPython.display import Image
means = dict(results, evals=metrics.mean_over_seeds(results["evals"]))  # one cell per stage and env
os.makedirs(workdir, exist_ok=True)
path = report.plot_transfer_heatmap(means, os.path.join(workdir, "transfer_heatmap.png"))
Image(path)"""], "colabs/transfer_matrix.ipynb")

nb(["md:# Sequential training and forgetting\n\n"
    "Trains through TextCraft → BabyAI, evaluating both after every stage (the R matrix), and compares with "
    "joint mixture training of the same budget, once per seed (3 seeds, ~30 min each on a 2-core CPU): "
    "forgetting, BWT/FWT and sequential − mixture come with their 95% bootstrap intervals over seeds and "
    "tasks.",
    SETUP, SHRINK,
    f"""from launch.configs import study_sequential_small
import agentgen_jax
from agentgen_jax.study import seeds
c = study_sequential_small.get_config()
{run_seeds(train=False)}
workdir = os.path.join(WORKDIR, "sequential")
results = seeds.run_seeds(agentgen_jax.resolve(c), workdir, agentgen_jax.run_study)""",
    print_intervals('("bwt", "fwt", "forgetting", "mean_forgetting", "seq_minus_mixture",\n'
                    '                              "downstream_gain")'),
    "md:## The R matrix (score on each env after each stage, means over seeds)",
    """seq = results["metrics"]["sequences"][0]
print(f"{'':28s}", "  ".join(f"{env:>9s}" for env in seq["envs"]))
for stage, row in zip(seq["stages"], seq["r"]):
    print(f"{stage:28s}", "  ".join(f"{v:9.3f}" for v in row))""",
    "md:## Every score and derived metric with its interval, and the paper's findings at this scale",
    INTERVAL_TABLES,
    """from IPython.display import Image
Image(os.path.join(workdir, "r_matrix_0.png"))"""], "colabs/sequential.ipynb")
