#!/usr/bin/env python3
"""Summarise treecopy benchmark results as markdown for docs/benchmarks.md.

    python3 bench/report.py [RESULTS_DIR]     (default: newest under
                                               /work/bench-data/results)

Reads the hyperfine JSON files written by bench/run.sh (one per round in
interleave mode, `W1-ext4-r3.json`; one per workload and pair in batch mode,
`W1-ext4.json`), merges the runs of each command, and prints:
  * the machine and method (from meta.json, recorded when the run started),
  * a table of median wall times and the ratios treecopy / cp -a,
    treecopy / rsync -a and treecopy / each peer copier (xcp, fcp, cpz) per
    workload and pair (< 1 means treecopy is faster),
  * a details table (n, median, mean +- sd, min, max, CPU time, throughput).

Medians, not means: with 3-5 runs on a shared VM one disturbed run would
move the mean a lot and the median little.

run.sh also calls `report.py --write-meta FILE ...` once at the start of a
run to record the machine description next to the results; that code lives
here so the description and its rendering stay in one place.
"""

import argparse
import datetime
import glob
import hashlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys

DEFAULT_RESULTS_ROOT = "/work/bench-data/results"
PAIR_LABEL = {"ext4": "ext4 → ext4", "tmpfs": "tmpfs → ext4",
              "xfs": "XFS → same XFS (loop image, reflink=1)"}
PAIR_ORDER = {"ext4": 0, "tmpfs": 1, "xfs": 2}
RESULT_NAME = re.compile(r"^(W\d+)-(ext4|tmpfs|xfs)(?:-r(\d+))?\.json$")
# Command-name prefixes in the order the tables list them; the peer copiers
# come from bench/peers.sh.
TOOL_ORDER = ("treecopy", "cp", "rsync", "xcp", "fcp", "cpz")
PEERS = ("xcp", "fcp", "cpz")
# What verify.sh checks per tool (run.sh records keep_<peer> settings).
KEEP_LABEL = {"mode": "file modes", "dirmode": "directory modes",
              "mtime": "file mtimes", "linkmtime": "symlink mtimes"}


# ---------------------------------------------------------------- machine --

def _first_line(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return None


def _mount_of(path):
    """The /proc/self/mountinfo entry whose mount point contains path."""
    path = os.path.realpath(path)
    best = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            fields = left.split()
            mnt = fields[4].replace("\\040", " ")
            fstype, source, super_opts = (right.split() + ["", "", ""])[:3]
            inside = path == mnt or path.startswith(mnt.rstrip("/") + "/")
            if inside and (best is None or len(mnt) >= len(best["mount"])):
                best = {"mount": mnt, "fstype": fstype, "device": source,
                        "options": fields[5] + "," + super_opts}
    return best


def _describe_fs(path):
    m = _mount_of(path)
    if m is None:
        return {"path": path}
    info = dict(m, path=path)
    if m["fstype"] == "ext4":
        # The journal matters here: without one, ext4 delays reuse of
        # freshly deleted inodes (see README.md). jbd2 shows the journal
        # thread in sysfs; "<none>" means no journal.
        dev = os.path.basename(m["device"])
        try:
            with open(f"/sys/fs/ext4/{dev}/journal_task") as f:
                task = f.read().strip()
            info["journal"] = "no" if task in ("<none>", "") else "yes"
        except OSError:
            pass
        try:
            with open(f"/sys/block/{dev}/queue/rotational") as f:
                info["rotational"] = f.read().strip() == "1"
        except OSError:
            pass
    return info


def _treecopy_version(treecopy, pinned, repo):
    rev = _first_line(["git", "-C", repo, "describe", "--always", "--dirty"])
    text = f"{treecopy} (git {rev or 'no commit yet'}"
    if pinned and os.path.exists(pinned):
        with open(pinned, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:12]
        version = _first_line([pinned, "--version"])
        text += f", {version}, sha256 {digest}…, benchmarked copy: {pinned}"
    return text + ")"


def describe_machine(paths, treecopy, pinned, repo, peers=None):
    cpu = None
    virt = False
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and cpu is None:
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and " hypervisor" in line:
                virt = True
    with open("/proc/meminfo") as f:
        mem_kib = int(next(l for l in f if l.startswith("MemTotal")).split()[1])
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "virtual_machine": virt,
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "filesystems": {name: _describe_fs(p) for name, p in paths.items()},
        "tools": {
            "treecopy": _treecopy_version(treecopy, pinned, repo),
            "cp": _first_line(["cp", "--version"]),
            "rsync": _first_line(["rsync", "--version"]),
            "hyperfine": _first_line(["hyperfine", "--version"]),
            **{name: f"{_first_line([path, '--version'])} ({path})"
               for name, path in (peers or {}).items()},
        },
    }


