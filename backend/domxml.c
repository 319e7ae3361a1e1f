/* domxml.c — libvirt domain and snapshot XML with libxml2. See domxml.h.
 *
 * Walks the element tree directly (no XPath): a disk's own <source>,
 * <driver>, <backingStore> are its direct children, and a <mirror> or the
 * <domain> copy inside a snapshot must not be mistaken for them.
 *
 * Owns nothing; thread-safe once cfs_domxml_init() has run. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>

#include <libxml/parser.h>
#include <libxml/tree.h>

#include "chainfs/util.h"
#include "domxml.h"

/* XML_PARSE_HUGE: a running domain's live XML nests one <backingStore> per
 * layer, and libxml2 stops at 256 elements deep without it (2048 with it,
 * i.e. chains up to ~2,040 layers). The XML is libvirt's own, not a
 * user's; no network access either way. */
#define PARSE_OPTS (XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING | \
                    XML_PARSE_HUGE)

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void init_libxml(void)
{
    xmlInitParser();
}

void cfs_domxml_init(void)
{
    pthread_once(&init_once, init_libxml);
}

static void docp(xmlDoc **d)
{
    if (*d)
        xmlFreeDoc(*d);
}
#define _cleanup_doc_ _cleanup_(docp)

static xmlDoc *parse(const char *xml)
{
    cfs_domxml_init();
    if (!xml)
        return NULL;
    return xmlReadMemory(xml, (int)strlen(xml), "domain.xml", NULL, PARSE_OPTS);
}

static bool is_elem(const xmlNode *n, const char *name)
{
    return n && n->type == XML_ELEMENT_NODE &&
           xmlStrEqual(n->name, (const xmlChar *)name);
}

static xmlNode *child(const xmlNode *n, const char *name)
{
    if (!n)
        return NULL;
    for (xmlNode *c = n->children; c; c = c->next)
        if (is_elem(c, name))
            return c;
    return NULL;
}

/* Attribute value as a malloc'd string, NULL if absent. */
static char *prop(const xmlNode *n, const char *name)
{
    xmlChar *v;
    char *s;

    if (!n)
        return NULL;
    v = xmlGetProp(n, (const xmlChar *)name);
    if (!v)
        return NULL;
    s = cfs_xstrdup((const char *)v);
    xmlFree(v);
    return s;
}

static bool prop_is(const xmlNode *n, const char *name, const char *value)
{
    _cleanup_free_ char *v = prop(n, name);
    return cfs_streq(v, value);
}

static char *text(const xmlNode *n)
{
    xmlChar *v;
    char *s;

    if (!n)
        return NULL;
    v = xmlNodeGetContent(n);
    if (!v)
        return NULL;
    s = cfs_xstrdup((const char *)v);
    xmlFree(v);
    return s;
}

static bool has_element_children(const xmlNode *n)
{
    for (xmlNode *c = n->children; c; c = c->next)
        if (c->type == XML_ELEMENT_NODE)
            return true;
    return false;
}

/* The path a <source> names for a disk or backingStore of TYPE. */
static char *source_path(const char *type, const xmlNode *source)
{
    if (!source)
        return NULL;
    if (cfs_streq(type, "file"))
        return prop(source, "file");
    if (cfs_streq(type, "block"))
        return prop(source, "dev");
    if (cfs_streq(type, "network")) {
        _cleanup_free_ char *protocol = prop(source, "protocol");
        _cleanup_free_ char *name = prop(source, "name");
        _cleanup_free_ char *host = prop(child(source, "host"), "name");

        if (!protocol)
            return NULL;
        if (host)
            return cfs_xasprintf("%s://%s/%s", protocol, host, name ? name : "");
        return cfs_xasprintf("%s:%s", protocol, name ? name : "");
    }
    return NULL;
}

static unsigned parse_index(const xmlNode *n)
{
    _cleanup_free_ char *v = prop(n, "index");
    return v ? (unsigned)strtoul(v, NULL, 10) : 0;
}

