#!/bin/sh
# etcd users and roles for callroute, then `auth enable` (B6). Run by the chart's etcd-auth Job on
# every install and upgrade, and by tests/test_deploy_etcd.py against a real etcd: it is idempotent.
#
# Users have no password: etcd runs with --client-cert-auth and takes the user from the client
# certificate's CN. Only two users exist:
#   root                 the Job's own certificate (CN=root); needed to change users and enable auth
#   $CALLROUTE_CP_USER   the control plane: read and write on $CALLROUTE_PREFIX, nothing else
# Agents and operators get no etcd user: a certificate with any other CN (a center's, say) is
# authenticated by TLS and then denied every key.
#
# Environment: ETCDCTL_ENDPOINTS, ETCDCTL_CACERT, ETCDCTL_CERT, ETCDCTL_KEY (root's certificate),
# CALLROUTE_PREFIX (e.g. /callroute/), CALLROUTE_CP_USER (e.g. callroute-controlplane).
set -eu
: "${CALLROUTE_PREFIX:?}" "${CALLROUTE_CP_USER:?}"
export ETCDCTL_API=3

# run etcdctl; "already exists" / "already granted" from an earlier run is success
ensure() {
  if ! out=$(etcdctl "$@" 2>&1); then
    case "$out" in
      *"already exists"*|*"already granted"*) ;;
      *) echo "etcd-auth: etcdctl $*: $out" >&2; exit 1 ;;
    esac
  fi
}

ensure user add root --no-password
ensure role add root
ensure user grant-role root root
ensure user add "$CALLROUTE_CP_USER" --no-password
ensure role add "$CALLROUTE_CP_USER"
ensure role grant-permission "$CALLROUTE_CP_USER" readwrite "$CALLROUTE_PREFIX" --prefix=true
ensure user grant-role "$CALLROUTE_CP_USER" "$CALLROUTE_CP_USER"
ensure auth enable
echo "etcd-auth: auth enabled; $CALLROUTE_CP_USER may read and write $CALLROUTE_PREFIX only"
