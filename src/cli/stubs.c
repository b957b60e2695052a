/* Subcommands whose subsystems are not built yet. */
#include "cli/cli.h"

#include <stdio.h>
#include <string.h>

static int not_yet(const char *cmd, int argc, char **argv)
{
    int help = argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0);
    fprintf(help ? stdout : stderr, "usage: lmd %s ...\n\nlmd %s is not part of this build yet.\n", cmd, cmd);
    return help ? 0 : 1;
}

int cli_serve(int argc, char **argv) { return not_yet("serve", argc, argv); }
