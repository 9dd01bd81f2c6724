#!/bin/sh
# Entry point of the lightning-op image: `lightning-op <command> [options]`, the operator by default
# (the image's CMD), the collector with `collector ...` as the container's args.
#
# umask 0002: the operator writes datasets and per-round trainer configs on the model volume, and the
# trainer Jobs (uid/gid 1000, manifests/trainer_job.py) write their adapters into those directories.
# The chart gives the operator the supplemental group 1000 (fsGroup), so group-writable directories
# are what lets a trainer write where the operator prepared a round.
set -eu
umask 0002
exec lightning-op "$@"
