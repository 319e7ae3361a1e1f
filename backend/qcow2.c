/* qcow2.c — image header reading for chains libvirt does not describe
 * (shut-off domains). See qcow2.h.
 *
 * The qcow/qcow2 header layout used here (all big-endian):
 *   0 magic "QFI\xfb"   4 version   8 backing_file_offset (u64)
 *   16 backing_file_size (u32)      20 cluster_bits (v2+) / mtime (v1)
 *   24 size (u64)       v3: 100 header_length (u32)
 * Header extensions (v2+) follow the header up to the backing file name or
 * the end of the first cluster: {u32 type, u32 len, data padded to 8}; type
 * 0xE2792ACA is the backing format name, 0 ends the list.
 *
 * Owns nothing; thread-safe. */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <pthread.h>
#include <time.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chainfs/strmap.h"
#include "chainfs/util.h"
#include "qcow2.h"

#define QCOW_MAGIC 0x514649fbu
#define QCOW2_EXT_END 0x00000000u
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acau
#define QCOW2_V2_HEADER_LEN 72u
#define QCOW_BACKING_NAME_MAX 1023u
#define HEADER_READ_MAX 65536u

static void closep(int *fd)
{
    if (*fd >= 0)
        close(*fd);
}

static uint32_t get_be32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return be32toh(v);
}

static uint64_t get_be64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return be64toh(v);
}

void cfs_image_info_clear(struct cfs_image_info *info)
{
    if (!info)
        return;
    free(info->format);
    free(info->backing);
    free(info->backing_format);
    *info = (struct cfs_image_info){0};
}

bool cfs_image_name_is_protocol(const char *name)
{
    const char *colon = strchr(name, ':');

    if (!colon)
        return false;
    /* QEMU's rule: a protocol prefix has no '/' before its ':' */
    return memchr(name, '/', (size_t)(colon - name)) == NULL;
}

char *cfs_image_resolve_backing(const char *image, const char *backing)
{
    const char *slash;

    if (backing[0] == '/' || cfs_image_name_is_protocol(backing))
        return cfs_xstrdup(backing);
    slash = strrchr(image, '/');
    if (!slash)
        return cfs_xstrdup(backing);
    return cfs_xasprintf("%.*s/%s", (int)(slash - image), image, backing);
}

static int fd_size(int fd, uint64_t *size)
{
    struct stat st;
    off_t end;

    if (fstat(fd, &st) < 0)
        return -errno;
    if (!S_ISBLK(st.st_mode)) {
        *size = (uint64_t)st.st_size;
        return 0;
    }
    end = lseek(fd, 0, SEEK_END);
    if (end < 0)
        return -errno;
    *size = (uint64_t)end;
    return 0;
}

/* Header extensions between START and END of BUF (length LEN). */
static void parse_extensions(const uint8_t *buf, size_t len, size_t start,
                             size_t end, struct cfs_image_info *out)
{
    size_t off = start;

    if (end > len)
        end = len;
    while (off + 8 <= end) {
        uint32_t type = get_be32(buf + off);
        uint32_t elen = get_be32(buf + off + 4);

        off += 8;
        if (type == QCOW2_EXT_END || elen > end - off)
            return;
        if (type == QCOW2_EXT_BACKING_FORMAT && elen > 0 && elen < 64) {
            free(out->backing_format); /* a later one wins, as in QEMU */
            out->backing_format = strndup((const char *)buf + off, elen);
        }
        off += ((size_t)elen + 7) & ~(size_t)7;
    }
}

static int parse_qcow(int fd, const uint8_t *buf, size_t len,
                      struct cfs_image_info *out)
{
    uint32_t version = get_be32(buf + 4);
    uint64_t backing_off = get_be64(buf + 8);
    uint32_t backing_len = get_be32(buf + 16);

    if (len < QCOW2_V2_HEADER_LEN)
        return -EINVAL;
    out->format = cfs_xstrdup(version == 1 ? "qcow" : "qcow2");
    out->virtual_size = get_be64(buf + 24);

    if (version >= 2) {
        uint32_t cluster_bits = get_be32(buf + 20);
        size_t header_len = QCOW2_V2_HEADER_LEN;
        size_t ext_end;

        if (cluster_bits < 9 || cluster_bits > 21)
            return -EINVAL;
        if (version >= 3) {
            if (len < 104)
                return -EINVAL;
            header_len = get_be32(buf + 100);
        }
        ext_end = (size_t)1 << cluster_bits;
        if (backing_off && backing_off < ext_end)
            ext_end = (size_t)backing_off;
        parse_extensions(buf, len, header_len, ext_end, out);
    }

