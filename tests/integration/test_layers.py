#!/usr/bin/env python3
"""The layers of the library, read from the code (issue 17; the map is in PLAN.md, "Layers").

src/ holds one folder per layer, from the bottom: core, format, storage, transport,
statistics, analysis; the CLI (src/cli) sits on top. Two graphs are checked:

- includes: a library file includes public headers (include/ckptscope/) whose implementation
  lives on its own layer or below, internal headers of its own folder or of a lower one
  ("core/byteorder.h"), and never a CLI or test header; the CLI includes public headers and its
  own, never a library-internal header;
- calls, from the compiled objects (nm over $CKS_BUILD/obj/src/<layer>/*.o): no library file
  calls a function defined on a higher layer, and no two library files call each other, directly
  or through others (no cycle between files).

Each check also proves it can fail: a planted violation is reported.
"""
import collections
import glob
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ckstest import ROOT, report, exit_code  # noqa: E402

LAYERS = ["core", "format", "storage", "transport", "statistics", "analysis"]
BUILD = os.environ.get("CKS_BUILD", os.path.join(ROOT, "build"))
# Public headers with no .c of their own name (constants, inline helpers, or a module of files
# sharing a prefix resolved below): the layer they belong to.
HEADER_ONLY = {"defaults.h": "core"}
INCLUDE_RE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


def library_files(root):
    """{path relative to root: layer} for every .c and .h of the library folders."""
    out = {}
    for layer in LAYERS:
        for f in glob.glob(os.path.join(root, "src", layer, "*.[ch]")):
            out[os.path.relpath(f, root)] = layer
    return out


def header_layer(root, header, files):
    """The layer of a public header: where its implementation lives (x.h -> x.c, else the
    files x_*.c that have no public header of their own), the lowest when it spans layers
    (cache.h: the store in storage, the HF_HOME reader in transport), or HEADER_ONLY."""
    stem = header[:-2]
    if header in HEADER_ONLY:
        return HEADER_ONLY[header]
    layers = {layer for path, layer in files.items() if os.path.basename(path) == stem + ".c"}
    if not layers:
        layers = {layer for path, layer in files.items()
                  if os.path.basename(path).startswith(stem + "_") and path.endswith(".c")
                  and not os.path.exists(os.path.join(root, "include", "ckptscope", os.path.basename(path)[:-2] + ".h"))}
    return min(layers, key=LAYERS.index) if layers else None


def include_violations(root):
    files = library_files(root)
    bad, n = [], 0
    for path, layer in sorted(files.items()):
        rank = LAYERS.index(layer)
        for inc in INCLUDE_RE.findall(open(os.path.join(root, path)).read()):
            n += 1
            if inc.startswith("ckptscope/"):
                if not os.path.exists(os.path.join(root, "include", inc)):
                    bad.append(f"{path} includes \"{inc}\", which is not a public header")
                    continue
                owner = header_layer(root, os.path.basename(inc), files)
                if owner is None:
                    bad.append(f"{path} includes \"{inc}\", whose layer is unknown (add it to HEADER_ONLY)")
                elif LAYERS.index(owner) > rank:
                    bad.append(f"{path} ({layer}) includes \"{inc}\" ({owner})")
            elif "/" not in inc:
                if not os.path.exists(os.path.join(root, os.path.dirname(path), inc)):
                    bad.append(f"{path} includes \"{inc}\", not a header of its own folder")
            else:
                top = inc.split("/")[0]
                if top not in LAYERS or not os.path.exists(os.path.join(root, "src", inc)):
                    bad.append(f"{path} includes \"{inc}\": not a library header (CLI, tests or elsewhere)")
                elif LAYERS.index(top) > rank:
                    bad.append(f"{path} ({layer}) includes \"{inc}\" ({top})")
    for path in sorted(glob.glob(os.path.join(root, "src", "cli", "*.[ch]"))):
        for inc in INCLUDE_RE.findall(open(path).read()):
            n += 1
            rel = os.path.relpath(path, root)
            if inc.startswith("ckptscope/") and os.path.exists(os.path.join(root, "include", inc)):
                continue
            if "/" not in inc and os.path.exists(os.path.join(os.path.dirname(path), inc)):
                continue
            bad.append(f"{rel} includes \"{inc}\": the CLI uses public headers and its own only")
    return n, bad


