#!/usr/bin/env bash
# Install the Debian packages the test suite uses, when missing. Needs root (CI and these machines are).
set -euo pipefail
want=()
for pkg in "$@"; do want+=("$pkg"); done
[ ${#want[@]} -eq 0 ] && exit 0
missing=()
for pkg in "${want[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "system-deps: not root; install these Debian packages to run every test: ${missing[*]}" >&2
  exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
