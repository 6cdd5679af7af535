#!/usr/bin/env python3
"""`make bench`: s3mount, s3fs, rclone mount and direct S3 baselines, side by side.

One S3 server (`rclone serve s3`, started by scripts/s3-server.sh) on loopback serves a bucket
seeded on disk before it starts. Every scenario runs for every system, systems interleaved (the
order rotates per run), and the median of the runs is reported; a final counting pass per FUSE
system goes through `s3mount-faultproxy` to count the S3 requests by type. Cold runs use a fresh
mount (and, for s3mount, an empty block cache) and drop the page cache first.

Usage: bench.py [--quick] [--runs N] [--out FILE] [--systems s3mount,s3fs,rclone,direct]
Needs root (FUSE mounts, drop_caches). Talks only to servers it starts on 127.0.0.1.
"""

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "bench"
KEY_ID = "benchkey"
SECRET = "benchsecret"
MB = 1_000_000
MiB = 1 << 20
PART = 8 * MiB  # the sidecar's multipart part size (sidecar/src/fs.rs DEFAULT_PART_SIZE)
FUSE_SYSTEMS = ["s3mount", "s3fs", "rclone"]

FULL = dict(big=1024 * MiB, ttfb=16 * MiB, rand=256, ls=10_000, stat=1_000, small=1_000, write=1024 * MiB)
QUICK = dict(big=128 * MiB, ttfb=16 * MiB, rand=64, ls=1_000, stat=200, small=100, write=128 * MiB)
RAND_SIZE = 256 * 1024
SMALL_SIZE = 4096


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def peak_rss_kib(pid):
    """VmHWM of a process in KiB, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def stop(proc, sig=signal.SIGTERM, timeout=60):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Env:
    """Paths, binaries, the server and the proxy shared by every system."""

    def __init__(self, args):
        self.args = args
        self.sizes = QUICK if args.quick else FULL
        tdir = args.target_dir or os.environ.get("CARGO_TARGET_DIR") or os.path.join(TOP, "target")
        self.sidecar = os.path.join(tdir, "release", "s3mount-sidecar")
        self.s3bench = os.path.join(tdir, "release", "s3mount-s3bench")
        self.faultproxy = os.path.join(tdir, "debug", "s3mount-faultproxy")
        self.rclone = os.path.join(TOP, ".venv", "bin", "rclone")
        self.work = tempfile.mkdtemp(prefix="s3mount-bench-", dir=args.work_root)
        self.data = os.path.join(self.work, "data")
        self.env = dict(os.environ, AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET)
        for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
            self.env.pop(proxy, None)
        self.procs = []
        self.mounts = []
        self.load_start = " ".join(f"{x:.1f}" for x in os.getloadavg())
        self.seq = 0

    def path(self, *parts):
        p = os.path.join(self.work, *parts)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p

    def bucket_path(self, *parts):
        return os.path.join(self.data, BUCKET, *parts)

    def seed(self):
        s = self.sizes
        log(f"seeding {self.data}")
        chunk = os.urandom(MiB)
        for name, size in (("big/big.bin", s["big"]), ("ttfb/ttfb.bin", s["ttfb"])):
            p = self.bucket_path(name)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "wb") as f:
                for i in range(size // MiB):
                    # Vary each MiB so that no block equals another.
                    f.write(i.to_bytes(8, "little") + chunk[8:])
        for prefix, n in (("ls", s["ls"]), ("stat", s["stat"])):
            d = self.bucket_path(prefix)
            os.makedirs(d, exist_ok=True)
            for i in range(n):
                with open(os.path.join(d, f"f{i:05}"), "wb") as f:
                    f.write(b"x" * 100)
        # One directory per small-file run, made on disk so that no client's mkdir is measured.
        for sysname in FUSE_SYSTEMS + ["direct"]:
            for r in range(self.args.runs + 1):
                for top in ("small", "write"):
                    d = self.bucket_path(top, f"{sysname}-{r}")
                    os.makedirs(d, exist_ok=True)
                    with open(os.path.join(d, ".keep"), "wb") as f:
                        f.write(b"k")

    def start_server(self):
        out = subprocess.run(
            ["bash", os.path.join(TOP, "scripts", "s3-server.sh"), self.data, self.path("server.log")],
            env=self.env, check=True, capture_output=True, text=True,
        ).stdout.split()
        self.endpoint, self.server_pid = out[0], int(out[1])
        log(f"rclone serve s3 at {self.endpoint} (pid {self.server_pid})")
        port = int(self.endpoint.rsplit(":", 1)[1])
        p = subprocess.Popen(
            [self.faultproxy, "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{port}"],
            env=self.env, stdout=subprocess.PIPE, stderr=open(self.path("proxy.log"), "w"), text=True,
        )
        self.procs.append(p)
        self.proxy = p.stdout.readline().strip()
        log(f"counting proxy at {self.proxy}")

    def warm_server(self):
        """rclone serve s3 computes an object's MD5 (its ETag) when it first lists it and keeps it
        for its directory-cache time; list every seeded prefix so that no measured run pays it."""
        for prefix in ("big/", "ttfb/", "ls/", "stat/"):
            self.direct("list", "--prefix", prefix)

    def direct(self, *argv, endpoint=None):
        out = subprocess.run(
            [self.s3bench, "--endpoint", endpoint or self.endpoint, "--bucket", BUCKET, *argv],
            env=self.env, check=True, capture_output=True, text=True,
        ).stdout
        return json.loads(out.strip().splitlines()[-1])

    def counts(self):
        with urllib.request.urlopen(self.proxy + "/__faults/counts", timeout=10) as r:
            return json.load(r)["requests"]

    def reset_counts(self):
        req = urllib.request.Request(self.proxy + "/__faults/counts", method="DELETE")
        urllib.request.urlopen(req, timeout=10).read()

    def cleanup(self):
        for m in list(self.mounts):
            m.unmount()
        for p in self.procs:
            stop(p)
        if getattr(self, "server_pid", None):
            try:
                os.kill(self.server_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)


class Mount:
    """One FUSE mount of the bucket by one system."""

    def __init__(self, env, system, endpoint):
        env.seq += 1
        self.env, self.system = env, system
        self.dir = env.path("mnt", f"{system}-{env.seq}")
        os.makedirs(self.dir, exist_ok=True)
        self.cache = env.path("cache", f"{system}-{env.seq}")
        os.makedirs(self.cache, exist_ok=True)
        logf = open(env.path("logs", f"{system}-{env.seq}.log"), "w")
        if system == "s3mount":
            cmd = [
                env.sidecar, "--bucket", BUCKET, "--mountpoint", self.dir, "--endpoint", endpoint,
                "--path-style", "--cache-dir", self.cache,
                # The default 512MiB bound cannot hold the 1 GiB object the warm run re-reads.
                "--cache-size", f"{2 * env.sizes['big'] // MiB}MiB",
                "--health-listen", f"127.0.0.1:{free_port()}",
            ]
        elif system == "s3fs":
            pw = env.path("s3fs.passwd")
            with open(pw, "w") as f:
                f.write(f"{KEY_ID}:{SECRET}\n")
            os.chmod(pw, 0o600)
            cmd = ["s3fs", BUCKET, self.dir, "-f", "-o", f"passwd_file={pw}", "-o", f"url={endpoint}",
                   "-o", "use_path_request_style"]
        elif system == "rclone":
            remote = f":s3,provider=Other,env_auth=true,force_path_style=true,endpoint='{endpoint}':{BUCKET}"
            cmd = [env.rclone, "mount", remote, self.dir, "--cache-dir", self.cache]
        else:
            raise ValueError(system)
        self.proc = subprocess.Popen(cmd, env=env.env, stdout=logf, stderr=subprocess.STDOUT)
        env.mounts.append(self)
        if system == "s3mount":
            subprocess.run([env.sidecar, "probe", "--mountpoint", self.dir, "--wait", "30s"], check=True,
                           env=env.env, stdout=subprocess.DEVNULL)
        else:
            wait_for(lambda: os.path.ismount(self.dir) or self.proc.poll() is not None, 30, f"{system} mount")
            if self.proc.poll() is not None:
                raise RuntimeError(f"{system} exited with {self.proc.returncode}; see {logf.name}")
        os.listdir(self.dir)

    def rss(self):
        return peak_rss_kib(self.proc.pid)

    def unmount(self):
        if self.system == "s3mount":
            stop(self.proc)
        else:
            subprocess.run(["umount", self.dir], stderr=subprocess.DEVNULL)
            stop(self.proc)
        if os.path.ismount(self.dir):
            subprocess.run(["umount", "-l", self.dir], stderr=subprocess.DEVNULL)
        self.env.mounts.remove(self)


# --- scenarios on a mount: each returns (seconds, bytes or items) ---------------------------------

def read_file(path):
    buf = bytearray(MiB)
    view = memoryview(buf)
    total = 0
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(view)
            if not n:
                break
            total += n
    return time.perf_counter() - start, total


def read_tree(root):
    files = [os.path.join(d, n) for d, _, names in os.walk(root) for n in names]
    buf = bytearray(MiB)
    total = 0
    start = time.perf_counter()
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
    return time.perf_counter() - start, total


def random_offsets(size, count):
    rng = random.Random(7)
    return [rng.randrange(0, (size - RAND_SIZE) // 4096) * 4096 for _ in range(count)]


def random_reads(path, offsets):
    start = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        for off in offsets:
            if len(os.pread(fd, RAND_SIZE, off)) != RAND_SIZE:
                raise RuntimeError(f"short read at {off} of {path}")
    finally:
        os.close(fd)
    return time.perf_counter() - start, RAND_SIZE * len(offsets)


def first_byte(path):
    start = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        if not os.read(fd, 4096):
            raise RuntimeError(f"empty read of {path}")
        took = time.perf_counter() - start
    finally:
        os.close(fd)
    return took, 1


def ls_l(path, expect):
    start = time.perf_counter()
    out = subprocess.run(["ls", "-l", path], check=True, capture_output=True).stdout
    took = time.perf_counter() - start
    lines = out.count(b"\n") - 1  # the "total" line
    if lines != expect:
        raise RuntimeError(f"ls -l {path} showed {lines} entries, expected {expect}")
    return took, lines


def stat_all(paths):
    start = time.perf_counter()
    for p in paths:
        os.stat(p)
    return time.perf_counter() - start, len(paths)


def small_files(d, count):
    body = os.urandom(SMALL_SIZE)
    start = time.perf_counter()
    for i in range(count):
        with open(os.path.join(d, f"s{i:05}"), "wb", buffering=0) as f:
            f.write(body)
    return time.perf_counter() - start, count


def write_file(path, size):
    chunk = os.urandom(MiB)
    start = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        for _ in range(size // MiB):
            f.write(chunk)
    return time.perf_counter() - start, size


class Bench:
    def __init__(self, env):
        self.env = env
        self.s = env.sizes
        # results[scenario][system] = list of dicts {seconds, amount, rss}
        self.results = {}
        self.requests = {}
        self.notes = set()  # things a reader of the results must know

    def record(self, scenario, system, seconds, amount, rss=None, requests=None):
        self.results.setdefault(scenario, {}).setdefault(system, []).append(
            {"seconds": seconds, "amount": amount, "rss": rss})
        if requests is not None:
            self.requests.setdefault(scenario, {})[system] = requests

    # Each session runs a group of scenarios on one fresh mount. `counting` routes the mount
    # through the proxy and records request counts instead of times.

    def measure(self, scenario, system, mount, fn, counting, *a):
        if counting:
            self.env.reset_counts()
        seconds, amount = fn(*a)
        rss = mount.rss() if mount else None
        if counting:
            self.requests.setdefault(scenario, {})[system] = self.env.counts()
        else:
            self.record(scenario, system, seconds, amount, rss)
        log(f"  {scenario:<14} {system:<8} {seconds:8.3f}s")

    def session_read(self, system, r, counting=False):
        env, s = self.env, self.s
        endpoint = env.proxy if counting else env.endpoint
        if system == "direct":
            if counting:
                return
            drop_caches()
            self.direct("ttfb", "direct", "ttfb", "--key", "ttfb/ttfb.bin")
            drop_caches()
            self.direct("seq-read-cold", "direct-1", "get", "--key", "big/big.bin")
            drop_caches()
            self.direct("seq-read-cold", "direct-8", "get", "--key", "big/big.bin", "--parallel", "8",
                        "--part-size", f"{PART}")
            return
        drop_caches()
        m = Mount(env, system, endpoint)
        try:
            os.stat(os.path.join(m.dir, "big", "big.bin"))
            os.stat(os.path.join(m.dir, "ttfb"))
            drop_caches()
            self.measure("ttfb", system, m, first_byte, counting, os.path.join(m.dir, "ttfb", "ttfb.bin"))
            drop_caches()
            big = os.path.join(m.dir, "big", "big.bin")
            self.measure("seq-read-cold", system, m, read_file, counting, big)
            drop_caches()
            self.measure("seq-read-warm", system, m, read_file, counting, big)
            if system == "s3mount" and not counting:
                drop_caches()
                took, n = read_tree(m.cache)
                if n < self.s["big"] // 2:
                    self.notes.add(f"The s3mount cache directory held only {n:,} bytes after reading "
                                   f"{human(self.s['big'])}, so reading it is no baseline; left out.")
                else:
                    self.record("seq-read-warm", "cache-files", took, n)
                    log(f"  {'seq-read-warm':<14} {'cache-files':<8} {took:8.3f}s ({n} bytes)")
        finally:
            m.unmount()

    def session_random(self, system, r, counting=False):
        if system == "direct":
            return
        env = self.env
        offsets = random_offsets(self.s["big"], self.s["rand"])
        drop_caches()
        m = Mount(env, system, env.proxy if counting else env.endpoint)
        try:
            path = os.path.join(m.dir, "big", "big.bin")
            os.stat(path)
            drop_caches()
            self.measure("rand-read-cold", system, m, random_reads, counting, path, offsets)
            drop_caches()
            self.measure("rand-read-warm", system, m, random_reads, counting, path, offsets)
        finally:
            m.unmount()

    def session_meta(self, system, r, counting=False):
        env, s = self.env, self.s
        tag = f"{system}-{self.s_runs if counting else r}"
        if system == "direct":
            if counting:
                return
            self.direct("ls-l", "direct", "list", "--prefix", "ls/")
            self.direct("stat", "direct", "head-many", "--prefix", "stat/", "--count", str(s["stat"]))
            self.direct("small-files", "direct", "put-many", "--prefix", f"small/{tag}/s", "--count",
                        str(s["small"]))
            for par in (1, 8):
                self.direct("seq-write", f"direct-{par}", "put", "--key", f"write/{tag}/w{par}.bin", "--size",
                            str(s["write"]), "--part-size", str(PART), "--parallel", str(par))
            return
        drop_caches()
        m = Mount(env, system, env.proxy if counting else env.endpoint)
        try:
            # Each directory is looked up once before its scenario, so that the counts show what
            # the operation itself costs (a readdir, the stats, the creates), not finding its parent.
            for sub in ("ls", "stat", os.path.join("small", tag), os.path.join("write", tag)):
                os.stat(os.path.join(m.dir, sub))
            self.measure("ls-l", system, m, ls_l, counting, os.path.join(m.dir, "ls"), s["ls"])
            stat_dir = os.path.join(m.dir, "stat")
            names = sorted(os.listdir(stat_dir))
            self.measure("stat", system, m, stat_all, counting, [os.path.join(stat_dir, n) for n in names])
            self.measure("small-files", system, m, small_files, counting, os.path.join(m.dir, "small", tag),
                         s["small"])
            path = os.path.join(m.dir, "write", tag, "w.bin")
            self.measure("seq-write", system, m, write_file, counting, path, s["write"])
            on_disk = os.path.getsize(env.bucket_path("write", tag, "w.bin"))
            if on_disk != s["write"]:
                raise RuntimeError(f"{system} wrote {on_disk} bytes of {s['write']}")
        finally:
            m.unmount()

    def direct(self, scenario, system, *argv):
        out = self.env.direct(*argv)
        unit = next(u for n, u, _, _ in SCENARIOS if n == scenario)
        amount = out["bytes"] if unit == "MB/s" else out["items"]
        self.record(scenario, system, out["seconds"], amount, requests=out["requests"])
        log(f"  {scenario:<14} {system:<8} {out['seconds']:8.3f}s")

    def sessions(self):
        by_name = {"read": self.session_read, "random": self.session_random, "meta": self.session_meta}
        wanted = [x for x in self.env.args.sessions.split(",") if x]
        unknown = [x for x in wanted if x not in by_name]
        if unknown:
            sys.exit(f"bench: unknown session(s) {', '.join(unknown)}; known: {', '.join(by_name)}")
        return [by_name[x] for x in wanted]

    def run(self, systems):
        runs = self.env.args.runs
        self.s_runs = runs
        for session in self.sessions():
            for r in range(runs):
                order = systems[r % len(systems):] + systems[:r % len(systems)]
                log(f"{session.__name__} run {r + 1}/{runs}: {' '.join(order)}")
                for system in order:
                    self.env.warm_server()
                    session(system, r)
        log("counting pass (through the proxy)")
        for session in self.sessions():
            for system in systems:
                if system != "direct":
                    self.env.warm_server()
                    session(system, runs, counting=True)


SCENARIOS = [
    # name, what the throughput counts, baseline system(s), title
    ("seq-read-cold", "MB/s", ["direct-8", "direct-1"], "Cold sequential read of {big}"),
    ("seq-read-warm", "MB/s", ["cache-files"], "Re-read from the block cache, page cache dropped ({big})"),
    ("rand-read-cold", "MB/s", [], "Random {rand} reads of 256 KiB, cold"),
    ("rand-read-warm", "MB/s", [], "The same random reads, warm (page cache dropped)"),
    ("ls-l", "entries/s", ["direct"], "`ls -l` of a {ls}-object prefix (fresh mount)"),
    ("stat", "stats/s", ["direct"], "`stat` of {stat} files just listed (direct: one HEAD each)"),
    ("small-files", "files/s", ["direct"], "Create+write+close {small} files of 4 KiB (direct: PUTs)"),
    ("seq-write", "MB/s", ["direct-8", "direct-1"], "Sequential write of {write}, close included"),
    ("ttfb", "", ["direct"], "Time to first byte (open + first 4 KiB of a cold 16 MiB file)"),
]


def human(n):
    return f"{n // MiB} MiB" if n < 1024 * MiB else f"{n / (1024 * MiB):g} GiB"


def machine():
    mem = "?"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"nproc {os.cpu_count()}, {cpu}, memory {mem}, kernel {platform.release()}; "
            f"load average now {load}")


def versions(env):
    try:
        mtime = os.path.getmtime(env.sidecar)
        built = f"{datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc):%Y-%m-%d %H:%M UTC}"
    except OSError:
        built = "?"

    def first(cmd):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"
    return {
        "s3mount": first(["git", "-C", TOP, "describe", "--always", "--dirty"]),
        "s3fs": first(["s3fs", "--version"]),
        "rclone": first([env.rclone, "version"]),
        "sidecar_built": built,
    }


def fmt_req(req):
    if req is None:
        return "-"
    items = [f"{k} {v}" for k, v in sorted(req.items()) if v]
    return ", ".join(items) if items else "0"


def report(bench, env, systems, elapsed):
    s = env.sizes
    sizes = {k: (human(v) if k in ("big", "write") else f"{v:,}") for k, v in s.items()}
    lines = []
    add = lines.append
    add("# s3mount benchmark results")
    add("")
    add(f"Written by `make bench{' QUICK=1' if env.args.quick else ''}` (bench/bench.py); "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, took {elapsed / 60:.1f} min.")
    add("")
    add(f"- Machine: {machine()}; load average at the start {env.load_start}")
    v = env.versions
    add(f"- Systems: s3mount `{v['s3mount']}` at the start (release binary built {v['sidecar_built']}), "
        f"{v['s3fs']}, {v['rclone']}; server: "
        "`rclone serve s3` on 127.0.0.1 (local disk backend).")
    add(f"- Runs: median of {env.args.runs} interleaved run(s) per scenario (system order rotates per run); "
        "request counts from one extra pass through `s3mount-faultproxy` (direct: the client's own count, "
        "including one untimed HEAD or LIST for set-up).")
    add("- Cold = fresh mount (s3mount: empty cache dir) and `echo 3 > /proc/sys/vm/drop_caches`; "
        "warm = same mount, page cache dropped again. s3fs and rclone run with their defaults "
        "(no disk cache), so their warm runs fetch again. s3mount runs with `--cache-size` of twice "
        "the big object.")
    add("- Ratios are speed ratios (time of the other / time of this row): > 1 means this row is faster. "
        "RSS is the mount process's VmHWM (peak since it mounted) at the end of the scenario.")
    add("")
    for name, unit, baselines, title in SCENARIOS:
        rows = bench.results.get(name, {})
        if not rows:
            continue
        med = {sysname: statistics.median(x["seconds"] for x in runs)
               for sysname, runs in rows.items() if runs}
        amount = {sysname: runs[0]["amount"] for sysname, runs in rows.items() if runs}
        peers = [p for p in FUSE_SYSTEMS if p in med]
        add(f"## {title.format(**sizes)}")
        add("")
        head = ["system", "time (median)", "runs (s)"]
        if unit:
            head.append(unit)
        head += [f"vs {b}" for b in baselines if b in med]
        head += [f"vs {p}" for p in peers]
        head += ["S3 requests", "peak RSS"]
        add("| " + " | ".join(head) + " |")
        add("|" + "---|" * len(head))
        order = dict.fromkeys(FUSE_SYSTEMS + baselines + ["direct", "direct-1", "direct-8", "cache-files"])
        for sysname in [x for x in order if x in med]:
            t = med[sysname]
            times = " ".join(f"{x['seconds']:.3f}" for x in rows[sysname])
            row = [sysname, f"{t * 1000:.1f} ms" if t < 1 else f"{t:.2f} s", times]
            if unit:
                rate = amount[sysname] / t
                row.append(f"{rate / MB:,.0f}" if unit == "MB/s" else f"{rate:,.0f}")
            row += [f"{med[b] / t:.2f}x" for b in baselines if b in med]
            row += [f"{med[p] / t:.2f}x" if p != sysname else "-" for p in peers]
            row.append(fmt_req(bench.requests.get(name, {}).get(sysname)))
            rss = [x["rss"] for x in rows[sysname] if x["rss"]]
            row.append(f"{max(rss) / 1024:.0f} MiB" if rss else "-")
            add("| " + " | ".join(row) + " |")
        add("")
    if bench.notes:
        lines += ["## Notes from this run", ""] + [f"- {n}" for n in sorted(bench.notes)] + [""]
    lines += targets(bench, env)
    return "\n".join(lines) + "\n"


def verdict(ok, miss):
    return "met" if ok else f"missed: {miss}"


def targets(bench, env):
    """The targets of issue 7, checked against this run's medians (speed ratios, > 1 = faster)."""
    med = {
        name: {sysname: statistics.median(x["seconds"] for x in runs)
               for sysname, runs in rows.items() if runs}
        for name, rows in bench.results.items()
    }
    rows = []

    def speed(name, target, what, other, this="s3mount"):
        t = med.get(name, {})
        if other == "direct-best":
            other_t = min((v for k, v in t.items() if k.startswith("direct")), default=None)
        else:
            other_t = t.get(other)
        if other_t is None or t.get(this) is None:
            rows.append((what, f">= {target}x", "not measured", "-"))
            return
        r = other_t / t[this]
        short = f"{(1 - r / target) * 100:.0f}% short"
        rows.append((what, f">= {target}x", f"{r:.2f}x", verdict(r >= target, short)))

    def count(name, op, target, what):
        got = bench.requests.get(name, {}).get("s3mount")
        if got is None:
            rows.append((what, f"{target}", "not measured", "-"))
            return
        n = got.get(op, 0)
        rows.append((what, f"{target}", f"{n}", verdict(n == target, f"{n} instead of {target}")))

    n_ls = env.sizes["ls"]
    speed("seq-read-cold", 0.6, "cold read vs 8 parallel ranged GETs", "direct-8")
    speed("seq-read-cold", 1.5, "cold read vs s3fs", "s3fs")
    speed("seq-read-warm", 0.8, "warm read vs reading the cache files", "cache-files")
    cold = med.get("rand-read-cold", {}).get("s3mount")
    warm = med.get("rand-read-warm", {}).get("s3mount")
    if cold and warm:
        r = cold / warm
        rows.append(("random 256 KiB: warm vs cold", ">= 20x", f"{r:.1f}x",
                     verdict(r >= 20, f"{(1 - r / 20) * 100:.0f}% short")))
    count("ls-l", "LIST", -(-n_ls // 1000), f"`ls -l` {n_ls:,}: LIST requests")
    count("ls-l", "HEAD", 0, f"`ls -l` {n_ls:,}: HEAD requests")
    speed("ls-l", 4, f"`ls -l` {n_ls:,} vs s3fs", "s3fs")
    speed("small-files", 3, "small files vs s3fs", "s3fs")
    count("small-files", "PUT", env.sizes["small"], "small files: PUT requests (one each)")
    speed("seq-write", 0.8, "sequential write vs the faster direct multipart upload", "direct-best")
    rss = [x["rss"] for by_sys in bench.results.values() for x in by_sys.get("s3mount", []) if x["rss"]]
    if rss:
        peak = max(rss) / 1024
        rows.append(("sidecar peak RSS", "<= 128 MiB", f"{peak:.0f} MiB",
                     verdict(peak <= 128, f"{peak - 128:.0f} MiB over")))
    out = ["## Targets of issue 7 (computed from the medians above)", "",
           "| target | wanted | measured | verdict |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    out.append("")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one run (smoke check)")
    ap.add_argument("--runs", type=int, help="runs per scenario (default 3, quick 1)")
    ap.add_argument("--systems", default="s3mount,s3fs,rclone,direct")
    ap.add_argument("--sessions", default="read,random,meta",
                    help="which sessions to run: read (sequential, warm), random, meta (ls, stat, small files, "
                         "write, first byte); a results file from a subset lacks the other scenarios")
    ap.add_argument("--out", help="markdown results file (default bench/RESULTS.md; quick: stdout only)")
    ap.add_argument("--target-dir", help="cargo target dir (default $CARGO_TARGET_DIR or ./target)")
    ap.add_argument("--work-root", default=None, help="where the scratch directory goes")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = ap.parse_args()
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    if os.geteuid() != 0:
        sys.exit("bench: needs root (FUSE mounts and drop_caches)")
    systems = [x for x in args.systems.split(",") if x]
    env = Env(args)
    for tool in [env.s3bench, env.faultproxy, env.rclone] + ([env.sidecar] if "s3mount" in systems else []):
        if not os.access(tool, os.X_OK):
            sys.exit(f"bench: missing {tool} (run `make bench`, which builds it)")
    if "s3fs" in systems and not shutil.which("s3fs"):
        sys.exit("bench: s3fs missing (scripts/setup.sh installs it)")
    start = time.monotonic()
    env.versions = versions(env)
    bench = Bench(env)
    try:
        env.seed()
        env.start_server()
        env.warm_server()
        bench.run(systems)
    finally:
        env.cleanup()
    text = report(bench, env, systems, time.monotonic() - start)
    print(text)
    out = args.out or (None if args.quick else os.path.join(TOP, "bench", "RESULTS.md"))
    if out:
        with open(out, "w") as f:
            f.write(text)
        log(f"wrote {out}")
    with open(os.path.join(env.args.work_root or tempfile.gettempdir(), "s3mount-bench-last.json"), "w") as f:
        json.dump({"results": bench.results, "requests": bench.requests}, f, indent=1)


if __name__ == "__main__":
    main()
