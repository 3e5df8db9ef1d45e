/* ckptscope verify — placeholder while the command is written (issue 9). */
#include "cli.h"

int cmd_verify(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return cli_usage_error("verify", "not available yet");
}
