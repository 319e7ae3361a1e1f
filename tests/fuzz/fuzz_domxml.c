/* fuzz_domxml.c — the readers of libvirt's XML on any document.
 *
 * The input is one XML document, given to every reader in domxml.h: the
 * domain XML parser, the snapshot and volume XML parsers, the <mirror>
 * check and the three editors (for each disk target the document lists,
 * and for "vda"). Checked: no crash or leak; what the domain parser
 * returns is complete (a name, every disk a target and at least one layer
 * with a path and a format, an index per layer); an edited document parses
 * again with the edited disk's source where it was put; the snapshot XML
 * chainfs writes for a listed target reads back as the same name and
 * overlay. The input also goes to cfs_uri_remote as a URI. */
#include <errno.h>

#include "chainfs/model.h"
#include "chainfs/util.h"
#include "domxml.h"
#include "fuzz.h"

#define MAX_TARGETS 4

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    cfs_domxml_init();
    return 0;
}

static void check_domain(const struct cfs_domxml *x)
{
    const struct cfs_domain *d = x->domain;

    FUZZ_ASSERT(d && d->name);
    FUZZ_ASSERT(memchr(d->uuid, '\0', sizeof(d->uuid)));
    FUZZ_ASSERT(x->n_disks == d->n_disks);
    for (size_t i = 0; i < d->n_disks; i++) {
        const struct cfs_disk *disk = &d->disks[i];

        FUZZ_ASSERT(disk->target);
        FUZZ_ASSERT(disk->n_layers >= 1);
        FUZZ_ASSERT(x->disks[i].index);
        for (size_t k = 0; k < disk->n_layers; k++) {
            FUZZ_ASSERT(disk->layers[k].path);
            FUZZ_ASSERT(disk->layers[k].format);
            FUZZ_ASSERT(disk->layers[k].index == x->disks[i].index[k]);
        }
        /* every listed disk is among the targets */
        bool found = false;
        for (char **t = x->targets; t && *t && !found; t++)
            found = strcmp(*t, disk->target) == 0;
        FUZZ_ASSERT(found);
    }
    /* issue 10: every disk a snapshot leaves out is a target, with why */
    for (size_t i = 0; i < d->n_unsnappable; i++) {
        bool found = false;

        FUZZ_ASSERT(d->unsnappable[i].target && d->unsnappable[i].why);
        for (char **t = x->targets; t && *t && !found; t++)
            found = strcmp(*t, d->unsnappable[i].target) == 0;
        FUZZ_ASSERT(found);
    }
}

