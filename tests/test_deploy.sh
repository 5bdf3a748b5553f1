#!/bin/bash
# Checks the deployment files against the daemon they deploy:
#   - deploy/diffusiond.service passes `systemd-analyze verify` (pointed at
#     the built binary through a temporary copy, since /usr/bin/diffusiond is
#     not installed here), keeps its sandbox, and stays under an exposure
#     score of 4.5 in `systemd-analyze security --offline`;
#   - deploy/diffusiond.conf.example lists exactly the keys `diffusiond serve
#     --help` documents and the daemon accepts it (and every commented-out
#     example value);
#   - the config inside deploy/kubernetes/deployment.yaml is accepted too,
#     the probes and grace periods match the daemon;
#   - deploy/Dockerfile installs a runtime package for every library the
#     binary links, and its CMD uses real options.
# Docker and Kubernetes themselves are not available here: this reads the
# files, it does not build or apply them.
#
# Usage: tests/test_deploy.sh [path/to/diffusiond]   (default build/diffusiond)
set -u
cd "$(dirname "$0")/.."
BIN=$(readlink -f "${1:-build/diffusiond}")
PY=/usr/bin/python3
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
pass=0
fail=0
ok() { pass=$((pass + 1)); echo "ok    $*"; }
bad() { fail=$((fail + 1)); echo "FAIL  $*"; }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }

UNIT=deploy/diffusiond.service
CONF=deploy/diffusiond.conf.example
DOCKER=deploy/Dockerfile
K8S=deploy/kubernetes/deployment.yaml

if [ ! -x "$BIN" ]; then
    bad "binary $BIN exists (build it first)"
    echo "$pass passed, $fail failed"
    exit 1
fi

# ---- the systemd unit ---------------------------------------------------------
mkdir -p "$TMP/unit"
sed "s|^ExecStart=/usr/bin/diffusiond |ExecStart=$BIN |" "$UNIT" > "$TMP/unit/diffusiond.service"
check "unit: ExecStart redirected to the built binary" grep -q "^ExecStart=$BIN serve --config /etc/diffusiond/diffusiond.conf\$" "$TMP/unit/diffusiond.service"
# verify exits 0 on unknown keys and bad values too (it only warns): any output fails
out=$(systemd-analyze verify --man=no "$TMP/unit/diffusiond.service" 2>&1)
rc=$?
if [ $rc -eq 0 ] && [ -z "$out" ]; then ok "unit: systemd-analyze verify is silent"; else bad "unit: systemd-analyze verify (rc $rc): $out"; fi
out=$(systemd-analyze security --offline=yes --threshold=45 "$TMP/unit/diffusiond.service" 2>&1)
rc=$?
score=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
if [ $rc -eq 0 ] && [ -n "$score" ]; then ok "unit: exposure $score <= 4.5 (systemd-analyze security)"; else bad "unit: exposure ${score:-?} (rc $rc)"; fi

has() { grep -Eq "^$1\$" "$UNIT"; }
for line in 'Type=notify' 'User=diffusiond' 'ProtectSystem=strict' 'ProtectHome=yes' 'PrivateTmp=yes' \
            'NoNewPrivileges=yes' 'DevicePolicy=closed' 'DeviceAllow=/dev/dri/renderD128 rw' \
            'SupplementaryGroups=render video' 'Restart=on-failure' 'LimitNOFILE=[0-9]+' \
            'ReadOnlyPaths=-?/var/lib/diffusiond/models' 'CapabilityBoundingSet='; do
    check "unit: has $line" has "$line"
done
# Mesa's lavapipe JITs with LLVM; PrivateDevices hides /dev/dri; PrivateUsers
# breaks the render group. None may be switched on.
for key in MemoryDenyWriteExecute PrivateDevices PrivateUsers; do
    check "unit: $key is not set" bash -c "! grep -Eq '^$key=(yes|true|1|on)' '$UNIT'"
done
check "unit: every DeviceAllow is a DRM render node" bash -c "! grep '^DeviceAllow=' '$UNIT' | grep -vEq '^DeviceAllow=/dev/dri/renderD[0-9]+ rw\$'"

