#!/usr/bin/env bash
# Several nodes with a c10d rendezvous. Run the same line on every node:
#   NNODES=4 NPROC_PER_NODE=8 RDZV_HOST=node01 RDZV_ID=myjob launch/torchrun_multinode.sh configs/poisson2d_L7.yaml
set -euo pipefail
USAGE="NNODES=N NPROC_PER_NODE=P RDZV_HOST=HOST [RDZV_PORT=29500] [RDZV_ID=ID] launch/torchrun_multinode.sh CONFIG [ddpinn train options]"
. "$(dirname "$0")/lib.sh"
require_count NNODES "${NNODES:-}"
require_count NPROC_PER_NODE "${NPROC_PER_NODE:-}"
[[ -n "${RDZV_HOST:-}" ]] || usage_error "set RDZV_HOST (a node all can reach)"
require_count RDZV_PORT "${RDZV_PORT:-29500}"
require_config "${1:-}"
exec torchrun \
  --nnodes="$NNODES" --nproc_per_node="$NPROC_PER_NODE" \
  --rdzv_backend=c10d --rdzv_endpoint="$RDZV_HOST:${RDZV_PORT:-29500}" --rdzv_id="${RDZV_ID:-ddpinn}" \
  -m ddpinn.cli train "$@"
