/* mkfixtures DIR — write the fixture table (valid and corrupt safetensors files) into DIR. */
#include <stdio.h>

#include "support/stwriter.h"

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: mkfixtures DIR\n");
        return 2;
    }
    if (st_write_fixture_dir(argv[1]) != 0) {
        perror("mkfixtures");
        return 1;
    }
    return 0;
}