    if (backing_off && backing_len) {
        char name[QCOW_BACKING_NAME_MAX + 1];
        ssize_t n;

        if (backing_len > QCOW_BACKING_NAME_MAX)
            return -EINVAL;
        n = pread(fd, name, backing_len, (off_t)backing_off);
        if (n < 0)
            return -errno;
        if ((size_t)n != backing_len)
            return -EINVAL;
        name[n] = '\0';
        out->backing = cfs_xstrdup(name);
    }
    return 0;
}

/* ---- the header cache (issue 12) ------------------------------------------
 * A shut-off chain is read from its headers on every re-read of the
 * domain, and a re-read follows every change: 1,000 layers were 1,000
 * opens and 64 KiB reads each time (15-60 ms). A qcow header parsed is
 * kept by path with the file's (dev, ino, size, mtime, ctime); a stat()
 * that gives the same five says the header is the same, as every write
 * to the file changes mtime and ctime. Timestamps are as coarse as the
 * kernel's clock tick, so a file changed in the last HC_SETTLE_S seconds
 * is not kept: two writes in one tick would look like one. Bounded (all
 * dropped when full); one mutex. */
#define HC_MAX 8192u
#define HC_SETTLE_S 2

struct hc_entry {
    char *path;
    uint64_t dev, ino;
    int64_t size;
    struct timespec mtime, ctime;
    struct cfs_image_info info;
};

static pthread_mutex_t hc_lock = PTHREAD_MUTEX_INITIALIZER;
static struct cfs_strmap *hc_index; /* path -> hc_entries[] */
static struct hc_entry *hc_entries;
static size_t hc_n;

static bool ts_eq(struct timespec a, struct timespec b)
{
    return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec;
}

static bool hc_same(const struct hc_entry *e, const struct stat *st)
{
    return e->dev == (uint64_t)st->st_dev && e->ino == (uint64_t)st->st_ino &&
           e->size == (int64_t)st->st_size && ts_eq(e->mtime, st->st_mtim) &&
           ts_eq(e->ctime, st->st_ctim);
}

static void info_copy(struct cfs_image_info *dst, const struct cfs_image_info *src)
{
    dst->format = src->format ? cfs_xstrdup(src->format) : NULL;
    dst->virtual_size = src->virtual_size;
    dst->backing = src->backing ? cfs_xstrdup(src->backing) : NULL;
    dst->backing_format = src->backing_format ? cfs_xstrdup(src->backing_format) : NULL;
}

static bool hc_get(const char *path, const struct stat *st, struct cfs_image_info *out)
{
    size_t i;
    bool hit = false;

    pthread_mutex_lock(&hc_lock);
    if (cfs_strmap_get_index(hc_index, path, &i) && hc_same(&hc_entries[i], st)) {
        info_copy(out, &hc_entries[i].info);
        hit = true;
    }
    pthread_mutex_unlock(&hc_lock);
    return hit;
}

static void hc_put(const char *path, const struct stat *st, const struct cfs_image_info *info)
{
    struct timespec now;
    size_t i;

    if (!S_ISREG(st->st_mode) || clock_gettime(CLOCK_REALTIME, &now) < 0 ||
        st->st_ctim.tv_sec > now.tv_sec - HC_SETTLE_S ||
        st->st_mtim.tv_sec > now.tv_sec - HC_SETTLE_S)
        return;
    pthread_mutex_lock(&hc_lock);
    if (!hc_index || hc_n >= HC_MAX) {
        for (size_t k = 0; k < hc_n; k++) {
            free(hc_entries[k].path);
            cfs_image_info_clear(&hc_entries[k].info);
        }
        free(hc_entries);
        cfs_strmap_free(hc_index, NULL);
        hc_index = cfs_strmap_new();
        hc_entries = cfs_xcalloc(HC_MAX, sizeof(*hc_entries));
        hc_n = 0;
    }
    if (cfs_strmap_get_index(hc_index, path, &i)) {
        cfs_image_info_clear(&hc_entries[i].info);
    } else {
        i = hc_n++;
        hc_entries[i].path = cfs_xstrdup(path);
        cfs_strmap_add_index(hc_index, path, i);
    }
    hc_entries[i].dev = (uint64_t)st->st_dev;
    hc_entries[i].ino = (uint64_t)st->st_ino;
    hc_entries[i].size = (int64_t)st->st_size;
    hc_entries[i].mtime = st->st_mtim;
    hc_entries[i].ctime = st->st_ctim;
    info_copy(&hc_entries[i].info, info);
    pthread_mutex_unlock(&hc_lock);
}

