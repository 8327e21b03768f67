#!/bin/sh
# Install Debian's chromium for the browser tests (tests/test_browser.py drives it
# with playwright's Python API). Idempotent and quiet: does nothing when the
# browser is already there. Never runs `playwright install` (that downloads a
# browser build these machines cannot fetch). If chromium cannot be installed,
# it says so and exits 0: the browser tests then skip with the reason.
set -u
CHROMIUM="${CFD_CHROMIUM:-/usr/bin/chromium}"
[ -x "$CHROMIUM" ] && exit 0

say() { echo "setup_browser: $*" >&2; }
if ! command -v apt-get >/dev/null 2>&1; then
    say "apt-get not found; install Debian's chromium at $CHROMIUM to run the browser tests"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        say "not root and no passwordless sudo; run: apt-get install -y chromium"
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
if $SUDO apt-get install -y -qq chromium >/dev/null 2>&1 \
   || { $SUDO apt-get update -qq >/dev/null 2>&1 && $SUDO apt-get install -y -qq chromium >/dev/null 2>&1; }; then
    [ -x "$CHROMIUM" ] && exit 0
fi
say "could not install chromium with apt-get; the browser tests will be skipped"
exit 0
