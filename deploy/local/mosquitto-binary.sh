#!/usr/bin/env bash
# Make sure a `mosquitto` binary exists for `citysense up` (which runs it as its own child
# process, never as a system service). Installs Debian's package when we are root; otherwise
# says what to install. Idempotent.
set -euo pipefail
# shellcheck source=deploy/local/common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
  exit 0
fi
if is_root; then
  apt_install mosquitto
  exit 0
fi
die "citysense up needs a mosquitto binary (no PyPI broker passed our checks: citysense/launch/README.md); install Debian's package (sudo apt-get install mosquitto) or set CITYSENSE_MQTT_URL to a broker"
