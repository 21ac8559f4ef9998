#!/usr/bin/env bash
# Several nodes with a c10d rendezvous. Run the same line on every node:
#   NNODES=4 NPROC_PER_NODE=8 RDZV_HOST=node01 RDZV_ID=myjob launch/torchrun_multinode.sh configs/poisson2d_L7.yaml
set -euo pipefail
: "${NNODES:?set NNODES}" "${NPROC_PER_NODE:?set NPROC_PER_NODE}" "${RDZV_HOST:?set RDZV_HOST (a node all can reach)}"
exec torchrun \
  --nnodes="$NNODES" --nproc_per_node="$NPROC_PER_NODE" \
  --rdzv_backend=c10d --rdzv_endpoint="$RDZV_HOST:${RDZV_PORT:-29500}" --rdzv_id="${RDZV_ID:-ddpinn}" \
  -m ddpinn.cli train "$@"
