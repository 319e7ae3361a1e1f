/* domxml.h — libvirt's XML, parsed and written with libxml2, without
 * linking libvirt: domain XML -> disks and chains, snapshot XML -> which
 * overlay each snapshot created, the XML for a new disk-only snapshot, the
 * <mirror ready=...> of a running job, and the inactive-XML edit that an
 * offline active commit needs.
 *
 * Pure functions over strings; thread-safe once xmlInitParser() has run
 * (cfs_domxml_init(), called by the backend constructor). Every function
 * returns 0 or a negative errno: -EINVAL for XML that does not parse or
 * lacks what is needed, -ENOENT for a disk target that is not there. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chainfs/model.h"

/* Does the libvirt URI reach its daemon over a network transport (any
 * "+TRANSPORT" but "+unix") or name a host ("qemu://host/system")? Then
 * its paths are not this machine's: true, and WHY (SZ bytes) says which.
 * Also true for what does not parse. False for a local URI; *EMBED then
 * tells whether the driver runs inside this process (".../embed"). */
bool cfs_uri_remote(const char *uri, char *why, size_t sz, bool *embed);

/* Initialise libxml2 for multi-threaded use; idempotent. */
void cfs_domxml_init(void);

/* Per-disk facts of the XML that struct cfs_disk has no room for. */
struct cfs_domxml_disk {
    /* The chain ends in an empty <backingStore/>: nothing below the last
     * layer. False for an inactive definition, whose chain (if any) is
     * what the user or a live snapshot wrote, and which libvirt probes
     * further at start. */
    bool chain_complete;
    /* index= attribute of each layer (0 if absent); n = disk's n_layers.
     * Live XML only; matches domstats' block.N.backingIndex. */
    unsigned *index;
};

struct cfs_domxml {
    /* name, uuid and the listed disks (file or block source, device disk,
     * lun, cdrom or floppy); layers have path, format, is_block, sizes 0;
     * unsnappable[]: every <disk> an external snapshot must leave out
     * (snapshot='no'), listed or not, in the XML's order, with why
     * ("cdrom", "floppy", "lun", "network", another <disk type=> than
     * file or block, "no source", "read-only", "shareable": the first
     * that applies). state, persistent and snapshots are left for the
     * caller. */
    struct cfs_domain *domain;
    struct cfs_domxml_disk *disks;   /* parallel to domain->disks; stays
                                        valid if the caller takes domain */
    size_t n_disks;
    char **targets;                  /* every <disk> target, listed or not */
};

int cfs_domxml_parse(const char *xml, struct cfs_domxml *out);
void cfs_domxml_clear(struct cfs_domxml *x);

/* One disk of a snapshot's <disks>: external snapshots only. */
struct cfs_snapxml_disk {
    char *target;   /* <disk name='vda'> */
    char *source;   /* the overlay it created: <source file=> or dev= */
};

struct cfs_snapxml {
    char *name;
    size_t n_disks;
    struct cfs_snapxml_disk *disks;
    /* issue 10, the facts (struct cfs_snap_info): */
    char *parent;              /* <parent><name>, or NULL */
    char *description;         /* <description>, or NULL */
    int64_t created;           /* <creationTime>, 0 if absent */
    size_t n_all;
    struct cfs_snap_disk *all; /* every <disks> entry: its snapshot=
                                  ("external" when absent) and, for an
                                  external one, its source */
};

int cfs_domxml_parse_snapshot(const char *xml, struct cfs_snapxml *out);
void cfs_snapxml_clear(struct cfs_snapxml *s);

/* A storage volume's XML (virStorageVolGetXMLDesc): what libvirt knows of
 * an image on its own host. Strings NULL when absent, sizes 0. */
struct cfs_volxml {
    char *format;          /* <target><format type=> */
    uint64_t capacity, allocation, physical;
    char *backing;         /* <backingStore><path> */
    char *backing_format;  /* <backingStore><format type=> */
};

