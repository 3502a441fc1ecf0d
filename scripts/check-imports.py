#!/usr/bin/env python3
"""Fails when the files of a crate import each other in a circle, or a
module file grows past a size limit (docs/architecture.md, "Rules").

An edge A -> B means a file A names an item defined in file B: in a `use`
declaration or an inline path (`crate::x::y`, `super::z`, `child::w`).
Re-exports (`pub use`, `pub(crate) use`) are API surface, not dependencies: a path that lands
on a re-export is followed to the file that defines the item, and a
`pub use` declaration adds no edge of its own. Inline test modules
(`#[cfg(test)] mod tests { ... }`) and `tests.rs` files are left out: tests
may reach anywhere. Imports between crates are the compiler's to check
(Cargo.toml dependencies cannot form a circle).

Usage: scripts/check-imports.py [--max-lines N] [CRATE_SRC_DIR ...]
With no directory, checks every library crate of the workspace.
"""

import os
import re
import sys

CRATES = [
    "state/src",
    "proto/src",
    "engine/kafka/src",
    "engine/src",
    "engine/query/src",
    "src",
    "cli/src",
]
MAX_LINES = 600


def modules(src):
    """Module path (tuple) -> file, for every .rs file under src."""
    out = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel[-1] in ("lib", "main") and len(rel) == 1:
                mod = ()
            elif rel[-1] == "mod":
                mod = tuple(rel[:-1])
            else:
                mod = tuple(rel)
            out[mod] = path
    return out


def strip(text):
    """Source without comments, string literals and inline test modules."""
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'r#*"(?:.|\n)*?"#*', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    m = re.search(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text)
    if m:
        # Inline test modules sit at the end of a file.
        text = text[: m.start()]
    return text


def use_trees(text):
    """Each `use` declaration: (is_pub, [path segments lists])."""
    out = []
    for m in re.finditer(r"(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);", text):
        is_pub = bool(m.group(1))
        out.append((is_pub, expand(m.group(2).replace("\n", " "))))
    return out


def expand(tree):
    """`a::{b, c::{d, e}}` -> [[a, b], [a, c, d], [a, c, e]]."""
    tree = tree.strip()
    depth = 0
    for i, ch in enumerate(tree):
        if ch == "{":
            if depth == 0:
                prefix = [s for s in tree[:i].split("::") if s.strip()]
                inner = tree[i + 1 : tree.rindex("}")]
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
                res = []
                for p in parts:
                    if p.strip():
                        for sub in expand(p):
                            res.append([s.strip() for s in prefix] + sub)
                return res
            depth += 1
    seg = tree.split(" as ")[0].strip()
    return [[s.strip() for s in seg.split("::") if s.strip()]]


def inline_paths(text):
    for m in re.finditer(r"\b((?:crate|super|self)(?:::\w+)+)", text):
        yield m.group(1).split("::")


class Crate:
    def __init__(self, src):
        self.src = src
        self.mods = modules(src)
        self.files = {f: m for m, f in self.mods.items()}
        self.text = {f: strip(open(f, encoding="utf-8").read()) for f in self.files}
        # Re-exports: module -> name -> absolute path of what it names.
        self.reexports = {}
        for f, mod in self.files.items():
            for is_pub, paths in use_trees(self.text[f]):
                if not is_pub:
                    continue
                for p in paths:
                    a = self.absolute(mod, p)
                    if a:
                        self.reexports.setdefault(mod, {})[p[-1]] = a

    def absolute(self, mod, path):
        """A path as seen from module `mod`, made absolute (within the
        crate), or None for another crate's."""
        path = list(path)
        if not path:
            return None
        if path[0] == "crate":
            return tuple(path[1:])
        base = list(mod)
        if path[0] == "self":
            path = path[1:]
        elif path[0] == "super":
            while path and path[0] == "super":
                base = base[:-1]
                path = path[1:]
        elif tuple(base + [path[0]]) in self.mods:
            pass  # a child module, named relatively
        else:
            return None
        return tuple(base + path)

    def resolve(self, path, depth=0):
        """The file defining what an absolute path names."""
        for n in range(len(path), -1, -1):
            mod = path[:n]
            if mod in self.mods:
                rest = path[n:]
                if rest and depth < 8:
                    target = self.reexports.get(mod, {}).get(rest[0])
                    if target and target != path:
                        return self.resolve(target + tuple(rest[1:]), depth + 1)
                return self.mods[mod]
        return None

    def edges(self):
        out = {f: set() for f in self.files}
        for f, mod in self.files.items():
            if os.path.basename(f) == "tests.rs":
                continue
            text = self.text[f]
            paths = [p for is_pub, ps in use_trees(text) if not is_pub for p in ps]
            no_use = re.sub(r"(pub(?:\([^)]*\))?\s+)?use\s+[^;]+;", "", text)
            paths += list(inline_paths(no_use))
            for p in paths:
                a = self.absolute(mod, p)
                if a is None:
                    continue
                g = self.resolve(a)
                if g and g != f and os.path.basename(g) != "tests.rs":
                    out[f].add(g)
        return out


def cycles(graph):
    """Strongly connected components with more than one file (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def code_lines(path):
    """Lines of a file before its inline test module."""
    lines = open(path, encoding="utf-8").read().split("\n")
    for i, line in enumerate(lines):
        if line.startswith("#[cfg(test)]") and i + 1 < len(lines) and lines[i + 1].startswith("mod "):
            return i
    return len(lines)


def main(argv):
    limit = MAX_LINES
    if len(argv) >= 2 and argv[0] == "--max-lines":
        limit = int(argv[1])
        argv = argv[2:]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dirs = argv or [os.path.join(root, d) for d in CRATES]
    failed = False
    files = 0
    for src in dirs:
        crate = Crate(src)
        files += len(crate.files)
        for comp in cycles(crate.edges()):
            failed = True
            rel = [os.path.relpath(f, root) for f in comp]
            print(f"check-imports: files importing each other in a circle: {', '.join(rel)}")
        for f in crate.files:
            n = code_lines(f)
            if n > limit:
                failed = True
                print(f"check-imports: {os.path.relpath(f, root)} has {n} lines before its tests (limit {limit}): split it")
    if failed:
        return 1
    print(f"check-imports: {files} files in {len(dirs)} crates, no import circle, none over {limit} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
