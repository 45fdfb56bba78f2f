#!/usr/bin/env python3
"""Check relative links and #anchors across README.md, ARCHITECTURE.md and docs/*.md.
GitHub anchor rules: lowercase, drop everything but letters, digits, spaces,
hyphens and underscores, spaces to hyphens; duplicates get -1, -2."""
import re, sys, os, glob
root = sys.argv[1] if len(sys.argv) > 1 else '.'
allowed_missing = set(sys.argv[2:])  # files known to be written elsewhere
files = [os.path.join(root, f) for f in ('README.md', 'ARCHITECTURE.md')] + sorted(glob.glob(os.path.join(root, 'docs', '*.md')))

def strip_code(text):
    text = re.sub(r'```.*?```', '', text, flags=re.S)
    return text

def anchors(path):
    out, seen = set(), {}
    for line in strip_code(open(path).read()).splitlines():
        m = re.match(r'(#{1,6})\s+(.*?)\s*#*\s*$', line)
        if not m: continue
        t = m.group(2)
        t = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', t)      # links -> text
        t = t.replace('`', '').replace('*', '')
        s = t.strip().lower()
        s = re.sub(r'[^\w\- ]', '', s)
        s = s.replace(' ', '-')
        n = seen.get(s, 0); seen[s] = n + 1
        out.add(s if n == 0 else f'{s}-{n}')
    return out

bad = 0; count = 0
cache = {}
for f in files:
    text = strip_code(open(f).read())
    text = re.sub(r'`[^`\n]*`', '', text)  # inline code
    for m in re.finditer(r'\]\(([^)\s]+)\)', text):
        target = m.group(1)
        if re.match(r'[a-z]+://', target) or target.startswith('mailto:'): continue
        count += 1
        path, _, frag = target.partition('#')
        dest = os.path.normpath(os.path.join(os.path.dirname(f), path)) if path else f
        rel = os.path.relpath(dest, root)
        if not os.path.exists(dest):
            if rel in allowed_missing:
                print(f'note: {os.path.relpath(f, root)} -> {target} (missing here, expected from another branch)')
                continue
            print(f'BROKEN: {os.path.relpath(f, root)} -> {target} (no file {rel})'); bad += 1; continue
        if frag:
            if not dest.endswith('.md'):
                print(f'BROKEN: {os.path.relpath(f, root)} -> {target} (anchor on a non-markdown file)'); bad += 1; continue
            a = cache.setdefault(dest, anchors(dest))
            if frag not in a:
                print(f'BROKEN: {os.path.relpath(f, root)} -> {target} (no heading #{frag} in {rel})'); bad += 1
print(f'{count} relative links checked, {bad} broken')
sys.exit(1 if bad else 0)
