#!/bin/sh
# Install the Debian packages a make target needs when they are missing.
# As root it installs them; otherwise it prints the one apt-get line to run and fails.
#
#   scripts/deps.sh            everything make test / test-san / fuzz / bench need
#   scripts/deps.sh --build    only what building the library and the CLI needs (make, make install)
#   scripts/deps.sh --demo     the build plus what make demo runs (python3, numpy)
#
# Further arguments name extra packages for one caller only (bench/scale/run.sh: nginx), so
# make test never installs them.
set -u
# ca-certificates: libcurl only recommends it, and --no-install-recommends leaves HTTPS (the Hub,
# the TLS tests) without any CA (curl exit 77 on a minimal Debian root)
BUILD_PACKAGES="build-essential pkg-config libcurl4-openssl-dev libcjson-dev libssl-dev libzstd-dev \
libopenblas-dev ca-certificates"
DEMO_PACKAGES="$BUILD_PACKAGES python3 python3-numpy"
# munge, slurm*, parallel, python3-yaml: the scale-out tests run the documented Slurm, GNU parallel and
# Kubernetes recipes for real (docs/scale-out.md); strace: test_cli counts the analyses' restart
# with huge pages (src/cli/main.c)
ALL_PACKAGES="$DEMO_PACKAGES openssl python3-scipy python3-yaml clang libclang-rt-dev curl chromium \
munge slurmctld slurmd slurm-client parallel strace"
case "${1:-}" in
--build) PACKAGES=$BUILD_PACKAGES; shift ;;
--demo) PACKAGES=$DEMO_PACKAGES; shift ;;
*) PACKAGES=$ALL_PACKAGES ;;
esac
PACKAGES="$PACKAGES $*"
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