int cfs_domxml_parse_volume(const char *xml, struct cfs_volxml *out);
void cfs_volxml_clear(struct cfs_volxml *v);

/* <domainsnapshot> for an external disk-only snapshot NAME of DISK into a
 * new qcow2 OVERLAY; every other target in TARGETS gets snapshot='no'.
 * Everything is escaped. Caller frees. */
char *cfs_domxml_snapshot_xml(const char *name, const char *disk,
                              const char *overlay, char *const *targets);
/* The same for N disks DISKS[i] into OVERLAYS[i] (issue 10: one atomic
 * snapshot of several disks), with <description> DESCRIPTION unless it
 * is NULL; every target of TARGETS not in DISKS gets snapshot='no'. */
char *cfs_domxml_snapshot_xml_multi(const char *name, size_t n,
                                    const char *const *disks,
                                    const char *const *overlays,
                                    const char *description,
                                    char *const *targets);

/* <disk type='file'><source file=PATH/><driver type=FORMAT/></disk>, the
 * destination of a block copy (virDomainBlockCopy). Escaped. Caller
 * frees. */
char *cfs_domxml_copy_dest_xml(const char *path, const char *format);

/* Live XML: *READY = the disk TARGET has <mirror ready='yes'>. No mirror
 * at all is not an error (*READY = false). */
int cfs_domxml_mirror_ready(const char *xml, const char *target, bool *ready);

/* Inactive XML: make disk TARGET's source PATH (a file, or a block device
 * if IS_BLOCK), its driver type FORMAT, and drop every <backingStore>
 * under it so libvirt probes the chain again at start. *OUT is the whole
 * new domain XML. */
int cfs_domxml_set_disk_source(const char *xml, const char *target,
                               const char *path, const char *format,
                               bool is_block, char **out);

/* Inactive XML: drop every <backingStore> under disk TARGET (libvirt
 * trusts a user-supplied chain over the image headers, so after the chain
 * is rewritten on disk a stale one must go). *CHANGED tells whether there
 * was any; *OUT is the whole new domain XML. */
int cfs_domxml_drop_backing_store(const char *xml, const char *target,
                                  char **out, bool *changed);

/* Snapshot XML: make disk TARGET of <disks> snapshot='no' (its overlay no
 * longer named), keeping everything else, the <domain> copy included, as
 * VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE wants it. *OUT is the whole new
 * snapshot XML. */
int cfs_domxml_snapshot_drop_disk(const char *xml, const char *target,
                                  char **out);

/* Snapshot XML: the overlay disk TARGET of <disks> names becomes
 * NEW_SOURCE (its <source> file=, or dev= for a block overlay); nothing
 * else changes, neither the name, parent, creationTime, state, the other
 * disks nor the <domain>/<inactiveDomain> copies, as
 * VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE wants it (design issue8 §2.4: after
 * a pull the active layer takes the pulled snapshot's identity). *OUT is
 * the whole new snapshot XML. -ENOENT if <disks> has no disk TARGET
 * naming a file (absent, or snapshot='no'); -EINVAL if XML is not a
 * <domainsnapshot> or NEW_SOURCE is empty. */
int cfs_domxml_snapshot_retarget(const char *xml, const char *target,
                                 const char *new_source, char **out);

/* Snapshot XML: in its <domain> and <inactiveDomain> copies, disk
 * TARGET's file source becomes NEW_SOURCE and its <backingStore> goes
 * (libvirt's snapshot-delete checks that source against the live chain,
 * design issue8 §0.7; after `copy DEST chain` the files moved). Nothing
 * else changes. -ENOENT if no copy has a file disk TARGET; -EINVAL if
 * XML is not a <domainsnapshot> or NEW_SOURCE is empty. */
int cfs_domxml_snapshot_domain_source(const char *xml, const char *target,
                                      const char *new_source, char **out);
