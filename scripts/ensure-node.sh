#!/usr/bin/env bash
# Node.js and npm for Allure Report 3 (the `allure` package from the npm registry).
set -euo pipefail
if command -v npm >/dev/null 2>&1 && command -v node >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "error: Node.js and npm are needed for the Allure report" >&2
  echo "  hint: install them (Debian: apt-get install nodejs npm)" >&2
  exit 5
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq nodejs npm >/dev/null
