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
