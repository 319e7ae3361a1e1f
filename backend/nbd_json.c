/* nbd_json.c — the `json:` filename that gives qemu-nbd exactly a frozen
 * chain (docs/design/issue9.md §1.2 "Rules for the builder"). Pure: no
 * libnbd, no I/O; unit-tested in tests/unit/test_nbd_json.c.
 *
 *   json:{"driver":"qcow2","file":{"driver":"file","filename":"/a/s1.qcow2"},
 *         "backing":{"driver":"raw","file":{"driver":"host_device",
 *                                           "filename":"/dev/vg/base"}}}
 *
 * Each layer's driver is its format as libvirt reports it (never probed);
 * the protocol node is "file" for a regular file and "host_device" for a
 * block device. The bottom layer has no "backing" key at all (not null):
 * QEMU then follows the header's backing if the model missed one rather
 * than silently showing its unallocated clusters as holes. Strings are
 * escaped by json-c (quote, backslash, control characters). */
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chainfs/imgserve.h"

static int add_str(struct json_object *o, const char *key, const char *val)
{
    struct json_object *s = json_object_new_string(val);
    if (!s)
        return -1;
    if (json_object_object_add(o, key, s) != 0) {
        json_object_put(s);
        return -1;
    }
    return 0;
}

/* One layer's node: {"driver":FMT,"file":{"driver":PROTO,"filename":PATH}}
 * plus BACKING (taken over; NULL for the bottom layer). */
static struct json_object *layer_node(const struct cfs_img_layer *l,
                                      struct json_object *backing)
{
    struct json_object *node = json_object_new_object();
    struct json_object *file = json_object_new_object();
    if (!node || !file)
        goto fail;
    if (add_str(file, "driver", l->is_block ? "host_device" : "file") < 0 ||
        add_str(file, "filename", l->path) < 0)
        goto fail;
    if (add_str(node, "driver", l->format) < 0)
        goto fail;
    if (json_object_object_add(node, "file", file) != 0)
        goto fail;
    file = NULL;
    if (backing) {
        if (json_object_object_add(node, "backing", backing) != 0)
            goto fail;
    }
    return node;
fail:
    json_object_put(file);
    json_object_put(node);
    json_object_put(backing);
    return NULL;
}

char *cfs_imgserve_chain_json(const struct cfs_img_spec *spec,
                              const char **err)
{
    static const char *no_err;
    if (!err)
        err = &no_err;
    *err = NULL;
    if (!spec || !spec->layers || spec->n_layers == 0) {
        *err = "empty chain";
        return NULL;
    }
    for (size_t i = 0; i < spec->n_layers; i++) {
        const struct cfs_img_layer *l = &spec->layers[i];
        if (!l->format || !l->format[0]) {
            *err = "format of a layer unknown (never probed): set it with "
                   "`qemu-img rebase -u -F FMT -b BACKING FILE`";
            return NULL;
        }
        if (!l->path || l->path[0] != '/') {
            *err = "layer path not absolute";
            return NULL;
        }
    }

    /* Bottom up: each node takes the one below as its "backing". */
    struct json_object *below = NULL;
    for (size_t i = spec->n_layers; i-- > 0;) {
        below = layer_node(&spec->layers[i], below);
        if (!below) {
            *err = "out of memory";
            return NULL;
        }
    }
    const char *text = json_object_to_json_string_ext(
        below, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    char *out = NULL;
    if (!text || asprintf(&out, "json:%s", text) < 0) {
        out = NULL;
        *err = "out of memory";
    }
    json_object_put(below);
    return out;
}
