#!/bin/sh
# Install the Debian packages the build and the tests need when they are missing.
# As root it installs them; otherwise it prints the one apt-get line to run and fails.
# Arguments name extra packages for one caller only (bench/scale/run.sh: nginx), so
# make test never installs them.
set -u
PACKAGES="build-essential pkg-config libcurl4-openssl-dev libcjson-dev libssl-dev openssl \
libzstd-dev libopenblas-dev python3 python3-numpy python3-scipy python3-yaml clang libclang-rt-dev curl chromium \
munge slurmctld slurmd slurm-client parallel $*"
missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
    echo "installing missing packages:$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    # Daemons the tests start themselves (munge, slurmctld, slurmd: tests/integration/test_slurm.py)
    # must not be started as system services by their packages: without a configuration slurmd's
    # start fails, and its postinst fails the install. A policy-rc.d that says "no" (101) for
    # the length of the install stops that, as container images do.
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && trap 'rm -f "$policy"' EXIT
    fi
    apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends $missing >&2 && exit 0
    echo "apt-get failed; run it by hand: apt-get install$missing" >&2
    exit 1
fi
echo "missing Debian packages. Run:" >&2
echo "    sudo apt-get install -y$missing" >&2
exit 1
