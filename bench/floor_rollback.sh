#!/usr/bin/env bash
# The floor for a code rollback: the symlink swaps and graceful reloads the runbook does, and
# nothing else (no ledger, lock, checks or verification), so the benchmark can show what the
# runbook costs on top of the work itself.
#
#   floor_rollback.sh RELEASE ROOT PIDFILE URL [ROOT PIDFILE URL ...]
#
# ROOT is a host's deploy root (releases/, slots/, current -> slots/<pool>); PIDFILE and URL
# are those of the instance serving the live slot. Exits once every URL serves RELEASE.
set -euo pipefail

usage() {
  echo "usage: $0 RELEASE ROOT PIDFILE URL [ROOT PIDFILE URL ...]" >&2
  exit 2
}

(($# >= 4 && ($# - 1) % 3 == 0)) || usage
release=$1
shift
[[ $release =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ && $release != *..* ]] || usage
hosts=("$@")
wait_timeout=${FLOOR_WAIT_TIMEOUT:-10}

for ((i = 0; i < ${#hosts[@]}; i += 3)); do
  root=${hosts[i]}
  pidfile=${hosts[i + 1]}
  [[ -d $root/releases/$release ]] || { echo "$root/releases/$release is missing" >&2; exit 1; }
  slot=$(readlink "$root/current") # slots/blue: the slot link the live instance serves
  # The link target is relative to slots/, as the runbook writes it.
  ln -sfn "../releases/$release" "$root/$slot.tmp"
  mv -T "$root/$slot.tmp" "$root/$slot"
  kill -HUP "$(<"$pidfile")"
done

deadline=$((SECONDS + wait_timeout))
for ((i = 2; i < ${#hosts[@]}; i += 3)); do
  url=${hosts[i]}
  until curl -fsS --max-time 1 "$url/version" 2>/dev/null | grep -qF "\"release\": \"$release\""; do
    ((SECONDS < deadline)) || { echo "$url does not serve $release after ${wait_timeout}s" >&2; exit 1; }
    sleep 0.01
  done
done
