#!/usr/bin/env bash
# Local services for citysense: PostgreSQL, Mosquitto, Kafka.
# Usage: services.sh up|down|status [postgres|mosquitto|kafka ...]   (default: all)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() { echo "usage: $0 up|down|status [postgres|mosquitto|kafka ...]" >&2; exit 2; }

verb="${1:-}"; [ $# -gt 0 ] && shift
case "$verb" in up|down|status) ;; *) usage ;; esac

svcs=("$@")
if [ ${#svcs[@]} -eq 0 ]; then svcs=(postgres mosquitto kafka); fi
for s in "${svcs[@]}"; do
  case "$s" in postgres|mosquitto|kafka) ;; *) echo "error: unknown service '$s'" >&2; usage ;; esac
done

case "$verb" in
  up)
    # Dependency order; stop at the first failure (set -e).
    for s in postgres mosquitto kafka; do
      [[ " ${svcs[*]} " == *" $s "* ]] && "$HERE/$s.sh" up
    done ;;
  down)
    for s in kafka mosquitto postgres; do
      [[ " ${svcs[*]} " == *" $s "* ]] && "$HERE/$s.sh" down
    done ;;
  status)
    rc=0
    for s in postgres mosquitto kafka; do
      if [[ " ${svcs[*]} " == *" $s "* ]]; then "$HERE/$s.sh" status || rc=3; fi
    done
    exit "$rc" ;;
esac
exit 0
