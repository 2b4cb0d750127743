#!/usr/bin/env bash
# bench/kernels.sh: the cross-kernel matrix (issue 5). Boots Debian kernels under QEMU on this
# host and runs ringcast + ringcast-loadgen inside each, one guest per (kernel, driver).
#
# Why it is shaped this way:
# - Kernels come from Debian's archive through a private apt state (bench/kernels/fetch.sh), by
#   suite metapackage, so no ABI name is hard-coded and the host's apt sources are never touched.
# - The guest is a busybox-static initramfs with static binaries (bench/kernels/mkinitramfs.sh):
#   the cloud-amd64 kernels need no modules, and nothing in the guest depends on the kernel.
# - Results leave on the second serial port (bench/kernels/init.sh), since these kernels have no
#   9p and the guest has no network; bench/kernels/kernels.py decodes them and writes one
#   wrapper JSON per guest: {"schema": "ringcast-kernels/result", "virt", "uring_facts",
#   "server_driver", ..., "result": <the loadgen result, unmodified>}. The loadgen schema has no
#   field for the virtualisation kind, so it is wrapped rather than edited.
# - KVM is used only when it demonstrably boots a stock kernel here (a short probe boot);
#   otherwise TCG, and every result says which (virt: kvm | tcg).
# - Nothing can hang: every step (apt, build, each guest) has a hard time limit; a guest that
#   hangs or crashes is retried once, then reported as failed with its console log tail.
# - Guests run one at a time: TCG is CPU-heavy and the machine is shared.
#
# Usage: bench/kernels.sh [options]
#   --kernels "SPEC ..."  Debian suites (metapackage linux-image-cloud-amd64) or SUITE:SERIES
#                         (default "bullseye bookworm trixie trixie-backports:6.18
#                         trixie-backports sid": 5.10, 6.1, 6.12, 6.18, 7.x from backports, sid)
#   --drivers "D ..."     server drivers, one guest each (default "uring epoll")
#   --streams N           streams the loadgen holds (default 2000)
#   --interval D          tick interval of server and loadgen (default 10s: TCG frames are dear)
#   --hold D              hold after the ramp (default 40s); --warmup D (default 0s)
#   --rate R              new connections per second in the ramp (default 500)
#   --accel auto|kvm|tcg  (default auto: kvm only if a probe boot works, else tcg)
#   --smp N --mem M       guest CPUs and memory (default 2, 4G)
#   --guest-timeout S     hard limit per guest boot (default: 150 + ramp + hold + interval)
#   --results DIR         results tree (default <repo>/results); files go to
#                         DIR/<kernel-release>/<date>-<host>-<virt>-<driver>-<N>.json
#                         (.failed.json when the guest or the run gave no loadgen result)
#   --cache DIR           kernels and apt state (default ~/.cache/ringcast-kernels)
#   --profile P           cargo profile of the static build (default release)
#   --no-build            use the static binaries already built
#   --no-table            do not regenerate DIR/kernels.md
#   --capacity N          capacity mode (issue 13): one guest per driver holds N streams and
#                         measures what each costs (bench/kernels/init.sh's capacity flow:
#                         memory snapshots, a server-only phase). Defaults become: kernel
#                         trixie-backports (the newest that boots reliably here), --mem 16G,
#                         --interval 120s, --hold 240s, --rate 200, --warmup interval/4, sources
#                         127.0.0.2-127.0.0.60, guest command line + slab_nomerge (so slab
#                         caches are counted apart), results in DIR/capacity/ and the table
#                         DIR/capacity/README.md; a guest is retried only when its first boot
#                         died early (an hour-long run is not repeated)
#   --srcs RANGE          the loadgen's source addresses in the guest (default 127.0.0.2-127.0.0.9)
#   --smoke               harness check: one kernel (default trixie), driver uring, 50 streams,
#                         1s interval, 6s hold, dev-profile build, results in a temp dir unless
#                         --results is given, no table
# Exit status: 0 when every guest produced a result, 1 otherwise.
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
here=$root/bench/kernels
kernels="bullseye bookworm trixie trixie-backports:6.18 trixie-backports sid"
drivers="uring epoll"
streams=2000
interval=10s
hold=40s
warmup=0s
rate=500
accel=auto
smp=2
mem=4G
guest_timeout=
results=
cache=${XDG_CACHE_HOME:-$HOME/.cache}/ringcast-kernels
profile=release
build=1
table=1
smoke=0
capacity=0
srcs=
mem_set=0 interval_set=0 hold_set=0 rate_set=0 results_set=0
kernels_set=0
drivers_set=0
profile_set=0