def call_graph(build, layers=LAYERS):
    """({file: layer}, {file: set of files it calls}) from the objects of these folders."""
    defs, uses, layer_of = {}, collections.defaultdict(set), {}
    for layer in layers:
        for obj in glob.glob(os.path.join(build, "obj", "src", layer, "*.o")):
            name = f"{layer}/{os.path.basename(obj)[:-2]}"
            if not os.path.exists(os.path.join(ROOT, "src", name + ".c")):
                continue  # an object left from a file since moved or removed
            layer_of[name] = layer
            out = subprocess.run(["nm", obj], capture_output=True, text=True, check=True).stdout
            for line in out.splitlines():
                p = line.split()
                if len(p) == 3 and p[1] in "TDBR":
                    defs[p[2]] = name
                elif len(p) == 2 and p[0] == "U":
                    uses[name].add(p[1])
    graph = {f: {defs[s] for s in uses[f] if s in defs and defs[s] != f} for f in layer_of}
    return layer_of, graph


def cycles(graph):
    """Strongly connected components of more than one file (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return out


def upward_calls(layer_of, graph):
    return [f"{a} ({layer_of[a]}) calls {b} ({layer_of[b]})" for a in sorted(graph) for b in sorted(graph[a])
            if LAYERS.index(layer_of[b]) > LAYERS.index(layer_of[a])]


def main():
    n, bad = include_violations(ROOT)
    report(f"includes follow the layers ({n} quoted includes read)", n > 100 and not bad,
           "; ".join(bad[:8]) if bad else f"only {n} includes read: the check read nothing")

    if not glob.glob(os.path.join(BUILD, "obj", "src", "*", "*.o")):
        report("calls follow the layers", False, f"no objects under {BUILD}/obj/src: build first")
        return exit_code()
    layer_of, graph = call_graph(BUILD)
    edges = sum(len(v) for v in graph.values())
    up = upward_calls(layer_of, graph)
    report(f"no file calls a higher layer ({len(layer_of)} files, {edges} file-to-file call edges)",
           len(layer_of) > 30 and edges > 50 and not up, "; ".join(up[:8]) if up else "the graph is empty")
    cyc = cycles(graph)
    report("no cycle between library files in the call graph", not cyc,
           "; ".join(" <-> ".join(c) for c in cyc))

    cli_of, cli_graph = call_graph(BUILD, ["cli"])
    cli_cyc = cycles(cli_graph)
    report(f"no cycle between the CLI's files ({len(cli_of)} files)", len(cli_of) > 10 and not cli_cyc,
           "; ".join(" <-> ".join(c) for c in cli_cyc) or "no CLI objects read")

    # the checks can fail: planted violations are found
    planted = dict(graph)
    planted["core/error"] = set(planted.get("core/error", set())) | {"analysis/compare"}
    planted["analysis/compare"] = set(planted.get("analysis/compare", set())) | {"core/error"}
    lo = dict(layer_of, **{"core/error": "core", "analysis/compare": "analysis"})
    report("a planted upward call and cycle are reported",
           any(u.startswith("core/error (core) calls analysis/compare") for u in upward_calls(lo, planted))
           and any("core/error" in c and "analysis/compare" in c for c in cycles(planted)), "not reported")
    tmp = os.path.join(BUILD, "layers-selftest")
    os.makedirs(os.path.join(tmp, "src", "core"), exist_ok=True)
    os.makedirs(os.path.join(tmp, "include", "ckptscope"), exist_ok=True)
    with open(os.path.join(tmp, "src", "core", "planted.c"), "w") as f:
        f.write('#include "cli/cli.h"\n#include "analysis/compare_internal.h"\n')
    _, pbad = include_violations(tmp)
    report("a planted CLI include and upward include are reported",
           any("cli/cli.h" in b for b in pbad) and any("compare_internal.h" in b for b in pbad), "; ".join(pbad))
    return exit_code()


if __name__ == "__main__":
    sys.exit(main())
