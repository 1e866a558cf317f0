#!/usr/bin/env python3
"""Calls per request into the task-poll, task-spawn and malloc functions of a
callgrind dump pair (bench/callgrind.sh on DEBUG builds, where these keep
their names): (calls in the load dump - calls in the idle dump) / N.

usage: bench/callgrind-calls.py N hop-b.out.1 hop-b.out.2
(method: bench/results/latency-2026-12-05.md, hop-b-2026-12-06.md)"""
import re, sys
PATTERNS = {
    "task polls (tokio::runtime::task::raw::poll)": re.compile(r"tokio::runtime::task::raw::poll\b"),
    "tasks spawned (task::core::Cell<T,S>::new)": re.compile(r"tokio::runtime::task::core::Cell<.*>::new$"),
    "malloc": re.compile(r"^malloc$"),
}
def count(path):
    names = {}
    totals = {k: 0 for k in PATTERNS}
    cfn = None
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("cfn="):
                m = re.match(r"cfn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
                if m:
                    if m.group(2) is not None:
                        names[m.group(1)] = m.group(2)
                    cfn = names.get(m.group(1))
                continue
            if line.startswith("fn="):
                m = re.match(r"fn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
                if m and m.group(2) is not None:
                    names[m.group(1)] = m.group(2)
                continue
            if line.startswith("calls=") and cfn is not None:
                n = int(line.split("=")[1].split()[0])
                for k, p in PATTERNS.items():
                    if p.search(cfn):
                        totals[k] += n
    return totals
n = int(sys.argv[1])
l, i = count(sys.argv[2]), count(sys.argv[3])
for k in PATTERNS:
    print(f"{k}: {(l[k]-i[k])/n:.2f}  (load {l[k]}, idle {i[k]})")