while [ $# -gt 0 ]; do
    case $1 in
        --kernels) kernels=$2; kernels_set=1; shift ;;
        --drivers) drivers=$2; drivers_set=1; shift ;;
        --streams) streams=$2; shift ;;
        --interval) interval=$2; interval_set=1; shift ;;
        --hold) hold=$2; hold_set=1; shift ;;
        --warmup) warmup=$2; shift ;;
        --rate) rate=$2; rate_set=1; shift ;;
        --accel) accel=$2; shift ;;
        --smp) smp=$2; shift ;;
        --mem) mem=$2; mem_set=1; shift ;;
        --guest-timeout) guest_timeout=$2; shift ;;
        --results) results=$2; shift ;;
        --cache) cache=$2; shift ;;
        --profile) profile=$2; profile_set=1; shift ;;
        --no-build) build=0 ;;
        --no-table) table=0 ;;
        --smoke) smoke=1 ;;
        --capacity) capacity=1; streams=$2; shift ;;
        --srcs) srcs=$2; shift ;;
        -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "kernels.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

work=$(mktemp -d /tmp/ringcast-kernels.XXXXXX)
# The logs stay (their path is printed at the end); the initramfs is the only large file.
trap 'rm -f "$work/initramfs.cpio.gz"' EXIT
if [ $smoke = 1 ]; then
    [ $kernels_set = 1 ] || kernels=trixie
    kernels=${kernels%% *}
    [ $drivers_set = 1 ] || drivers=uring
    streams=50 interval=1s hold=6s rate=100 table=0
    [ $profile_set = 1 ] || profile=dev
    [ -n "$results" ] || results=$work/results
fi
secs() { # humantime-ish duration -> whole seconds (s, ms, m)
    case $1 in
        *ms) echo $(( ${1%ms} / 1000 )) ;;
        *s) echo "${1%s}" ;;
        *m) echo $(( ${1%m} * 60 )) ;;
        *) echo "$1" ;;
    esac
}
if [ $capacity = 1 ]; then
    [ $kernels_set = 1 ] || kernels=trixie-backports
    [ $mem_set = 1 ] || mem=16G
    [ $interval_set = 1 ] || interval=120s
    [ $hold_set = 1 ] || hold=240s
    [ $rate_set = 1 ] || rate=200
    # The measuring window starts a quarter interval after the ramp, so that the ramp's
    # stragglers do not count as tick work in the server's CPU per frame.
    [ "$warmup" != 0s ] || warmup=$(( $(secs "$interval") / 4 ))s
    [ -n "$srcs" ] || srcs=127.0.0.2-127.0.0.60
    [ -n "$results" ] || results=$root/results/capacity
fi
[ -n "$results" ] || results=$root/results
mkdir -p "$results"

say() { printf '\n== %s\n' "$*"; }

for tool in qemu-system-x86_64 cpio apt-get dpkg-deb python3 timeout; do
    command -v "$tool" > /dev/null || {
        echo "kernels.sh: $tool missing (apt-get install qemu-system-x86 busybox-static cpio)" >&2
        exit 2
    }
done

