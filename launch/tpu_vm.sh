#!/usr/bin/env bash
# Train bltjax on Cloud TPU VMs: one slice, or several slices joined over the data-centre network.
#
#   launch/tpu_vm.sh create NODE ZONE v5p-128 [--spot] [--num-slices 2]   # queued resource NODE-qr
#   launch/tpu_vm.sh setup  NODE ZONE [--num-slices 2]        # Python 3.12 + this checkout on every worker
#   launch/tpu_vm.sh train  NODE ZONE experiments/blt_paper.py:1b gs://BUCKET/runs/blt_1b [--num-slices 2] [--set k=v ...]
#   launch/tpu_vm.sh logs   NODE ZONE [--worker N] [--slice S] [--lines 100]    # follow ~/train.log
#   launch/tpu_vm.sh status NODE ZONE [--num-slices 2]        # queued-resource state + training process per worker
#   launch/tpu_vm.sh ssh    NODE ZONE [--worker N] [--slice S] [-- COMMAND ...]
#   launch/tpu_vm.sh stop   NODE ZONE [--num-slices 2]        # SIGTERM: bltjax saves a checkpoint and exits
#   launch/tpu_vm.sh delete NODE ZONE
#
# Options anywhere: --dry-run (print the commands, one per line, run nothing), --project P.
# With --num-slices N the nodes are NODE-0 .. NODE-(N-1) of one multislice queued resource; `train` then
# adds --set mesh.dcn_data=N (data parallel across slices) unless a mesh.dcn_* override is given.
# The TPU runtime hands the multislice coordinates (MEGASCALE_*) to libtpu; for slices that were NOT
# created as one queued resource pass --megascale-coordinator IP (worker 0 of slice 0) to export them.
# The workdir must be visible to every worker: a gs:// path.  See docs/pods.md.
# shellcheck disable=SC2016,SC2088  # remote commands are expanded by the worker's shell
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=launch/common.sh
source "$here/common.sh"

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

# ---------------------------------------------------------------- arguments
pos=() passthrough=() num_slices=1 spot=0 worker=0 slice=0 lines=100 project="" runtime="" megascale=""
while (($#)); do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --spot) spot=1 ;;
    --num-slices) num_slices=${2:?--num-slices N}; shift ;;
    --num-slices=*) num_slices=${1#*=} ;;
    --worker) worker=${2:?--worker N}; shift ;;
    --worker=*) worker=${1#*=} ;;
    --slice) slice=${2:?--slice S}; shift ;;
    --slice=*) slice=${1#*=} ;;
    --lines) lines=${2:?--lines N}; shift ;;
    --project) project=${2:?--project P}; shift ;;
    --project=*) project=${1#*=} ;;
    --runtime-version) runtime=${2:?--runtime-version V}; shift ;;
    --megascale-coordinator) megascale=${2:?--megascale-coordinator IP}; shift ;;
    --set) passthrough+=("--set" "${2:?--set KEY=VALUE}"); shift ;;
    --) shift; passthrough+=("$@"); break ;;
    -h|--help) usage ;;
    -*) passthrough+=("$1") ;;  # other bltjax.train flags, e.g. --compile-cache
    *) pos+=("$1") ;;
  esac
  shift
done
((${#pos[@]} >= 3)) || usage
cmd=${pos[0]} node=${pos[1]} zone=${pos[2]}
[[ $num_slices =~ ^[1-9][0-9]*$ ]] || die "--num-slices must be a positive integer, got '$num_slices'"
qr="$node-qr"
gflags=(--zone="$zone")
[[ -n $project ]] && gflags+=(--project="$project")
remote_dir='~/bltjax'  # expanded on the worker

runtime_for() {
  case "$1" in
    v6e*) echo v2-alpha-tpuv6e ;;
    v5p*) echo v2-alpha-tpuv5 ;;
    v5litepod*|v5e*) echo v2-alpha-tpuv5-lite ;;
    v4*) echo tpu-ubuntu2204-base ;;
    *) die "no default runtime for accelerator type '$1'; pass --runtime-version" ;;
  esac
}

# Run a shell command on every worker of every slice (or on one worker with $1 = worker index).
on_workers() {
  local which=$1 remote=$2
  if ((num_slices > 1)); then
    run gcloud compute tpus queued-resources ssh "$qr" "${gflags[@]}" --node=all --worker="$which" \
      --batch-size=all --command="$remote"
  else
    run gcloud compute tpus tpu-vm ssh "$node" "${gflags[@]}" --worker="$which" --command="$remote"
  fi
}

