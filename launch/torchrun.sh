#!/usr/bin/env bash
# One node, N processes (one per GPU, or CPU processes with gloo):
#   launch/torchrun.sh 2 configs/poisson2d_L5.yaml [--set key=value ...]
set -euo pipefail
nproc=${1:?usage: launch/torchrun.sh NPROC CONFIG [ddpinn train options]}
shift
exec torchrun --standalone --nproc_per_node="$nproc" -m ddpinn.cli train "$@"
