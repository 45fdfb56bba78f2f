#!/usr/bin/env python3
"""Lists the longest functions in Rust sources (by lines from `fn` to its
closing brace), for keeping functions short: `scripts/long_functions.py src 80`
prints every function over 80 lines, longest first. Braces in strings and
comments are skipped roughly (good enough for this code base)."""
import re, sys, pathlib

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "src")
limit = int(sys.argv[2]) if len(sys.argv) > 2 else 80
FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(async\s+)?(unsafe\s+)?(const\s+)?fn\s+(\w+)")

def strip(line):
    line = re.sub(r'"(\\.|[^"\\])*"', '""', line)
    line = re.sub(r"'(\\.|[^'\\])'", "''", line)
    return line.split("//")[0]

found = []
for path in sorted(root.rglob("*.rs")):
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FN.match(lines[i])
        if not m:
            i += 1
            continue
        depth, opened, j = 0, False, i
        while j < len(lines):
            code = strip(lines[j])
            if not opened and ";" in code and "{" not in code:
                break  # a declaration without a body
            depth += code.count("{") - code.count("}")
            opened = opened or "{" in code
            if opened and depth <= 0:
                break
            j += 1
        if opened:
            found.append((j - i + 1, f"{path}:{i + 1}", m.group(6)))
        i += 1
found.sort(reverse=True)
over = [f for f in found if f[0] > limit]
for n, where, name in over:
    print(f"{n:5} {where} {name}")
print(f"{len(over)} functions over {limit} lines")
