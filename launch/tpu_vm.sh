#!/usr/bin/env bash
# Runs one command on every host of a Cloud TPU VM slice (multi-host: v4-16 and larger, v5e/v5p pods).
# jax.distributed is initialised by the code itself (agentgen_jax.distributed.initialize), so the
# same command runs on every worker; host 0 writes results, all hosts share --workdir (a shared filesystem:
# NFS / Filestore, or a bucket mounted with gcsfuse).
#
#   launch/tpu_vm.sh NAME ZONE "python -m launch.study --config=launch/configs/paper_cross_env.py \
#       --config.model=/mnt/models/Qwen2.5-3B-Instruct --workdir=/mnt/shared/cross_env"
#
# Environment: PROJECT (gcloud project, optional), SETUP=1 to first install the repo on every host
# (copies this checkout with scp and runs launch/install.sh).
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: $0 TPU_NAME ZONE COMMAND" >&2
  exit 2
fi
name=$1; zone=$2; shift 2; cmd=$*
project_flag=()
[[ -n "${PROJECT:-}" ]] && project_flag=(--project "$PROJECT")
ssh() { gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" "${project_flag[@]}" --worker=all "$@"; }
repo=$(cd "$(dirname "$0")/.." && pwd)
if [[ "${SETUP:-0}" == 1 ]]; then
  tar -C "$repo" --exclude=.git --exclude=runs -czf /tmp/agentgen_jax.tgz .
  gcloud compute tpus tpu-vm scp /tmp/agentgen_jax.tgz "$name":~/ --zone "$zone" "${project_flag[@]}" \
      --worker=all
  ssh --command "mkdir -p ~/agentgen_jax && tar -xzf ~/agentgen_jax.tgz -C ~/agentgen_jax && \
      cd ~/agentgen_jax && pip install -U 'jax[tpu]' && bash launch/install.sh"
fi
ssh --command "cd ~/agentgen_jax && $cmd"
