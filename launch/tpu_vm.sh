#!/usr/bin/env bash
# Launch bltjax training on a Cloud TPU pod slice (queued resources + ssh to every worker).
#
#   launch/tpu_vm.sh create  NODE ZONE v5p-128 [--spot]   # request the slice
#   launch/tpu_vm.sh setup   NODE ZONE                    # copy this repo to every worker and install it
#   launch/tpu_vm.sh train   NODE ZONE experiments/blt_paper.py:1b /mnt/bucket/runs/blt_1b [--set k=v ...]
#   launch/tpu_vm.sh delete  NODE ZONE
#
# Notes: the command must run on ALL workers (running on worker 0 only hangs backend init);
# jax.distributed auto-detects the pod (python -m bltjax.train --distributed).  The workdir must be a
# path every worker sees (gcsfuse / Filestore mount).  If the coordinator port is firewalled, pass
# --coordinator IP:8476 --num-processes N --process-id $WORKER instead of --distributed.
set -euo pipefail
cmd=${1:?create|setup|train|delete}; node=${2:?node name}; zone=${3:?zone}; shift 3
runtime_for() { case "$1" in v6e*) echo v2-alpha-tpuv6e;; v5p*) echo v2-alpha-tpuv5;; v5litepod*|v5e*) echo v2-alpha-tpuv5-lite;; *) echo tpu-ubuntu2204-base;; esac; }
case "$cmd" in
  create)
    type=${1:?accelerator type, e.g. v5p-128}; shift
    gcloud compute tpus queued-resources create "$node-qr" --node-id "$node" --zone "$zone" \
      --accelerator-type "$type" --runtime-version "$(runtime_for "$type")" "$@" ;;
  setup)
    tar czf /tmp/bltjax.tgz --exclude .venv --exclude runs --exclude .git -C "$(dirname "$0")/.." .
    gcloud compute tpus tpu-vm scp /tmp/bltjax.tgz "$node":~/bltjax.tgz --zone "$zone" --worker=all
    gcloud compute tpus tpu-vm ssh "$node" --zone "$zone" --worker=all --command \
      "mkdir -p ~/bltjax && tar xzf ~/bltjax.tgz -C ~/bltjax && cd ~/bltjax && python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu]'" ;;
  train)
    config=${1:?experiment file}; workdir=${2:?shared workdir}; shift 2
    gcloud compute tpus tpu-vm ssh "$node" --zone "$zone" --worker=all --command \
      "cd ~/bltjax && nohup .venv/bin/python -m bltjax.train --config $config --workdir $workdir --distributed $* > ~/train.log 2>&1 &" ;;
  delete)
    gcloud compute tpus queued-resources delete "$node-qr" --zone "$zone" --force --async ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
