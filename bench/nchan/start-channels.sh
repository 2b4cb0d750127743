#!/usr/bin/env bash
# Starts nginx + nchan with channels from the URL (see channels.conf.in) in the foreground, for
# bench/publish.sh: subscribers on ADDR:PORT/?channel=NAME, publishers on ADDR:PUBPORT/publish.
#   start-channels.sh PORT PUBPORT [WORKERS (default: cores)] [ADDR (default 127.0.0.1)]
# Prints `listening on http://ADDR:PORT` once nginx accepts. nginx's master pid is in
# /tmp/ringcast-nchan.PORT/nginx.pid; its workers are where the CPU and memory go.
set -euo pipefail
port=${1:?usage: start-channels.sh PORT PUBPORT [WORKERS] [ADDR]}
pubport=${2:?usage: start-channels.sh PORT PUBPORT [WORKERS] [ADDR]}
workers=${3:-$(nproc)}
addr=${4:-127.0.0.1}
here=$(cd "$(dirname "$0")" && pwd)
[ -x /usr/sbin/nginx ] && [ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] || {
    echo "nchan: nginx or libnginx-mod-nchan not installed" >&2; exit 3; }
nofile=$(ulimit -Hn)
ulimit -Sn "$nofile"
prefix=/tmp/ringcast-nchan.$port
rm -rf "$prefix" && mkdir -p "$prefix"
sed -e "s|@PREFIX@|$prefix|g" -e "s|@WORKERS@|$workers|g" -e "s|@NOFILE@|$nofile|g" \
    -e "s|@CONNECTIONS@|$(( nofile - 100 ))|g" -e "s|@LISTEN@|$addr:$port|g" \
    -e "s|@PUBLISH@|$addr:$pubport|g" "$here/channels.conf.in" > "$prefix/nginx.conf"
/usr/sbin/nginx -t -q -p "$prefix" -c "$prefix/nginx.conf" -g "error_log stderr;" >&2
/usr/sbin/nginx -p "$prefix" -c "$prefix/nginx.conf" &
nginx=$!
trap 'kill -TERM "$nginx" 2>/dev/null; wait "$nginx" 2>/dev/null; exit 0' TERM INT
for _ in $(seq 100); do
    curl -s -o /dev/null -m 1 "http://$addr:$pubport/publish?channel=probe" && break
    sleep 0.05
done
echo "nchan: nginx $(/usr/sbin/nginx -v 2>&1 | sed 's|.*/||'), $workers workers, channels from ?channel=, publisher http://$addr:$pubport/publish, nginx pid $nginx, listening on http://$addr:$port" >&2
wait "$nginx"
