#!/usr/bin/env bash
# Make sure PostgreSQL server binaries (initdb, pg_ctl, postgres) are on this machine.
# The image of this project's machines ships PostgreSQL 15; on a machine without it,
# install it from Debian's packages (root only). The Debian service is not started:
# hokmdb runs its own clusters.
set -euo pipefail
if [ -n "${HOKMDB_PG_BIN:-}" ] && [ -x "${HOKMDB_PG_BIN}/initdb" ]; then exit 0; fi
for dir in /usr/lib/postgresql/*/bin; do
  if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ]; then exit 0; fi
done
if [ "$(id -u)" -ne 0 ]; then
  echo "error: PostgreSQL server binaries not found" >&2
  echo "  hint: ask an administrator to install postgresql-15 (or set HOKMDB_PG_BIN to its bin directory)" >&2
  exit 5
fi
echo "installing PostgreSQL 15 server binaries from Debian's packages..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d keeps the package from starting a system-wide server.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
apt-get install -y -qq postgresql-15 postgresql-contrib >/dev/null
