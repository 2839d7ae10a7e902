#!/usr/bin/env bash
# Make sure the pgBackRest command is on this machine (point-in-time recovery needs it).
# Installs Debian's package when it is missing and we are root; safe to run again.
# Debian's package creates /var/log/pgbackrest and /etc/pgbackrest.conf, but hokmdb
# never uses them: it writes its own config, logs and locks into a private directory.
set -euo pipefail
if command -v pgbackrest >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "error: pgbackrest is not installed" >&2
  echo "  hint: ask an administrator to install it (apt-get install pgbackrest), then run again" >&2
  exit 7
fi
echo "installing pgBackRest from Debian's packages..." >&2
export DEBIAN_FRONTEND=noninteractive
# Parallel test workers (or another installer) may hold dpkg's lock: wait for it, don't fail.
APT=(apt-get -o DPkg::Lock::Timeout=300 -y -qq)
if ! "${APT[@]}" install --no-install-recommends pgbackrest >/dev/null 2>&1; then
  # A fresh machine may have no package lists yet.
  "${APT[@]}" update
  "${APT[@]}" install --no-install-recommends pgbackrest >/dev/null
fi
command -v pgbackrest >/dev/null
