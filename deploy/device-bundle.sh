#!/bin/bash
# Packs a self-contained device benchmark into OUT (default build/device-bundle)
# for a GPU machine that has a Vulkan driver, python3 and numpy but none of
# diffusiond's libraries and no package registry:
#
#   bin.tar.xz  diffusiond and the kernel test suites built here (stripped;
#               `run` unpacks them to a temporary folder)
#   lib/        every shared library they link except glibc / libgcc, and the
#               Vulkan loader, unpacked from Debian's .deb files (apt-get download)
#   layers/     the Khronos validation layer, xz-compressed (the kernel tests
#               fail without it; `run` unpacks it to a temporary folder)
#   fixtures/   the oracle cases check-fixtures passes here, with a manifest
#               cut down to them (the rest are refused as unsupported and
#               would only add size)
#   gl/         libglvnd's .debs: NVIDIA's Vulkan driver in a container needs
#               libGLdispatch from the host (`run --glvnd` unpacks them into /)
#   tools/      make_sd15_random.py, make_sdxl_random.py (full-size random SD1.5
#               and SDXL checkpoints),
#               make_tiny_model.py (for `run --quick`)
#   run         the driver: see deploy/device/run
#
# Usage: deploy/device-bundle.sh BUILD_DIR FIXTURES_DIR SHARED_TOOLS_DIR [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=$1
FIXTURES=$2
TOOLS=$3
OUT=${4:-$BUILD/device-bundle}
DEBS=$BUILD/debs
LIMIT_MIB=60
TESTS="test_device test_kernels_gemm test_kernels_attn test_kernels_elem test_kernels_norm"

rm -rf "$OUT"
mkdir -p "$OUT"/{bin,lib,layers,fixtures,tools,gl} "$DEBS" "$DEBS/gl"

install -m 755 "$BUILD/diffusiond" "$OUT/bin/"
for t in $TESTS; do install -m 755 "$BUILD/tests/$t" "$OUT/bin/"; done
strip "$OUT"/bin/*
install -m 755 deploy/device/run "$OUT/run"
install -m 644 "$TOOLS/make_sd15_random.py" tools/make_sdxl_random.py tests/make_tiny_model.py "$OUT/tools/"

# Which Debian package holds a library path (usrmerge: /lib may be /usr/lib).
owner() {
    local p=$1
    dpkg -S "$p" 2>/dev/null || dpkg -S "/usr$p" 2>/dev/null || dpkg -S "${p#/usr}" 2>/dev/null || true
}

# The libraries' packages: ldd's closure minus the C runtime the device has
# (a newer one; an older glibc from here would break its driver).
declare -A pkgs=()
for b in "$OUT"/bin/*; do
    while read -r path; do
        case $(basename "$path") in
        libc.so.*|libm.so.*|ld-linux*|libpthread*|libdl.so*|librt.so*|libgcc_s*|libstdc++*) continue ;;
        esac
        pkg=$(owner "$path" | head -1 | cut -d: -f1)
        [ -n "$pkg" ] || { echo "device-bundle: no Debian package owns $path" >&2; exit 1; }
        pkgs[$pkg]=1
    done < <(ldd "$b" | awk '/=> \// {print $3}')
done
pkgs[vulkan-validationlayers]=1

# The installed version when the archive still has it, else the archive's
# candidate (a security update of the same soname). The .debs are cached in
# BUILD/debs.
for pkg in "${!pkgs[@]}"; do
    ver=$(dpkg-query -W -f='${Version}' "$pkg")
    if ! ls "$DEBS/${pkg}_"*.deb >/dev/null 2>&1; then
        (cd "$DEBS" && { apt-get download -q "$pkg=$ver" >/dev/null 2>&1 || apt-get download -q "$pkg" >/dev/null 2>&1; }) ||
            { echo "device-bundle: apt-get download $pkg failed" >&2; exit 1; }
    fi
done
GLVND="libglvnd0 libegl1 libgl1 libglx0 libopengl0 libgles2"
for pkg in $GLVND; do
    ls "$DEBS/gl/${pkg}_"*.deb >/dev/null 2>&1 || (cd "$DEBS/gl" && apt-get download -q "$pkg" >/dev/null 2>&1) ||
        { echo "device-bundle: apt-get download $pkg failed" >&2; exit 1; }
done
cp "$DEBS"/gl/*.deb "$OUT/gl/"
X=$(mktemp -d)
trap 'rm -rf "$X"' EXIT
for deb in "$DEBS"/*.deb; do dpkg -x "$deb" "$X"; done
# shared objects only (the loader's and libraries' soname links included)
find "$X" \( -type f -o -type l \) -name '*.so*' ! -name 'libVkLayer*' -path '*/lib/*' \
    -exec cp -a {} "$OUT/lib/" \;
layer=$(find "$X" -name libVkLayer_khronos_validation.so | head -1)
xz -6 -T2 -c "$layer" > "$OUT/layers/libVkLayer_khronos_validation.so.xz"
sed 's|"library_path": *"[^"]*"|"library_path": "./libVkLayer_khronos_validation.so"|' \
    "$(find "$X" -name VkLayer_khronos_validation.json | head -1)" > "$OUT/layers/VkLayer_khronos_validation.json"
# a dangling soname link means a package was missed
for l in "$OUT"/lib/*; do [ -e "$l" ] || { echo "device-bundle: dangling $l" >&2; exit 1; }; done
for b in "$OUT"/bin/*; do
    if LD_LIBRARY_PATH="$OUT/lib" ldd "$b" | grep -q 'not found'; then
        echo "device-bundle: $b has unresolved libraries" >&2; exit 1
    fi
done

# Fixtures: the cases that pass here (fp16), and every file their entries name.
XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp} "$BUILD/diffusiond" check-fixtures "$FIXTURES" --fp16 > "$X/cf.txt" || {
    cat "$X/cf.txt" >&2; echo "device-bundle: check-fixtures --fp16 fails here" >&2; exit 1; }
/usr/bin/python3 - "$FIXTURES" "$OUT/fixtures" "$X/cf.txt" <<'EOF'
import json, os, re, shutil, sys
src, dst, log = sys.argv[1:4]
manifest = json.load(open(os.path.join(src, "manifest.json")))
passed = set(re.findall(r"^PASS (\S+)", open(log).read(), re.M))
cases = [c for c in manifest["cases"] if c["name"] in passed]
present = set(os.listdir(src))
files = set()
def walk(v):
    if isinstance(v, str) and v in present:
        files.add(v)
    elif isinstance(v, dict):
        for x in v.values(): walk(x)
    elif isinstance(v, list):
        for x in v: walk(x)
walk(cases)
for f in sorted(files):
    shutil.copy(os.path.join(src, f), os.path.join(dst, f))
manifest["cases"] = cases
json.dump(manifest, open(os.path.join(dst, "manifest.json"), "w"), indent=1)
print(f"device-bundle: {len(cases)} oracle cases, {len(files)} fixture files")
EOF

# the binaries travel compressed (they share most of their code)
tar -C "$OUT" -cf - bin | xz -6 -T2 > "$OUT/bin.tar.xz"
rm -r "$OUT/bin"

size=$(du -sm "$OUT" | cut -f1)
echo "device-bundle: $OUT, ${size} MiB"
if [ "$size" -ge "$LIMIT_MIB" ]; then
    echo "device-bundle: over the ${LIMIT_MIB} MiB limit" >&2
    exit 1
fi
