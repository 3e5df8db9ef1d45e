#!/usr/bin/python3
"""Repositories for the fake Hub: a small on-disk store the server reads.

Library:
    add_repo(root, repo_id, files, branch="main", tags=(), visibility="public",
             tokens=(), parent=None, kind="model", renamed_from=None, ...) -> commit sha
    add_ref(root, repo_id, ref, commit, kind="model")
    add_token(root, token)

CLI:
    hubrepo.py add --root DIR --repo org/name [--branch B] [--tag T]... [--visibility V]
                   [--token T]... [--kind model|dataset] [--renamed-from old/name]
                   [--parent SHA] [--inherit] path_in_repo=local_file ...
    hubrepo.py ref --root DIR --repo org/name --ref REF --commit SHA
    hubrepo.py token --root DIR --token T
    hubrepo.py show --root DIR

Layout of ROOT:
    state.json       every repo, ref and commit (rewritten atomically; the server rereads it
                     whenever its mtime/size changes)
    blobs/<sha256>   contents given as bytes (files given as paths are used in place)
    .lock            flock for read-modify-write by concurrent writers
    hashcache.json   (path, size, mtime, inode) -> digests, so re-adding a big file is cheap
"""

import argparse
import errno
import fcntl
import hashlib
import json
import os
import sys
import time

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf")
LFS_THRESHOLD = 10 * 1000 * 1000  # "larger than 10 MB"
KINDS = ("model", "dataset")
VISIBILITIES = ("public", "private", "gated")
HEX = set("0123456789abcdef")


def is_lfs(path, size):
    return path.endswith(LFS_SUFFIXES) or size > LFS_THRESHOLD


def git_blob_sha1_bytes(data):
    h = hashlib.sha1(b"blob %d\0" % len(data))
    h.update(data)
    return h.hexdigest()


def lfs_pointer(sha256, size):
    return ("version https://git-lfs.github.com/spec/v1\n"
            "oid sha256:%s\nsize %d\n" % (sha256, size)).encode()


def repo_key(kind, repo_id):
    return "%s:%s" % (kind, repo_id)


def is_commit_sha(s):
    return isinstance(s, str) and len(s) == 40 and set(s) <= HEX


def _state_path(root):
    return os.path.join(root, "state.json")


def empty_state():
    return {"version": 1, "repos": {}, "renames": {}, "tokens": []}


