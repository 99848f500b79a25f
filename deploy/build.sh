#!/bin/sh
# The build steps of the container image: deploy/Containerfile's build
# stage runs exactly this script, and deploy/check.sh runs it on the host,
# so the image's steps are checked without a container daemon.
#
#   deploy/build.sh OUTDIR     (PROFILE=dev for a quicker, unoptimized build)
#
# OUTDIR gets the binary, its man page and its bash completions.
set -eu
out=${1:?usage: deploy/build.sh OUTDIR}
profile=${PROFILE:-release}
case $profile in
dev) dir=debug ;;
*) dir=$profile ;;
esac
cargo build --locked --profile "$profile" --bin bitstream-relay
mkdir -p "$out"
cp "target/$dir/bitstream-relay" "$out/bitstream-relay"
"$out/bitstream-relay" --version
"$out/bitstream-relay" check-config --config relay.example.toml >/dev/null
"$out/bitstream-relay" man >"$out/bitstream-relay.1"
"$out/bitstream-relay" completions bash >"$out/bitstream-relay.bash"
cp relay.example.toml "$out/relay.toml"
