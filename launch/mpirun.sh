#!/usr/bin/env bash
# N MPI processes. torch.distributed is bootstrapped through mpi4py (gloo on CPU, NCCL on GPU);
# add --set parallel.comm=mpi to send every message through MPI instead:
#   launch/mpirun.sh 2 configs/poisson2d_L5.yaml [--set parallel.comm=mpi]
# Open MPI as root on a laptop or container also needs: MPIRUN_FLAGS="--allow-run-as-root --oversubscribe"
set -euo pipefail
nproc=${1:?usage: launch/mpirun.sh NPROC CONFIG [ddpinn train options]}
shift
exec "${MPIEXEC:-mpiexec}" ${MPIRUN_FLAGS:-} -n "$nproc" python -m ddpinn.cli train "$@"
