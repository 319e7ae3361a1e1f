/* fuzz_ctl.c — the ctl file's command parser on any write.
 *
 * The input is one write(2) to a disk's ctl file: cfs_ctl_parse takes it
 * as LEN bytes that are not NUL-terminated (the fuzzer's buffer ends
 * exactly there, so ASan sees any read past it). Checked: no crash; the
 * answer is 0, -EINVAL with a reason, or -E2BIG for an over-long write;
 * an accepted command is a known one. cfs_size_parse gets the input as a
 * string too. */
#include <errno.h>
#include <inttypes.h>

#include "chainfs/ctl.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct cfs_ctl_cmd cmd;
    const char *why = NULL;
    char *s;
    uint64_t v;
    int r;

    r = cfs_ctl_parse((const char *)data, size, &cmd, &why);
    FUZZ_ASSERT(r == 0 || r == -EINVAL || r == -E2BIG);
    if (size > CFS_CTL_MAX_WRITE)
        FUZZ_ASSERT(r == -E2BIG);
    if (r == 0) {
        FUZZ_ASSERT(cmd.op >= CFS_CTL_ABORT && cmd.op < CFS_CTL_OP_MAX);
        FUZZ_ASSERT(cfs_ctl_op_to_string(cmd.op));
        FUZZ_ASSERT(memchr(data, '\n', size) == NULL ||
                    memchr(data, '\n', size) == data + size - 1);
    }
    if (r == -EINVAL)
        FUZZ_ASSERT(why && *why);

    s = fuzz_cstr(data, size);
    r = cfs_size_parse(s, &v);
    FUZZ_ASSERT(r == 0 || r == -EINVAL);
    free(s);
    return 0;
}
