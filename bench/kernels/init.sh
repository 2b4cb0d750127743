#!/bin/busybox sh
# bench/kernels/init.sh: /init of the guest initramfs that bench/kernels.sh boots under QEMU.
#
# The guest has nothing but busybox-static and our two static binaries, and no 9p or network: it
# is told what to do on the kernel command line (rc.KEY=VALUE) and sends everything back on the
# second serial port (ttyS1), each file base64-framed between "@@ringcast begin NAME" and
# "@@ringcast end NAME" lines so that whatever the tty layer does to line ends cannot corrupt it.
# The console (ttyS0) gets progress lines for the host's console log. One boot runs one driver;
# at the end the guest powers itself off (and if anything here dies, the kernel panics, reboots,
# and QEMU's -no-reboot ends the guest anyway).
export PATH=/bin:/sbin

/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp /run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2> /dev/null
mount -t tmpfs tmpfs /tmp

say() { echo "ringcast-guest: $*" > /dev/console; }

# Kernel command line: rc.driver=uring rc.streams=2000 ...
arg() {
    for w in $(cat /proc/cmdline); do
        case $w in rc.$1=*) echo "${w#rc.$1=}"; return ;; esac
    done
    echo "$2"
}
driver=$(arg driver auto)
streams=$(arg streams 2000)
rate=$(arg rate 500)
hold=$(arg hold 40s)
warmup=$(arg warmup 0s)
interval=$(arg interval 10s)
workers=$(arg workers 2)
virt=$(arg virt unknown)
port=$(arg port 8080)
srcs=$(arg srcs 127.0.0.2-127.0.0.9)
lg_limit=$(arg lglimit 600)

out=/dev/ttyS1
stty -F $out raw -echo 2> /dev/null
emit() { # emit NAME FILE
    {
        echo "@@ringcast begin $1"
        if [ -f "$2" ]; then base64 "$2"; fi
        echo "@@ringcast end $1"
    } > $out
}
finish() {
    echo "@@ringcast done" > $out
    sync
    say "done; powering off"
    poweroff -f
    sleep 5
    exit 1
}