# The guest's memory comes from the host's: refuse a size that would leave the host less than
# 4 GiB available (the machine is shared; TCG only touches the pages the guest uses, but a
# capacity run uses most of them).
mem_gib=${mem%G}
case $mem in *G) ;; *) mem_gib=$(( ${mem%M} / 1024 )) ;; esac
avail_gib=$(awk '/MemAvailable/{print int($2 / 1048576)}' /proc/meminfo)
if [ "$mem_gib" -gt $((avail_gib - 4)) ]; then
    echo "kernels.sh: --mem $mem would leave the host less than 4 GiB (available: ${avail_gib} GiB)" >&2
    exit 2
fi

host=$(hostname -s 2> /dev/null || hostname)
date_tag=$(date -u +%Y%m%dT%H%M%SZ)
git_commit=$(git -C "$root" rev-parse --short=12 HEAD 2> /dev/null || echo unknown)
git_dirty=0
[ -z "$(git -C "$root" status --porcelain --untracked-files=no 2> /dev/null)" ] || git_dirty=1
echo "kernels.sh: work dir $work; results in $results"
echo "host $host, $(uname -r), $(nproc) cores; commit $git_commit$([ $git_dirty = 1 ] && echo ' (dirty)')"

# ------------------------------------------------------------------ static binaries
target_dir=${RINGCAST_STATIC_TARGET_DIR:-/tmp/ringcast-static}
triple=x86_64-unknown-linux-gnu
case $profile in dev | debug) outsub=debug ;; *) outsub=$profile ;; esac
bin=$target_dir/$triple/$outsub
if [ $build = 1 ]; then
    say "static build ($profile) into $target_dir"
    if ! (cd "$root" && RUSTFLAGS="-C target-feature=+crt-static" timeout 2400 \
        cargo build --profile "$profile" --target "$triple" --target-dir "$target_dir" \
        -p ringcast -p ringcast-loadgen) > "$work/build.log" 2>&1; then
        tail -n 30 "$work/build.log"
        echo "kernels.sh: static build failed (log: $work/build.log)" >&2
        exit 1
    fi
    tail -n 1 "$work/build.log"
fi
for b in ringcast ringcast-loadgen; do
    [ -x "$bin/$b" ] || { echo "kernels.sh: $bin/$b missing (drop --no-build)" >&2; exit 1; }
done

say "initramfs"
initrd=$work/initramfs.cpio.gz
"$here/mkinitramfs.sh" "$initrd" "$bin/ringcast" "$bin/ringcast-loadgen" || exit 1

# ------------------------------------------------------------------ kernels
say "kernels: $kernels"
# shellcheck disable=SC2086
timeout 1800 "$here/fetch.sh" "$cache" $kernels > "$work/kernels.tsv" 2> "$work/fetch.log"
fetch_rc=$?
sed 's/^/  /' "$work/fetch.log" | grep -v '^  W: ' | tail -n 20
[ $fetch_rc -eq 124 ] && echo "kernels.sh: fetching kernels timed out" >&2
column -t -s $'\t' "$work/kernels.tsv" 2> /dev/null | sed 's/^/  /' || cat "$work/kernels.tsv"

failed=()
written=()

# ------------------------------------------------------------------ accelerator
# boot KERNEL ACCEL CPU TIMEOUT TAG APPEND: one QEMU run; sets boot_rc, boot_secs, boot_dir, qemu_cmd.
boot() {
    local kernel=$1 acc=$2 cpu=$3 limit=$4 tag=$5 append=$6
    boot_dir=$work/$tag
    mkdir -p "$boot_dir"
    rm -f "$boot_dir/console.log" "$boot_dir/results.txt"
    local cmd=(qemu-system-x86_64 -accel "$acc" -cpu "$cpu" -smp "$smp" -m "$mem" -nographic
        -no-reboot -monitor none -nic none -kernel "$kernel" -initrd "$initrd"
        -append "console=ttyS0 panic=-1 $append"
        -serial "file:$boot_dir/console.log" -serial "file:$boot_dir/results.txt")
    qemu_cmd=$(printf '%q ' "${cmd[@]}")
    local t0 t1
    t0=$(date +%s)
    # In a subshell, so that bash's own "Aborted" notice (QEMU aborts when KVM fails) lands in
    # qemu.out rather than on the terminal.
    (timeout --kill-after=10 "$limit" "${cmd[@]}"; exit $?) < /dev/null > "$boot_dir/qemu.out" 2>&1
    boot_rc=$?
    t1=$(date +%s)
    boot_secs=$((t1 - t0))
}

