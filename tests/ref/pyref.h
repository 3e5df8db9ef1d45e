/*
 * tests/ref/pyref.h — run the test-only Python references (tests/ref/ref.py) from C tests.
 *
 * Protocol: the C test writes its inputs as raw little-endian binary files into a fresh
 * temporary directory, runs `/usr/bin/python3 $CKS_ROOT/tests/ref/ref.py <command> <dir>`,
 * and reads the reference's outputs back from the same directory. /usr/bin/python3 is
 * Debian's interpreter, the one with python3-numpy and python3-scipy (the first python3 on
 * PATH may lack them). When the interpreter or numpy/scipy are missing the case SKIPs.
 * Header-only (static functions) so that each test program stays one file.
 */
#ifndef CKS_TEST_PYREF_H
#define CKS_TEST_PYREF_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PYREF_PYTHON "/usr/bin/python3"

static const char *pyref_root(void)
{
    const char *root = getenv("CKS_ROOT");
    return root && *root ? root : ".";
}

/* 1 when the reference can run, 0 otherwise (checked once per process). */
static int pyref_available(void)
{
    static int cached = -1;
    if (cached < 0) {
        char cmd[1024];
        snprintf(cmd, sizeof cmd,
                 "%s -c 'import numpy, scipy.optimize' >/dev/null 2>&1 && test -f '%s/tests/ref/ref.py'",
                 PYREF_PYTHON, pyref_root());
        cached = access(PYREF_PYTHON, X_OK) == 0 && system(cmd) == 0;
    }
    return cached;
}

typedef struct pyref_dir {
    char path[256];
} pyref_dir;

static bool pyref_dir_make(pyref_dir *dir)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(dir->path, sizeof dir->path, "%s/cks-pyref-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    return mkdtemp(dir->path) != NULL;
}

static void pyref_dir_remove(pyref_dir *dir)
{
    char cmd[512];
    if (!dir->path[0])
        return;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir->path);
    if (system(cmd) != 0)
        fprintf(stderr, "  could not remove %s\n", dir->path);
    dir->path[0] = 0;
}

static bool pyref_write(const pyref_dir *dir, const char *name, const void *data, size_t bytes)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir->path, name);
    FILE *f = fopen(path, "wb");
    if (!f)
        return false;
    bool ok = fwrite(data, 1, bytes, f) == bytes;
    return fclose(f) == 0 && ok;
}

/* Writes a small text file (parameters such as sizes and seeds). */
static bool pyref_write_text(const pyref_dir *dir, const char *name, const char *text)
{
    return pyref_write(dir, name, text, strlen(text));
}

/* Reads a whole file (NUL-terminated for text); *bytes gets its size. Caller frees. */
static void *pyref_read(const pyref_dir *dir, const char *name, size_t *bytes)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir->path, name);
    FILE *f = fopen(path, "rb");
    void *buf = NULL;
    long len;
    if (!f)
        return NULL;
    if (fseek(f, 0, SEEK_END) != 0 || (len = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0)
        goto out;
    buf = malloc((size_t)len + 1);
    if (buf)
        ((char *)buf)[len] = 0;
    if (buf && fread(buf, 1, (size_t)len, f) != (size_t)len) {
        free(buf);
        buf = NULL;
    }
    if (bytes)
        *bytes = (size_t)len;
out:
    fclose(f);
    return buf;
}

/* Runs one reference command; true when it exited 0. Its stderr goes to ours. */
static bool pyref_run(const pyref_dir *dir, const char *command)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s '%s/tests/ref/ref.py' %s '%s'", PYREF_PYTHON, pyref_root(),
             command, dir->path);
    return system(cmd) == 0;
}

#endif
