#!/usr/bin/env bash
# Train bltjax on GKE with xpk (pip install xpk): TPU slices (one or several) or GPU node pools.
#
#   launch/xpk.sh cluster CLUSTER ZONE v5p-128 [--num-slices 2] [--spot]     # create the GKE cluster
#   launch/xpk.sh train   CLUSTER ZONE WORKLOAD v5p-128 experiments/blt_paper.py:1b gs://BUCKET/runs/blt_1b \
#                         [--num-slices 2] [--max-restarts 3] [--set k=v ...]
#   launch/xpk.sh train   CLUSTER ZONE WORKLOAD h100-80gb-8 experiments/blt_paper.py:1b gs://BUCKET/runs/x --num-nodes 4
#   launch/xpk.sh status  CLUSTER ZONE                     # xpk workload list
#   launch/xpk.sh logs    CLUSTER ZONE WORKLOAD            # follow the logs of the first pod
#   launch/xpk.sh delete  CLUSTER ZONE [WORKLOAD]          # the workload, or (without one) the cluster
#
# Options anywhere: --dry-run (print the commands, one per line, run nothing), --project P.
# The image is python:3.12-slim plus this checkout (xpk's --base-docker-image/--script-dir), so the
# Python version of the node image does not matter.  xpk (JobSet) sets the multislice environment
# (MEGASCALE_*) and JAX finds the GKE cluster itself (--distributed).  The workdir must be gs://.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=launch/common.sh
source "$here/common.sh"

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
pos=() extra=() num_slices=1 num_nodes=1 spot=0 project="" max_restarts=""
while (($#)); do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --spot) spot=1 ;;
    --num-slices) num_slices=${2:?--num-slices N}; shift ;;
    --num-nodes) num_nodes=${2:?--num-nodes N}; shift ;;
    --project) project=${2:?--project P}; shift ;;
    --max-restarts) max_restarts=${2:?--max-restarts N}; shift ;;
    --set) extra+=(--set "${2:?--set KEY=VALUE}"); shift ;;
    -h|--help) usage ;;
    -*) extra+=("$1") ;;
    *) pos+=("$1") ;;
  esac
  shift
done
((${#pos[@]} >= 3)) || usage
cmd=${pos[0]} cluster=${pos[1]} zone=${pos[2]}
xflags=(--cluster="$cluster" --zone="$zone")
[[ -n $project ]] && xflags+=(--project="$project")
is_gpu() { [[ $1 == *gb-* || $1 == h100* || $1 == h200* || $1 == a100* || $1 == b200* ]]; }

case "$cmd" in
  cluster)
    type=${pos[3]:?cluster CLUSTER ZONE TYPE}
    if is_gpu "$type"; then
      args=(xpk cluster create "${xflags[@]}" --device-type="$type" --num-nodes="$num_nodes")
    else
      args=(xpk cluster create "${xflags[@]}" --tpu-type="$type" --num-slices="$num_slices")
    fi
    ((spot)) && args+=(--spot)
    run "${args[@]}"
    ;;
  train)
    workload=${pos[3]:?train CLUSTER ZONE WORKLOAD TYPE CONFIG WORKDIR} type=${pos[4]:?accelerator type}
    config=${pos[5]:?experiment file} workdir=${pos[6]:?workdir (gs://BUCKET/...)}
    [[ $workdir == gs://* ]] || die "the workdir must be a gs:// path on GKE, got '$workdir'"
    train_args=("${extra[@]}")
    if ((num_slices > 1)) && [[ " ${extra[*]} " != *" mesh.dcn_"* ]]; then
      train_args+=(--set "mesh.dcn_data=$num_slices")
    fi
    if is_gpu "$type"; then
      extra_name=cuda target=(--device-type="$type" --num-nodes="$num_nodes")
      ((num_nodes > 1)) && [[ " ${extra[*]} " != *" mesh.dcn_"* ]] && train_args+=(--set "mesh.dcn_data=$num_nodes")
    else
      extra_name=tpu target=(--tpu-type="$type" --num-slices="$num_slices")
    fi
    command="pip install -q -e '.[$extra_name]' && python -m bltjax.train $(shquote --config "$config" \
--workdir "$workdir" --distributed "${train_args[@]}")"
    [[ -n $max_restarts ]] && target+=(--max-restarts="$max_restarts")
    run xpk workload create "${xflags[@]}" --workload="$workload" "${target[@]}" \
      --base-docker-image=python:3.12-slim --script-dir="$(cd "$here/.." && pwd)" --command="$command"
    ;;
  status)
    run xpk workload list "${xflags[@]}"
    ;;
  logs)
    workload=${pos[3]:?logs CLUSTER ZONE WORKLOAD}
    run kubectl logs -f --max-log-requests=1 -l "jobset.sigs.k8s.io/jobset-name=$workload" --tail=100
    ;;
  delete)
    if ((${#pos[@]} >= 4)); then
      run xpk workload delete "${xflags[@]}" --workload="${pos[3]}"
    else
      run xpk cluster delete "${xflags[@]}"
    fi
    ;;
  *) die "unknown command '$cmd' (cluster|train|status|logs|delete)" ;;
esac
