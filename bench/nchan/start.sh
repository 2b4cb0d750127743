#!/usr/bin/env bash
# Starts nginx + nchan in the foreground as an SSE baseline (see nginx.conf.in), with a private
# prefix, pid file and logs under /tmp, and the publisher beside it. Needs Debian's nginx-light and
# libnginx-mod-nchan (apt-get install -y nginx-light libnginx-mod-nchan).
#   start.sh PORT [INTERVAL (e.g. 2s, 250ms; default 2s)] [WORKERS (default: cores)] [ADDR (default 127.0.0.1)]
# Prints `listening on http://ADDR:PORT` once nginx accepts; SIGTERM/SIGINT stop nginx and the
# publisher. nginx runs as a child of this script: its master pid is in $PREFIX/nginx.pid, and the
# master's descendants are the workers, which is where the CPU and memory go.
set -euo pipefail
port=${1:?usage: start.sh PORT [INTERVAL] [WORKERS] [ADDR]}
interval=${2:-2s}
workers=${3:-$(nproc)}
addr=${4:-127.0.0.1}
here=$(cd "$(dirname "$0")" && pwd)
case $interval in
    *ms) interval_ms=${interval%ms} ;;
    *s) interval_ms=$(( ${interval%s} * 1000 )) ;;
    *) interval_ms=$interval ;;
esac
[ -x /usr/sbin/nginx ] && [ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] || {
    echo "nchan: nginx or libnginx-mod-nchan not installed" >&2; exit 3; }
nofile=$(ulimit -Hn)
ulimit -Sn "$nofile"
prefix=/tmp/ringcast-nchan.$port
rm -rf "$prefix" && mkdir -p "$prefix"
# Each stream is one connection; leave room for the publisher and wrk.
sed -e "s|@PREFIX@|$prefix|g" -e "s|@WORKERS@|$workers|g" -e "s|@NOFILE@|$nofile|g" \
    -e "s|@CONNECTIONS@|$(( nofile - 100 ))|g" -e "s|@LISTEN@|$addr:$port|g" \
    "$here/nginx.conf.in" > "$prefix/nginx.conf"
/usr/sbin/nginx -t -q -p "$prefix" -c "$prefix/nginx.conf" -g "error_log stderr;" >&2
/usr/sbin/nginx -p "$prefix" -c "$prefix/nginx.conf" &
nginx=$!
pub=
stop() {
    [ -n "$pub" ] && kill "$pub" 2>/dev/null
    kill -TERM "$nginx" 2>/dev/null
    wait "$nginx" 2>/dev/null
    exit 0
}
trap stop TERM INT
for _ in $(seq 100); do
    [ -S "$prefix/publish.sock" ] && curl -s -o /dev/null "http://$addr:$port/" && break
    sleep 0.05
done
"$here/publish.sh" "$prefix/publish.sock" "$interval_ms" &
pub=$!
echo "nchan: nginx $(/usr/sbin/nginx -v 2>&1 | sed 's|.*/||'), $workers workers, interval ${interval_ms} ms, prefix $prefix, nginx pid $nginx, listening on http://$addr:$port" >&2
wait "$nginx"
