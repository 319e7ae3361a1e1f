/* fuzz_names.c — the snapshot naming policy on any input.
 *
 * Input: lines. Line 1 is a snapshot name for cfs_name_validate; line 2
 * the domain, line 3 the disk target; every further line is one layer of
 * that disk, "PATH" or "PATH\tMETA_NAME" (active layer first, base last).
 * Checked:
 *   - a valid name round-trips through the overlay file name
 *     (cfs_overlay_filename -> cfs_overlay_parse_filename);
 *   - whatever the file-name parser returns is a valid name;
 *   - cfs_domain_resolve_names gives every layer but the base a name that
 *     is a usable directory entry, unique within the disk, and found
 *     again by cfs_disk_find_snapshot; the base gets none. */
#include <errno.h>

#include "chainfs/model.h"
#include "chainfs/names.h"
#include "chainfs/util.h"
#include "fuzz.h"

#define MAX_LAYERS 64

static void check_entry_name(const char *s)
{
    FUZZ_ASSERT(s && *s);
    FUZZ_ASSERT(strlen(s) <= 255);
    FUZZ_ASSERT(!strchr(s, '/'));
    FUZZ_ASSERT(strcmp(s, ".") != 0 && strcmp(s, "..") != 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = fuzz_cstr(data, size), *rest = buf;
    const char *name = fuzz_next(&rest, '\n');
    const char *dom = fuzz_next(&rest, '\n');
    const char *target = fuzz_next(&rest, '\n');
    int r;

    r = cfs_name_validate(name);
    FUZZ_ASSERT(r == 0 || r == -EINVAL || r == -ENAMETOOLONG);
    if (r == 0)
        FUZZ_ASSERT(strlen(name) >= 1 && strlen(name) <= CFS_NAME_MAX);

    if (dom && target) {
        char *file = cfs_overlay_filename(dom, target, name);
        char *back = cfs_overlay_parse_filename(dom, target, file);

        if (r == 0) /* a valid name must come back as itself */
            FUZZ_ASSERT(back && strcmp(back, name) == 0);
        if (back)
            FUZZ_ASSERT(cfs_name_validate(back) == 0);
        free(back);
        free(file);

        /* The name line read as a file name someone else chose. */
        back = cfs_overlay_parse_filename(dom, target, name);
        if (back)
            FUZZ_ASSERT(cfs_name_validate(back) == 0);
        free(back);
    }

    if (dom && target && rest) {
        struct cfs_domain d = { 0 };
        struct cfs_disk disk = { 0 };
        const char *line;

        d.name = cfs_xstrdup(dom);
        disk.target = cfs_xstrdup(target);
        disk.layers = cfs_xcalloc(MAX_LAYERS, sizeof(*disk.layers));
        while (disk.n_layers < MAX_LAYERS && (line = fuzz_next(&rest, '\n'))) {
            struct cfs_layer *l = &disk.layers[disk.n_layers++];
            char *tab = strchr(line, '\t');

            if (tab) {
                *tab = '\0';
                l->meta_name = cfs_xstrdup(tab + 1);
            }
            l->path = cfs_xstrdup(line);
            l->format = cfs_xstrdup("qcow2");
        }
        d.disks = &disk;
        d.n_disks = 1;

        cfs_domain_resolve_names(&d);
        cfs_domain_resolve_names(&d); /* again: same result, no leak */

        FUZZ_ASSERT(disk.n_layers == 0 ||
                    disk.layers[disk.n_layers - 1].name == NULL);
        for (size_t i = 0; i + 1 < disk.n_layers; i++) {
            const struct cfs_layer *l = &disk.layers[i];

            check_entry_name(l->name);
            for (size_t j = 0; j < i; j++)
                FUZZ_ASSERT(strcmp(disk.layers[j].name, l->name) != 0);
            FUZZ_ASSERT(cfs_disk_find_snapshot(&disk, l->name) == (int)i);
        }

        cfs_disk_clear(&disk); /* its layers, and the name index */
        free(d.name);
    }
    free(buf);
    return 0;
}
