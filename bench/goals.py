#!/usr/bin/env python3
"""bench/goals.py — the issue-15 goals of one `make bench` run, gathered in one table at the top
of bench/RESULTS.md.

Each benchmark writes its own report with its own goal rows (bench/io/RESULTS.md: remote hash
and scattered ranges; bench/RESULTS.md, by bench/scale: the T2 audit and the default compare;
bench/verify/RESULTS.md: verify --against at scale). This script copies those rows, as they are,
into one section of bench/RESULTS.md (replacing the section a previous run left), and says for
each report when it was written, so a row from an older run cannot pass for this one's.
Run by bench/run.sh after every benchmark; `--check` only prints the table.
"""
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, "bench", "RESULTS.md")
SOURCES = [  # (report, which of its table rows are goals)
    (os.path.join(ROOT, "bench", "io", "RESULTS.md"), re.compile(r"^\| (`hash`|same run|500 scattered)")),
    (MAIN, re.compile(r"^\| issue 15: ")),
    (os.path.join(ROOT, "bench", "verify", "RESULTS.md"), re.compile(r"^\| .*(goal|fingerprints)", re.I)),
]
BEGIN, END = "<!-- goals:begin -->", "<!-- goals:end -->"


def rows_of(path, pattern):
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None, []
    text = text.split(END, 1)[-1] if path == MAIN else text  # never our own copied rows
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(os.path.getmtime(path)))
    lines = text.splitlines()
    rows, header = [], None
    for i, line in enumerate(lines):
        if line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = (line, lines[i + 1])  # the goal rows below keep their own table's columns
        elif pattern.search(line):
            if header and (not rows or rows[-1][0] != header):
                rows.append((header, []))
            if rows:
                rows[-1][1].append(line)
    return stamp, rows


def section():
    out = [BEGIN, "## Issue 15 goals (gathered from this run's reports by bench/goals.py)", ""]
    for path, pattern in SOURCES:
        stamp, rows = rows_of(path, pattern)
        rel = os.path.relpath(path, ROOT)
        if stamp is None:
            out.append("- `%s`: not written (that benchmark did not run)" % rel)
            continue
        out.append("From `%s` (written %s):" % (rel, stamp))
        out.append("")
        for (head, sep), goal_rows in rows:
            out.extend([head, sep] + goal_rows + [""])
        if not rows:
            out.append("(no goal rows found)")
        out.append("")
    out.append(END)
    return "\n".join(out) + "\n"


def main():
    text = section()
    if "--check" in sys.argv:
        print(text)
        return 0
    try:
        with open(MAIN) as f:
            body = f.read()
    except OSError:
        body = "# Benchmarks\n"
    if BEGIN in body and END in body:
        body = body.split(BEGIN, 1)[0] + body.split(END, 1)[1].lstrip("\n")
    lines = body.splitlines(keepends=True)
    # after the title and its first paragraph
    at = 1
    while at < len(lines) and lines[at].strip():
        at += 1
    while at < len(lines) and not lines[at].strip():
        at += 1
    # the title's paragraph may be the generator line: put the section after it
    while at < len(lines) and lines[at].strip() and not lines[at].startswith("#"):
        at += 1
    new = "".join(lines[:at]) + ("\n" if at and lines[at - 1].strip() else "") + text + "\n" + "".join(lines[at:])
    with open(MAIN + ".tmp", "w") as f:
        f.write(new)
    os.replace(MAIN + ".tmp", MAIN)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
