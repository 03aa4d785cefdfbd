#!/bin/sh
# Entrypoint of the Docker image.
#
#   docker run IMAGE [SERVE-OPTIONS]      -> mobile-sam serve [SERVE-OPTIONS]
#   docker run IMAGE COMMAND [ARGS]       -> mobile-sam COMMAND [ARGS]  (e.g. everything, download)
#   docker run IMAGE --print-command ...  -> print the command instead of running it
#
# `mobile-sam serve` reads its settings from MOBILE_SAM_* environment variables itself
# (MOBILE_SAM_MODEL, MOBILE_SAM_PORT, MOBILE_SAM_MAX_UPLOAD_MB, MOBILE_SAM_TOKEN, ...; a flag
# wins over its variable). The one default that differs inside the image is the bind address:
# 0.0.0.0, so that a published port reaches the server (outside a container it is 127.0.0.1).
set -eu

: "${MOBILE_SAM_HOST:=0.0.0.0}"
export MOBILE_SAM_HOST

print=0
if [ "${1:-}" = "--print-command" ]; then
    print=1
    shift
fi

case "${1:-}" in
    "" | -*) set -- mobile-sam serve "$@" ;;
    *) set -- mobile-sam "$@" ;;
esac

if [ "$print" = 1 ]; then
    printf 'MOBILE_SAM_HOST=%s %s\n' "$MOBILE_SAM_HOST" "$*"
    exit 0
fi
# exec: the server replaces this shell (PID 1 in the container) and gets docker stop's SIGTERM.
exec "$@"