def load_state(root):
    try:
        with open(_state_path(root), "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return empty_state()


def _write_json_atomic(path, obj):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _Locked:
    """flock on ROOT/.lock; yields the state, writes it back on success."""

    def __init__(self, root):
        self.root = root

    def __enter__(self):
        os.makedirs(self.root, exist_ok=True)
        self.fd = os.open(os.path.join(self.root, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        self.state = load_state(self.root)
        return self.state

    def __exit__(self, et, ev, tb):
        try:
            if et is None:
                _write_json_atomic(_state_path(self.root), self.state)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
        return False


_ZEROS = memoryview(bytes(8 << 20))


def _read_sparse(path, size):
    """The file's bytes in chunks; holes (SEEK_HOLE) come from a zero buffer instead of read(),
    which makes hashing the multi-GB sparse files of tests several times faster."""
    with open(path, "rb") as f:
        fd = f.fileno()
        pos = 0
        while pos < size:
            try:
                data = min(os.lseek(fd, pos, os.SEEK_DATA), size)
            except OSError as e:
                # ENXIO: nothing but a hole up to the end; anything else: no hole support.
                data = size if e.errno == errno.ENXIO else pos
            while pos < data:
                n = min(len(_ZEROS), data - pos)
                yield _ZEROS[:n]
                pos += n
            if pos >= size:
                break
            try:
                hole = min(os.lseek(fd, pos, os.SEEK_HOLE), size)
            except OSError:
                hole = size
            if hole <= pos:
                hole = size
            f.seek(pos)
            while pos < hole:
                chunk = f.read(min(8 << 20, hole - pos))
                if not chunk:
                    return
                yield chunk
                pos += len(chunk)


def _hash_file(root, path, need_sha1):
    """sha256 (and git blob sha1 if needed) of a local file, cached by identity."""
    st = os.stat(path)
    key = "%s|%d|%d|%d|%d" % (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
    cache_path = os.path.join(root, "hashcache.json")
    try:
        with open(cache_path, "r", encoding="utf-8") as f:
            cache = json.load(f)
    except (FileNotFoundError, ValueError):
        cache = {}
    hit = cache.get(key)
    if hit and (hit.get("sha1") or not need_sha1):
        return hit["sha256"], hit.get("sha1"), st.st_size
    h256 = hashlib.sha256()
    h1 = hashlib.sha1(b"blob %d\0" % st.st_size) if need_sha1 else None
    for chunk in _read_sparse(path, st.st_size):
        h256.update(chunk)
        if h1:
            h1.update(chunk)
    cache[key] = {"sha256": h256.hexdigest(), "sha1": h1.hexdigest() if h1 else None}
    # Another writer may have added entries meanwhile; losing one only costs a rehash.
    _write_json_atomic(cache_path, cache)
    return cache[key]["sha256"], cache[key]["sha1"], st.st_size


def _file_entry(root, path_in_repo, content):
    if isinstance(content, (bytes, bytearray, memoryview)):
        data = bytes(content)
        sha256 = hashlib.sha256(data).hexdigest()
        blobs = os.path.join(root, "blobs")
        os.makedirs(blobs, exist_ok=True)
        local = os.path.join(blobs, sha256)
        if not os.path.exists(local):
            tmp = "%s.tmp.%d" % (local, os.getpid())
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, local)
        sha1 = git_blob_sha1_bytes(data)
        size = len(data)
    elif isinstance(content, dict):
        # {"path": local, "sha256": known}: trusted, not rehashed (multi-GB LFS files in tests).
        local = os.path.abspath(os.fspath(content["path"]))
        size = os.stat(local).st_size
        if not is_lfs(path_in_repo, size):
            return _file_entry(root, path_in_repo, local)
        sha256, sha1 = content["sha256"].lower(), None
    elif isinstance(content, (str, os.PathLike)):
        local = os.path.abspath(os.fspath(content))
        size = os.stat(local).st_size
        # An LFS file's git object is its pointer: its content sha1 is never needed.
        sha256, sha1, size = _hash_file(root, local, need_sha1=not is_lfs(path_in_repo, size))
    else:
        raise TypeError("file %r: content must be bytes, a local path or {path, sha256}" % path_in_repo)
    lfs = is_lfs(path_in_repo, size)
    entry = {"local": local, "size": size, "sha256": sha256, "lfs": lfs}
    if lfs:
        # A git-LFS file's git object is its pointer file.
        entry["blob_id"] = git_blob_sha1_bytes(lfs_pointer(sha256, size))
        entry["pointer_size"] = len(lfs_pointer(sha256, size))
    else:
        entry["blob_id"] = sha1
    return entry


def _check_repo_path(p):
    if not p or p.startswith("/") or p.endswith("/") or any(s in ("", ".", "..") for s in p.split("/")):
        raise ValueError("bad path in repo: %r" % p)


def _new_commit_sha(repo_id, branch, parent, files):
    h = hashlib.sha1()
    h.update(json.dumps([repo_id, branch, parent, sorted((k, v["blob_id"]) for k, v in files.items()),
                         time.time(), os.urandom(8).hex()]).encode())
    return h.hexdigest()


def _find_repo(state, kind, repo_id):
    repo = state["repos"].get(repo_key(kind, repo_id))
    if repo is None:
        raise KeyError("no %s repo %s" % (kind, repo_id))
    return repo


def resolve_rev(repo, rev):
    """Commit sha for a revision (40-hex, unique prefix >= 7, branch, tag, refs/...), or None."""
    refs = repo["refs"]
    commits = repo["commits"]
    if rev in commits:
        return rev
    for name in (rev, "refs/heads/" + rev, "refs/tags/" + rev):
        if name in refs:
            return refs[name]
    if rev.startswith("refs/") and rev in refs:
        return refs[rev]
    if 7 <= len(rev) < 40 and set(rev) <= HEX:
        hits = [c for c in commits if c.startswith(rev)]
        if len(hits) == 1:
            return hits[0]
    return None


def add_repo(root, repo_id, files, branch="main", tags=(), visibility=None, tokens=(),
             parent=None, kind="model", renamed_from=None, gated=None, inherit=False,
             title=None):
    """Create (or add a commit to) a repo; return the new commit sha.

    files: {path_in_repo: bytes | local path | {"path": local, "sha256": hex}} (the last form skips
    hashing an LFS file whose sha256 the caller knows). By default it is the whole tree of the new
    commit; with inherit=True it is applied on top of the parent's tree (value None deletes).
    parent: commit the new one descends from (default: the branch head, if any).
    visibility ("public" for a new repo), tokens and gated ("auto"|"manual") are kept from
    earlier calls unless given again.
    """
    if kind not in KINDS:
        raise ValueError("kind must be one of %s" % (KINDS,))
    if visibility is not None and visibility not in VISIBILITIES:
        raise ValueError("visibility must be one of %s" % (VISIBILITIES,))
    if isinstance(tags, str):
        tags = (tags,)
    if isinstance(tokens, str):
        tokens = (tokens,)
    root = os.path.abspath(root)
    os.makedirs(root, exist_ok=True)
    entries = {}
    for p, content in files.items():
        _check_repo_path(p)
        if content is None:
            entries[p] = None
        else:
            entries[p] = _file_entry(root, p, content)
    with _Locked(root) as state:
        key = repo_key(kind, repo_id)
        repo = state["repos"].get(key)
        now = time.time()
        if repo is None:
            repo = {"id": repo_id, "kind": kind, "refs": {}, "commits": {},
                    "oid": hashlib.sha1(("repo:" + key).encode()).hexdigest()[:24],
                    "created": now}
            state["repos"][key] = repo
        if visibility is not None:
            repo["visibility"] = visibility
        repo.setdefault("visibility", "public")
        if tokens:
            repo["tokens"] = sorted(set(tokens))
        repo.setdefault("tokens", [])
        if gated is not None:
            repo["gated_mode"] = gated
        repo["gated"] = repo.get("gated_mode", "auto") if repo["visibility"] == "gated" else False
        branch_ref = "refs/heads/" + branch
        if parent is None:
            parent = repo["refs"].get(branch_ref)
        elif parent not in repo["commits"]:
            raise KeyError("parent commit %s not in %s" % (parent, repo_id))
        tree = {}
        if inherit and parent:
            tree.update(repo["commits"][parent]["files"])
        for p, e in entries.items():
            if e is None:
                tree.pop(p, None)
            else:
                tree[p] = e
        for p in tree:  # a file and a directory may not share a name
            parts = p.split("/")
            for i in range(1, len(parts)):
                if "/".join(parts[:i]) in tree:
                    raise ValueError("%s is both a file and a directory" % "/".join(parts[:i]))
        sha = _new_commit_sha(repo_id, branch, parent, tree)
        repo["commits"][sha] = {"parent": parent, "files": tree, "date": now,
                                "title": title or ("Upload %d files" % len(tree))}
        repo["refs"][branch_ref] = sha
        for t in tags:
            repo["refs"][_tag_ref(t)] = sha
        repo["last_modified"] = now
        if renamed_from:
            state["renames"][repo_key(kind, renamed_from)] = repo_id
        state["tokens"] = sorted(set(state.get("tokens", [])) | set(tokens))
    return sha


def _tag_ref(t):
    return t if t.startswith("refs/") else "refs/tags/" + t


def add_ref(root, repo_id, ref, commit, kind="model"):
    """Point a ref at a commit: "refs/pr/N", "refs/heads/B", "refs/tags/T", or a bare tag name."""
    root = os.path.abspath(root)
    with _Locked(root) as state:
        repo = _find_repo(state, kind, repo_id)
        if commit not in repo["commits"]:
            c = resolve_rev(repo, commit)
            if c is None:
                raise KeyError("commit %s not in %s" % (commit, repo_id))
            commit = c
        repo["refs"][_tag_ref(ref)] = commit
    return commit


def add_token(root, token):
    """Make a token valid (a user) without granting it any private/gated repo."""
    with _Locked(os.path.abspath(root)) as state:
        state["tokens"] = sorted(set(state.get("tokens", [])) | {token})


def main(argv=None):
    ap = argparse.ArgumentParser(description="create repositories for the fake Hub")
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("add", help="add a commit (creating the repo if needed); prints the sha")
    a.add_argument("--root", required=True)
    a.add_argument("--repo", required=True)
    a.add_argument("--branch", default="main")
    a.add_argument("--tag", action="append", default=[])
    a.add_argument("--visibility", choices=VISIBILITIES, help="default: public, or unchanged")
    a.add_argument("--gated", choices=("auto", "manual"), help="gated mode (default auto)")
    a.add_argument("--token", action="append", default=[])
    a.add_argument("--kind", default="model", choices=KINDS)
    a.add_argument("--renamed-from")
    a.add_argument("--parent")
    a.add_argument("--inherit", action="store_true", help="start from the parent's files")
    a.add_argument("files", nargs="*", metavar="path_in_repo=local_file")
    r = sub.add_parser("ref", help="point a tag or refs/pr/N at a commit")
    r.add_argument("--root", required=True)
    r.add_argument("--repo", required=True)
    r.add_argument("--ref", required=True)
    r.add_argument("--commit", required=True)
    r.add_argument("--kind", default="model", choices=KINDS)
    t = sub.add_parser("token", help="register a valid token that owns no repo")
    t.add_argument("--root", required=True)
    t.add_argument("--token", required=True)
    s = sub.add_parser("show", help="print state.json")
    s.add_argument("--root", required=True)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "add":
            files = {}
            for spec in args.files:
                if "=" not in spec:
                    ap.error("expected path_in_repo=local_file, got %r" % spec)
                p, local = spec.split("=", 1)
                files[p] = local
            sha = add_repo(args.root, args.repo, files, branch=args.branch, tags=args.tag,
                           visibility=args.visibility, tokens=args.token, parent=args.parent,
                           kind=args.kind, renamed_from=args.renamed_from, gated=args.gated,
                           inherit=args.inherit)
            print(sha)
        elif args.cmd == "ref":
            print(add_ref(args.root, args.repo, args.ref, args.commit, kind=args.kind))
        elif args.cmd == "token":
            add_token(args.root, args.token)
        elif args.cmd == "show":
            json.dump(load_state(args.root), sys.stdout, indent=1, sort_keys=True)
            print()
    except (KeyError, ValueError, TypeError, OSError) as e:
        print("hubrepo: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