static void add_layer(struct cfs_disk *disk, struct cfs_domxml_disk *extra,
                      char *path, char *format, bool is_block, unsigned index)
{
    struct cfs_layer *l;

    disk->layers = cfs_xrealloc(disk->layers,
                                (disk->n_layers + 1) * sizeof(*disk->layers));
    extra->index = cfs_xrealloc(extra->index,
                                (disk->n_layers + 1) * sizeof(*extra->index));
    extra->index[disk->n_layers] = index;
    l = &disk->layers[disk->n_layers++];
    *l = (struct cfs_layer){0};
    l->path = path;
    l->format = format ? format : cfs_xstrdup("");
    l->is_block = is_block;
    l->index = index;
}

/* The layers under a disk's <backingStore> children. */
static void parse_backing_chain(const xmlNode *disk_node, struct cfs_disk *disk,
                                struct cfs_domxml_disk *extra)
{
    const xmlNode *bs = child(disk_node, "backingStore");

    while (bs) {
        _cleanup_free_ char *type = prop(bs, "type");
        char *path;

        if (!type && !has_element_children(bs)) {
            extra->chain_complete = true;
            return;
        }
        path = source_path(type, child(bs, "source"));
        if (!path)
            return;
        add_layer(disk, extra, path, prop(child(bs, "format"), "type"),
                  cfs_streq(type, "block"), parse_index(bs));
        bs = child(bs, "backingStore");
    }
}

static bool listed_device(const char *device)
{
    return !device || cfs_streq(device, "disk") || cfs_streq(device, "lun") ||
           cfs_streq(device, "cdrom") || cfs_streq(device, "floppy");
}

static void add_note(struct cfs_domain *d, const char *target, const char *why)
{
    d->unsnappable = cfs_xrealloc(d->unsnappable,
                                  (d->n_unsnappable + 1) * sizeof(*d->unsnappable));
    d->unsnappable[d->n_unsnappable++] = (struct cfs_disk_note){
        .target = cfs_xstrdup(target),
        .why = cfs_xstrdup(why),
    };
}

/* Why a <disk> of TYPE, DEVICE, with source PATH (NULL: none) cannot have
 * an external snapshot, or NULL if it can (design issue10 §2.3: libvirt
 * refuses read-only ones, qemuSnapshotPrepareDiskExternalActive SCSI
 * passthrough (lun); shareable ones would snapshot a disk other domains
 * write; cdroms and floppies are removable media). */
static const char *unsnappable_why(const xmlNode *node, const char *type,
                                   const char *device, const char *path)
{
    if (cfs_streq(device, "cdrom"))
        return "cdrom";
    if (cfs_streq(device, "floppy"))
        return "floppy";
    if (cfs_streq(device, "lun"))
        return "lun";
    if (cfs_streq(type, "network"))
        return "network";
    if (type && !cfs_streq(type, "file") && !cfs_streq(type, "block"))
        return type; /* "volume", "dir", "nvme", "vhostuser" */
    if (!path || !*path)
        return "no source";
    if (child(node, "readonly"))
        return "read-only";
    if (child(node, "shareable"))
        return "shareable";
    return NULL;
}

static void parse_disk(const xmlNode *node, struct cfs_domxml *x)
{
    _cleanup_free_ char *type = prop(node, "type");
    _cleanup_free_ char *device = prop(node, "device");
    _cleanup_free_ char *target = prop(child(node, "target"), "dev");
    _cleanup_free_ char *path = NULL;
    struct cfs_domain *d = x->domain;
    const xmlNode *source = child(node, "source");
    struct cfs_disk *disk;
    struct cfs_domxml_disk *extra;

    if (!target)
        return;
    cfs_strv_push(&x->targets, cfs_xstrdup(target));
    path = cfs_streq(type, "file") || cfs_streq(type, "block") ? source_path(type, source)
                                                               : NULL;
    const char *why = unsnappable_why(node, type ? type : "file", device, path);
    if (why)
        add_note(d, target, why);
    if (!cfs_streq(type, "file") && !cfs_streq(type, "block"))
        return;
    if (!listed_device(device))
        return;
    if (!path || !*path)
        return;

    d->disks = cfs_xrealloc(d->disks, (d->n_disks + 1) * sizeof(*d->disks));
    x->disks = cfs_xrealloc(x->disks, (d->n_disks + 1) * sizeof(*x->disks));
    disk = &d->disks[d->n_disks];
    extra = &x->disks[d->n_disks];
    d->n_disks++;
    x->n_disks = d->n_disks;
    *disk = (struct cfs_disk){0};
    *extra = (struct cfs_domxml_disk){0};

    disk->target = TAKE_PTR(target);
    disk->readonly = child(node, "readonly") != NULL || cfs_streq(device, "cdrom");
    disk->shareable = child(node, "shareable") != NULL;
    disk->is_block = cfs_streq(type, "block");
    add_layer(disk, extra, TAKE_PTR(path), prop(child(node, "driver"), "type"),
              disk->is_block, parse_index(source));
    parse_backing_chain(node, disk, extra);
}

