#!/usr/bin/env python3
"""Finds import cycles between the modules of each crate in the workspace.

A module is a file (`src/api/sign.rs` is `api::sign`). An edge A -> B is a `crate::`,
`super::` or `self::` path in A's non-test code (everything before its first
`#[cfg(test)]`) that names B or something inside B. Edges between a module and its own
ancestors are left out: a parent declares its children and a child may use what its
parent defines; what must not happen is two modules that are not nested leaning on each
other (`api::routes` -> `api::sign` -> `api::routes`), which makes neither understandable
or testable alone. Exits 1 and prints each cycle when there is one.

    scripts/module-cycles.py [CRATE_SRC_DIR ...]   default: src and crates/*/src
"""

import glob
import os
import re
import sys


def modules(src):
    """Maps module path (tuple) -> file, for every .rs file under src."""
    out = {}
    for path in glob.glob(os.path.join(src, "**", "*.rs"), recursive=True):
        rel = os.path.relpath(path, src)[:-3].split(os.sep)
        if rel[-1] in ("lib", "main") and len(rel) == 1:
            rel = []
        elif rel[-1] == "mod":
            rel = rel[:-1]
        if "bin" in rel[:1]:
            continue
        out[tuple(rel)] = path
    return out


USE_RE = re.compile(r"\buse\s+([^;]+);", re.S)
PATH_RE = re.compile(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")


def expand(tree):
    """Expands a use tree (`a::{b, c::{d, e}}`) into its paths."""
    tree = re.sub(r"\s+", "", tree)
    depth, start = 0, None
    for i, ch in enumerate(tree):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                prefix, inner, rest = tree[:start], tree[start + 1 : i], tree[i + 1 :]
                parts, d, cur = [], 0, ""
                for c in inner:
                    if c == "," and d == 0:
                        parts.append(cur)
                        cur = ""
                        continue
                    d += c == "{"
                    d -= c == "}"
                    cur += c
                parts.append(cur)
                out = []
                for p in parts:
                    if not p:
                        continue
                    out.extend(expand(prefix + p + rest))
                return out
    return [re.sub(r"\bas\b.*$", "", tree).replace("::self", "")]


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def resolve(path, here, known):
    parts = path.split("::")
    if parts[0] == "crate":
        base, rest = [], parts[1:]
    else:
        base = list(here)
        rest = parts
        while rest and rest[0] in ("super", "self"):
            if rest[0] == "super":
                base = base[:-1]
            rest = rest[1:]
    full = base + rest
    for n in range(len(full), -1, -1):
        if tuple(full[:n]) in known:
            return tuple(full[:n])
    return None


def cycles(src):
    known = modules(src)
    edges = {m: set() for m in known}
    for mod, path in known.items():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        text = text.split("#[cfg(test)]", 1)[0]
        text = strip_comments(text)
        paths = []
        for m in USE_RE.finditer(text):
            paths.extend(p for p in expand(m.group(1)) if p.split("::")[0] in ("crate", "super", "self"))
        paths.extend(PATH_RE.findall(text))
        for p in paths:
            target = resolve(p, mod, known)
            if target is None or target == mod:
                continue
            if target == mod[: len(target)] or mod == target[: len(mod)]:
                continue  # ancestor or descendant
            edges[mod].add(target)
    # Tarjan's strongly connected components.
    index, low, on, stack, sccs, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    name = lambda m: "::".join(m) or "crate"
    return [
        sorted((name(a), sorted(name(b) for b in edges[a] if b in comp)) for a in comp)
        for comp in sccs
    ], len(known)


def main():
    dirs = sys.argv[1:] or ["src"] + sorted(glob.glob("crates/*/src"))
    bad = 0
    for src in dirs:
        found, count = cycles(src)
        if not found:
            print(f"ok: {src}: {count} modules, no import cycle")
        for comp in found:
            bad += 1
            print(f"CYCLE in {src}:")
            for a, bs in comp:
                print(f"  {a} -> {', '.join(bs)}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
