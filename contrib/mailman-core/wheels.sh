#!/usr/bin/env bash
# Makes the wheel directory the Mailman Core image installs from, offline:
# `pip wheel mailman==3.3.10` on this host (the image's pip then needs no
# network and no certificate; an air-gapped site builds the same way). Kept
# under ~/.cache so that every clone finds it; made once (about a minute).
#
#   contrib/mailman-core/wheels.sh          prints the directory
#
# The versions are constraints.txt's (beside this script); the directory's
# name carries a digest of that file, so that a change there makes a new one.
# MAILMAN_WHEELS overrides the directory. The wheels must match the image's
# Python (3.11, Debian bookworm's), so the host's python3 must be 3.11 too.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
pins=$(sha256sum "$here/constraints.txt" | cut -c1-12)
dir=${MAILMAN_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/mailman/wheels/mailman-3.3.10-py311-$pins}
if [ -e "$dir/.complete" ]; then
    echo "$dir"
    exit 0
fi
py=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$py" != "3.11" ]; then
    echo "wheels.sh: the host's python3 is $py; the image's is 3.11 (Debian bookworm)." >&2
    echo "Run with a Python 3.11 first on PATH, or point MAILMAN_WHEELS at a ready wheel directory." >&2
    exit 1
fi
rm -rf "$dir"
mkdir -p "$dir"
echo "pip wheel mailman==3.3.10 into $dir" >&2
python3 -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$dir" \
    --constraint "$here/constraints.txt" mailman==3.3.10 >&2
cp "$here/constraints.txt" "$dir/"
touch "$dir/.complete"
echo "$dir"
