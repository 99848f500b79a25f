#!/usr/bin/env python3
"""Lines of each `fn` in Rust files, longest first (brace matching over the
source with strings and comments blanked; `#[cfg(test)] mod` blocks left out
unless --tests).  Usage: fn_lengths.py [--min N] [--tests] FILE...

    python3 loadtest/tools/fn_lengths.py --min 80 loadtest/src/*.rs
"""
import re, sys
args = sys.argv[1:]
mn = 0; tests = False
if '--min' in args:
    i = args.index('--min'); mn = int(args[i+1]); del args[i:i+2]
if '--tests' in args:
    args.remove('--tests'); tests = True

def strip(src):
    # replace string/char literals and comments with spaces, keeping newlines
    out = []; i = 0; n = len(src)
    while i < n:
        c = src[i]
        if src.startswith('//', i):
            j = src.find('\n', i); j = n if j < 0 else j
            out.append(' ' * (j - i)); i = j; continue
        if src.startswith('/*', i):
            j = src.find('*/', i); j = n if j < 0 else j + 2
            out.append(re.sub(r'[^\n]', ' ', src[i:j])); i = j; continue
        m = re.match(r'b?r(#*)"', src[i:i+10])
        if m and (i == 0 or not (src[i-1].isalnum() or src[i-1] == '_')):
            end = '"' + m.group(1)
            j = src.find(end, i + len(m.group(0))); j = n if j < 0 else j + len(end)
            out.append(re.sub(r'[^\n]', ' ', src[i:j])); i = j; continue
        if c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == '\\' else 1
            j += 1
            out.append(re.sub(r'[^\n]', ' ', src[i:j])); i = j; continue
        if c == "'":
            m = re.match(r"'(\\.[^']*|[^\\'])'", src[i:i+12])
            if m:
                out.append(' ' * len(m.group(0))); i += len(m.group(0)); continue
        out.append(c); i += 1
    return ''.join(out)

res = []
for f in args:
    s = strip(open(f).read())
    lines = s.split('\n')
    # find test module ranges
    skip = []
    if not tests:
        for m in re.finditer(r'#\[cfg\(test\)\]\s*mod\s+\w+\s*\{', s):
            depth = 0; k = m.end() - 1
            while k < len(s):
                if s[k] == '{': depth += 1
                elif s[k] == '}':
                    depth -= 1
                    if depth == 0: break
                k += 1
            skip.append((m.start(), k))
    for m in re.finditer(r'\bfn\s+(\w+)[^;{]*?\{', s, re.S):
        if any(a <= m.start() <= b for a, b in skip): continue
        # find the opening brace of the body: the first { after fn signature at depth 0 of parens/angles
        k = m.end() - 1; depth = 0
        while k < len(s):
            if s[k] == '{': depth += 1
            elif s[k] == '}':
                depth -= 1
                if depth == 0: break
            k += 1
        a = s.count('\n', 0, m.start()) + 1; b = s.count('\n', 0, k) + 1
        res.append((b - a + 1, f, m.group(1), a))
res.sort(reverse=True)
for n, f, name, a in res:
    if n > mn: print(f"{n:5d} {f}:{a} {name}")
print(f"# {sum(1 for r in res if r[0] > 80)} over 80, {sum(1 for r in res if r[0] > 150)} over 150, max {res[0][0] if res else 0}")
