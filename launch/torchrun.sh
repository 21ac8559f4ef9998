#!/usr/bin/env bash
# One node, N processes (one per GPU, or CPU processes with gloo):
#   launch/torchrun.sh 2 configs/poisson2d_L5.yaml [--set key=value ...]
set -euo pipefail
USAGE="launch/torchrun.sh NPROC CONFIG [ddpinn train options]"
. "$(dirname "$0")/lib.sh"
[[ $# -ge 2 ]] || usage_error "need NPROC and CONFIG"
require_count NPROC "$1"
require_config "$2"
nproc=$1
shift
exec torchrun --standalone --nproc_per_node="$nproc" -m ddpinn.cli train "$@"