# ---- the daemon's keys ------------------------------------------------------------
help=$("$BIN" serve --help 2>&1)
rc=$?
keys=$(printf '%s\n' "$help" | sed -n 's/^  --\([a-z][a-z-]*\) .*/\1/p' | grep -vx config | tr - _ | sort)
if [ $rc -eq 0 ] && [ "$(printf '%s\n' "$keys" | grep -c .)" -ge 20 ]; then
    ok "daemon: serve --help lists $(printf '%s\n' "$keys" | grep -c .) keys"
else
    bad "daemon: serve --help (rc $rc) lists the keys"
fi
grace=$(printf '%s\n' "$help" | sed -n 's/^  --shutdown-grace-s .*\[\([0-9.]*\)\]$/\1/p')
stop=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)s*$/\1/p' "$UNIT")
check "unit: TimeoutStopSec ${stop:-?} s > shutdown_grace_s default ${grace:-?} s" \
    $PY -c "import sys; sys.exit(0 if float('$stop') > float('$grace') else 1)"

# ---- the config example ----------------------------------------------------------------
listed=$(sed -nE 's/^#?([a-z_]+) = .*/\1/p' "$CONF" | sort -u)
missing=$(comm -23 <(printf '%s\n' "$keys") <(printf '%s\n' "$listed") | tr '\n' ' ')
extra=$(comm -13 <(printf '%s\n' "$keys") <(printf '%s\n' "$listed") | tr '\n' ' ')
if [ -z "$missing" ] && [ -z "$extra" ]; then ok "conf: lists exactly the daemon's keys"; else bad "conf: missing [${missing}] unknown [${extra}]"; fi
check "conf: the daemon accepts $CONF" "$BIN" serve --config "$CONF" --help > /dev/null 2>&1
# every commented example value too (api_key_file would read a file that is not here)
sed -E 's/^#([a-z_]+ = )/\1/' "$CONF" | grep -v '^api_key_file = ' > "$TMP/all.conf"
if out=$("$BIN" serve --config "$TMP/all.conf" --help 2>&1 >/dev/null); then
    ok "conf: the daemon accepts every example value uncommented"
else
    bad "conf: example values: $out"
fi
printf 'k3y\n' > "$TMP/key"
check "conf: api_key_file is read" bash -c '"$0" serve --config "$1" --api-key-file "$2" --help >/dev/null 2>&1' "$BIN" "$TMP/all.conf" "$TMP/key"

# ---- Kubernetes ------------------------------------------------------------------------
$PY - "$K8S" deploy/kubernetes/service.yaml > "$TMP/k8s.out" 2>&1 <<'EOF'
import sys
docs = []
for path in sys.argv[1:]:
    text = open(path).read()
    if "\t" in text:
        sys.exit("%s: has a tab" % path)
    try:
        import yaml
    except ImportError:
        yaml = None
    if yaml:
        docs += [d for d in yaml.safe_load_all(text) if d]
if not docs:
    print("NOYAML")
    sys.exit(0)
kinds = {d["kind"]: d for d in docs}
for k in ("ConfigMap", "Deployment", "Service", "PersistentVolumeClaim"):
    if k not in kinds:
        sys.exit("no %s" % k)
spec = kinds["Deployment"]["spec"]["template"]["spec"]
c = spec["containers"][0]
assert c["readinessProbe"]["httpGet"]["path"] == "/ready", "readinessProbe is not /ready"
assert c["livenessProbe"]["httpGet"]["path"] == "/health", "livenessProbe is not /health"
print("GRACE", spec["terminationGracePeriodSeconds"])
print("CONF_BEGIN")
print(kinds["ConfigMap"]["data"]["diffusiond.conf"], end="")
print("CONF_END")
EOF
rc=$?
if [ $rc -ne 0 ]; then
    bad "kubernetes: $(cat "$TMP/k8s.out")"
elif grep -q NOYAML "$TMP/k8s.out"; then
    ok "kubernetes: no tabs (python3-yaml absent: structure not checked)"