# ---------------------------------------------------------------- capacity mode
# One guest, as many streams as it holds, and what each costs. Besides the run mode's steps it
# raises the socket sysctls a million-stream run needs, watches progress on the console, and
# takes memory snapshots (slabinfo, meminfo, sockstat, the processes' status) at four points:
#   up           server started, no streams
#   hold         both processes up, every stream open, between two ticks (idle)
#   server_only  the server stopped (SIGSTOP) just before the loadgen's end, the loadgen exited:
#                the server still owns its half of every connection (sockets, files, epoll
#                items, io_uring requests), the loadgen's half is gone (left: its timewait
#                sockets and port bindings, which the host-side analysis leaves out)
#   after        the server killed and gone (what did not come back)
# kernels.py splits the kernel memory into server and loadgen shares from these.
# The loadgen's end is placed at 0.9 of a tick interval past a tick (its hold is lengthened by
# less than one interval for that), so "hold" is taken when the last tick has been delivered
# and the server is stopped while no tick is due.
snap() { # snap NAME
    mkdir -p /tmp/snap
    cat /proc/slabinfo > /tmp/snap/$1.slabinfo 2> /dev/null
    cat /proc/meminfo > /tmp/snap/$1.meminfo
    cat /proc/net/sockstat > /tmp/snap/$1.sockstat
    [ -n "${spid:-}" ] && cat /proc/$spid/status > /tmp/snap/$1.server_status 2> /dev/null
    [ -n "${lpid:-}" ] && cat /proc/$lpid/status > /tmp/snap/$1.loadgen_status 2> /dev/null
    date +%s > /tmp/snap/$1.time
    say "snapshot $1: $(sockline)"
}
sockline() { # TCP inuse, tcp mem pages, MemAvailable, server RSS: one line for the console
    echo "tcp_inuse=$(awk '/^TCP:/{print $3}' /proc/net/sockstat)" \
        "tcp_mem_pages=$(awk '/^TCP:/{for(i=1;i<NF;i++) if($i=="mem") print $(i+1)}' /proc/net/sockstat)" \
        "mem_available_kb=$(awk '/MemAvailable/{print $2}' /proc/meminfo)" \
        "server_rss_kb=$(awk '/VmRSS/{print $2}' /proc/${spid:-0}/status 2> /dev/null)" \
        "loadgen_rss_kb=$(awk '/VmRSS/{print $2}' /proc/${lpid:-0}/status 2> /dev/null)"
}
tcp_inuse() { awk '/^TCP:/{print $3}' /proc/net/sockstat; }
capacity() {
    # Sizes from the guest's memory: tcp_mem (pages) pressure at 1/8 of it, hard limit at 1/4;
    # idle sockets hold no buffers, but a tick's burst queues one skb on every socket at once.
    pages=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 4 ))
    {
        for kv in "net/ipv4/tcp_mem=$((pages / 16)) $((pages / 8)) $((pages / 4))" \
            net/core/netdev_max_backlog=65536 net/ipv4/tcp_max_orphans=2097152 \
            fs/epoll/max_user_watches=4194304 fs/nr_open=1048576 fs/file-max=4194304; do
            echo "${kv#*=}" > /proc/sys/${kv%%=*} 2> /dev/null || echo "sysctl_failed=${kv%%=*}"
        done
        for k in fs/nr_open fs/file-max fs/epoll/max_user_watches net/ipv4/ip_local_port_range \
            net/core/somaxconn net/ipv4/tcp_max_syn_backlog net/core/netdev_max_backlog \
            net/ipv4/tcp_mem net/ipv4/tcp_rmem net/ipv4/tcp_wmem net/ipv4/tcp_max_orphans \
            net/ipv4/tcp_max_tw_buckets; do
            echo "sysctl.$(echo $k | tr / .)=$(cat /proc/sys/$k 2> /dev/null | tr '\t' ' ')"
        done
        echo "cmdline=$(cat /proc/cmdline)"
    } >> /tmp/meta.txt 2>&1
    n=$streams
    isecs=$(secs "$interval")
    ramp=$(( (n + rate - 1) / rate ))
    snap boot
    spid=
    # Under TCG a worker walking a tick to every stream leaves new connections waiting for tens
    # of seconds (minutes late in a big ramp): a full accept queue (--backlog) and the 10 s
    # --header-timeout would turn those into failures that measure the emulator, not ringcast,
    # so both are raised here, as is the loadgen's --connect-timeout (rc.connect_timeout).
    # For the same reason --user-timeout (TCP_USER_TIMEOUT, 30 s by default, which also ends
    # keepalive probing) is raised: with both emulated CPUs walking a tick for tens of seconds,
    # acknowledgements and keepalive answers can come later than 30 s. (The 5.10 epoll run at
    # 100,000 with the default had 1,202 streams closed by the server around the first tick
    # after its ramp; the loadgen reconnected them and counted 652 missed ids.)
    /bin/ringcast --listen 127.0.0.1:$port --admin-listen none --driver "$driver" \
        --interval "$interval" --workers "$workers" --header-timeout "$(arg header_timeout 600s)" \
        --user-timeout "$(arg user_timeout 600s)" --backlog 65535 > /tmp/server.log 2>&1 &
    spid=$!
    up=0
    i=0
    while [ $i -lt 600 ]; do
        if grep -q "listening on http://" /tmp/server.log; then up=1; break; fi
        kill -0 $spid 2> /dev/null || break
        sleep 0.1
        i=$((i + 1))
    done
    echo "server_up=$up" >> /tmp/meta.txt
    if [ $up = 0 ]; then
        say "server did not come up"
        echo "loadgen_exit=not-run" >> /tmp/meta.txt
        emit meta /tmp/meta.txt
        emit server_log /tmp/server.log
        return
    fi
    sleep 2
    snap up
    # Place the loadgen's end at 0.9 interval past a tick (see above).
    t0=$(date +%s)
    hsecs=$(secs "$hold")
    end=$((t0 + 1 + ramp + hsecs))
    want=$((isecs * 9 / 10))
    add=$(( ((want - end % isecs) % isecs + isecs) % isecs ))
    hsecs=$((hsecs + add))
    end=$((end + add))
    echo "hold_secs=$hsecs" >> /tmp/meta.txt
    echo "planned_end=$end" >> /tmp/meta.txt
    say "loadgen: $n streams at $rate/s (ramp ${ramp}s), hold ${hsecs}s, interval ${isecs}s, sources $srcs"
    /bin/ringcast-loadgen --url "http://127.0.0.1:$port/" -c "$n" \
        -r "$rate" -d "${hsecs}s" --warmup "$warmup" --interval "$interval" --source-addrs "$srcs" \
        --connect-timeout "$(arg connect_timeout 600s)" --server-pid $spid --label "$virt-$driver-capacity" \
        --out /tmp/result.json -q > /tmp/loadgen.log 2>&1 &
    lpid=$!
    : > /tmp/progress.txt
    last=0
    held_snap=0
    stopped=0
    while kill -0 $lpid 2> /dev/null; do
        now=$(date +%s)
        if [ $((now - t0)) -ge "$lg_limit" ]; then # its own limit: well before the guest's
            say "loadgen over its limit (${lg_limit}s): SIGTERM"
            echo "loadgen_killed_at=$((now - t0))" >> /tmp/meta.txt
            kill -TERM $lpid
            sleep 30
            kill -KILL $lpid 2> /dev/null
            break
        fi
        if [ $((now - last)) -ge 30 ]; then
            line="t=$((now - t0)) $(sockline)"
            echo "$line" >> /tmp/progress.txt
            say "$line"
            last=$now
        fi
        if [ $held_snap = 0 ] && [ $now -ge $((end - isecs / 10 - 2)) ]; then
            snap hold
            held_snap=1
        fi
        if [ $stopped = 0 ] && [ $held_snap = 1 ] && [ $now -ge $((end - 2)) ]; then
            kill -STOP $spid 2> /dev/null && stopped=1
            echo "server_stopped_at=$now" >> /tmp/meta.txt
            say "server stopped (SIGSTOP) for the server-only snapshot"
        fi
        sleep 1
    done
    wait $lpid
    echo "loadgen_exit=$?" >> /tmp/meta.txt
    say "loadgen exit $(sed -n 's/^loadgen_exit=//p' /tmp/meta.txt)"
    lpid=
    if [ $stopped = 1 ]; then
        # Let the loadgen's sockets go: wait until TCP inuse stops falling (at most 10 min).
        prev=-1
        i=0
        while [ $i -lt 120 ]; do
            cur=$(tcp_inuse)
            [ "$cur" = "$prev" ] && break
            prev=$cur
            sleep 5
            i=$((i + 1))
        done
        snap server_only
    fi
    kill -KILL $spid 2> /dev/null
    i=0
    while kill -0 $spid 2> /dev/null && [ $i -lt 600 ]; do sleep 1; i=$((i + 1)); done
    wait $spid
    echo "server_exit=$?" >> /tmp/meta.txt
    spid=
    sleep 5
    snap after
    tar -cf /tmp/snaps.tar -C /tmp snap progress.txt 2> /dev/null
    emit meta /tmp/meta.txt
    emit server_log /tmp/server.log
    emit loadgen_log /tmp/loadgen.log
    emit result /tmp/result.json
    emit snapshots /tmp/snaps.tar
}
secs() { # 60s, 2m, 500ms -> whole seconds
    case $1 in
        *ms) echo $(( ${1%ms} / 1000 )) ;;
        *s) echo "${1%s}" ;;
        *m) echo $(( ${1%m} * 60 )) ;;
        *) echo "$1" ;;
    esac
}

