#!/usr/bin/env bash
# Install a lock file into a virtualenv without resolving anything, then prove it.
#   scripts/install-locked.sh VENV LOCKFILE [PROJECT_DIR[EXTRAS]]
#
# pip gets --no-deps: it installs the lock's lines and asks the index about nothing else, so
# a release published after the lock was made can never be chosen (with resolution, pip 23.2's
# resolver re-resolved a dependency's `CacheControl[filecache]>=0.13` past the lock's pin and
# failed the install; requirements/README.md). What resolution used to guarantee is then
# proven: scripts/verify-install.py reads pip's --report (nothing but lock lines, at their
# versions) and walks every requirement, extras included (the lock is complete).
# With PROJECT_DIR, the project is installed editable, --no-deps and --no-build-isolation (its
# build backend comes from the lock too, not from the index), and its own requirements, with
# EXTRAS, are proven to be in the lock.
#
# On a terminal: a one-line count of the packages fetched and installed (the first run takes
# minutes); quiet in CI logs. pip's whole output goes to <venv>/install.log; when pip fails,
# its end is printed with the log's path.
set -uo pipefail
venv=$1
lock=$2
project=${3:-}
here=$(cd "$(dirname "$0")" && pwd)
log="$venv/install.log"
report="$venv/install-report.json"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
total=$(grep -cE '^[A-Za-z0-9]' "$lock")
rm -f "$report"
PYTHONUNBUFFERED=1 "${pip[@]}" install --no-deps --require-hashes --report "$report" -r "$lock" >"$log" 2>&1 &
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
fail() {
  grep -v '^WARNING: Location' "$log" | tail -n 30
  echo "hokmdb: $1 (pip exit $2); pip's whole output: $log" >&2
  exit "$2"
}
[ "$rc" -eq 0 ] || fail "installing the locked dependencies from $lock failed" "$rc"
if [ -n "$project" ]; then
  "${pip[@]}" install --no-deps --no-build-isolation -e "${project%%\[*}" >>"$log" 2>&1 \
    || fail "installing the project ${project%%\[*} failed" $?
  "$venv/bin/python" "$here/verify-install.py" --report "$report" --lock "$lock" --project "$project"
else
  "$venv/bin/python" "$here/verify-install.py" --report "$report" --lock "$lock"
fi
