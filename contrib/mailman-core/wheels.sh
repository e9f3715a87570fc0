#!/usr/bin/env bash
# Makes the wheel directory the Mailman Core image installs from, offline
# (the image's pip then needs no network and no certificate; an air-gapped
# site builds the same way). Kept under ~/.cache so that every clone finds
# it; made once (about a minute).
#
#   contrib/mailman-core/wheels.sh          prints the directory
#
# The versions are constraints.txt's (beside this script); the directory's
# name carries a digest of that file, so that a change there makes a new one.
# The wheels are for the image's Python (3.12, base-image.sh), whatever the
# host's: each package's own wheel for CPython 3.12 on Linux x86-64 from
# PyPI, and, for a package that publishes only its source, a wheel built
# here, which must then be pure Python (a wheel for any Python 3).
# MAILMAN_WHEELS overrides the directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python=3.12
pins=$(sha256sum "$here/constraints.txt" | cut -c1-12)
dir=${MAILMAN_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/mailman/wheels/mailman-3.3.10-py${python/./}-$pins}
if [ -e "$dir/.complete" ]; then
    echo "$dir"
    exit 0
fi
rm -rf "$dir"
mkdir -p "$dir"
echo "wheels of mailman==3.3.10 and its dependencies for Python $python into $dir" >&2
pip=(python3 -m pip --disable-pip-version-check)
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
    manylinux_2_12_x86_64 manylinux2010_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
for req in mailman==3.3.10 $(grep -E '^[A-Za-z0-9]' "$here/constraints.txt"); do
    if ! "${pip[@]}" download --quiet --no-deps --only-binary=:all: --dest "$dir" \
        --python-version "$python" --implementation cp "${platforms[@]}" "$req" >/dev/null 2>&1; then
        "${pip[@]}" wheel --quiet --no-deps --wheel-dir "$dir" "$req" >&2
    fi
done
# A wheel built here for the host's Python would not install in the image.
if ls "$dir"/*.whl | grep -Ev -- '-(py3-none|py2\.py3-none|cp3[0-9]+-abi3|cp'"${python/./}"'-cp'"${python/./}"')-[^-]+\.whl$' >&2; then
    echo "wheels.sh: the wheels above are not for Python $python" >&2
    exit 1
fi
cp "$here/constraints.txt" "$dir/"
touch "$dir/.complete"
echo "$dir"
