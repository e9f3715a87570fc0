#!/bin/sh
# Lays out the runtime image's files under OUT from a static mailman binary:
#   OUT/bin/     mailman and its multi-call links (start, stop, ...)
#   OUT/etc/     passwd, group, mailman3/mailman.toml
#   OUT/var/lib/mailman/   the (empty) volume
# Used by the Dockerfile's build stage and by build-local.sh alike.
set -eu
out=$1
bin=$2
here=$(dirname "$0")
mkdir -p "$out/bin" "$out/etc/mailman3" "$out/var/lib/mailman"
cp "$bin" "$out/bin/mailman"
for name in start stop restart reopen status master; do
    ln -sf mailman "$out/bin/$name"
done
cp "$here/passwd" "$here/group" "$out/etc/"
cp "$here/mailman.toml" "$out/etc/mailman3/mailman.toml"
