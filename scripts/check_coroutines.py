#!/usr/bin/env python3
"""Finds coroutine patterns that g++ 12.2 miscompiles; --fix rewrites the first kind.

1. `if (co_await X)` / `if (!co_await X)`: the coroutine body never runs (GCC PR c++/106188
   family). The init-statement form compiles correctly: `if (bool ok = co_await X; !ok)`.
2. `co_await Awaiter{...}`: a braced temporary awaiter with a destructor is destroyed early.
   Name it: `Awaiter a{...}; co_await a;`.
The test suite runs this in check mode; it exits 1 when it finds either pattern.
"""
import os
import re
import sys

def scan(text):
    out, i, found = [], 0, []
    for m in re.finditer(r'\bif \(', text):
        start = m.end()
        depth, j = 1, start
        while j < len(text) and depth:
            depth += {'(': 1, ')': -1}.get(text[j], 0)
            j += 1
        cond = text[start:j - 1]
        if 'co_await' not in cond or ';' in cond:
            continue
        line = text.count('\n', 0, m.start()) + 1
        found.append((line, m.start(), start, j - 1, cond))
    return found

def fix(text):
    for line, s, cs, ce, cond in reversed(scan(text)):
        c = cond.strip()
        if c.startswith('!co_await '):
            new = 'bool ok = co_await ' + c[len('!co_await '):] + '; !ok'
        elif c.startswith('co_await '):
            new = 'bool ok = co_await ' + c[len('co_await '):] + '; ok'
        else:
            continue
        text = text[:cs] + new + text[ce:]
    return text

def main():
    do_fix = '--fix' in sys.argv
    bad = 0
    paths = []
    for a in [a for a in sys.argv[1:] if a != '--fix']:
        if os.path.isdir(a):
            for root, _, files in os.walk(a):
                paths += [os.path.join(root, f) for f in sorted(files) if f.endswith(('.cc', '.h'))]
        else:
            paths.append(a)
    for path in paths:
        text = open(path).read()
        if do_fix:
            new = fix(text)
            if new != text:
                open(path, 'w').write(new)
            text = new
        for line, *_, cond in scan(text):
            print(f'{path}:{line}: co_await in an if condition (g++ 12 miscompiles it): {cond.strip()}')
            bad += 1
        for m in re.finditer(r'co_await\s+[A-Za-z_][\w:]*\{', text):
            line = text.count('\n', 0, m.start()) + 1
            print(f'{path}:{line}: co_await of a braced temporary (g++ 12 miscompiles it)')
            bad += 1
    return 1 if bad else 0

if __name__ == '__main__':
    sys.exit(main())
