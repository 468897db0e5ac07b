#!/usr/bin/env bash
# Make the browser tests runnable: Debian's chromium (the tests drive it with Playwright for Python,
# installed into .venv by setup.sh; no browser is ever downloaded by Playwright). Installs chromium with
# apt when it is missing; says plainly what to do where it cannot.
set -euo pipefail

browser=${DEFECTLOOP_TEST_CHROMIUM:-/usr/bin/chromium}
if [ -x "$browser" ]; then
  exit 0
fi
echo "browser: installing Debian's chromium for the browser tests (once, about a minute)"
sudo_cmd=()
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null; then sudo_cmd=(sudo -n); else
    echo "browser: chromium is missing and this user cannot install it: run 'apt-get install chromium' as root" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq >/dev/null || true
if ! "${sudo_cmd[@]}" apt-get install -y -qq chromium >/dev/null; then
  echo "browser: 'apt-get install chromium' failed; the browser tests will fail naming it" >&2
  exit 1
fi
"$browser" --version