first_kernel=$(awk -F'\t' '$2 != "-" {print $3; exit}' "$work/kernels.tsv")
virt=tcg
qemu_accel="tcg,thread=multi"
qemu_cpu=max
if [ -z "$first_kernel" ]; then
    echo "kernels.sh: no kernel could be fetched" >&2
elif [ "$accel" = tcg ]; then
    echo "accelerator: tcg (asked for)"
else
    say "accelerator: does KVM boot a stock kernel here?"
    if [ ! -w /dev/kvm ]; then
        echo "  /dev/kvm not usable: tcg"
    else
        boot "$first_kernel" kvm host 40 kvm-probe "rc.mode=probe rc.virt=kvm"
        if grep -q '@@ringcast done' "$work/kvm-probe/results.txt" 2> /dev/null; then
            virt=kvm qemu_accel=kvm qemu_cpu=host
            echo "  kvm works (probe boot took ${boot_secs}s)"
        else
            why=$(grep -m1 -iE 'error|fail|abort' "$boot_dir/qemu.out" "$boot_dir/console.log" 2> /dev/null |
                cut -c1-200)
            echo "  kvm probe boot failed (exit $boot_rc${why:+: $why}): using tcg"
        fi
    fi
    if [ "$accel" = kvm ] && [ $virt != kvm ]; then
        echo "kernels.sh: --accel kvm asked for, but KVM does not boot a stock kernel here" >&2
        exit 1
    fi
fi

# ------------------------------------------------------------------ the matrix
ramp=$(( streams / ${rate%.*} + 1 ))
limit=${guest_timeout:-$(( 150 + ramp + $(secs "$hold") + $(secs "$warmup") + 2 * $(secs "$interval") ))}
# The loadgen's own limit inside the guest: well before the guest's, so a stuck loadgen still
# leaves time to send back what there is.
lglimit=$(( limit > 90 ? limit - 30 : limit * 2 / 3 + 1 ))
mode_args=
if [ $capacity = 1 ]; then
    # Capacity runs scale with N: the ramp may run late under TCG (twice its plan is allowed),
    # the hold is lengthened by up to one interval (init.sh). The guest's limit adds what
    # init.sh allows itself after the loadgen: 30 s to kill a loadgen over its limit, up to
    # 600 s for the loadgen's sockets to go, up to 600 s for the killed server's, 120 s to send
    # the snapshots back, and 60 s to boot.
    lglimit=$(( 2 * ramp + $(secs "$hold") + $(secs "$warmup") + 3 * $(secs "$interval") + 120 ))
    limit=${guest_timeout:-$(( 60 + lglimit + 30 + 600 + 600 + 120 ))}
    mode_args="rc.mode=capacity slab_nomerge"
