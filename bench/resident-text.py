#!/usr/bin/env python3
"""Resident text pages of a running binary, attributed to crates.

Which of the binary's text pages are in the process's memory
(/proc/PID/pagemap, present bit) and whose functions they hold (`nm -S -C`
of the binary, grouped by the first path segment of each symbol: the
crate, or `C:<name>` for C code such as aws-lc). An idle sidecar's RSS is
mostly these pages (bench/results/memory-2026-12-06.md).

usage: python3 bench/resident-text.py PID BINARY [TOP]   (as root)"""
import sys, struct, subprocess, re, collections, bisect
pid, binary = sys.argv[1], sys.argv[2]
top = int(sys.argv[3]) if len(sys.argv) > 3 else 40
# text mapping(s) of the binary
maps = []
for line in open(f"/proc/{pid}/maps"):
    parts = line.split()
    if len(parts) >= 6 and parts[5].endswith(binary.rsplit("/", 1)[-1]) and "x" in parts[1]:
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        off = int(parts[2], 16)
        maps.append((lo, hi, off))
# .text's address and file offset convert a file offset to an ELF address
sec = subprocess.run(["readelf", "-SW", binary], capture_output=True, text=True).stdout
m = re.search(r"\.text\s+PROGBITS\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)", sec)
text_addr, text_off = int(m.group(1), 16), int(m.group(2), 16)
syms = []
for line in subprocess.run(["nm", "-S", "-C", "--defined-only", "-n", binary], capture_output=True, text=True).stdout.splitlines():
    p = line.split(" ", 3)
    if len(p) == 4 and p[2] in "tTwW":
        syms.append((int(p[0], 16), int(p[1], 16), p[3]))
syms.sort()
addrs = [s[0] for s in syms]
def crate(name):
    n = name.lstrip("<&*( ").replace("dyn ", "").replace("mut ", "")
    mm = re.match(r"([A-Za-z_][A-Za-z0-9_]*)::", n)
    return mm.group(1) if mm else "C:" + n[:14]
res = collections.Counter(); total = collections.Counter()
pm = open(f"/proc/{pid}/pagemap", "rb")
resident_pages = 0
for lo, hi, off in maps:
    base = lo - off  # where file offset 0 would map
    for page in range(lo, hi, 4096):
        pm.seek((page // 4096) * 8)
        ent = struct.unpack("<Q", pm.read(8))[0]
        present = bool(ent >> 63)
        fileoff = page - base
        vaddr = fileoff + (text_addr - text_off)
        # symbols overlapping this page
        i = bisect.bisect_right(addrs, vaddr) - 1
        i = max(i, 0)
        end = vaddr + 4096
        seen = collections.Counter()
        while i < len(syms) and syms[i][0] < end:
            a, sz, nm = syms[i]
            ov = min(a + sz, end) - max(a, vaddr)
            if ov > 0:
                seen[crate(nm)] += ov
            i += 1
        for c, b in seen.items():
            total[c] += b
            if present:
                res[c] += b
        resident_pages += present
print(f"resident text pages: {resident_pages} = {resident_pages*4/1024:.2f} MiB")
print(f"{'crate':28} {'resident KiB':>12} {'text KiB':>9}")
for c, b in res.most_common(top):
    print(f"{c[:28]:28} {b/1024:12.0f} {total[c]/1024:9.0f}")
