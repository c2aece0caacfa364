#!/bin/sh
# Install the Debian packages herald's build, tests and benchmarks need.
# Idempotent: when every package is already installed it does nothing at all
# (no apt-get update, no network). Called by the Makefile before building.
set -eu

PACKAGES="gcc make pkg-config libc6-dev
libsqlite3-dev libjansson-dev libyajl-dev libmicrohttpd-dev nettle-dev libssl-dev libcmocka-dev libcurl4-openssl-dev
python3 python3-pytest python3-pytest-xdist python3-aiosmtpd python3-prometheus-client
valgrind wrk curl
librdkafka-dev kcat"

missing=""
for pkg in $PACKAGES; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    case "$status" in
        *"install ok installed"*) ;;
        *) missing="$missing $pkg" ;;
    esac
done

[ -z "$missing" ] && exit 0

echo "deps: installing:$missing" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "deps: missing packages:$missing (run as root or install them)" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