int cfs_domxml_parse(const char *xml, struct cfs_domxml *out)
{
    _cleanup_doc_ xmlDoc *doc = parse(xml);
    const xmlNode *root;
    _cleanup_free_ char *uuid = NULL;

    *out = (struct cfs_domxml){0};
    root = doc ? xmlDocGetRootElement(doc) : NULL;
    if (!is_elem(root, "domain"))
        return -EINVAL;

    out->domain = cfs_xcalloc(1, sizeof(*out->domain));
    out->domain->name = text(child(root, "name"));
    if (!out->domain->name) {
        cfs_domxml_clear(out);
        return -EINVAL;
    }
    uuid = text(child(root, "uuid"));
    if (uuid)
        snprintf(out->domain->uuid, sizeof(out->domain->uuid), "%s", uuid);

    for (const xmlNode *c = child(child(root, "devices"), "disk"); c; c = c->next)
        if (is_elem(c, "disk"))
            parse_disk(c, out);
    return 0;
}

void cfs_domxml_clear(struct cfs_domxml *x)
{
    if (!x)
        return;
    for (size_t i = 0; i < x->n_disks; i++)
        free(x->disks[i].index);
    free(x->disks);
    cfs_domain_free(x->domain);
    cfs_strv_free(x->targets);
    *x = (struct cfs_domxml){0};
}

int cfs_domxml_parse_snapshot(const char *xml, struct cfs_snapxml *out)
{
    _cleanup_doc_ xmlDoc *doc = parse(xml);
    const xmlNode *root;

    *out = (struct cfs_snapxml){0};
    root = doc ? xmlDocGetRootElement(doc) : NULL;
    if (!is_elem(root, "domainsnapshot"))
        return -EINVAL;
    out->name = text(child(root, "name"));
    if (!out->name)
        return -EINVAL;
    out->parent = text(child(child(root, "parent"), "name"));
    out->description = text(child(root, "description"));
    _cleanup_free_ char *created = text(child(root, "creationTime"));
    if (created)
        out->created = strtoll(created, NULL, 10);

    for (const xmlNode *c = child(child(root, "disks"), "disk"); c; c = c->next) {
        _cleanup_free_ char *snapshot = NULL, *type = NULL, *target = NULL;
        char *source;

        if (!is_elem(c, "disk"))
            continue;
        snapshot = prop(c, "snapshot");
        target = prop(c, "name");
        type = prop(c, "type");
        source = !snapshot || cfs_streq(snapshot, "external")
                     ? source_path(type ? type : "file", child(c, "source"))
                     : NULL;
        if (target) {
            out->all = cfs_xrealloc(out->all, (out->n_all + 1) * sizeof(*out->all));
            out->all[out->n_all++] = (struct cfs_snap_disk){
                .target = cfs_xstrdup(target),
                .snapshot = cfs_xstrdup(snapshot ? snapshot : "external"),
                .source = cfs_xstrdup(source),
            };
        }
        if (!target || !source) {
            free(source);
            continue;
        }
        out->disks = cfs_xrealloc(out->disks, (out->n_disks + 1) * sizeof(*out->disks));
        out->disks[out->n_disks++] = (struct cfs_snapxml_disk){
            .target = TAKE_PTR(target),
            .source = source,
        };
    }
    return 0;
}