int cfs_image_probe(const char *path, const char *format,
                    struct cfs_image_info *out)
{
    _cleanup_(closep) int fd = -1;
    _cleanup_free_ uint8_t *buf = NULL;
    bool known = format && *format;
    ssize_t n;
    int r;

    *out = (struct cfs_image_info){0};
    bool may_parse = !known || cfs_streq(format, "qcow2") || cfs_streq(format, "qcow");
    struct stat st;

    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return -errno;
    /* the cache is asked after the open, with the open file's attributes:
     * on NFS an open revalidates them (close-to-open), a stat alone may
     * answer from the attribute cache and miss another host's rebase */
    if (may_parse && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && hc_get(path, &st, out))
        return 0;

    if (known && !cfs_streq(format, "qcow2") && !cfs_streq(format, "qcow")) {
        /* raw and formats we do not parse: no backing, size of the file */
        out->format = cfs_xstrdup(format);
        return fd_size(fd, &out->virtual_size);
    }

    buf = cfs_xmalloc(HEADER_READ_MAX);
    n = pread(fd, buf, HEADER_READ_MAX, 0);
    if (n < 0)
        return -errno;
    if (n >= 4 && get_be32(buf) == QCOW_MAGIC) {
        r = parse_qcow(fd, buf, (size_t)n, out);
        if (r < 0)
            cfs_image_info_clear(out);
        else if (fstat(fd, &st) == 0)
            hc_put(path, &st, out); /* the file read, as it is after the read */
        return r;
    }
    if (known)
        return -EINVAL; /* declared qcow2, but no qcow2 header */
    out->format = cfs_xstrdup("raw");
    return fd_size(fd, &out->virtual_size);
}

void cfs_image_fill_sizes(struct cfs_layer *l, bool probe)
{
    struct stat st;

    if (!l->path || cfs_image_name_is_protocol(l->path))
        return;
    if (stat(l->path, &st) < 0)
        return;
    l->allocation = (uint64_t)st.st_blocks * 512;
    l->physical = (uint64_t)st.st_size;
    if (S_ISBLK(st.st_mode)) {
        _cleanup_(closep) int fd = open(l->path, O_RDONLY | O_CLOEXEC);

        l->is_block = true;
        if (fd >= 0)
            (void)fd_size(fd, &l->physical);
    }
    if (l->virtual_size == 0 && probe) {
        struct cfs_image_info info;

        if (cfs_image_probe(l->path, l->format, &info) == 0) {
            l->virtual_size = info.virtual_size;
            cfs_image_info_clear(&info);
        }
    }
}

/* ---- loop detection in a chain of thousands: a set of paths ------------- */

/* true if PATH was already in SEEN; else adds it */
static bool path_seen(struct cfs_strmap *seen, const char *path)
{
    return !cfs_strmap_add_index(seen, path, 0);
}

int cfs_image_extend_chain(struct cfs_disk *disk)
{
    _cleanup_strmap_ struct cfs_strmap *seen = cfs_strmap_new();
    bool first = true;

    for (size_t i = 0; i < disk->n_layers; i++)
        if (disk->layers[i].path)
            (void)path_seen(seen, disk->layers[i].path);
    while (disk->n_layers > 0) {
        struct cfs_layer *last = &disk->layers[disk->n_layers - 1];
        struct cfs_image_info info;
        struct cfs_layer *next;
        _cleanup_free_ char *path = NULL;
        int r;

        if (!last->path || cfs_image_name_is_protocol(last->path))
            break;
        r = cfs_image_probe(last->path, last->format, &info);
        if (r < 0)
            return first ? r : 0;
        first = false;
        if (!last->format || !*last->format) {
            free(last->format);
            last->format = cfs_xstrdup(info.format);
        }
        if (last->virtual_size == 0)
            last->virtual_size = info.virtual_size;
        if (!info.backing) {
            cfs_image_info_clear(&info);
            break;
        }
        if (disk->n_layers >= CFS_CHAIN_MAX) {
            cfs_image_info_clear(&info);
            return 1; /* cut: there is more below */
        }
        path = cfs_image_resolve_backing(last->path, info.backing);
        if (path_seen(seen, path)) {
            cfs_image_info_clear(&info);
            break;
        }
        disk->layers = cfs_xrealloc(disk->layers,
                                    (disk->n_layers + 1) * sizeof(*disk->layers));
        next = &disk->layers[disk->n_layers++];
        *next = (struct cfs_layer){0};
        next->path = TAKE_PTR(path);
        next->format = cfs_xstrdup(info.backing_format ? info.backing_format : "");
        cfs_image_info_clear(&info);
        cfs_image_fill_sizes(next, false);
        if (cfs_streq(next->format, "raw") && next->virtual_size == 0)
            next->virtual_size = next->physical;
    }
    return 0;
}

