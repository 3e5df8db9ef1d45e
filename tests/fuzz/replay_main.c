/*
 * Replays a fuzz corpus through a target without libFuzzer, so make test runs every
 * corpus entry (and every crash ever found, once added to the corpus) on each build.
 * Prints "PASS replay <file>" per entry; a crash or sanitizer report fails the run.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv)
{
    DIR *d;
    struct dirent *ent;
    char *names[4096];
    size_t n = 0;
    if (argc != 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
        return 2;
    }
    d = opendir(argv[1]);
    if (!d) {
        printf("FAIL replay: cannot open corpus %s\n", argv[1]);
        return 1;
    }
    while ((ent = readdir(d)) && n < sizeof names / sizeof names[0])
        if (ent->d_name[0] != '.')
            names[n++] = strdup(ent->d_name);
    closedir(d);
    qsort(names, n, sizeof names[0], compare_names);
    for (size_t i = 0; i < n; i++) {
        char path[4096];
        FILE *f;
        long len;
        uint8_t *buf;
        snprintf(path, sizeof path, "%s/%s", argv[1], names[i]);
        f = fopen(path, "rb");
        if (!f || fseek(f, 0, SEEK_END) != 0 || (len = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
            printf("FAIL replay %s: unreadable\n", names[i]);
            if (f)
                fclose(f);
            continue;
        }
        buf = malloc((size_t)len + 1);
        if (!buf || fread(buf, 1, (size_t)len, f) != (size_t)len) {
            printf("FAIL replay %s: unreadable\n", names[i]);
            free(buf);
            fclose(f);
            continue;
        }
        fclose(f);
        LLVMFuzzerTestOneInput(buf, (size_t)len);
        free(buf);
        printf("PASS replay %s\n", names[i]);
        free(names[i]);
    }
    return 0;
}
