#!/bin/sh
# Checks deploy/ on this machine, without a container daemon:
#  1. the image's build stage: runs deploy/build.sh (what the Containerfile's
#     RUN line runs) into a temporary directory, then checks that every file
#     the run stage copies from /out was made;
#  2. the systemd unit: `systemd-analyze verify`, with ExecStart pointing at
#     the binary just built (skipped, saying why, where systemd-analyze is
#     not installed).
#
#   deploy/check.sh               (PROFILE=dev deploy/check.sh: quicker build)
set -eu
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

grep -qx 'RUN deploy/build.sh /out' deploy/Containerfile || {
    echo "deploy/Containerfile no longer runs 'deploy/build.sh /out': update this check" >&2
    exit 1
}
deploy/build.sh "$out"
for f in $(sed -n 's|^COPY --from=build /out/\([^ ]*\) .*|\1|p' deploy/Containerfile); do
    test -f "$out/$f" || {
        echo "the run stage copies /out/$f, which the build stage did not make" >&2
        exit 1
    }
done
echo "deploy/Containerfile: the build stage's steps ran; every file the run stage copies exists"

if command -v systemd-analyze >/dev/null 2>&1; then
    unit="$out/bitstream-relay.service"
    sed "s|/usr/local/bin/bitstream-relay|$out/bitstream-relay|" deploy/bitstream-relay.service >"$unit"
    mkdir -p "$out/man1"
    cp "$out/bitstream-relay.1" "$out/man1/"
    MANPATH="$out" systemd-analyze verify "$unit"
    echo "deploy/bitstream-relay.service: systemd-analyze verify passed"
else
    echo "SKIPPED: systemd-analyze is not installed here, deploy/bitstream-relay.service was not verified"
fi