void cfs_snapxml_clear(struct cfs_snapxml *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n_disks; i++) {
        free(s->disks[i].target);
        free(s->disks[i].source);
    }
    free(s->disks);
    free(s->name);
    free(s->parent);
    free(s->description);
    for (size_t i = 0; i < s->n_all; i++) {
        free(s->all[i].target);
        free(s->all[i].snapshot);
        free(s->all[i].source);
    }
    free(s->all);
    *s = (struct cfs_snapxml){0};
}

static char *dump(xmlDoc *doc)
{
    xmlChar *mem = NULL;
    int len = 0;
    char *s;

    xmlDocDumpMemory(doc, &mem, &len);
    if (!mem)
        return NULL;
    s = cfs_xstrdup((const char *)mem);
    xmlFree(mem);
    return s;
}

static void set_prop(xmlNode *n, const char *name, const char *value)
{
    xmlSetProp(n, (const xmlChar *)name, (const xmlChar *)value);
}

static xmlNode *new_child(xmlNode *parent, const char *name)
{
    return xmlNewChild(parent, NULL, (const xmlChar *)name, NULL);
}

char *cfs_domxml_snapshot_xml_multi(const char *name, size_t n,
                                    const char *const *disks,
                                    const char *const *overlays,
                                    const char *description,
                                    char *const *targets)
{
    _cleanup_doc_ xmlDoc *doc = NULL;
    xmlNode *root, *dnode, *d;

    if (!name || n == 0 || !disks || !overlays)
        return NULL;
    cfs_domxml_init();
    doc = xmlNewDoc((const xmlChar *)"1.0");
    root = xmlNewNode(NULL, (const xmlChar *)"domainsnapshot");
    xmlDocSetRootElement(doc, root);
    /* xmlNewTextChild escapes its content; attribute values are escaped
     * when serialised */
    xmlNewTextChild(root, NULL, (const xmlChar *)"name", (const xmlChar *)name);
    if (description)
        xmlNewTextChild(root, NULL, (const xmlChar *)"description",
                        (const xmlChar *)description);
    dnode = new_child(root, "disks");

    for (size_t i = 0; i < n; i++) {
        if (!disks[i] || !overlays[i])
            return NULL;
        d = new_child(dnode, "disk");
        set_prop(d, "name", disks[i]);
        set_prop(d, "snapshot", "external");
        set_prop(d, "type", "file");
        set_prop(new_child(d, "driver"), "type", "qcow2");
        set_prop(new_child(d, "source"), "file", overlays[i]);
    }
    for (char *const *t = targets; t && *t; t++) {
        bool taken = false;

        for (size_t i = 0; i < n && !taken; i++)
            taken = cfs_streq(*t, disks[i]);
        if (taken)
            continue;
        d = new_child(dnode, "disk");
        set_prop(d, "name", *t);
        set_prop(d, "snapshot", "no");
    }
    return dump(doc);
}

char *cfs_domxml_snapshot_xml(const char *name, const char *disk,
                              const char *overlay, char *const *targets)
{
    return cfs_domxml_snapshot_xml_multi(name, 1, &disk, &overlay, NULL, targets);
}

char *cfs_domxml_copy_dest_xml(const char *path, const char *format)
{
    _cleanup_doc_ xmlDoc *doc = NULL;
    xmlNode *root;

    cfs_domxml_init();
    doc = xmlNewDoc((const xmlChar *)"1.0");
    root = xmlNewNode(NULL, (const xmlChar *)"disk");
    xmlDocSetRootElement(doc, root);
    set_prop(root, "type", "file");
    set_prop(new_child(root, "source"), "file", path);
    set_prop(new_child(root, "driver"), "type", format);
    return dump(doc);
}

static xmlNode *find_disk(xmlNode *root, const char *target)
{
    for (xmlNode *c = child(child(root, "devices"), "disk"); c; c = c->next)
        if (is_elem(c, "disk") && prop_is(child(c, "target"), "dev", target))
            return c;
    return NULL;
}

int cfs_domxml_mirror_ready(const char *xml, const char *target, bool *ready)
{
    _cleanup_doc_ xmlDoc *doc = parse(xml);
    xmlNode *root, *disk;

    *ready = false;
    root = doc ? xmlDocGetRootElement(doc) : NULL;
    if (!is_elem(root, "domain"))
        return -EINVAL;
    disk = find_disk(root, target);
    if (!disk)
        return -ENOENT;
    *ready = prop_is(child(disk, "mirror"), "ready", "yes");
    return 0;
}

