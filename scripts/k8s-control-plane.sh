#!/usr/bin/env bash
# Builds a real Kubernetes control plane (kube-apiserver, kube-controller-manager, kube-scheduler
# v1.20.2) from Debian's own `kubernetes` source package, plus Debian's etcd, for the integration
# tests. Prints the folder holding the binaries. Cached: the build runs once per machine.
#
#   scripts/k8s-control-plane.sh            build if needed, print the binary folder
#
# Binaries already on the machine win: $KUBEBUILDER_ASSETS (controller-runtime's envtest convention)
# or a kube-apiserver on PATH, with etcd.
set -euo pipefail
VERSION="1.20.5+really1.20.2-1.1+deb12u1"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/gpuscale/k8s-${VERSION//[^A-Za-z0-9.]/_}"

have() { [ -x "$1/kube-apiserver" ] && { [ -x "$1/etcd" ] || command -v etcd >/dev/null; }; }

if [ -n "${KUBEBUILDER_ASSETS:-}" ] && have "$KUBEBUILDER_ASSETS"; then echo "$KUBEBUILDER_ASSETS"; exit 0; fi
if have "$CACHE"; then echo "$CACHE"; exit 0; fi
# One build at a time on a machine (parallel test workers may all ask).
mkdir -p "$(dirname "$CACHE")"
exec 9>"$CACHE.lock"
flock 9
if have "$CACHE"; then echo "$CACHE"; exit 0; fi

log() { echo "k8s-control-plane: $*" >&2; }
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
need=()
for pkg in golang-go rsync golang-github-modern-go-reflect2-dev etcd-server dpkg-dev openssl; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
mkdir -p "$W/apt/lists/partial" "$W/apt/cache/archives/partial" "$W/apt/parts" "$W/src" "$W/home"
# deb-src is not configured on these machines: add it through a private APT_CONFIG, /etc/apt untouched.
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    sed -E 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > "$W/apt/parts/src.sources"
else
    grep -h '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' > "$W/apt/parts/src.list"
fi
printf 'Dir::Etc::SourceList "/dev/null";\nDir::Etc::SourceParts "%s/apt/parts";\nDir::State::Lists "%s/apt/lists";\nDir::Cache "%s/apt/cache";\n' "$W" "$W" "$W" > "$W/apt/apt.conf"
log "fetching Debian's kubernetes source package $VERSION"
APT_CONFIG="$W/apt/apt.conf" apt-get update -qq >&2
(cd "$W/src" && APT_CONFIG="$W/apt/apt.conf" apt-get source -qq --download-only "kubernetes=$VERSION" >&2)
(cd "$W/src" && dpkg-source -x --no-check kubernetes_*.dsc k8s >&2)
cd "$W/src/k8s"
# The vendored modern-go/reflect2 v1.0.1 crashes under Go >= 1.18; Debian's 1.0.2 does not.
rm -rf vendor/github.com/modern-go/reflect2
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/
rm -f vendor/github.com/modern-go/reflect2/go.mod
mkdir -p .go/src/k8s.io && ln -sfn ../../.. .go/src/k8s.io/kubernetes
log "building kube-apiserver, kube-controller-manager, kube-scheduler (a few minutes, once)"
GOPATH="$PWD/.go" HOME="$W/home" CGO_ENABLED=0 GOPROXY=off KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean \
    make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler" >&2
mkdir -p "$CACHE.tmp"
cp _output/bin/kube-apiserver _output/bin/kube-controller-manager _output/bin/kube-scheduler "$CACHE.tmp/"
ln -sf "$(command -v etcd)" "$CACHE.tmp/etcd"
rm -rf "$CACHE" && mv "$CACHE.tmp" "$CACHE"
log "built into $CACHE"
echo "$CACHE"
