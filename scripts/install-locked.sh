#!/usr/bin/env bash
# Install the lock file into the virtualenv: on a terminal with a one-line count of the
# packages fetched and installed (the first run takes minutes), quiet in CI logs. pip's whole
# output goes to <venv>/install.log; when pip fails, its end is printed with the log's path.
#   scripts/install-locked.sh VENV LOCKFILE
set -uo pipefail
venv=$1
lock=$2
log="$venv/install.log"
total=$(grep -cE '^[A-Za-z0-9]' "$lock")
PYTHONUNBUFFERED=1 "$venv/bin/python" -m pip --disable-pip-version-check install --require-hashes -r "$lock" >"$log" 2>&1 &
pid=$!
if [ -t 1 ]; then
  while kill -0 "$pid" 2>/dev/null; do
    fetched=$(grep -cE '^(Collecting|Processing|Requirement already satisfied)' "$log")
    if grep -q '^Installing collected packages' "$log"; then
      printf '\r  %d of %d packages fetched; installing them...' "$fetched" "$total"
    else
      printf '\r  %d of %d packages fetched' "$fetched" "$total"
    fi
    sleep 1
  done
  printf '\r%70s\r' ''
fi
wait "$pid"
rc=$?
if [ "$rc" -ne 0 ]; then
  grep -v '^WARNING: Location' "$log" | tail -n 30
  echo "hokmdb: installing the locked dependencies failed (pip exit $rc); pip's whole output: $log" >&2
  exit "$rc"
fi
