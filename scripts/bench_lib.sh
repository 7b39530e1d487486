# Shell helpers the benchmark scripts share; `source` it.

# N distinct free ports on 127.0.0.1, space-separated: each socket stays bound until all are
# chosen (asked for one at a time, the kernel may hand out the same port twice).
free_ports() {
    python3 -c 'import socket, sys
held = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in held: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in held))' "$1"
}

wait_for_port() { # $1: port on 127.0.0.1; up to 10 s
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# Makes memory cgroup $1 with a limit of $2 bytes (cgroup v1 or v2, below this shell's own) and
# prints its directory. Needs root and a memory controller.
memory_cgroup() {
    local v1 base
    v1="$(awk -F: '$2 == "memory" {print $3}' /proc/self/cgroup)"
    if [ -n "$v1" ]; then
        base="/sys/fs/cgroup/memory$v1"
        mkdir -p "$base/$1" && echo "$2" >"$base/$1/memory.limit_in_bytes"
    else
        base="/sys/fs/cgroup$(awk -F: '$1 == "0" {print $3}' /proc/self/cgroup)"
        mkdir -p "$base/$1" && echo "$2" >"$base/$1/memory.max"
    fi
    echo "$base/$1"
}

# Runs a command (exec) in memory cgroup $1 limited to $2 bytes; with $2 empty, outside any.
# Called in a subshell: `(exec_limited name "$bytes" cmd...) &`.
exec_limited() {
    local name="$1" bytes="$2" cgroup
    shift 2
    if [ -n "$bytes" ]; then
        cgroup="$(memory_cgroup "$name" "$bytes")" || { echo "cannot create memory cgroup $name" >&2; exit 1; }
        echo "$BASHPID" >"$cgroup/cgroup.procs"
    fi
    exec "$@"
}

stop_processes() { # pids: SIGTERM to each, then wait for each
    local pid
    for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
    for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

remove_memory_cgroups() { # $1: name prefix of the cgroups memory_cgroup made
    find /sys/fs/cgroup -maxdepth 6 -type d -name "$1*" -exec rmdir {} + 2>/dev/null || true
}

# What the machine did during a run, to tell a disk-bound row from a CPU-bound one:
# `resources_start` before it, `resources_end FILE` after it writes FILE as JSON with the
# machine's CPU split (percent of all cores: busy, iowait, idle, from /proc/stat) and the bytes
# written to the block device holding $WORK (/proc/diskstats; null when $WORK is on no listed
# device, e.g. tmpfs or overlay).
resources_start() {
    RESOURCES_CPU="$(awk '$1 == "cpu" {print; exit}' /proc/stat)"
    RESOURCES_DISK="$(work_device_sectors_written)"
    RESOURCES_T0="$(date +%s.%N)"
}

resources_end() { # $1: output file
    local cpu disk t1
    cpu="$(awk '$1 == "cpu" {print; exit}' /proc/stat)"
    disk="$(work_device_sectors_written)"
    t1="$(date +%s.%N)"
    python3 - "$1" "$RESOURCES_T0" "$t1" "$RESOURCES_DISK" "$disk" "$RESOURCES_CPU" "$cpu" <<'PY'
import json, sys
out, t0, t1, disk0, disk1, cpu0, cpu1 = sys.argv[1:]
# /proc/stat cpu: user nice system idle iowait irq softirq steal (guest time is inside user).
a = [int(x) for x in cpu0.split()[1:9]]
b = [int(x) for x in cpu1.split()[1:9]]
d = [y - x for x, y in zip(a, b)]
total = sum(d) or 1
seconds = float(t1) - float(t0)
written = (int(disk1) - int(disk0)) * 512 if disk0 and disk1 else None
json.dump({
    "seconds": round(seconds, 2),
    "cpu_busy_pct": round(100 * (total - d[3] - d[4]) / total, 1),
    "cpu_iowait_pct": round(100 * d[4] / total, 1),
    "cpu_idle_pct": round(100 * d[3] / total, 1),
    "disk_written_bytes": written,
    "disk_write_mb_per_sec": round(written / seconds / 1e6, 1) if written is not None else None,
}, open(out, "w"))
PY
}

work_device_sectors_written() { # sectors written so far to the device holding $WORK, or nothing
    local source
    source="$(df --output=source "$WORK" 2>/dev/null | tail -n 1)"
    awk -v dev="${source##*/}" '$3 == dev {print $10; exit}' /proc/diskstats
}
