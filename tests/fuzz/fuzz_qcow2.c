/* fuzz_qcow2.c — the image header reader on any file content.
 *
 * The input is written to a file in tmpfs and probed as an image of
 * unknown format and as a declared qcow2 (cfs_image_probe): no crash, no
 * leak, no read outside the buffers; what it returns is a known format
 * and a backing name that resolves (cfs_image_resolve_backing). The
 * backing file itself is not opened: the chain walk would then read
 * whatever files the input names. */
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "chainfs/util.h"
#include "qcow2.h"
#include "fuzz.h"

static char image[256];

static void cleanup(void)
{
    unlink(image);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";

    (void)argc;
    (void)argv;
    snprintf(image, sizeof(image), "%s/chainfs-fuzz-qcow2-%d.img", base,
             (int)getpid());
    atexit(cleanup);
    return 0;
}

static void probe(const char *format)
{
    struct cfs_image_info info;
    int r = cfs_image_probe(image, format, &info);

    if (r == 0) {
        FUZZ_ASSERT(info.format);
        FUZZ_ASSERT(strcmp(info.format, "qcow2") == 0 ||
                    strcmp(info.format, "qcow") == 0 ||
                    strcmp(info.format, "raw") == 0);
        if (info.backing) {
            char *p = cfs_image_resolve_backing(image, info.backing);

            FUZZ_ASSERT(p);
            (void)cfs_image_name_is_protocol(p);
            free(p);
        }
    } else {
        FUZZ_ASSERT(!info.format && !info.backing && !info.backing_format);
    }
    cfs_image_info_clear(&info);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = open(image, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    const uint8_t *p = data;
    size_t left = size;

    if (fd < 0)
        abort();
    while (left > 0) {
        ssize_t n = write(fd, p, left);

        if (n <= 0)
            abort();
        p += n;
        left -= (size_t)n;
    }
    close(fd);

    probe(NULL);
    probe("qcow2");
    return 0;
}