train_command() {  # the nohup'ed bltjax.train command line for one worker (env prefix in $1)
  local env_prefix=$1 args
  args=$(shquote --config "$config" --workdir "$workdir" --distributed "${train_args[@]}")
  printf '%s' "cd $remote_dir && ${env_prefix}nohup .venv/bin/python -m bltjax.train $args " \
    "> ~/train.log 2>&1 < /dev/null & echo \$! > ~/train.pid"
}

# ---------------------------------------------------------------- commands
case "$cmd" in
  create)
    type=${pos[3]:?create NODE ZONE ACCELERATOR_TYPE (e.g. v5p-128)}
    [[ -n $runtime ]] || runtime=$(runtime_for "$type")
    args=(gcloud compute tpus queued-resources create "$qr" "${gflags[@]}" --accelerator-type="$type"
          --runtime-version="$runtime")
    if ((num_slices > 1)); then args+=(--node-count="$num_slices" --node-prefix="$node"); else args+=(--node-id="$node"); fi
    ((spot)) && args+=(--spot)
    run "${args[@]}"
    run gcloud compute tpus queued-resources describe "$qr" "${gflags[@]}" --format='value(state.state)'
    ;;
  setup)
    tarball=/tmp/bltjax-$node.tgz
    run tar czf "$tarball" --exclude=.venv --exclude=runs --exclude=.git --exclude=__pycache__ -C "$(cd "$here/.." && pwd)" .
    if ((num_slices > 1)); then
      run gcloud compute tpus queued-resources scp "$tarball" "$qr:~/bltjax.tgz" "${gflags[@]}" --node=all \
        --worker=all --batch-size=all
    else
      run gcloud compute tpus tpu-vm scp "$tarball" "$node:~/bltjax.tgz" "${gflags[@]}" --worker=all
    fi
    on_workers all "set -e; mkdir -p $remote_dir && tar xzf ~/bltjax.tgz -C $remote_dir && cd $remote_dir; \
$(python312_venv_snippet .venv) && .venv/bin/pip install -q -e '.[tpu]' && \
.venv/bin/python -c 'import bltjax, jax; print(\"jax\", jax.__version__)'"
    ;;
  train)
    config=${pos[3]:?train NODE ZONE CONFIG WORKDIR} workdir=${pos[4]:?train NODE ZONE CONFIG WORKDIR}
    [[ $workdir == gs://* || $workdir == /* ]] ||
      die "the workdir must be a path every worker sees (gs://BUCKET/... or a shared mount), got '$workdir'"
    [[ $workdir == gs://* ]] || echo "warning: $workdir must be a shared mount on every worker" >&2
    train_args=("${passthrough[@]}")
    if ((num_slices > 1)) && [[ " ${passthrough[*]} " != *" mesh.dcn_"* ]]; then
      train_args+=(--set "mesh.dcn_data=$num_slices")
    fi
    if [[ -n $megascale ]]; then
      ((num_slices > 1)) || die "--megascale-coordinator needs --num-slices > 1"
      for ((s = 0; s < num_slices; s++)); do
        env_prefix="MEGASCALE_COORDINATOR_ADDRESS=$megascale:8080 MEGASCALE_PORT=8080 MEGASCALE_NUM_SLICES=$num_slices MEGASCALE_SLICE_ID=$s "
        run gcloud compute tpus tpu-vm ssh "$node-$s" "${gflags[@]}" --worker=all --command="$(train_command "$env_prefix")"
      done
    else
      on_workers all "$(train_command "")"
    fi
    ;;
  logs)
    target=$node
    ((num_slices > 1 || slice > 0)) && target="$node-$slice"
    run gcloud compute tpus tpu-vm ssh "$target" "${gflags[@]}" --worker="$worker" --command="tail -n $lines -F ~/train.log"
    ;;
  status)
    run gcloud compute tpus queued-resources describe "$qr" "${gflags[@]}" --format='value(state.state)'
    on_workers all 'echo "$(hostname): $(kill -0 "$(cat ~/train.pid 2>/dev/null)" 2>/dev/null && echo training || echo not running) | $(tail -n 1 ~/train.log 2>/dev/null)"'
    ;;
  ssh)
    target=$node
    ((num_slices > 1 || slice > 0)) && target="$node-$slice"
    if ((${#passthrough[@]})); then
      run gcloud compute tpus tpu-vm ssh "$target" "${gflags[@]}" --worker="$worker" --command="${passthrough[*]}"
    else
      run gcloud compute tpus tpu-vm ssh "$target" "${gflags[@]}" --worker="$worker"
    fi
    ;;
  stop)
    on_workers all 'kill -TERM "$(cat ~/train.pid)" || true'
    ;;
  delete)
    run gcloud compute tpus queued-resources delete "$qr" "${gflags[@]}" --force --async
    ;;
  *) die "unknown command '$cmd' (create|setup|train|logs|status|ssh|stop|delete)" ;;
esac