def describe_workload(path):
    files = dirs = nbytes = 0
    sizes = []
    for root, dnames, fnames in os.walk(path):
        dirs += len(dnames)
        for n in fnames:
            size = os.lstat(os.path.join(root, n)).st_size
            files += 1
            nbytes += size
            sizes.append(size)
    return {"path": path, "files": files, "dirs": dirs + 1, "bytes": nbytes,
            "min_size": min(sizes, default=0), "max_size": max(sizes, default=0)}


def write_meta(args):
    def kv(items):
        return dict(item.split("=", 1) for item in items)
    meta = describe_machine(kv(args.path), args.treecopy, args.treecopy_bin, args.repo,
                            kv(args.peer))
    meta["settings"] = kv(args.setting)
    meta["workloads"] = {w: describe_workload(p) for w, p in kv(args.workload).items()}
    with open(args.write_meta, "w") as f:
        json.dump(meta, f, indent=2)


# ----------------------------------------------------------------- report --

def load_results(results_dir):
    """({(workload, pair): {command: [seconds, ...]}}, the same with CPU seconds), in
    command order. hyperfine records user and system time only as means over a call's
    runs: in interleave mode a call has one run per command, so each is that run's; in
    batch mode the mean stands for each of the call's runs."""
    data, cpu = {}, {}
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
        m = RESULT_NAME.match(os.path.basename(path))
        if not m:
            continue
        key = (m.group(1), m.group(2))
        with open(path) as f:
            for res in json.load(f)["results"]:
                data.setdefault(key, {}).setdefault(res["command"], []).extend(res["times"])
                if "user" in res and "system" in res:
                    cpu.setdefault(key, {}).setdefault(res["command"], []).extend(
                        [res["user"] + res["system"]] * len(res["times"]))
    return data, cpu


def fmt_s(t):
    return f"{t:.3f} s" if t < 10 else f"{t:.1f} s"


def fmt_size(n):
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            v = n / div
            return f"{v:.0f} {unit}" if v >= 10 or n % div == 0 else f"{v:.1f} {unit}"
    return f"{n} B"


def workload_label(w, meta):
    info = meta.get("workloads", {}).get(w)
    if not info:
        return w
    sizes = (fmt_size(info["min_size"]) if info["min_size"] == info["max_size"]
             else f"{fmt_size(info['min_size'])}–{fmt_size(info['max_size'])}")
    dirs = f"{info['dirs']:,} dir" + ("s" if info["dirs"] != 1 else "")
    return f"{w}: {info['files']:,} files of {sizes} in {dirs}, {fmt_size(info['bytes'])}"


def tool_of(name):
    """'xcp -w16' -> 'xcp'; 'cp -a' -> 'cp'."""
    return name.split()[0]


def order_key(name):
    # treecopy variants first (by -j, numerically), then cp -a, rsync -a and
    # the peers, each group by its thread count.
    tool = tool_of(name)
    group = TOOL_ORDER.index(tool) if tool in TOOL_ORDER else len(TOOL_ORDER)
    return (group, [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)])


def machine_lines(meta):
    if not meta:
        return ["(no meta.json: machine not recorded)"]
    out = []
    cpu = meta.get("cpu") or "unknown CPU"
    vm = ", virtual machine" if meta.get("virtual_machine") else ""
    out.append(f"- Machine: {meta['nproc']} CPUs ({cpu}{vm}), {meta['ram_gib']} GiB RAM, "
               f"Linux {meta['kernel']}")
    for name, fs in meta.get("filesystems", {}).items():
        extra = []
        if "journal" in fs:
            extra.append("no journal" if fs["journal"] == "no" else "journal")
        if "discard" in fs.get("options", "").split(","):
            extra.append("online discard")
        if fs.get("rotational") is False:
            extra.append("non-rotational")
        tail = f" ({', '.join(extra)})" if extra else ""
        out.append(f"- {name}: {fs['path']} on {fs.get('fstype', '?')} "
                   f"{fs.get('device', '')}{tail}")
    s = meta.get("settings", {})
    tools = s.get("tools", "treecopy cp rsync").split()
    for name, ver in meta.get("tools", {}).items():
        if name in tools or name == "hyperfine":
            keep = s.get(f"keep_{name}")
            if keep and keep != "all":
                kept = ", ".join(KEEP_LABEL.get(k, k) for k in keep.split(","))
                ver += (f"; keeps {kept} (verify.sh checks those, sizes and"
                        + (" content" if "mtime" in keep.split(",") else " content every run") + ")")
            out.append(f"- {name}: {ver}")
    if s:
        interleave = s.get("mode") == "interleave"
        out.append(
            "- Method: hyperfine, " +
            ("runs interleaved (each round runs every tool once, order rotated)"
             if interleave else "one hyperfine call per workload and pair (runs not interleaved)") +
            "; before every run, for every tool: delete the destination, `sync`, "
            + (f"sleep {s['settle_s']} s, " if s.get("settle_s", "0") != "0" else "")
            + "drop caches, read the source once (warm source, cold destination)"
            + (f", wait {s['quiet_s']} s for freed memory to go back to the host"
               if s.get("quiet_s", "0") != "0" else "")
            + ("; timing includes `sync -f DST`" if s.get("sync_in_timing") == "1"
               else "; timing stops when the tool exits (writeback not included)")
            + f"; treecopy jobs: {s.get('treecopy_jobs', 'default')}"
            + (f"; xcp workers: {s['xcp_jobs']}" if "xcp" in tools and "xcp_jobs" in s else "")
            + (f"; fcp threads: {s['fcp_jobs']}" if "fcp" in tools and "fcp_jobs" in s else "")
            + (f"; scale {s['scale']} (NOT the full workload)" if s.get("scale", "1") != "1" else "")
            + f"; date {meta.get('date', '?')}")
    return out


