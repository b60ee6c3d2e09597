#!/usr/bin/env python3
"""Prints COUNT distinct addresses (hex, sorted) inside FILE's functions, from
its symbol table (`nm -S`), with a fixed seed: the same list every run.
Usage: bench/pick_addresses.py FILE COUNT"""
import random
import subprocess
import sys

path, count = sys.argv[1], int(sys.argv[2])
nm = subprocess.run(["nm", "--defined-only", "-S", path], capture_output=True, text=True).stdout
funcs = []
for line in nm.splitlines():
    f = line.split()
    if len(f) >= 4 and f[2] in "tTwW" and int(f[1], 16) > 0:
        funcs.append((int(f[0], 16), int(f[1], 16)))
rng = random.Random(42)
picked = set()
while len(picked) < count:
    start, size = rng.choice(funcs)
    picked.add(start + rng.randrange(size))
for a in sorted(picked):
    print(hex(a))
