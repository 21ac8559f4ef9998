#!/usr/bin/env bash
# N MPI processes. On CPU every message goes through MPI (mpi4py; parallel.comm: auto); on GPU
# torch.distributed (NCCL) is bootstrapped from the MPI ranks. --set parallel.comm=torch forces gloo.
#   launch/mpirun.sh 2 configs/poisson2d_L5.yaml
# Open MPI as root on a laptop or container also needs: MPIRUN_FLAGS="--allow-run-as-root --oversubscribe"
set -euo pipefail
USAGE="launch/mpirun.sh NPROC CONFIG [ddpinn train options]"
. "$(dirname "$0")/lib.sh"
[[ $# -ge 2 ]] || usage_error "need NPROC and CONFIG"
require_count NPROC "$1"
require_config "$2"
nproc=$1
shift
exec "${MPIEXEC:-mpiexec}" ${MPIRUN_FLAGS:-} -n "$nproc" python -m ddpinn.cli train "$@"
