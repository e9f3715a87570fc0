#!/usr/bin/env bash
# Makes the Mailman Core image's base without pulling anything: an Ubuntu
# 24.04 (noble) root file system with Python 3.12 and venv, from Ubuntu's
# package archive (debootstrap minbase), imported into the Docker engine under
# a fixed tag. The engine keeps it, so this runs once per machine (about
# 2.5 minutes); later builds, from any clone, find the tag.
#
# Python 3.12: the newest Python Mailman 3.3.10 supports (its classifiers;
# on 3.13 its template search fails), and the first whose objects can be made
# immortal, which the preload helper does (docs/mailman-core.md, "Preloaded
# runners"). No Debian release has 3.12 (bookworm 3.11, trixie 3.13); Ubuntu
# 24.04 is built on it. The Dockerfile's own default base, for builds that
# may pull, is Docker's python:3.12-slim-bookworm.
#
#   contrib/mailman-core/base-image.sh            prints the tag
#
# MAILMAN_CORE_BASE overrides the tag; UBUNTU_MIRROR the archive.
set -euo pipefail
tag=${MAILMAN_CORE_BASE:-mailman-core-base:noble-1}
mirror=${UBUNTU_MIRROR:-http://archive.ubuntu.com/ubuntu}
# The archive's signing keys come from Ubuntu's keyring package, checked
# against this digest before debootstrap trusts them (Debian's archive does
# not carry them).
keyring_deb=pool/main/u/ubuntu-keyring/ubuntu-keyring_2023.11.28.1_all.deb
keyring_sha256=36de43b15853ccae0028e9a767613770c704833f82586f28eb262f0311adb8a8
if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "$tag"
    exit 0
fi
if ! command -v debootstrap >/dev/null; then
    echo "installing debootstrap" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
work=$(mktemp -d /var/tmp/mailman-core-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root
if ! python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(*sys.argv[1:])' \
        "$mirror/$keyring_deb" "$work/keyring.deb" 2>/dev/null; then
    echo "base-image.sh: cannot fetch $mirror/$keyring_deb" >&2
    exit 1
fi
if ! echo "$keyring_sha256  $work/keyring.deb" | sha256sum --check --status; then
    echo "base-image.sh: $mirror/$keyring_deb does not have the expected SHA-256 digest" >&2
    exit 1
fi
dpkg-deb -x "$work/keyring.deb" "$work/keyring"
# Debian's debootstrap has no script named after 24.04; Ubuntu's own uses
# gutsy's for every release since.
script=/usr/share/debootstrap/scripts/gutsy
echo "debootstrap noble into $root (about 2.5 minutes)" >&2
debootstrap --variant=minbase --components=main,universe \
    --keyring="$work/keyring/usr/share/keyrings/ubuntu-archive-keyring.gpg" \
    --include=python3,python3-venv noble "$root" "$mirror" "$script" >/dev/null
# What a container does not need: apt's lists and caches, man pages, docs.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
    "$root"/var/cache/apt/archives/*.deb "$root"/usr/share/man/* "$root"/usr/share/doc/*
tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$tag" >/dev/null
echo "$tag"
