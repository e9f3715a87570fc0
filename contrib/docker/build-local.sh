#!/usr/bin/env bash
# Builds the Dockerfile's runtime stage around a static binary built on this
# host, pulling no image: the build stage is replaced by a `FROM scratch`
# stage holding the host-built files (what BuildKit's --build-context would
# do; this engine's classic builder has no named contexts and builds every
# stage, so the real build stage, which needs the rust image, is cut off).
#
#   contrib/docker/build-local.sh [TAG]     (default tag: mailman:local)
#
# MAILMAN_BIN names the binary; by default it is built with
# `cargo build --release` (static: see .cargo/config.toml).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
tag=${1:-mailman:local}
bin=${MAILMAN_BIN:-$root/target/x86_64-unknown-linux-musl/release/mailman}
if [ -z "${MAILMAN_BIN:-}" ]; then
    (cd "$root" && cargo build --release --locked --quiet)
fi
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
sh "$root/contrib/docker/stage.sh" "$ctx/out" "$bin"
# The classic builder keeps a multi-stage build's first stage as a dangling
# image; the label lets us remove exactly that one afterwards.
stage_label="mailman.build-local=$(basename "$ctx")"
{
    echo "FROM scratch AS build"
    echo "LABEL $stage_label"
    echo "COPY out/ /out/"
    sed -n '/^# ---- runtime stage/,$p' "$root/Dockerfile"
} > "$ctx/Dockerfile"
# The classic builder (BuildKit would need buildx, which this engine lacks);
# its deprecation notice is shown only if the build fails.
if ! log=$(DOCKER_BUILDKIT=0 docker build --quiet --tag "$tag" "$ctx" 2>&1); then
    echo "$log" >&2
    exit 1
fi
docker image prune --force --filter "label=$stage_label" >/dev/null
echo "built $tag ($(docker image inspect "$tag" --format '{{.Size}}') bytes)"
