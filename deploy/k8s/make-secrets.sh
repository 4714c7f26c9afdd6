#!/bin/sh
# make-secrets.sh NAMESPACE: prints the Secret vgate-secrets for `kubectl apply -f -`:
#   admin-key                the gateways' auth.admin_key: $VGATE_ADMIN_KEY when set
#                            (16+ characters of A-Z a-z 0-9 . _ ~ -), else random
#   operator-token           the gateways' server.operator_token, which their operator
#                            listener (/metrics, /sd/engines) asks of Prometheus: random
#                            (copy it to Prometheus: deploy/prometheus/kubernetes-jobs.yml)
#   redis-gateway-password   the Redis ACL user "gateway" (both instances)
#   redis-engine-password    the Redis ACL user "engine" (main instance only)
#   redis-url                redis://gateway:...@vgate-redis:6379/0        gateways
#   redis-cache-url          redis://gateway:...@vgate-redis-cache:6379/0  gateways' cache
#   redis-engine-url         redis://engine:...@vgate-redis:6379/0         supervisors
# Passwords are 48 random hex digits from /dev/urandom. Nothing is written to disk, and
# no value is ever committed. Run it once: running it again makes new passwords, which
# take effect when the Redis pods, gateways and engines restart (all of them).
set -eu
namespace=${1:?usage: make-secrets.sh NAMESPACE}
random_hex() {
  od -A n -N 24 -t x1 /dev/urandom | tr -d ' \n'
}
admin_key=${VGATE_ADMIN_KEY:-$(random_hex)}
case $admin_key in
  *[!A-Za-z0-9._~-]*)
    echo "make-secrets.sh: VGATE_ADMIN_KEY may hold only A-Z a-z 0-9 . _ ~ -" >&2
    exit 1
    ;;
esac
if [ ${#admin_key} -lt 16 ]; then
  echo "make-secrets.sh: VGATE_ADMIN_KEY needs 16 characters or more" >&2
  exit 1
fi
operator_token=$(random_hex)
gateway=$(random_hex)
engine=$(random_hex)
cat <<SECRET
apiVersion: v1
kind: Secret
metadata:
  name: vgate-secrets
  namespace: $namespace
  labels: {app.kubernetes.io/part-of: vgate}
type: Opaque
stringData:
  admin-key: "$admin_key"
  operator-token: "$operator_token"
  redis-gateway-password: "$gateway"
  redis-engine-password: "$engine"
  redis-url: "redis://gateway:$gateway@vgate-redis:6379/0"
  redis-cache-url: "redis://gateway:$gateway@vgate-redis-cache:6379/0"
  redis-engine-url: "redis://engine:$engine@vgate-redis:6379/0"
SECRET