fi
[ -z "$srcs" ] || mode_args="$mode_args rc.srcs=$srcs"
echo "guest time limit ${limit}s, the loadgen's ${lglimit}s"
while IFS=$'\t' read -r spec release vmlinuz pkgver; do
    if [ "$release" = "-" ]; then
        failed+=("$spec (fetch: $pkgver)")
        continue
    fi
    for driver in $drivers; do
        tag="$release-$driver"
        say "$release ($spec), driver $driver, $streams streams, $virt"
        status=failed
        failure=
        earlier_console=
        attempt=0
        while [ $attempt -lt 2 ]; do
            attempt=$((attempt + 1))
            boot "$vmlinuz" "$qemu_accel" "$qemu_cpu" "$limit" "$tag-$attempt" \
                "rc.driver=$driver rc.streams=$streams rc.rate=$rate rc.hold=$hold rc.warmup=$warmup rc.interval=$interval rc.workers=$smp rc.virt=$virt rc.lglimit=$lglimit $mode_args"
            read -r state sections < <(python3 "$here/kernels.py" decode "$boot_dir/results.txt" "$boot_dir/sections")
            if [ "$state" = complete ]; then
                status=ok
                echo "  attempt $attempt: guest finished in ${boot_secs}s"
                break
            fi
            if [ $boot_rc -eq 124 ] || [ $boot_rc -eq 137 ]; then
                failure="hang: no end of output within ${limit}s"
            else
                failure="crash: qemu exit $boot_rc after ${boot_secs}s, output incomplete (sections: ${sections:-none})"
                oops=$(grep -a -m2 -E 'Kernel panic|Oops|BUG:|general protection' "$boot_dir/console.log" 2> /dev/null |
                    sed 's/^\[ *[0-9.]*\] //' | tr '\n' ';' | tr -d '\r' | cut -c1-160)
                [ -z "$oops" ] || failure="$failure; console: $oops"
            fi
            earlier_console=$boot_dir/console.log
            echo "  attempt $attempt: $failure; console tail:"
            # (terminal escapes stripped: SeaBIOS and the kernel clear the screen)
            tail -n 15 "$boot_dir/console.log" 2> /dev/null |
                sed 's/\x1b\[[0-9;?]*[A-Za-z]//g; s/\x1bc//g; s/^/    | /'
            echo
            tail -n 5 "$boot_dir/qemu.out" 2> /dev/null | sed 's/^/    qemu: /'
            # A capacity guest that got past its boot is not booted again (an hour is not repeated).
            if [ $capacity = 1 ] && [ "$boot_secs" -gt 180 ]; then break; fi
        done
        outdir=$results/$release
        out=$outdir/$date_tag-$host-$virt-$driver-$streams.json
        line=$(python3 "$here/kernels.py" wrap "$out" sections="$boot_dir/sections" \
            virt="$virt" kernel_release="$release" kernel_package="$pkgver" kernel_spec="$spec" \
            driver="$driver" streams="$streams" interval="$interval" hold="$hold" rate="$rate" \
            status="$status" failure="$failure" host="$host" date="$date_tag" \
            git_commit="$git_commit" git_dirty="$git_dirty" qemu_command="$qemu_cmd" \
            attempts="$attempt" elapsed="$boot_secs" console="$boot_dir/console.log" \
            earlier_console="$earlier_console" mode="$([ $capacity = 1 ] && echo capacity || echo run)" \
            mem="$mem" smp="$smp")
        read -r rstatus rdriver out <<< "$line"
        echo "  status $rstatus, server driver $rdriver -> $out"
        if [ "$rstatus" = ok ]; then
            grep -E '^(connections|events):' "$boot_dir/sections/loadgen_log" | sed 's/^/  /'
        elif [ $status = ok ]; then # the guest finished, but without a loadgen result
            grep -E '^(loadgen|server|probe)_' "$boot_dir/sections/meta" 2> /dev/null | sed 's/^/    /'
            tail -n 5 "$boot_dir/sections/server_log" 2> /dev/null | sed 's/^/    server: /'
            tail -n 10 "$boot_dir/sections/loadgen_log" 2> /dev/null | sed 's/^/    loadgen: /'
        fi
        written+=("$out")
        [ "$rstatus" = ok ] || failed+=("$release/$driver ($rstatus${failure:+: $failure})")
    done
done < "$work/kernels.tsv"

if [ $table = 1 ] && [ ${#written[@]} -gt 0 ] && [ $capacity = 1 ]; then
    say "capacity table"
    python3 "$here/kernels.py" capacity-table "$results" "$results/README.md" && cat "$results/README.md"
elif [ $table = 1 ] && [ ${#written[@]} -gt 0 ]; then
    say "kernels table"
    python3 "$here/kernels.py" table "$results" "$results/kernels.md" && cat "$results/kernels.md"
fi

say "summary"
printf '  %s\n' "${written[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed:"
    printf '  %s\n' "${failed[@]}"
    echo "logs: $work"
    exit 1
fi
echo "every guest produced a result; logs: $work"
