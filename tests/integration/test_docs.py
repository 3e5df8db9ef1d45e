#!/usr/bin/python3
"""The user's documentation cannot drift (issue 16): every command transcript in README.md and
docs/*.md is rerun on the demo's models and compared with the page (scripts/transcripts.py;
only ports, commit ids, times, dates and temporary paths may differ), every link between the
pages resolves, and the README keeps what a newcomer needs first."""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ckstest import ROOT, failures, report  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import transcripts  # noqa: E402


def links_resolve():
    pages = ["README.md"] + ["docs/" + n for n in sorted(os.listdir(os.path.join(ROOT, "docs"))) if n.endswith(".md")]
    for rel in pages:
        text = open(os.path.join(ROOT, rel)).read()
        bad = []
        for target in re.findall(r"\]\(([^)#]+)(?:#([^)]*))?\)", text):
            path, anchor = target
            if path.startswith(("http://", "https://", "mailto:")):
                continue
            full = os.path.normpath(os.path.join(ROOT, os.path.dirname(rel), path))
            if not os.path.exists(full):
                bad.append(path)
            elif anchor and full.endswith(".md"):
                heads = [re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
                         for h in re.findall(r"^#+ (.*)$", open(full).read(), re.M)]
                if anchor not in heads:
                    bad.append(path + "#" + anchor)
        report("links in %s resolve" % rel, not bad, ", ".join(bad))


def readme_first_hour():
    text = open(os.path.join(ROOT, "README.md")).read()
    lines = text.count("\n")
    ok = "make demo" in text and "make test" in text and "## Exit codes" in text and "docs/" in text
    ok = ok and all(("docs/%s.md" % c) in text for c in ("ls", "hash", "diff", "fetch", "compare", "fingerprint",
                                                        "verify", "cache", "json", "statistics"))
    report("README: the two commands, exit codes, a page per command", ok, "")
    # a user's README: the deep material lives in docs/ (the old one was 488 lines)
    report("README stays short (%d lines)" % lines, lines <= 200, "%d lines" % lines)


def main():
    build = os.path.relpath(os.environ.get("CKS_BUILD", os.path.join(ROOT, "build")), ROOT)
    links_resolve()
    readme_first_hour()
    transcripts.check(build, report)
    return 1 if failures() else 0


if __name__ == "__main__":
    sys.exit(main())
