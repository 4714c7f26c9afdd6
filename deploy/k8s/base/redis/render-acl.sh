#!/bin/sh
# render-acl.sh TEMPLATE OUT: the Redis ACL file OUT (mode 0600) from TEMPLATE, comment
# and blank lines dropped, each @NAME_SHA256@ replaced by the SHA-256 of the value of
# the environment variable NAME. Redis then holds password digests only. Fails, writing
# nothing, when a variable is unset or empty or a placeholder is left. Runs in the
# Redis pods' init container (busybox sh) and in the tests.
set -eu
template=$1
out=$2
umask 077
rules=$(grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$template")
script=
for name in $(printf '%s\n' "$rules" | grep -o '@[A-Z0-9_]*_SHA256@' | sort -u | sed 's/^@//; s/_SHA256@$//'); do
  eval "value=\${$name:-}"
  if [ -z "$value" ]; then
    echo "render-acl.sh: $name is unset or empty" >&2
    exit 1
  fi
  digest=$(printf %s "$value" | sha256sum | cut -d ' ' -f 1)
  script="${script}s/@${name}_SHA256@/${digest}/g;"
done
printf '%s\n' "$rules" | sed "$script" > "$out.tmp"
if grep -q '@[A-Z0-9_]*@' "$out.tmp"; then
  echo "render-acl.sh: a placeholder is left in $template" >&2
  rm -f "$out.tmp"
  exit 1
fi
mv "$out.tmp" "$out"
