#!/usr/bin/env bash
# Builds the Mailman Core image (contrib/mailman-core/Dockerfile) pulling
# nothing: the base is a debootstrapped Ubuntu 24.04 with Python 3.12
# (base-image.sh, made once per machine), the Python packages come from a
# wheel directory made on this host (wheels.sh, made once), the binary is
# built here. The Dockerfile's runtime stage is used as it is; its build
# stage (which needs the rust image) is replaced by a `FROM scratch` stage
# holding the host's files, as contrib/docker/build-local.sh does for the
# small image.
#
#   contrib/mailman-core/build.sh [TAG]        (default: mailman-core:local)
#
# MAILMAN_BIN names a ready binary (else `cargo build --release`).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
tag=${1:-mailman-core:local}
base=$("$here/base-image.sh")
wheels=$("$here/wheels.sh")
# Where cargo puts it (CARGO_TARGET_DIR, if set, is relative to the root).
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$root/$target ;; esac
bin=${MAILMAN_BIN:-$target/x86_64-unknown-linux-musl/release/mailman}
if [ -z "${MAILMAN_BIN:-}" ]; then
    (cd "$root" && cargo build --release --locked --quiet)
fi
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/out/bin" "$ctx/out/etc" "$ctx/out/wheels"
cp "$bin" "$ctx/out/bin/mailmanctl"
for name in start stop restart reopen status; do ln -s mailmanctl "$ctx/out/bin/$name"; done
cp "$here/mailman.cfg" "$here/mailman.toml" "$ctx/out/etc/"
cp "$here/gunicorn.cfg" "$ctx/out/etc/mailman-gunicorn.cfg"
# Preserved times keep the wheel layer cached across builds.
cp -p "$wheels"/*.whl "$here/constraints.txt" "$ctx/out/wheels/"
stage_label="mailman.build-local=$(basename "$ctx")"
{
    echo "ARG BASE"
    echo "FROM scratch AS build"
    echo "LABEL $stage_label"
    echo "COPY out/ /out/"
    sed -n '/^# ---- runtime stage/,$p' "$here/Dockerfile"
} > "$ctx/Dockerfile"
if ! log=$(DOCKER_BUILDKIT=0 docker build --quiet --build-arg "BASE=$base" --tag "$tag" "$ctx" 2>&1); then
    echo "$log" >&2
    exit 1
fi
docker image prune --force --filter "label=$stage_label" >/dev/null
echo "built $tag from $base ($(docker image inspect "$tag" --format '{{.Size}}') bytes)"