hostname ringcast-guest
ip link set lo up
say "kernel $(uname -r), driver=$driver streams=$streams rate=$rate hold=$hold interval=$interval"

# Limits and sysctls a many-stream run needs; each step's outcome goes into the meta section.
{
    echo "kernel_release=$(uname -r)"
    echo "virt=$virt"
    echo "driver_requested=$driver"
    echo "streams=$streams"
    echo "rate=$rate"
    echo "hold=$hold"
    echo "warmup=$warmup"
    echo "interval=$interval"
    echo "workers=$workers"
    echo "cpus=$(grep -c ^processor /proc/cpuinfo)"
    echo "mem_kb=$(awk '/MemTotal/{print $2}' /proc/meminfo)"
    echo 1048576 > /proc/sys/fs/nr_open 2> /dev/null
    echo 2097152 > /proc/sys/fs/file-max 2> /dev/null
    ulimit -n 1048576 && echo "ulimit_n=$(ulimit -n)" || echo "ulimit_n_failed=$(ulimit -n)"
    echo "1024 65535" > /proc/sys/net/ipv4/ip_local_port_range &&
        echo "ip_local_port_range=$(cat /proc/sys/net/ipv4/ip_local_port_range | tr '\t' ' ')"
    echo 65535 > /proc/sys/net/core/somaxconn 2> /dev/null
    echo 65535 > /proc/sys/net/ipv4/tcp_max_syn_backlog 2> /dev/null
    echo "io_uring_disabled=$(cat /proc/sys/kernel/io_uring_disabled 2> /dev/null || echo absent)"
} > /tmp/meta.txt 2>&1
ulimit -n 1048576 2> /dev/null

