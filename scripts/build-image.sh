#!/usr/bin/env bash
# Builds the container image of the live controller and the KEDA external scaler
# (`gpuscale run`, `gpuscale keda-scaler`) as an OCI image layout, with no daemon and no image
# registry: the root filesystem comes from Debian's packages (mmdebstrap), the Python packages from
# PyPI pinned with hashes (scripts/image-requirements.txt), and umoci turns it into an image.
#
#   scripts/build-image.sh [OUT]    OUT: the OCI layout folder (default build/image)
#
# Prints the image's reference in the layout, oci:OUT:VERSION. The image is the one
# `gpuscale manifests controller` names by default, localhost/gpuscale:VERSION; copy it to a
# registry or a node under that name or another (docs/image.md), e.g.
#   skopeo copy oci:build/image:0.1.0 docker://registry.example/gpuscale:0.1.0
#
# What is in it: Debian bookworm's Essential set and python3 (no apt, no compilers, no docs), a venv
# /opt/gpuscale with gpuscale and its runtime closure only (no torch, Ray, Optuna, matplotlib),
# user 65532 (nonroot), entrypoint `gpuscale`. Two layers: the Debian base, then the venv.
#
# Needs root (chroot, file owners) and, installed if missing, Debian's mmdebstrap, umoci and runc
# (runc only to try the image here: docs/image.md). Slow parts are cached under
# ${XDG_CACHE_HOME:-~/.cache}/gpuscale/image: the Debian base (one tarball; GPUSCALE_IMAGE_REFRESH=1
# rebuilds it, e.g. for Debian's security updates) and the wheels (kept per requirements file).
# Exit code 3: this machine cannot build it (not root, or no way to install the tools).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-$ROOT/build/image}"
NAME="localhost/gpuscale"
SUITE="bookworm"
PIP_WHEEL="pip==25.3"
PIP_HASH="sha256:9655943313a94722b7774661c21049070f6bbb0a1516bf02f7c8d5d9201514cd"
REQS="$ROOT/scripts/image-requirements.txt"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/gpuscale/image"
PY="${PYTHON:-python3}"

log() { echo "build-image: $*" >&2; }
cannot() { log "$*"; exit 3; }

