#!/usr/bin/env bash
# Chromium for the test that looks at the Allure report as a person would. Debian's
# package (no browser downloads); installed when missing and we are root. Otherwise the
# test skips and says how to install it.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "note: chromium is not installed; the Allure report screenshot test will be skipped (apt-get install chromium)" >&2
  exit 0
fi
echo "installing chromium from Debian's packages (for the report test)..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