/* Remove every direct <backingStore> child of DISK; true if any. */
static bool drop_backing_store(xmlNode *disk)
{
    xmlNode *c = disk->children;
    bool changed = false;

    while (c) {
        xmlNode *next = c->next;

        if (is_elem(c, "backingStore")) {
            xmlUnlinkNode(c);
            xmlFreeNode(c);
            changed = true;
        }
        c = next;
    }
    return changed;
}

int cfs_domxml_set_disk_source(const char *xml, const char *target,
                               const char *path, const char *format,
                               bool is_block, char **out)
{
    _cleanup_doc_ xmlDoc *doc = parse(xml);
    xmlNode *root, *disk, *source, *driver;

    *out = NULL;
    root = doc ? xmlDocGetRootElement(doc) : NULL;
    if (!is_elem(root, "domain"))
        return -EINVAL;
    disk = find_disk(root, target);
    if (!disk)
        return -ENOENT;

    set_prop(disk, "type", is_block ? "block" : "file");
    source = child(disk, "source");
    if (!source)
        source = new_child(disk, "source");
    xmlUnsetProp(source, (const xmlChar *)"file");
    xmlUnsetProp(source, (const xmlChar *)"dev");
    xmlUnsetProp(source, (const xmlChar *)"index");
    set_prop(source, is_block ? "dev" : "file", path);

    driver = child(disk, "driver");
    if (!driver) {
        driver = new_child(disk, "driver");
        set_prop(driver, "name", "qemu");
    }
    set_prop(driver, "type", format);

    drop_backing_store(disk);
    *out = dump(doc);
    return *out ? 0 : -EINVAL;
}

int cfs_domxml_drop_backing_store(const char *xml, const char *target,
                                  char **out, bool *changed)
{
    _cleanup_doc_ xmlDoc *doc = parse(xml);
    xmlNode *root, *disk;

    *out = NULL;
    *changed = false;
    root = doc ? xmlDocGetRootElement(doc) : NULL;
    if (!is_elem(root, "domain"))
        return -EINVAL;
    disk = find_disk(root, target);
    if (!disk)
        return -ENOENT;
    *changed = drop_backing_store(disk);
    *out = dump(doc);
    return *out ? 0 : -EINVAL;
}

int cfs_domxml_snapshot_drop_disk(const char *xml, const char *target,
                                  char **out)
{
    _cleanup_doc_ xmlDoc *doc = parse(xml);
    xmlNode *root, *disk = NULL;

    *out = NULL;
    root = doc ? xmlDocGetRootElement(doc) : NULL;
    if (!is_elem(root, "domainsnapshot"))
        return -EINVAL;
    for (xmlNode *c = child(child(root, "disks"), "disk"); c && !disk; c = c->next)
        if (is_elem(c, "disk") && prop_is(c, "name", target))
            disk = c;
    if (!disk)
        return -ENOENT;

    while (disk->children) {
        xmlNode *c = disk->children;

        xmlUnlinkNode(c);
        xmlFreeNode(c);
    }
    xmlUnsetProp(disk, (const xmlChar *)"type");
    set_prop(disk, "snapshot", "no");
    *out = dump(doc);
    return *out ? 0 : -EINVAL;
}

