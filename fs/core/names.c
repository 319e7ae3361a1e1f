/* names.c — snapshot naming policy: valid names, the overlay file name
 * chainfs gives a new snapshot, and the display name of every layer.
 *
 * Display names (cfs_domain_resolve_names): each layer above the base gets
 * a candidate from the first source that yields a usable directory entry
 * (non-empty, at most 255 bytes, no '/', not "." or ".."):
 *   1. libvirt snapshot metadata that names the overlay (meta_name);
 *   2. a file name chainfs gave it, "<dom>.<disk>.<NAME>.qcow2" -> NAME;
 *   3. the file's basename minus ".qcow2" / ".qcow" / ".img".
 * When candidates clash within one disk, the one from the better source
 * keeps the plain name (metadata over chainfs over filename); between equal
 * sources the deeper (older) layer keeps it, so taking a new snapshot never
 * renames an existing plain-named one. Every other clashing layer gets
 * "~N" appended, N being its layer index ("~N~K" in the unlikely case that
 * is taken too). Valid user names never contain '~', so these can never
 * collide with a name given to mkdir.
 *
 * Pure functions; thread-safe. */
#include <errno.h>

#include "chainfs/names.h"
#include "chainfs/util.h"

#define COMPONENT_MAX 255

static bool name_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

int cfs_name_validate(const char *name)
{
    if (!name)
        return -EINVAL;

    size_t len = strlen(name);
    if (len > COMPONENT_MAX)
        return -ENAMETOOLONG;
    if (len == 0 || len > CFS_NAME_MAX)
        return -EINVAL;
    if (name[0] == '.' || name[0] == '-')
        return -EINVAL;
    for (size_t i = 0; i < len; i++)
        if (!name_char_ok(name[i]))
            return -EINVAL;
    return 0;
}


/* DOM (or DISK) as it appears in an overlay file name. Caller frees. */
static char *filename_part(const char *s)
{
    char *r = cfs_xstrdup(s ? s : "");

    for (char *p = r; *p; p++)
        if (!name_char_ok(*p))
            *p = '_';
    return r;
}

/* The disk target is sanitised like the domain name: libvirt targets are
 * plain ("vda", "sdb"), so this only matters for hostile input. */
char *cfs_overlay_filename(const char *dom, const char *disk, const char *name)
{
    _cleanup_free_ char *d = filename_part(dom);
    _cleanup_free_ char *t = filename_part(disk);

    return cfs_xasprintf("%s.%s.%s.qcow2", d, t, name ? name : "");
}

char *cfs_overlay_filename_n(const char *dom, const char *disk,
                             const char *name, unsigned n)
{
    if (n < 2)
        return cfs_overlay_filename(dom, disk, name);
    _cleanup_free_ char *d = filename_part(dom);
    _cleanup_free_ char *t = filename_part(disk);

    return cfs_xasprintf("%s.%s.%s.%u.qcow2", d, t, name ? name : "", n);
}

char *cfs_overlay_parse_filename(const char *dom, const char *disk,
                                 const char *basename)
{
    static const char suffix[] = ".qcow2";

    if (!basename)
        return NULL;

    _cleanup_free_ char *d = filename_part(dom);
    _cleanup_free_ char *t = filename_part(disk);
    _cleanup_free_ char *prefix = cfs_xasprintf("%s.%s.", d, t);
    size_t plen = strlen(prefix), slen = strlen(suffix), blen = strlen(basename);

    if (blen <= plen + slen)
        return NULL;
    if (strncmp(basename, prefix, plen) != 0)
        return NULL;
    if (strcmp(basename + blen - slen, suffix) != 0)
        return NULL;

    _cleanup_free_ char *name = cfs_xstrndup(basename + plen, blen - plen - slen);
    if (cfs_name_validate(name) < 0)
        return NULL;
    return TAKE_PTR(name);
}

