#!/usr/bin/env bash
# Makes the Mailman Core image's base without pulling anything: a Debian
# bookworm root file system from Debian's package archive (debootstrap
# minbase with Python 3.11 and venv), imported into the Docker engine under a
# fixed tag. The engine keeps it, so this runs once per machine (about
# 2.5 minutes); later builds, from any clone, find the tag.
#
#   contrib/mailman-core/base-image.sh            prints the tag
#
# MAILMAN_CORE_BASE overrides the tag; DEBIAN_MIRROR the archive.
set -euo pipefail
tag=${MAILMAN_CORE_BASE:-mailman-core-base:bookworm-1}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "$tag"
    exit 0
fi
if ! command -v debootstrap >/dev/null; then
    echo "installing debootstrap" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
root=$(mktemp -d /var/tmp/mailman-core-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "debootstrap bookworm into $root (about 2.5 minutes)" >&2
debootstrap --variant=minbase --include=python3,python3-venv \
    bookworm "$root" "$mirror" >/dev/null
# What a container does not need: apt's lists and caches, man pages, docs.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
    "$root"/var/cache/apt/archives/*.deb "$root"/usr/share/man/* "$root"/usr/share/doc/*
tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$tag" >/dev/null
echo "$tag"
