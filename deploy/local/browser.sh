#!/usr/bin/env bash
# Headless Chromium for the dashboard's browser test (Debian's package; Playwright drives it
# through executable_path, so no browser is ever downloaded). Idempotent; needs root or sudo.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  echo "chromium: $(chromium --version 2>/dev/null || echo present)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null
# fonts-wqy-microhei: the dashboard is in Chinese; without a CJK font screenshots show boxes.
$SUDO apt-get install -y -q --no-install-recommends chromium fonts-wqy-microhei >/dev/null
echo "chromium: $(chromium --version 2>/dev/null || echo installed)"
