#!/usr/bin/env bash
# Make sure the production-topology programs are on this machine: PgBouncer (the game's
# connection pooler) and, for the high-availability mode, Patroni and etcd. Installs Debian's
# packages when a program is missing and we are root; safe to run again. The packages' own
# services are never started (policy-rc.d) and their config files are never used: hokmdb
# writes each process's config into the topology's private directory.
set -euo pipefail
need=()
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)
if [ "${HOKMDB_TOPOLOGY_HA:-1}" != "0" ]; then
  command -v patroni >/dev/null 2>&1 || need+=(patroni)
  command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ] || need+=(etcd-server)
fi
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "error: ${need[*]} not installed (the topology needs them)" >&2
  echo "  hint: ask an administrator to run: apt-get install ${need[*]}" >&2
  exit 7
fi
echo "installing ${need[*]} from Debian's packages..." >&2
export DEBIAN_FRONTEND=noninteractive
# Parallel test workers (or another installer) may hold dpkg's lock: wait for it, don't fail.
APT=(apt-get -o DPkg::Lock::Timeout=300 -y -qq)
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
if ! "${APT[@]}" install --no-install-recommends "${need[@]}" >/dev/null 2>&1; then
  # A fresh machine may have no package lists yet.
  "${APT[@]}" update
  "${APT[@]}" install --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian starts these services where it can (no systemd here, but be sure): hokmdb runs its own.
for svc in pgbouncer patroni etcd; do
  if command -v service >/dev/null 2>&1; then service "$svc" stop >/dev/null 2>&1 || true; fi
done
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ]
