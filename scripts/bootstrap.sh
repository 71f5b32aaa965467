#!/usr/bin/env bash
# Creates .venv with the project and its dev tools, and installs the Debian packages the tests
# drive for real (etcd, wrk, h2load, chromium). Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

need_apt=()
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need_apt+=(etcd-client)
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
command -v h2load >/dev/null 2>&1 || need_apt+=(nghttp2-client)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v kamailio >/dev/null 2>&1 || need_apt+=(kamailio kamailio-utils-modules kamailio-json-modules)
# the web console's browser test: Playwright drives Debian's chromium (no browser download)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
  # Debian starts these services where systemd runs; the tests start their own on free ports.
  $SUDO systemctl disable --now etcd prometheus prometheus-node-exporter kamailio >/dev/null 2>&1 || true
fi

if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  $PY -m venv .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  echo "bootstrap: pip install -e .[dev]"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[dev]'
  rm -f .venv/.installed-*; touch "$stamp"
fi