/* ---- what qemu-img commit opens ------------------------------------------- */

/* {"driver":FMT,"file":{"driver":"file"|"host_device","filename":PATH}} */
static struct json_object *commit_node(const struct cfs_layer *l)
{
    struct json_object *node = json_object_new_object();
    struct json_object *file = json_object_new_object();

    json_object_object_add(file, "driver",
                           json_object_new_string(l->is_block ? "host_device" : "file"));
    json_object_object_add(file, "filename", json_object_new_string(l->path));
    json_object_object_add(node, "driver", json_object_new_string(l->format));
    json_object_object_add(node, "file", file);
    return node;
}

static bool commit_layer_ok(const struct cfs_layer *l)
{
    return l && l->path && l->path[0] == '/' && l->format && *l->format &&
           !cfs_image_name_is_protocol(l->path);
}

char *cfs_image_commit_json(const struct cfs_layer *top, const struct cfs_layer *base)
{
    if (!commit_layer_ok(top) || !commit_layer_ok(base))
        return NULL;

    struct json_object *t = commit_node(top);
    struct json_object *b = commit_node(base);

    /* null, not absent: QEMU opens nothing below BASE */
    json_object_object_add(b, "backing", NULL);
    json_object_object_add(t, "backing", b);

    const char *text = json_object_to_json_string_ext(
        t, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    char *out = text ? cfs_xasprintf("json:%s", text) : NULL;

    json_object_put(t);
    return out;
}

/* ---- creating an empty overlay ---------------------------------------------
 * The exact file `qemu-img create -f qcow2 -b BACKING -F FMT` (QEMU 7.2,
 * default options) writes, so that libvirt can take it as-is
 * (VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT) instead of creating it through
 * two QEMU blockdev-create jobs:
 *   cluster 0        header v3 (112 bytes, compression zlib), extensions:
 *                    backing format, feature name table, end; then the
 *                    backing file name
 *   cluster 1        refcount table: one entry, cluster 2
 *   cluster 2        refcount block: 16-bit refcount 1 for each cluster used
 *   cluster 3...     L1 table, all zero, one entry per 512 MiB
 * with 64 KiB clusters; the file ends after the last L1 entry. */
#define OV_CLUSTER_BITS 16u
#define OV_CLUSTER ((uint64_t)1 << OV_CLUSTER_BITS)
#define OV_HEADER_LEN 112u
#define OV_L2_SPAN (OV_CLUSTER * (OV_CLUSTER / 8)) /* bytes one L1 entry maps */
#define OV_L1_OFFSET (3 * OV_CLUSTER)
#define OV_L1_CLUSTERS_MAX 16u /* larger disks go the libvirt way */
#define OV_SIZE_MAX (OV_L1_CLUSTERS_MAX * (OV_CLUSTER / 8) * OV_L2_SPAN) /* 64 TiB */
#define QCOW2_EXT_FEATURE_TABLE 0x6803f857u

static const struct {
    uint8_t type, bit; /* 0 incompatible, 1 compatible, 2 autoclear */
    const char *name;
} ov_features[] = {
    {0, 0, "dirty bit"},           {0, 1, "corrupt bit"},
    {0, 2, "external data file"},  {0, 3, "compression type"},
    {0, 4, "extended L2 entries"}, {1, 0, "lazy refcounts"},
    {2, 0, "bitmaps"},             {2, 1, "raw external data"},
};

static void put_be16(uint8_t *p, uint16_t v)
{
    v = htobe16(v);
    memcpy(p, &v, sizeof(v));
}

static void put_be32(uint8_t *p, uint32_t v)
{
    v = htobe32(v);
    memcpy(p, &v, sizeof(v));
}

static void put_be64(uint8_t *p, uint64_t v)
{
    v = htobe64(v);
    memcpy(p, &v, sizeof(v));
}

/* The first three clusters (header, refcount table, refcount block) and
 * the file's length, in *BUF (3 clusters, caller frees). */
static size_t overlay_layout(const char *backing, const char *backing_format,
                             uint64_t size, uint8_t **bufp, uint64_t *file_len)
{
    uint64_t l1_size = (size + OV_L2_SPAN - 1) / OV_L2_SPAN;
    uint64_t l1_clusters = (l1_size * 8 + OV_CLUSTER - 1) / OV_CLUSTER;
    uint64_t used = 3 + l1_clusters;
    size_t fmt_len = backing ? strlen(backing_format) : 0;
    size_t name_len = backing ? strlen(backing) : 0;
    uint8_t *buf = cfs_xcalloc(3, OV_CLUSTER);
    size_t off = OV_HEADER_LEN;

    put_be32(buf + 0, QCOW_MAGIC);
    put_be32(buf + 4, 3);
    /* 8: backing_file_offset, set below */
    put_be32(buf + 16, (uint32_t)name_len);
    put_be32(buf + 20, OV_CLUSTER_BITS);
    put_be64(buf + 24, size);
    /* 32: crypt_method 0 */
    put_be32(buf + 36, (uint32_t)l1_size);
    put_be64(buf + 40, OV_L1_OFFSET);
    put_be64(buf + 48, OV_CLUSTER);    /* refcount table */
    put_be32(buf + 56, 1);             /* refcount table clusters */
    /* 60: nb_snapshots, 64: snapshots_offset, 72..95: feature bits, 0 */
    put_be32(buf + 96, 4);             /* refcount_order: 16-bit refcounts */
    put_be32(buf + 100, OV_HEADER_LEN);
    /* 104: compression type zlib (0), padding */

    if (backing) {
        put_be32(buf + off, QCOW2_EXT_BACKING_FORMAT);
        put_be32(buf + off + 4, (uint32_t)fmt_len);
        memcpy(buf + off + 8, backing_format, fmt_len);
        off += 8 + ((fmt_len + 7) & ~(size_t)7);
    }

    put_be32(buf + off, QCOW2_EXT_FEATURE_TABLE);
    put_be32(buf + off + 4, (uint32_t)(ELEMENTSOF(ov_features) * 48));
    off += 8;
    for (size_t i = 0; i < ELEMENTSOF(ov_features); i++, off += 48) {
        buf[off] = ov_features[i].type;
        buf[off + 1] = ov_features[i].bit;
        memcpy(buf + off + 2, ov_features[i].name, strlen(ov_features[i].name));
    }
    off += 8; /* end of extensions: type 0, length 0 */

    if (backing) {
        put_be64(buf + 8, off);
        memcpy(buf + off, backing, name_len);
    } /* else no backing: offset and length stay 0 */

    put_be64(buf + OV_CLUSTER, 2 * OV_CLUSTER); /* the refcount block */
    for (uint64_t c = 0; c < used; c++)
        put_be16(buf + 2 * OV_CLUSTER + 2 * c, 1);

    *bufp = buf;
    *file_len = OV_L1_OFFSET + l1_size * 8;
    return 3 * OV_CLUSTER;
}

int cfs_image_create_overlay(const char *path, const char *backing,
                             const char *backing_format, uint64_t size)
{
    if (!backing)
        return -EINVAL;
    return cfs_image_create(path, backing, backing_format, size, NULL);
}

int cfs_image_create(const char *path, const char *backing,
                     const char *backing_format, uint64_t size,
                     struct stat *st_out)
{
    _cleanup_free_ uint8_t *buf = NULL;
    _cleanup_free_ char *dir = NULL;
    uint64_t file_len;
    size_t len;
    int fd, r;

    if (backing && !cfs_streq(backing_format, "qcow2") &&
        !cfs_streq(backing_format, "raw"))
        return -EINVAL;
    if (size == 0 || size % 512 || size > OV_SIZE_MAX ||
        (backing && (backing[0] != '/' ||
                     strlen(backing) > QCOW_BACKING_NAME_MAX)))
        return -EINVAL;

    len = overlay_layout(backing, backing_format, size, &buf, &file_len);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -errno;
    r = cfs_write_all(fd, buf, len);
    if (r == 0 && ftruncate(fd, (off_t)file_len) < 0)
        r = -errno;
    if (r == 0 && fsync(fd) < 0)
        r = -errno;
    if (r == 0 && st_out && fstat(fd, st_out) < 0)
        r = -errno;
    if (close(fd) < 0 && r == 0)
        r = -errno;
    if (r < 0) {
        unlink(path);
        return r;
    }

    /* the name too must survive a crash once QEMU writes into the file */
    const char *slash = strrchr(path, '/');
    dir = slash == path ? cfs_xstrdup("/")
          : slash       ? cfs_xasprintf("%.*s", (int)(slash - path), path)
                        : cfs_xstrdup(".");
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    r = fd < 0 ? -errno : cfs_fsync_dir(fd);
    if (fd >= 0)
        close(fd);
    if (r < 0)
        unlink(path);
    return r;
}
