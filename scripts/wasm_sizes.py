#!/usr/bin/env python3
"""What makes the npm package's .wasm big: code bytes per crate and the largest functions, from the
name section of cargo's output (before wasm-bindgen/wasm-opt strip it), plus the section sizes.

    python3 scripts/wasm_sizes.py target/wasm32-unknown-unknown/wasm/taskloom_web.wasm [TOP]

No dependencies (twiggy is not needed). Crates are read from the mangled names: a generic
instantiation counts for the crate whose item it is (`alloc` for BTreeMap<K, V> code, `core` for
slice::sort), not for the crate that instantiated it. Function sizes are pre-wasm-opt.
"""
import collections
import re
import sys


def leb(b, i):
    r = s = 0
    while True:
        x = b[i]
        i += 1
        r |= (x & 0x7F) << s
        s += 7
        if x < 0x80:
            return r, i


def parse(path):
    d = open(path, "rb").read()
    if d[:4] != b"\0asm":
        sys.exit(f"{path}: not a wasm module")
    i, secs, n_imports, bodies, names = 8, [], 0, [], {}
    kinds = {1: "type", 2: "import", 3: "function", 4: "table", 5: "memory", 6: "global", 7: "export",
             8: "start", 9: "element", 10: "code", 11: "data", 12: "datacount"}
    while i < len(d):
        sid = d[i]
        i += 1
        n, i = leb(d, i)
        end = i + n
        if sid == 0:
            ln, j = leb(d, i)
            nm = d[j:j + ln].decode()
            secs.append(("custom " + nm, n))
            if nm == "name":
                j += ln
                while j < end:
                    sub = d[j]
                    sl, j = leb(d, j + 1)
                    se = j + sl
                    if sub == 1:
                        c, j = leb(d, j)
                        for _ in range(c):
                            idx, j = leb(d, j)
                            ln, j = leb(d, j)
                            names[idx] = d[j:j + ln].decode("utf8", "replace")
                            j += ln
                    j = se
        else:
            secs.append((kinds.get(sid, str(sid)), n))
            if sid == 2:
                c, j = leb(d, i)
                for _ in range(c):
                    for _ in range(2):
                        ln, j = leb(d, j)
                        j += ln
                    k = d[j]
                    j += 1
                    if k == 0:
                        _, j = leb(d, j)
                        n_imports += 1
                    elif k == 1:
                        j += 1
                        f, j = leb(d, j)
                        _, j = leb(d, j)
                        if f & 1:
                            _, j = leb(d, j)
                    elif k == 2:
                        f, j = leb(d, j)
                        _, j = leb(d, j)
                        if f & 1:
                            _, j = leb(d, j)
                    elif k == 3:
                        j += 2
                    else:
                        _, j = leb(d, j)
            elif sid == 10:
                c, j = leb(d, i)
                for _ in range(c):
                    ln, j = leb(d, j)
                    bodies.append(ln)
                    j += ln
        i = end
    funcs = [(b, names.get(n_imports + k, f"func{n_imports + k}")) for k, b in enumerate(bodies)]
    return secs, funcs


def readable(sym):
    """A legacy (_ZN) Rust symbol as a path, hash dropped; v0 (_R) symbols are left as they are."""
    if not sym.startswith("_ZN"):
        return sym
    i, parts = 3, []
    while i < len(sym) and sym[i].isdigit():
        j = i
        while sym[j].isdigit():
            j += 1
        ln = int(sym[i:j])
        parts.append(sym[j:j + ln])
        i = j + ln
    if parts and re.fullmatch(r"h[0-9a-f]{16}", parts[-1]):
        parts.pop()
    s = "::".join(parts)
    for a, b in (("$LT$", "<"), ("$GT$", ">"), ("$RF$", "&"), ("$BP$", "*"), ("$C$", ","), ("$u20$", " "),
                 ("$u7b$", "{"), ("$u7d$", "}"), ("$u5b$", "["), ("$u5d$", "]"), ("$LP$", "("), ("$RP$", ")"),
                 ("..", "::"), ("$u27$", "'")):
        s = s.replace(a, b)
    return s


def crate(sym):
    s = readable(sym)
    m = re.search(r"Cs[0-9a-zA-Z]+_\d*([a-z_][a-z0-9_]*)", s) if s.startswith("_R") else None
    if m:
        return m.group(1).lstrip("0123456789")
    s = re.sub(r"^_(?=[<(\[])", "", s)
    m = re.match(r"[<&*\s\[(]*(?:mut |dyn |const )*([A-Za-z_][A-Za-z0-9_]*)", s)
    return m.group(1) if m else "?"


def main():
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    secs, funcs = parse(path)
    print("sections:", ", ".join(f"{n} {s}" for n, s in secs if s > 1000))
    per = collections.Counter()
    for b, n in funcs:
        per[crate(n)] += b
    total = sum(b for b, _ in funcs)
    print(f"code: {total} bytes in {len(funcs)} functions; by crate:")
    for k, v in per.most_common(top):
        print(f"  {v:>9} {100 * v / total:5.1f}%  {k}")
    print("largest functions:")
    for b, n in sorted(funcs, reverse=True)[:top]:
        print(f"  {b:>9}  {readable(n)[:140]}")


if __name__ == "__main__":
    main()