def report(results_dir):
    meta = {}
    meta_path = os.path.join(results_dir, "meta.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
    data, cpu = load_results(results_dir)
    if not data:
        print(f"report.py: no hyperfine results in {results_dir}", file=sys.stderr)
        return 1

    commands = sorted({c for cmds in data.values() for c in cmds}, key=order_key)
    treecopies = [c for c in commands if c.startswith("treecopy")]
    refs = [c for c in commands if c in ("cp -a", "rsync -a") or tool_of(c) in PEERS]

    lines = ["## Results", ""]
    lines += machine_lines(meta)
    lines += ["", "Median wall time per copy; ratio < 1 means treecopy is faster.", ""]
    head = ["Workload", "Source → destination"] + commands
    head += [f"{t} / {r}" for t in treecopies for r in refs]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * 2 + "---:|" * (len(head) - 2))
    details = []
    for (w, p) in sorted(data, key=lambda k: (k[0], PAIR_ORDER[k[1]])):
        cmds = data[(w, p)]
        med = {c: statistics.median(t) for c, t in cmds.items()}
        row = [workload_label(w, meta), PAIR_LABEL[p]]
        row += [fmt_s(med[c]) if c in med else "–" for c in commands]
        row += [f"{med[t] / med[r]:.2f}" if t in med and r in med else "–"
                for t in treecopies for r in refs]
        lines.append("| " + " | ".join(row) + " |")
        info = meta.get("workloads", {}).get(w, {})
        for c in sorted(cmds, key=order_key):
            t = cmds[c]
            m = med[c]
            sd = statistics.stdev(t) if len(t) > 1 else 0.0
            thr = ""
            if info:
                thr = f"{info['bytes'] / m / (1 << 20):,.0f} MiB/s"
                if info["files"] >= 1000:  # files/s says nothing about 4 big files
                    thr += f", {info['files'] / m:,.0f} files/s"
            c_cpu = cpu.get((w, p), {}).get(c)
            cpu_s = fmt_s(statistics.median(c_cpu)) if c_cpu else "–"
            details.append(f"| {w} | {PAIR_LABEL[p]} | {c} | {len(t)} | {fmt_s(m)} | "
                           f"{statistics.mean(t):.3f} ± {sd:.3f} s | {min(t):.3f} s | "
                           f"{max(t):.3f} s | {cpu_s} | {thr} |")
    lines += ["", "### Details", "",
              "CPU is user + system time: the median over runs in interleave mode; in batch "
              "mode, hyperfine's mean over the call's runs (it keeps no per-run CPU times).", "",
              "| Workload | Source → destination | Command | n | Median | Mean ± sd | Min | Max | CPU | Throughput (at median) |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += details
    lines += ["", f"Raw hyperfine JSON and markdown: `{os.path.abspath(results_dir)}`."]
    print("\n".join(lines))
    return 0


def main():
    ap = argparse.ArgumentParser(description="Summarise treecopy benchmark results.")
    ap.add_argument("results_dir", nargs="?", help="results dir (default: newest)")
    ap.add_argument("--write-meta", metavar="FILE",
                    help="record the machine description to FILE and exit (used by run.sh)")
    ap.add_argument("--path", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--workload", action="append", default=[], metavar="W=PATH")
    ap.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--peer", action="append", default=[], metavar="NAME=BINARY",
                    help="a peer copier's binary, for its version")
    ap.add_argument("--treecopy", default="target/release/treecopy")
    ap.add_argument("--treecopy-bin", help="the copy of the binary actually benchmarked")
    ap.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args = ap.parse_args()
    if args.write_meta:
        write_meta(args)
        return 0
    results_dir = args.results_dir
    if results_dir is None:
        dirs = sorted(glob.glob(os.path.join(DEFAULT_RESULTS_ROOT, "*/")))
        if not dirs:
            ap.error(f"no results under {DEFAULT_RESULTS_ROOT}; pass RESULTS_DIR")
        results_dir = dirs[-1]
    return report(results_dir)


if __name__ == "__main__":
    sys.exit(main())
