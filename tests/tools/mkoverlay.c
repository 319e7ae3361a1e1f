/* mkoverlay — test tool: cfs_image_create_overlay() from the command line,
 * so tests/integration/overlay_format.sh can compare its files with
 * qemu-img's.  mkoverlay PATH BACKING FORMAT SIZE_BYTES */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: mkoverlay PATH BACKING FORMAT SIZE_BYTES\n");
        return 2;
    }
    int r = cfs_image_create_overlay(argv[1], argv[2], argv[3],
                                     strtoull(argv[4], NULL, 10));
    if (r < 0) {
        fprintf(stderr, "mkoverlay: %s: %s\n", argv[1], strerror(-r));
        return 1;
    }
    return 0;
}