else
    ok "kubernetes: YAML parses; ConfigMap, PVC, Deployment, Service; readiness /ready, liveness /health"
    k8s_grace=$(sed -n 's/^GRACE //p' "$TMP/k8s.out")
    sed -n '/^CONF_BEGIN$/,/^CONF_END$/p' "$TMP/k8s.out" | sed '1d;$d' > "$TMP/k8s.conf"
    check "kubernetes: the daemon accepts the ConfigMap's config" bash -c '"$0" serve --config "$1" --help >/dev/null 2>&1' "$BIN" "$TMP/k8s.conf"
    k8s_conf_grace=$(sed -n 's/^shutdown_grace_s = //p' "$TMP/k8s.conf")
    check "kubernetes: terminationGracePeriodSeconds $k8s_grace > shutdown_grace_s ${k8s_conf_grace:-$grace}" \
        $PY -c "import sys; sys.exit(0 if float('$k8s_grace') > float('${k8s_conf_grace:-$grace}') else 1)"
fi

# ---- Dockerfile ----------------------------------------------------------------------------
check "docker: two stages from debian:bookworm" test "$(grep -cE '^FROM debian:bookworm(-slim)?( AS [a-z]+)?$' "$DOCKER")" -eq 2
check "docker: the build stage runs deploy/deps.sh" grep -q '^RUN /src/deploy/deps.sh' "$DOCKER"
check "docker: non-root USER" grep -Eq '^USER [a-z]+' "$DOCKER"
check "docker: EXPOSE 7860" grep -q '^EXPOSE 7860$' "$DOCKER"
check "docker: HEALTHCHECK on /health" bash -c "sed -n '/^HEALTHCHECK/,/^\$/p' '$DOCKER' | grep -q 'GET /health '"
check "docker: VOLUME /models" grep -q '^VOLUME /models$' "$DOCKER"
# the runtime stage's apt list: every package after "apt-get install" up to "&&"
runtime_pkgs=$(sed -n '/^FROM debian:bookworm-slim$/,$p' "$DOCKER" | tr '\\\n' '  ' |
               sed -n 's/.*apt-get install -y --no-install-recommends\([^&]*\)&&.*/\1/p' | tr -s ' ' '\n' | grep . | sort -u)
check "docker: runtime stage installs mesa-vulkan-drivers and libvulkan1" \
    bash -c "printf '%s\n' '$runtime_pkgs' | grep -qx mesa-vulkan-drivers && printf '%s\n' '$runtime_pkgs' | grep -qx libvulkan1"
# every library the binary links comes from a runtime package (or the base image)
base_pkgs="libc6 libgcc-s1 libstdc++6 libsystemd0 zlib1g"
needed=$(readelf -d "$BIN" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
uncovered=""
for so in $needed; do
    path=$(ldconfig -p | awk -v s="$so" '$1 == s && /x86-64|AArch64|aarch64/ {print $NF; exit}')
    pkg=""
    # merged /usr: dpkg knows a file under /lib or /usr/lib, whichever its package ships
    real=$(readlink -f "$path" 2>/dev/null)
    for p in "$path" "/usr$path" "${path#/usr}" "$real" "${real#/usr}"; do
        [ -n "$p" ] && pkg=$(dpkg -S "$p" 2>/dev/null | head -n 1 | cut -d: -f1) && [ -n "$pkg" ] && break
    done
    if [ -z "$pkg" ] || ! printf '%s\n' $runtime_pkgs $base_pkgs | grep -qx "$pkg"; then
        uncovered="$uncovered $so(${pkg:-?})"
    fi
done
if [ -z "$uncovered" ]; then
    ok "docker: runtime packages cover every NEEDED library ($(echo $needed | wc -w))"
else
    bad "docker: libraries the runtime stage does not install:$uncovered"
fi
# CMD options are real serve options
cmd_opts=$(sed -n 's/^CMD \[\(.*\)\]$/\1/p' "$DOCKER" | tr -d '"' | tr ',' '\n' | sed -n 's/^ *--\([a-z-]*\).*/\1/p' | tr - _)
unknown=""
for o in $cmd_opts; do printf '%s\n' $keys config | grep -qx "$o" || unknown="$unknown $o"; done
check "docker: CMD uses only known options${unknown:+ (unknown:$unknown)}" test -z "$unknown"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