/* The editors on disk TARGET of XML. */
static void edit(const char *xml, const char *target)
{
    bool ready = true, changed = true;
    char *out = NULL;
    int r;

    r = cfs_domxml_mirror_ready(xml, target, &ready);
    FUZZ_ASSERT(r == 0 || r == -EINVAL || r == -ENOENT);
    if (r < 0)
        FUZZ_ASSERT(!ready);

    r = cfs_domxml_drop_backing_store(xml, target, &out, &changed);
    FUZZ_ASSERT(r == 0 || r == -EINVAL || r == -ENOENT);
    FUZZ_ASSERT((r == 0) == (out != NULL));
    if (out) {
        char *again = NULL;
        bool changed2 = true;

        /* Dropped once, nothing is left to drop. */
        FUZZ_ASSERT(cfs_domxml_drop_backing_store(out, target, &again,
                                                  &changed2) == 0);
        FUZZ_ASSERT(!changed2);
        free(again);
    }
    free(out);
    out = NULL;

    r = cfs_domxml_set_disk_source(xml, target, "/var/lib/new <&'\">.qcow2",
                                   "qcow2", false, &out);
    FUZZ_ASSERT(r == 0 || r == -EINVAL || r == -ENOENT);
    FUZZ_ASSERT((r == 0) == (out != NULL));
    if (out) {
        struct cfs_domxml x;

        if (cfs_domxml_parse(out, &x) == 0) {
            check_domain(&x);
            cfs_domxml_clear(&x);
        }
    }
    free(out);
    out = NULL;

    r = cfs_domxml_snapshot_drop_disk(xml, target, &out);
    FUZZ_ASSERT(r == 0 || r == -EINVAL || r == -ENOENT);
    FUZZ_ASSERT((r == 0) == (out != NULL));
    free(out);
    out = NULL;

    r = cfs_domxml_snapshot_retarget(xml, target, "/o/new <&'\">.qcow2", &out);
    FUZZ_ASSERT(r == 0 || r == -EINVAL || r == -ENOENT);
    FUZZ_ASSERT((r == 0) == (out != NULL));
    if (out) {
        struct cfs_snapxml s;

        /* the rewritten disk now names the new source */
        FUZZ_ASSERT(cfs_domxml_parse_snapshot(out, &s) == 0 || !s.name);
        bool seen = false;

        for (size_t i = 0; i < s.n_disks; i++)
            if (strcmp(s.disks[i].target, target) == 0 &&
                strcmp(s.disks[i].source, "/o/new <&'\">.qcow2") == 0)
                seen = true;
        FUZZ_ASSERT(seen || !s.name);
        cfs_snapxml_clear(&s);
    }
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *xml = fuzz_cstr(data, size);
    struct cfs_domxml x;
    struct cfs_snapxml s;
    struct cfs_volxml v;
    char why[128];
    bool embed;
    int r;

    r = cfs_domxml_parse(xml, &x);
    FUZZ_ASSERT(r == 0 || r == -EINVAL);
    if (r == 0) {
        size_t nt = 0;

        check_domain(&x);
        for (char **t = x.targets; t && *t && nt < MAX_TARGETS; t++, nt++)
            edit(xml, *t);
        if (x.targets && x.targets[0]) {
            /* What chainfs would send for a snapshot of the first disk. */
            char *snap = cfs_domxml_snapshot_xml("s1", x.targets[0],
                                                 "/o/x.qcow2", x.targets);
            struct cfs_snapxml back;
            bool seen = false;

            FUZZ_ASSERT(snap);
            FUZZ_ASSERT(cfs_domxml_parse_snapshot(snap, &back) == 0);
            FUZZ_ASSERT(back.name && strcmp(back.name, "s1") == 0);
            for (size_t i = 0; i < back.n_disks; i++)
                if (strcmp(back.disks[i].target, x.targets[0]) == 0) {
                    FUZZ_ASSERT(back.disks[i].source &&
                                strcmp(back.disks[i].source, "/o/x.qcow2") == 0);
                    seen = true;
                }
            FUZZ_ASSERT(seen);
            cfs_snapxml_clear(&back);
            free(snap);
        }
        if (x.targets && x.targets[0] && x.targets[1] &&
            strcmp(x.targets[0], x.targets[1]) != 0) {
            /* issue 10: two disks in one snapshot, with a description;
             * every target is in <disks>, the two external */
            const char *disks[] = { x.targets[0], x.targets[1] };
            const char *overlays[] = { "/o/a.qcow2", "/o/b <&>.qcow2" };
            char *snap = cfs_domxml_snapshot_xml_multi("s2", 2, disks, overlays,
                                                       "d <&'\">", x.targets);
            struct cfs_snapxml back;

            FUZZ_ASSERT(snap);
            FUZZ_ASSERT(cfs_domxml_parse_snapshot(snap, &back) == 0);
            FUZZ_ASSERT(back.description && strcmp(back.description, "d <&'\">") == 0);
            FUZZ_ASSERT(back.n_disks >= 2);
            FUZZ_ASSERT(back.n_all >= cfs_strv_len(x.targets) || back.n_all >= 2);
            cfs_snapxml_clear(&back);
            free(snap);
        }
        cfs_domxml_clear(&x);
    }
    edit(xml, "vda");

    r = cfs_domxml_parse_snapshot(xml, &s);
    FUZZ_ASSERT(r == 0 || r == -EINVAL);
    if (r == 0) {
        for (size_t i = 0; i < s.n_disks; i++)
            FUZZ_ASSERT(s.disks[i].target);
        for (size_t i = 0; i < s.n_all; i++)
            FUZZ_ASSERT(s.all[i].target && s.all[i].snapshot);
        FUZZ_ASSERT(s.n_all >= s.n_disks);
    }
    cfs_snapxml_clear(&s);

    r = cfs_domxml_parse_volume(xml, &v);
    FUZZ_ASSERT(r == 0 || r == -EINVAL);
    cfs_volxml_clear(&v);

    why[0] = '\0';
    if (cfs_uri_remote(xml, why, sizeof(why), &embed))
        FUZZ_ASSERT(memchr(why, '\0', sizeof(why)));
    free(xml);
    return 0;
}
