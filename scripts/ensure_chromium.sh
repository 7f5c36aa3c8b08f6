#!/usr/bin/env bash
# Make Debian's headless-capable Chromium available for the UI screenshot test (tests/e2e/test_asset_graph_ui.py).
# Idempotent: when a chromium is on PATH (or CDC_TEST_CHROMIUM names one), it only prints its version and exits 0.
# As root with apt-get it installs the `chromium` package (no browser download: the Debian mirror only).
# Otherwise it says how to install it and exits 1; the test then skips (fails with CI=true).
set -euo pipefail

say() { echo "ensure_chromium: $*" >&2; }

find_chromium() {
    if [ -n "${CDC_TEST_CHROMIUM:-}" ] && [ -x "${CDC_TEST_CHROMIUM}" ]; then echo "$CDC_TEST_CHROMIUM"; return 0; fi
    for name in chromium chromium-browser; do
        if command -v "$name" >/dev/null; then command -v "$name"; return 0; fi
    done
    return 1
}

if bin="$(find_chromium)"; then
    say "$("$bin" --version 2>/dev/null || echo "$bin") is installed"
    exit 0
fi

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    say "installing Debian's chromium (the asset graph screenshot test runs it headless)"
    # An install interrupted earlier (a killed `make test`) leaves dpkg half-configured, and apt then refuses every
    # install until it is finished: finish it first (a no-op otherwise).
    DEBIAN_FRONTEND=noninteractive dpkg --configure -a
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-liberation
    bin="$(find_chromium)"
    say "$("$bin" --version 2>/dev/null || echo "$bin") is installed"
    exit 0
fi

say "chromium is missing; the UI screenshot test will skip (fail with CI=true)." \
    "Install it: sudo apt-get install -y --no-install-recommends chromium fonts-liberation"
exit 1