[ "$(uname -s)" = Linux ] || cannot "needs Linux (chroot, Debian packages)"
[ "$(id -u)" -eq 0 ] || cannot "needs root: the root filesystem's files belong to root and the venv is installed through chroot"
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v umoci >/dev/null || need+=(umoci)
command -v runc >/dev/null || need+=(runc)
if [ ${#need[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || cannot "needs ${need[*]} and there is no apt-get to install them"
    log "installing ${need[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
VERSION="$("$PY" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$ROOT/pyproject.toml")"

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9   # one build at a time on a machine (the cache is shared)

# ---- 1. the Debian base: Essential + python3, merged /usr, no docs, no apt ----------------------
SOURCES=/etc/apt/sources.list.d/debian.sources   # this machine's Debian mirror and its security suite
[ -f "$SOURCES" ] || SOURCES=/etc/apt/sources.list
# shellcheck disable=SC2054,SC2016  # commas in one option; "$1" is mmdebstrap's, in the hook
MM_ARGS=(--variant=essential --include=python3,libstdc++6
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/log/*')
key="$(printf '%s\n' "$SUITE" "${MM_ARGS[@]}" | cat - "$SOURCES" | sha256sum | cut -c1-16)"
BASE="$CACHE/base-$SUITE-$key.tar"
if [ ! -f "$BASE" ] || [ "${GPUSCALE_IMAGE_REFRESH:-0}" = 1 ]; then
    log "building the Debian $SUITE base with mmdebstrap (about a minute, cached)"
    rm -f "$CACHE"/base-*.tar
    rm -rf "$BASE.tmp"
    mmdebstrap -q --format=tar "${MM_ARGS[@]}" "$SUITE" "$BASE.tmp" "$SOURCES" >&2
    mv "$BASE.tmp" "$BASE"
fi

# ---- 2. the wheels, pinned with hashes, for cp311 / manylinux x86_64 ---------------------------
WHEELS="$CACHE/wheels"
stamp="$WHEELS/.done-$( (cat "$REQS"; echo "$PIP_WHEEL $PIP_HASH") | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    log "downloading the pinned wheels (cached)"
    mkdir -p "$WHEELS"
    reqs="$(mktemp)"
    { cat "$REQS"; echo "$PIP_WHEEL --hash=$PIP_HASH"; } > "$reqs"
    "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --require-hashes \
        --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any \
        -r "$reqs" -d "$WHEELS" >&2
    rm -f "$reqs" "$WHEELS"/.done-*
    touch "$stamp"
fi

W="$(mktemp -d)"
trap 'rm -rf "$W"' EXIT
log "building gpuscale's wheel"
# from a copy, so that setuptools' build/ and egg-info stay out of the work tree
mkdir "$W/src"
tar -C "$ROOT" --exclude=__pycache__ --exclude='*.egg-info' -cf - pyproject.toml README.md src | tar -C "$W/src" -xf -
"$PY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$W/app" "$W/src" >&2
APP_WHEEL="$(ls "$W"/app/gpuscale-*.whl)"

# ---- 3. the image: layer 1 the base, layer 2 the venv and the user ------------------------------
rm -rf "$OUT"
mkdir -p "$(dirname "$OUT")"
umoci init --layout "$OUT"
umoci new --image "$OUT:$VERSION"
umoci unpack --image "$OUT:$VERSION" "$W/bundle" >/dev/null
RFS="$W/bundle/rootfs"
tar -xf "$BASE" -C "$RFS"
umoci repack --refresh-bundle --history.created_by "mmdebstrap ${MM_ARGS[*]:0:2} $SUITE" \
    --image "$OUT:$VERSION" "$W/bundle"

log "installing gpuscale into /opt/gpuscale (offline, from the pinned wheels)"
mkdir "$RFS/tmp/install"
cp "$WHEELS"/*.whl "$APP_WHEEL" "$RFS/tmp/install/"
grep -v '^#' "$REQS" > "$RFS/tmp/install/requirements.txt"
pip_whl="$(cd "$RFS/tmp/install" && ls pip-*.whl)"
in_root() { chroot "$RFS" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root LANG=C.UTF-8 "$@"; }
pip_in_root() {
    in_root /opt/gpuscale/bin/python "/tmp/install/$pip_whl/pip" install -q --disable-pip-version-check \
        --no-cache-dir --no-index --find-links /tmp/install --no-deps --only-binary=:all: "$@"
}
in_root /usr/bin/python3 -m venv --without-pip /opt/gpuscale
pip_in_root --require-hashes -r /tmp/install/requirements.txt
pip_in_root "/tmp/install/$(basename "$APP_WHEEL")"
rm -rf "$RFS/tmp/install"
# the libraries' own test suites are not needed at run time
for d in numpy; do
    find "$RFS/opt/gpuscale/lib/python3.11/site-packages/$d" -type d -name tests -prune -exec rm -rf {} +
done
echo 'nonroot:x:65532:65532:nonroot:/home/nonroot:/usr/sbin/nologin' >> "$RFS/etc/passwd"
echo 'nonroot:x:65532:' >> "$RFS/etc/group"
echo 'nonroot:*:20000:0:99999:7:::' >> "$RFS/etc/shadow"
install -d -o 65532 -g 65532 -m 0755 "$RFS/home/nonroot"
in_root /opt/gpuscale/bin/gpuscale --help >/dev/null   # it starts, before it is packed
umoci repack --history.created_by "venv /opt/gpuscale: gpuscale $VERSION + scripts/image-requirements.txt" \
    --image "$OUT:$VERSION" "$W/bundle"
size_mb="$(du -sm "$RFS" | cut -f1)"

umoci config --image "$OUT:$VERSION" --no-history \
    --config.user 65532:65532 --config.workingdir /home/nonroot \
    --config.entrypoint gpuscale --config.cmd --help \
    --config.env PATH=/opt/gpuscale/bin:/usr/local/bin:/usr/bin:/bin \
    --config.env HOME=/home/nonroot --config.env LANG=C.UTF-8 \
    --config.env PYTHONUNBUFFERED=1 --config.env PYTHONDONTWRITEBYTECODE=1 \
    --config.exposedports 8080/tcp --config.exposedports 9090/tcp \
    --config.label "org.opencontainers.image.title=gpuscale" \
    --config.label "org.opencontainers.image.version=$VERSION" \
    --config.label "org.opencontainers.image.ref.name=$NAME:$VERSION" \
    --config.label "org.opencontainers.image.licenses=Apache-2.0" \
    --config.label "org.opencontainers.image.description=gpuscale run (controller) and gpuscale keda-scaler" \
    --os linux --architecture amd64
umoci gc --layout "$OUT"
packed_mb="$(du -sm "$OUT/blobs" | cut -f1)"
log "image $NAME:$VERSION: ${size_mb} MB unpacked, ${packed_mb} MB packed (gzip layers)"
echo "oci:$OUT:$VERSION"