/bin/ringcast --probe-uring > /tmp/probe.json 2> /tmp/probe.err
echo "probe_exit=$?" >> /tmp/meta.txt
emit probe /tmp/probe.json
say "probe: $(cat /tmp/probe.json | cut -c1-200)"

# rc.mode=probe: only the facts (bench/kernels.sh uses it to see whether an accelerator works).
if [ "$(arg mode run)" = probe ]; then
    emit meta /tmp/meta.txt
    finish
fi
# rc.mode=capacity (bench/kernels.sh --capacity N): its own flow, below.
if [ "$(arg mode run)" = capacity ]; then
    capacity
    finish
fi

/bin/ringcast --listen 127.0.0.1:$port --admin-listen none --driver "$driver" \
    --interval "$interval" --workers "$workers" > /tmp/server.log 2>&1 &
spid=$!
up=0
i=0
while [ $i -lt 600 ]; do
    if grep -q "listening on http://" /tmp/server.log; then up=1; break; fi
    kill -0 $spid 2> /dev/null || break
    sleep 0.1
    i=$((i + 1))
done
echo "server_up=$up" >> /tmp/meta.txt
if [ $up = 1 ]; then
    say "server up (pid $spid); loadgen for $streams streams"
    timeout "$lg_limit" /bin/ringcast-loadgen --url "http://127.0.0.1:$port/" -c "$streams" \
        -r "$rate" -d "$hold" --warmup "$warmup" --interval "$interval" --source-addrs "$srcs" \
        --server-pid $spid --label "$virt-$driver" --out /tmp/result.json -q \
        > /tmp/loadgen.log 2>&1
    echo "loadgen_exit=$?" >> /tmp/meta.txt
    say "loadgen exit $(sed -n 's/^loadgen_exit=//p' /tmp/meta.txt)"
else
    say "server did not come up"
    echo "loadgen_exit=not-run" >> /tmp/meta.txt
fi
if kill -0 $spid 2> /dev/null; then
    kill -TERM $spid
    i=0
    while kill -0 $spid 2> /dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    kill -KILL $spid 2> /dev/null
fi
wait $spid
echo "server_exit=$?" >> /tmp/meta.txt

emit meta /tmp/meta.txt
emit server_log /tmp/server.log
emit loadgen_log /tmp/loadgen.log
emit result /tmp/result.json
finish
