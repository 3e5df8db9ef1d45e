/*
 * Header parsing (bench/header/run.sh builds and runs this; results in RESULTS.md).
 *
 * A safetensors header of N tensors (names, dtypes and shapes like a transformer's), parsed
 * once in a fresh process, as every command parses the headers it opens: the flat path that
 * cks_st_parse takes for a plain header, against the cJSON tree that parses every header
 * (cks_st_parse_tree_only, the path before session 9). The first parse of a process touches
 * fresh memory, and on this kind of VM a first touch is dear, so the cold figure is the one a
 * user meets; the warm one (the best of many parses in one process) is the CPU alone.
 *
 * usage: bench_header make FILE N        write a checkpoint of N tensors (data zero) to FILE
 *        bench_header cold FILE flat|tree  one parse; prints ms and minor page faults
 *        bench_header warm FILE flat|tree  best of 50 parses, in ms
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "ckptscope/safetensors.h"
#include "format/safetensors_internal.h"

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}

static long minor_faults(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_minflt;
}

static int make_file(const char *path, long n)
{
    static const char *const parts[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                        "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                        "mlp.down_proj",    "input_layernorm",  "post_attention_layernorm"};
    size_t cap = (size_t)n * 160 + 256, len = 0;
    char *h = malloc(cap);
    unsigned long long off = 0;
    if (!h)
        return 1;
    len += (size_t)snprintf(h + len, cap - len, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (long i = 0; i < n; i++) {
        int norm = i % 9 >= 7;
        unsigned long long rows = norm ? 1 : 64 + (unsigned long long)(i % 5) * 16, cols = 64;
        unsigned long long bytes = (norm ? cols : rows * cols) * 2;
        if (norm)
            len += (size_t)snprintf(h + len, cap - len,
                                    ",\"model.layers.%ld.%s.weight\":{\"dtype\":\"BF16\",\"shape\":[%llu],"
                                    "\"data_offsets\":[%llu,%llu]}",
                                    i / 9, parts[i % 9], cols, off, off + bytes);
        else
            len += (size_t)snprintf(h + len, cap - len,
                                    ",\"model.layers.%ld.%s.weight\":{\"dtype\":\"BF16\",\"shape\":[%llu,%llu],"
                                    "\"data_offsets\":[%llu,%llu]}",
                                    i / 9, parts[i % 9], rows, cols, off, off + bytes);
        off += bytes;
    }
    len += (size_t)snprintf(h + len, cap - len, "}");
    while (len % 8)
        h[len++] = ' ';
    FILE *f = fopen(path, "wb");
    if (!f)
        return 1;
    unsigned char le[8];
    for (int k = 0; k < 8; k++)
        le[k] = (unsigned char)((unsigned long long)len >> (8 * k));
    fwrite(le, 1, 8, f);
    fwrite(h, 1, len, f);
    /* the data section, all zeros */
    fseek(f, (long)(8 + len + off) - 1, SEEK_SET);
    fputc(0, f);
    fclose(f);
    free(h);
    return 0;
}

static int parse(const unsigned char *buf, size_t len, unsigned long long size, int tree)
{
    cks_st_header *h = NULL;
    cks_diag d;
    cks_err e = tree ? cks_st_parse_tree_only(buf, len, size, &h, &d) : cks_st_parse(buf, len, size, &h, NULL, &d);
    if (e)
        fprintf(stderr, "parse failed: %s\n", d.text);
    cks_st_header_free(h);
    return e ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "make") == 0)
        return make_file(argv[2], atol(argv[3]));
    if (argc != 4)
        return 2;
    FILE *f = fopen(argv[2], "rb");
    unsigned char le[8];
    unsigned long long n = 0, size;
    if (!f || fread(le, 1, 8, f) != 8)
        return 1;
    for (int k = 7; k >= 0; k--)
        n = (n << 8) | le[k];
    fseek(f, 0, SEEK_END);
    size = (unsigned long long)ftell(f);
    unsigned char *buf = malloc(8 + n);
    fseek(f, 0, SEEK_SET);
    if (!buf || fread(buf, 1, 8 + n, f) != 8 + n)
        return 1;
    fclose(f);
    int tree = strcmp(argv[3], "tree") == 0, rc = 0;
    if (strcmp(argv[1], "cold") == 0) {
        long f0 = minor_faults();
        double t0 = now_ms();
        rc = parse(buf, 8 + n, size, tree);
        printf("%.3f %ld\n", now_ms() - t0, minor_faults() - f0);
    } else {
        double best = 1e9;
        for (int r = 0; r < 50 && rc == 0; r++) {
            double t0 = now_ms();
            rc = parse(buf, 8 + n, size, tree);
            double t = now_ms() - t0;
            best = t < best ? t : best;
        }
        printf("%.3f\n", best);
    }
    free(buf);
    return rc;
}
