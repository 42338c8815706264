#!/usr/bin/env python3
"""Finds import cycles between the modules of each crate in the workspace.

A module is a file (`src/api/sign.rs` is `api::sign`). An edge A -> B is a `crate::`,
`super::` or `self::` path in A's non-test code (everything before its first
`#[cfg(test)]`) that names B or something inside B. Edges between a module and its own
ancestors are left out: a parent declares its children and a child may use what its
parent defines. What must not happen is two modules that are not nested leaning on each
other, which makes neither understandable or testable alone. Two checks:

- between files: `api::routes` -> `api::sign` -> `api::routes`;
- between subtrees: each edge also counts between the two siblings, under the deepest
  parent its ends share, whose subtrees hold them (`config::validate` -> `logging` counts
  as `config` -> `logging`). So `config::validate` -> `logging` together with `logging`
  -> `config` is a cycle between the top-level modules `config` and `logging`, though no
  two files form one.

Exits 1 and prints each cycle, with the file-level edges behind it, when there is one.

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


def edges(src):
    """Maps each module to the modules it uses that are neither itself nor nested with it."""
    known = modules(src)
    out = {m: set() for m in known}
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
            out[mod].add(target)
    return out


def siblings(a, b):
    """The siblings, under the deepest parent a and b share, whose subtrees hold a and b."""
    k = 0
    while a[k] == b[k]:
        k += 1
    return a[: k + 1], b[: k + 1]


def components(graph):
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index, low, on, stack, sccs, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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
                sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sccs


def name(m):
    return "::".join(m) or "crate"


def cycles(src):
    """Returns (cycles, module count). A cycle is a list of (module, [(next, [why])])."""
    files = edges(src)
    found = []
    for comp in components(files):
        found.append([(a, [(b, []) for b in sorted(files[a]) if b in comp]) for a in comp])
    # The same edges between the sibling subtrees that hold their ends.
    trees, why = {}, {}
    for a, targets in files.items():
        for b in targets:
            sa, sb = siblings(a, b)
            trees.setdefault(sa, set()).add(sb)
            why.setdefault((sa, sb), set()).add((a, b))
    file_cycles = [[a for a, _ in c] for c in found]
    for comp in components(trees):
        if comp in file_cycles:
            continue  # the same modules, already reported as a cycle between files
        found.append(
            [
                (
                    a,
                    [
                        (b, [f"{name(x)} uses {name(y)}" for x, y in sorted(why[(a, b)])])
                        for b in sorted(trees[a])
                        if b in comp
                    ],
                )
                for a in comp
            ]
        )
    return found, len(files)


def main():
    dirs = sys.argv[1:] or ["src"] + sorted(glob.glob("crates/*/src"))
    bad = 0
    for src in dirs:
        found, count = cycles(src)
        if not found:
            print(f"ok: {src}: {count} modules, no import cycle")
        for comp in found:
            bad += 1
            print(f"CYCLE in {src}: {', '.join(name(a) for a, _ in comp)}")
            for a, bs in comp:
                for b, reasons in bs:
                    because = f" ({'; '.join(reasons)})" if reasons else ""
                    print(f"  {name(a)} -> {name(b)}{because}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