/* May S be a directory entry name? */
static bool component_ok(const char *s)
{
    if (!s || !*s)
        return false;
    if (strlen(s) > COMPONENT_MAX || strchr(s, '/'))
        return false;
    return strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

static const char *path_basename(const char *path)
{
    const char *slash = strrchr(path, '/');

    return slash ? slash + 1 : path;
}

/* The candidate display name of LAYER on DISK of domain DOM (never NULL). */
static char *layer_candidate(const char *dom, const struct cfs_disk *disk,
                             const struct cfs_layer *layer,
                             enum cfs_name_source *source)
{
    static const char *const exts[] = { ".qcow2", ".qcow", ".img" };

    if (component_ok(layer->meta_name)) {
        *source = CFS_NAME_METADATA;
        return cfs_xstrdup(layer->meta_name);
    }

    const char *base = path_basename(layer->path ? layer->path : "");
    char *n = cfs_overlay_parse_filename(dom, disk->target, base);
    if (n) {
        *source = CFS_NAME_CHAINFS;
        return n;
    }

    *source = CFS_NAME_FILENAME;
    size_t blen = strlen(base);
    for (size_t i = 0; i < ELEMENTSOF(exts); i++) {
        size_t elen = strlen(exts[i]);
        if (blen > elen && strcmp(base + blen - elen, exts[i]) == 0) {
            n = cfs_xstrndup(base, blen - elen);
            if (component_ok(n))
                return n;
            free(n);
            break;
        }
    }
    if (component_ok(base))
        return cfs_xstrdup(base);
    return cfs_xstrdup("layer");
}

/* Does layer J's candidate beat layer I's for the plain name? */
static bool beats(const struct cfs_layer *layers, size_t j, size_t i)
{
    if (layers[j].name_source != layers[i].name_source)
        return layers[j].name_source < layers[i].name_source;
    return j > i;
}

/* A set of names (borrowed strings) with, for each, a layer index: the
 * candidates' winners, then every name given. Open addressing, at most
 * half full. */
struct name_map {
    size_t cap;
    size_t used;
    const char **key;
    size_t *val;
};

static void name_map_init(struct name_map *m, size_t n)
{
    m->cap = 16;
    while (m->cap < 2 * n + 2)
        m->cap *= 2;
    m->used = 0;
    m->key = cfs_xcalloc(m->cap, sizeof(*m->key));
    m->val = cfs_xcalloc(m->cap, sizeof(*m->val));
}

static void name_map_free(struct name_map *m)
{
    free(m->key);
    free(m->val);
}

/* The slot of S: where it is, or the free one where it goes. */
static size_t name_map_slot(const struct name_map *m, const char *s)
{
    size_t k = cfs_str_hash(s) & (m->cap - 1);

    while (m->key[k] && strcmp(m->key[k], s) != 0)
        k = (k + 1) & (m->cap - 1);
    return k;
}

static void name_map_grow(struct name_map *m)
{
    struct name_map n;

    name_map_init(&n, m->cap);
    for (size_t i = 0; i < m->cap; i++)
        if (m->key[i]) {
            size_t k = name_map_slot(&n, m->key[i]);
            n.key[k] = m->key[i];
            n.val[k] = m->val[i];
            n.used++;
        }
    name_map_free(m);
    *m = n;
}

/* S's slot, S added (value V) if it was not there; *ADDED says which. */
static size_t name_map_add(struct name_map *m, const char *s, size_t v, bool *added)
{
    if (2 * (m->used + 1) > m->cap)
        name_map_grow(m);
    size_t k = name_map_slot(m, s);
    *added = !m->key[k];
    if (*added) {
        m->key[k] = s;
        m->val[k] = v;
        m->used++;
    }
    return k;
}

static bool name_map_has(const struct name_map *m, const char *s)
{
    return m->key[name_map_slot(m, s)] != NULL;
}

/* Length of the longest prefix of S of at most MAX bytes that does not end
 * inside a UTF-8 sequence. */
static size_t utf8_prefix(const char *s, size_t max)
{
    size_t len = strlen(s);

    if (len <= max)
        return len;
    while (max > 0 && ((unsigned char)s[max] & 0xC0) == 0x80)
        max--;
    return max;
}

static void name_layers(const char *dom, struct cfs_disk *disk)
{
    size_t n = disk->n_layers;

    for (size_t i = 0; i < n; i++) {
        free(disk->layers[i].name);
        disk->layers[i].name = NULL;
        disk->layers[i].name_source = CFS_NAME_NONE;
    }
    if (n < 2)
        return;

    size_t n_snap = n - 1; /* the base is not a snapshot */
    _cleanup_free_ char **cand = cfs_xcalloc(n_snap, sizeof(char *));
    for (size_t i = 0; i < n_snap; i++)
        cand[i] = layer_candidate(dom, disk, &disk->layers[i],
                                  &disk->layers[i].name_source);

    /* Plain names first, so a suffixed name can check against all of them.
     * The winner of each candidate name is the layer no other with that
     * name beats (beats() orders them all): one pass with a hash. */
    struct name_map won;
    name_map_init(&won, n_snap);
    for (size_t i = 0; i < n_snap; i++) {
        bool added;
        size_t k = name_map_add(&won, cand[i], i, &added);
        if (!added && beats(disk->layers, i, won.val[k]))
            won.val[k] = i;
    }
    _cleanup_free_ bool *lost = cfs_xcalloc(n_snap, sizeof(bool));
    for (size_t i = 0; i < n_snap; i++)
        lost[i] = won.val[name_map_slot(&won, cand[i])] != i;

    /* Every name given, plain and suffixed, as the suffixed ones are
     * chosen (borrowed from the layers). */
    struct name_map taken;
    name_map_init(&taken, n_snap);
    for (size_t i = 0; i < n_snap; i++)
        if (!lost[i]) {
            bool added;
            disk->layers[i].name = TAKE_PTR(cand[i]);
            (void)name_map_add(&taken, disk->layers[i].name, i, &added);
        }

    for (size_t i = 0; i < n_snap; i++) {
        if (!lost[i])
            continue;
        /* Room for "~N~K" with 20-digit numbers each. */
        int keep = (int)utf8_prefix(cand[i], COMPONENT_MAX - 44);
        char *s = cfs_xasprintf("%.*s~%zu", keep, cand[i], i);
        /* At most n-1 names are taken, so one of n tries is free. */
        for (size_t k = 1; name_map_has(&taken, s) && k <= n; k++) {
            free(s);
            s = cfs_xasprintf("%.*s~%zu~%zu", keep, cand[i], i, k);
        }
        bool added;
        disk->layers[i].name = s;
        (void)name_map_add(&taken, s, i, &added);
        free(cand[i]);
        cand[i] = NULL;
    }
    name_map_free(&taken);
    name_map_free(&won);
}

static void resolve_disk(const char *dom, struct cfs_disk *disk)
{
    name_layers(dom, disk);
    cfs_disk_index_names(disk);
}

void cfs_domain_resolve_names(struct cfs_domain *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->n_disks; i++)
        resolve_disk(d->name, &d->disks[i]);
}
