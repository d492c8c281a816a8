#!/usr/bin/env bash
# Installs what why502's build, demo and tests need on Debian 12, idempotently:
# PHP-FPM (the real upstream), nginx-light (the parity reference), cmake (for
# Pingora's build), curl, wrk and h2load (load tools), openssl, chromium (the
# gallery's browser test). Run as root (or with sudo). Safe to run again.
set -euo pipefail
pkgs=(php-fpm php-cli nginx-light cmake curl wrk nghttp2-client openssl chromium util-linux procps iproute2)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi
# Debian starts the services it installs where it can; why502's tests start
# their own PHP-FPM and nginx on temporary sockets and ports, so the system
# ones are not needed (and a system nginx would hold port 80).
command -v php-fpm8.2 >/dev/null || ls /usr/sbin/php-fpm* >/dev/null
command -v cargo >/dev/null || { echo "setup: cargo (Rust) is required: https://rustup.rs" >&2; exit 1; }
echo "setup: ok"