int cfs_domxml_snapshot_retarget(const char *xml, const char *target,
                                 const char *new_source, char **out)
{
    _cleanup_doc_ xmlDoc *doc = parse(xml);
    _cleanup_free_ char *type = NULL;
    xmlNode *root, *disk = NULL, *source;
    const char *attr;

    *out = NULL;
    root = doc ? xmlDocGetRootElement(doc) : NULL;
    if (!is_elem(root, "domainsnapshot") || !new_source || !*new_source)
        return -EINVAL;
    /* only <disks>: the <domain> and <inactiveDomain> copies have disks
     * of their own (<disk><target dev=...>), which stay as they are */
    for (xmlNode *c = child(child(root, "disks"), "disk"); c && !disk; c = c->next)
        if (is_elem(c, "disk") && prop_is(c, "name", target))
            disk = c;
    if (!disk)
        return -ENOENT;
    /* the disk must name a file as cfs_domxml_parse_snapshot() reads it:
     * snapshot='external' (or unset), a file overlay by file=, a block
     * one by dev= (snapshot='no' names none) */
    if (xmlHasProp(disk, (const xmlChar *)"snapshot") &&
        !prop_is(disk, "snapshot", "external"))
        return -ENOENT;
    type = prop(disk, "type");
    attr = !type || cfs_streq(type, "file") ? "file"
           : cfs_streq(type, "block")       ? "dev"
                                            : NULL;
    source = child(disk, "source");
    if (!attr || !source || !xmlHasProp(source, (const xmlChar *)attr))
        return -ENOENT;
    set_prop(source, attr, new_source);
    *out = dump(doc);
    return *out ? 0 : -EINVAL;
}

int cfs_domxml_snapshot_domain_source(const char *xml, const char *target,
                                      const char *new_source, char **out)
{
    _cleanup_doc_ xmlDoc *doc = parse(xml);
    xmlNode *root;
    bool found = false;

    *out = NULL;
    root = doc ? xmlDocGetRootElement(doc) : NULL;
    if (!is_elem(root, "domainsnapshot") || !new_source || !*new_source)
        return -EINVAL;
    for (xmlNode *c = root->children; c; c = c->next) {
        if (!is_elem(c, "domain") && !is_elem(c, "inactiveDomain"))
            continue;
        xmlNode *disk = find_disk(c, target);
        xmlNode *source = disk ? child(disk, "source") : NULL;
        if (!source || !xmlHasProp(source, (const xmlChar *)"file"))
            continue;
        set_prop(source, "file", new_source);
        drop_backing_store(disk);
        found = true;
    }
    if (!found)
        return -ENOENT;
    *out = dump(doc);
    return *out ? 0 : -EINVAL;
}

/* ---- storage volumes ------------------------------------------------------ */

static uint64_t number(const xmlNode *n)
{
    _cleanup_free_ char *t = text(n);
    return t ? strtoull(t, NULL, 10) : 0;
}

int cfs_domxml_parse_volume(const char *xml, struct cfs_volxml *out)
{
    _cleanup_doc_ xmlDoc *doc = parse(xml);
    const xmlNode *root, *bs;

    *out = (struct cfs_volxml){0};
    root = doc ? xmlDocGetRootElement(doc) : NULL;
    if (!is_elem(root, "volume"))
        return -EINVAL;
    out->format = prop(child(child(root, "target"), "format"), "type");
    out->capacity = number(child(root, "capacity"));
    out->allocation = number(child(root, "allocation"));
    out->physical = number(child(root, "physical"));
    bs = child(root, "backingStore");
    out->backing = text(child(bs, "path"));
    out->backing_format = prop(child(bs, "format"), "type");
    return 0;
}

void cfs_volxml_clear(struct cfs_volxml *v)
{
    if (!v)
        return;
    free(v->format);
    free(v->backing);
    free(v->backing_format);
    *v = (struct cfs_volxml){0};
}

/* ---- URIs ---------------------------------------------------------------- */

bool cfs_uri_remote(const char *uri, char *why, size_t sz, bool *embed)
{
    const char *sep = strstr(uri, "://"), *plus, *host, *path;
    size_t host_len, path_len;

    *embed = false;
    if (!sep) {
        snprintf(why, sz, "cannot parse the URI %s", uri);
        return true;
    }
    plus = memchr(uri, '+', (size_t)(sep - uri));
    if (plus && ((size_t)(sep - plus - 1) != 4 || strncmp(plus + 1, "unix", 4) != 0)) {
        snprintf(why, sz, "%s reaches libvirt over %.*s", uri,
                 (int)(sep - plus - 1), plus + 1);
        return true;
    }
    host = sep + 3;
    host_len = strcspn(host, "/?");
    if (host_len > 0) {
        snprintf(why, sz, "%s names the host %.*s", uri, (int)host_len, host);
        return true;
    }
    path = host + host_len;
    path_len = strcspn(path, "?");
    *embed = path_len == 6 && strncmp(path, "/embed", 6) == 0;
    return false;
}
