/* test_domxml.c — backend/domxml.c (libvirt XML in and out) and
 * backend/qcow2.c (image header walking), without libvirtd.
 *
 * The fixtures in FIXTURES were captured from libvirt 9.0 / QEMU 7.2 on
 * the development machine (`virsh dumpxml`, `virsh snapshot-dumpxml`):
 *   running-chain.xml        live XML, 3-layer chain made by two
 *                            `snapshot-create-as --disk-only`, a raw disk,
 *                            a cdrom without media
 *   running-mixed.xml        live XML: type='block' disk, readonly,
 *                            shareable, cdrom with a file, empty cdrom
 *   running-block-backing.xml live XML after snapshots on top of those: a
 *                            qcow2 overlay over a block device, a file
 *                            name with XML special characters
 *   shutoff-network.xml      a shut-off domain as defined: no
 *                            <backingStore>, a network (nbd) disk
 *   inactive-after-live-snapshot.xml  `dumpxml --inactive` of a running
 *                            domain after live snapshots: an unterminated
 *                            <backingStore> chain
 *   snapshot-external.xml    `snapshot-dumpxml` of an external snapshot
 *   active-commit-ready.xml  live XML mid active commit, <mirror ready='yes'>
 * The qcow2 tests write minimal headers by hand into a temp directory. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <endian.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "chainfs/model.h"
#include "chainfs/util.h"
#include "domxml.h"
#include "qcow2.h"

#define IMG "/tmp/cfsbe/img/"

static char *read_fixture(const char *name)
{
    _cleanup_free_ char *path = cfs_xasprintf("%s/%s", FIXTURES, name);
    FILE *f = fopen(path, "re");
    struct cfs_buf b = {0};
    char chunk[4096];
    size_t n;

    assert_non_null(f);
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        cfs_buf_put(&b, chunk, n);
    fclose(f);
    return cfs_buf_steal(&b);
}

static void parse_fixture(const char *name, struct cfs_domxml *x)
{
    _cleanup_free_ char *xml = read_fixture(name);

    assert_int_equal(cfs_domxml_parse(xml, x), 0);
    assert_non_null(x->domain);
}

static void assert_layer(const struct cfs_disk *d, size_t i, const char *path,
                         const char *format, bool is_block)
{
    assert_true(i < d->n_layers);
    assert_string_equal(d->layers[i].path, path);
    assert_string_equal(d->layers[i].format, format);
    assert_int_equal(d->layers[i].is_block, is_block);
    assert_int_equal(d->layers[i].virtual_size, 0);
    assert_null(d->layers[i].meta_name);
}

/* ---- domain XML ----------------------------------------------------------- */

static void test_running_chain(void **state)
{
    struct cfs_domxml x;
    struct cfs_disk *vda, *vdb;
    (void)state;

    parse_fixture("running-chain.xml", &x);
    assert_string_equal(x.domain->name, "cfsbe-4316-run");
    assert_string_equal(x.domain->uuid, "7eecf9d0-5d17-47d0-bab5-3eead8e4cb0e");
    assert_int_equal(x.domain->n_disks, 2); /* empty cdrom hdc left out */

    vda = &x.domain->disks[0];
    assert_string_equal(vda->target, "vda");
    assert_false(vda->readonly);
    assert_false(vda->shareable);
    assert_false(vda->is_block);
    assert_int_equal(vda->n_layers, 3);
    assert_layer(vda, 0, IMG "s2.qcow2", "qcow2", false);
    assert_layer(vda, 1, IMG "s1.qcow2", "qcow2", false);
    assert_layer(vda, 2, IMG "base.qcow2", "qcow2", false);
    assert_true(x.disks[0].chain_complete);
    assert_int_equal(x.disks[0].index[0], 5);
    assert_int_equal(x.disks[0].index[1], 4);
    assert_int_equal(x.disks[0].index[2], 3);

    vdb = &x.domain->disks[1];
    assert_string_equal(vdb->target, "vdb");
    assert_int_equal(vdb->n_layers, 1);
    assert_layer(vdb, 0, IMG "data.raw", "raw", false);
    assert_true(x.disks[1].chain_complete);
    assert_int_equal(x.disks[1].index[0], 2);

    assert_int_equal(cfs_strv_len(x.targets), 3);
    assert_string_equal(x.targets[0], "vda");
    assert_string_equal(x.targets[1], "vdb");
    assert_string_equal(x.targets[2], "hdc");
    assert_null(x.domain->snapshots);
    cfs_domxml_clear(&x);
    assert_null(x.domain);
}

static void test_running_mixed(void **state)
{
    struct cfs_domxml x;
    struct cfs_domain *d;
    (void)state;

    parse_fixture("running-mixed.xml", &x);
    d = x.domain;
    assert_int_equal(d->n_disks, 5); /* all but the empty cdrom */
    assert_int_equal(cfs_strv_len(x.targets), 6);

    assert_string_equal(d->disks[0].target, "vda");
    assert_layer(&d->disks[0], 0, IMG "mix.qcow2", "qcow2", false);

    assert_string_equal(d->disks[1].target, "vdb");
    assert_true(d->disks[1].is_block);
    assert_layer(&d->disks[1], 0, "/dev/loop0", "raw", true);
    assert_true(x.disks[1].chain_complete);

    assert_string_equal(d->disks[2].target, "vdc");
    assert_true(d->disks[2].readonly);
    assert_false(d->disks[2].shareable);

    assert_string_equal(d->disks[3].target, "vdd");
    assert_false(d->disks[3].readonly);
    assert_true(d->disks[3].shareable);

    assert_string_equal(d->disks[4].target, "sda"); /* cdrom with media */
    assert_true(d->disks[4].readonly);
    assert_layer(&d->disks[4], 0, IMG "cd.iso", "raw", false);

    assert_null(cfs_domain_find_disk(d, "hdc"));

    /* issue 10: what a snapshot leaves out, in the XML's order */
    assert_int_equal(d->n_unsnappable, 4);
    assert_string_equal(d->unsnappable[0].target, "vdc");
    assert_string_equal(d->unsnappable[0].why, "read-only");
    assert_string_equal(d->unsnappable[1].target, "vdd");
    assert_string_equal(d->unsnappable[1].why, "shareable");
    assert_string_equal(d->unsnappable[2].target, "sda");
    assert_string_equal(d->unsnappable[2].why, "cdrom");
    assert_string_equal(d->unsnappable[3].target, "hdc");
    assert_string_equal(d->unsnappable[3].why, "cdrom");
    cfs_domxml_clear(&x);
}

static void test_running_block_backing(void **state)
{
    struct cfs_domxml x;
    struct cfs_disk *vda, *vdb, *vdc;
    (void)state;

    parse_fixture("running-block-backing.xml", &x);
    vda = cfs_domain_find_disk(x.domain, "vda");
    assert_non_null(vda);
    assert_int_equal(vda->n_layers, 3);
    assert_layer(vda, 1, IMG "mix m1 <&'\">.qcow2", "qcow2", false);

    /* a file overlay over a block device: the disk is a file disk now */
    vdb = cfs_domain_find_disk(x.domain, "vdb");
    assert_non_null(vdb);
    assert_false(vdb->is_block);
    assert_int_equal(vdb->n_layers, 2);
    assert_layer(vdb, 0, IMG "blk-m4.qcow2", "qcow2", false);
    assert_layer(vdb, 1, "/dev/loop0", "raw", true);

    vdc = cfs_domain_find_disk(x.domain, "vdc");
    assert_non_null(vdc);
    assert_true(vdc->readonly);
    assert_int_equal(vdc->n_layers, 2);
    cfs_domxml_clear(&x);
}

static void test_shutoff_network(void **state)
{
    struct cfs_domxml x;
    (void)state;

    parse_fixture("shutoff-network.xml", &x);
    assert_string_equal(x.domain->name, "cfsbe-4316-off");
    assert_int_equal(x.domain->n_disks, 1); /* nbd disk and empty cdrom out */
    assert_int_equal(x.domain->disks[0].n_layers, 1);
    assert_layer(&x.domain->disks[0], 0, IMG "off-s2.qcow2", "qcow2", false);
    assert_false(x.disks[0].chain_complete); /* libvirt probes at start */
    assert_int_equal(x.disks[0].index[0], 0);
    assert_int_equal(cfs_strv_len(x.targets), 3);
    assert_string_equal(x.targets[1], "vdb");
    assert_int_equal(x.domain->n_unsnappable, 2);
    assert_string_equal(x.domain->unsnappable[0].target, "vdb");
    assert_string_equal(x.domain->unsnappable[0].why, "network");
    assert_string_equal(x.domain->unsnappable[1].target, "hdc");
    assert_string_equal(x.domain->unsnappable[1].why, "cdrom");
    cfs_domxml_clear(&x);
}

static void test_inactive_unterminated_chain(void **state)
{
    struct cfs_domxml x;
    (void)state;

    parse_fixture("inactive-after-live-snapshot.xml", &x);
    assert_int_equal(x.domain->disks[0].n_layers, 3);
    assert_layer(&x.domain->disks[0], 2, IMG "base.qcow2", "qcow2", false);
    assert_false(x.disks[0].chain_complete);
    assert_int_equal(x.disks[0].index[1], 0);
    cfs_domxml_clear(&x);
}

static void test_parse_garbage(void **state)
{
    struct cfs_domxml x;
    (void)state;

    assert_int_equal(cfs_domxml_parse("<domain><name>x", &x), -EINVAL);
    assert_null(x.domain);
    assert_int_equal(cfs_domxml_parse("<network><name>x</name></network>", &x), -EINVAL);
    assert_int_equal(cfs_domxml_parse("<domain/>", &x), -EINVAL); /* no name */
    assert_int_equal(cfs_domxml_parse(NULL, &x), -EINVAL);

    /* minimal hand-written XML, disk without a <target> is skipped */
    assert_int_equal(cfs_domxml_parse(
        "<domain><name>m</name><devices>"
        "<disk type='file'><source file='/a'/></disk>"
        "<disk type='file'><source file='/b'/><target dev='vdb'/></disk>"
        "<disk type='file' device='disk'><source file=''/><target dev='vdc'/></disk>"
        "<disk type='volume'><source pool='p' volume='v'/><target dev='vdd'/></disk>"
        "</devices></domain>", &x), 0);
    assert_int_equal(x.domain->n_disks, 1);
    assert_string_equal(x.domain->disks[0].target, "vdb");
    assert_string_equal(x.domain->disks[0].layers[0].format, "");
    assert_string_equal(x.domain->uuid, "");
    assert_int_equal(cfs_strv_len(x.targets), 3);
    assert_int_equal(x.domain->n_unsnappable, 2);
    assert_string_equal(x.domain->unsnappable[0].why, "no source");
    assert_string_equal(x.domain->unsnappable[1].why, "volume");
    cfs_domxml_clear(&x);

    /* a lun (kept in disks[]: its chain shows), a floppy, a block disk
     * without a source */
    assert_int_equal(cfs_domxml_parse(
        "<domain><name>m</name><devices>"
        "<disk type='block' device='lun'><source dev='/dev/sdz'/><target dev='sda'/></disk>"
        "<disk type='file' device='floppy'><source file='/f.img'/><target dev='fda'/></disk>"
        "<disk type='block' device='disk'><target dev='vdb'/></disk>"
        "<disk type='file' device='disk'><source file='/ok.qcow2'/><target dev='vdc'/></disk>"
        "</devices></domain>", &x), 0);
    assert_int_equal(x.domain->n_disks, 3);
    assert_int_equal(x.domain->n_unsnappable, 3);
    assert_string_equal(x.domain->unsnappable[0].target, "sda");
    assert_string_equal(x.domain->unsnappable[0].why, "lun");
    assert_string_equal(x.domain->unsnappable[1].why, "floppy");
    assert_string_equal(x.domain->unsnappable[2].target, "vdb");
    assert_string_equal(x.domain->unsnappable[2].why, "no source");
    cfs_domxml_clear(&x);
}

/* ---- snapshot XML --------------------------------------------------------- */

static void test_snapshot_parse(void **state)
{
    _cleanup_free_ char *xml = read_fixture("snapshot-external.xml");
    struct cfs_snapxml s;
    (void)state;

    assert_int_equal(cfs_domxml_parse_snapshot(xml, &s), 0);
    assert_string_equal(s.name, "s2");
    /* only the external one; the <domain> copy inside is not looked at */
    assert_int_equal(s.n_disks, 1);
    assert_string_equal(s.disks[0].target, "vda");
    assert_string_equal(s.disks[0].source, IMG "s2.qcow2");
    /* issue 10: the facts, and every disk */
    assert_string_equal(s.parent, "s1");
    assert_null(s.description);
    assert_int_equal(s.created, 1795318737);
    assert_int_equal(s.n_all, 3);
    assert_string_equal(s.all[0].target, "vda");
    assert_string_equal(s.all[0].snapshot, "external");
    assert_string_equal(s.all[0].source, IMG "s2.qcow2");
    assert_string_equal(s.all[1].target, "vdb");
    assert_string_equal(s.all[1].snapshot, "no");
    assert_null(s.all[1].source);
    assert_string_equal(s.all[2].target, "hdc");
    cfs_snapxml_clear(&s);

    assert_int_equal(cfs_domxml_parse_snapshot("<domain/>", &s), -EINVAL);
    assert_int_equal(cfs_domxml_parse_snapshot(
        "<domainsnapshot><name>b</name><disks>"
        "<disk name='sdb' snapshot='external' type='block'><source dev='/dev/x'/></disk>"
        "<disk name='vda' snapshot='internal'/>"
        "</disks></domainsnapshot>", &s), 0);
    assert_int_equal(s.n_disks, 1);
    assert_string_equal(s.disks[0].source, "/dev/x");
    assert_null(s.parent);
    assert_int_equal(s.created, 0);
    assert_int_equal(s.n_all, 2);
    assert_string_equal(s.all[1].snapshot, "internal");
    assert_null(s.all[1].source);
    cfs_snapxml_clear(&s);
}

static void test_snapshot_build_multi(void **state)
{
    char *targets[] = { "vda", "vdb", "vdc", "hdc", NULL };
    const char *disks[] = { "vdb", "vda" };
    const char *overlays[] = { "/ov/b.qcow2", "/ov/a <&>.qcow2" };
    _cleanup_free_ char *xml = NULL, *plain = NULL;
    struct cfs_snapxml s;
    (void)state;

    xml = cfs_domxml_snapshot_xml_multi("s1", 2, disks, overlays,
                                        "chainfs: quiesced=no reason=a <b> & \"c\"",
                                        targets);
    assert_non_null(xml);
    assert_non_null(strstr(xml, "<disk name=\"vdc\" snapshot=\"no\"/>"));
    assert_non_null(strstr(xml, "<disk name=\"hdc\" snapshot=\"no\"/>"));
    assert_null(strstr(xml, "<disk name=\"vda\" snapshot=\"no\""));
    assert_null(strstr(xml, "<disk name=\"vdb\" snapshot=\"no\""));
    assert_null(strstr(xml, "a <b>"));
    assert_int_equal(cfs_domxml_parse_snapshot(xml, &s), 0);
    assert_string_equal(s.description, "chainfs: quiesced=no reason=a <b> & \"c\"");
    assert_int_equal(s.n_disks, 2);
    assert_string_equal(s.disks[0].target, "vdb");
    assert_string_equal(s.disks[0].source, "/ov/b.qcow2");
    assert_string_equal(s.disks[1].target, "vda");
    assert_string_equal(s.disks[1].source, "/ov/a <&>.qcow2");
    assert_int_equal(s.n_all, 4);
    cfs_snapxml_clear(&s);

    /* no description: no element; the one-disk builder is the N = 1 case */
    plain = cfs_domxml_snapshot_xml_multi("s2", 1, disks, overlays, NULL, targets);
    assert_null(strstr(plain, "<description"));
    _cleanup_free_ char *one = cfs_domxml_snapshot_xml("s2", "vdb", "/ov/b.qcow2", targets);
    assert_string_equal(one, plain);
    assert_null(cfs_domxml_snapshot_xml_multi("s3", 0, disks, overlays, NULL, targets));
}

static void test_snapshot_build(void **state)
{
    char *targets[] = { "vda", "vdb", "hdc", NULL };
    _cleanup_free_ char *xml = NULL;
    struct cfs_snapxml s;
    (void)state;

    xml = cfs_domxml_snapshot_xml("a<b>&'\"", "vdb", "/ov/x <&'\">.qcow2", targets);
    assert_non_null(xml);
    assert_null(strstr(xml, "a<b>"));
    assert_non_null(strstr(xml, "<disk name=\"vda\" snapshot=\"no\"/>"));
    assert_non_null(strstr(xml, "<disk name=\"hdc\" snapshot=\"no\"/>"));
    assert_non_null(strstr(xml, "<driver type=\"qcow2\"/>"));
    assert_null(strstr(xml, "<disk name=\"vdb\" snapshot=\"no\""));

    assert_int_equal(cfs_domxml_parse_snapshot(xml, &s), 0);
    assert_string_equal(s.name, "a<b>&'\"");
    assert_int_equal(s.n_disks, 1);
    assert_string_equal(s.disks[0].target, "vdb");
    assert_string_equal(s.disks[0].source, "/ov/x <&'\">.qcow2");
    cfs_snapxml_clear(&s);
}

/* The merged disk of a two-disk snapshot becomes snapshot='no'; the other
 * disk, the <domain> copy (with a vda disk of its own) and the rest stay. */
static void test_snapshot_drop_disk(void **state)
{
    const char *xml =
        "<domainsnapshot><name>sA</name><creationTime>17</creationTime>"
        "<parent><name>s0</name></parent><disks>"
        "<disk name='vda' snapshot='external' type='file'><driver type='qcow2'/>"
        "<source file='/i/vda.sA.qcow2'/></disk>"
        "<disk name='vdb' snapshot='external' type='file'><driver type='qcow2'/>"
        "<source file='/i/vdb.sA.qcow2'/></disk>"
        "</disks><domain type='kvm'><name>d</name><devices>"
        "<disk type='file' device='disk'><source file='/i/vda.qcow2'/>"
        "<target dev='vda' bus='virtio'/></disk></devices></domain></domainsnapshot>";
    _cleanup_free_ char *out = NULL;
    struct cfs_snapxml s;
    (void)state;

    assert_int_equal(cfs_domxml_snapshot_drop_disk(xml, "vda", &out), 0);
    assert_non_null(strstr(out, "<disk name=\"vda\" snapshot=\"no\"/>"));
    assert_null(strstr(out, "/i/vda.sA.qcow2"));
    assert_non_null(strstr(out, "<source file=\"/i/vda.qcow2\"/>"));
    assert_non_null(strstr(out, "<parent><name>s0</name></parent>"));
    assert_non_null(strstr(out, "<creationTime>17</creationTime>"));
    assert_int_equal(cfs_domxml_parse_snapshot(out, &s), 0);
    assert_string_equal(s.name, "sA");
    assert_int_equal(s.n_disks, 1);
    assert_string_equal(s.disks[0].target, "vdb");
    assert_string_equal(s.disks[0].source, "/i/vdb.sA.qcow2");
    cfs_snapxml_clear(&s);
    free(TAKE_PTR(out));

    assert_int_equal(cfs_domxml_snapshot_drop_disk(xml, "vdz", &out), -ENOENT);
    assert_null(out);
    assert_int_equal(cfs_domxml_snapshot_drop_disk("<domain/>", "vda", &out), -EINVAL);
    assert_null(out);
}

/* As libvirt 9.0 dumps a disk-only snapshot made by chainfs (probe 2 of
 * scripts/probe/issue8.sh): after a pull of S2 into s2.qcow2, S1 is
 * redefined with only its <disks> source changed. */
static void test_snapshot_retarget_one_disk(void **state)
{
    const char *xml =
        "<domainsnapshot>\n  <name>S1</name>\n  <state>disk-snapshot</state>\n"
        "  <creationTime>1764460000</creationTime>\n  <memory snapshot='no'/>\n"
        "  <disks>\n    <disk name='vda' snapshot='external' type='file'>\n"
        "      <driver type='qcow2'/>\n      <source file='/i/s1.qcow2'/>\n"
        "    </disk>\n  </disks>\n"
        "  <domain type='qemu'><name>d</name><uuid>0b7c1ee8-1b8f-4d35-9d1b-1d0e1f8ad0a1</uuid>"
        "<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        "<source file='/i/base.qcow2'/><target dev='vda' bus='virtio'/></disk>"
        "</devices></domain>\n</domainsnapshot>\n";
    _cleanup_free_ char *out = NULL;
    struct cfs_snapxml s;
    (void)state;

    assert_int_equal(cfs_domxml_snapshot_retarget(xml, "vda", "/i/s2 <&'\">.qcow2", &out), 0);
    assert_null(strstr(out, "/i/s1.qcow2"));
    /* the <domain> copy still names base (what libvirt's delete checks) */
    assert_non_null(strstr(out, "<source file=\"/i/base.qcow2\"/>"));
    assert_non_null(strstr(out, "<creationTime>1764460000</creationTime>"));
    assert_non_null(strstr(out, "<state>disk-snapshot</state>"));
    assert_non_null(strstr(out, "<memory snapshot=\"no\"/>"));
    assert_non_null(strstr(out, "<uuid>0b7c1ee8-1b8f-4d35-9d1b-1d0e1f8ad0a1</uuid>"));
    assert_non_null(strstr(out, "<disk name=\"vda\" snapshot=\"external\" type=\"file\">"));
    assert_int_equal(cfs_domxml_parse_snapshot(out, &s), 0);
    assert_string_equal(s.name, "S1");
    assert_int_equal(s.n_disks, 1);
    assert_string_equal(s.disks[0].target, "vda");
    assert_string_equal(s.disks[0].source, "/i/s2 <&'\">.qcow2");
    cfs_snapxml_clear(&s);
}

/* Two disks: only the named one changes; a snapshot='no' disk, a disk
 * only the <domain> copy has, and no disk at all are -ENOENT. */
static void test_snapshot_retarget_two_disks(void **state)
{
    const char *xml =
        "<domainsnapshot><name>sA</name><parent><name>s0</name></parent><disks>"
        "<disk name='vda' snapshot='external' type='file'><driver type='qcow2'/>"
        "<source file='/i/vda.sA.qcow2'/></disk>"
        "<disk name='vdb' snapshot='external' type='block'><driver type='qcow2'/>"
        "<source dev='/dev/vg/vdb.sA'/></disk>"
        "<disk name='vdc' snapshot='no'/>"
        "</disks><domain type='kvm'><name>d</name><devices>"
        "<disk type='file' device='disk'><source file='/i/vda.qcow2'/>"
        "<target dev='vda' bus='virtio'/></disk>"
        "<disk type='file' device='disk'><source file='/i/vdd.qcow2'/>"
        "<target dev='vdd' bus='virtio'/></disk></devices></domain></domainsnapshot>";
    _cleanup_free_ char *out = NULL;
    struct cfs_snapxml s;
    (void)state;

    assert_int_equal(cfs_domxml_snapshot_retarget(xml, "vda", "/i/vda.sB.qcow2", &out), 0);
    assert_int_equal(cfs_domxml_parse_snapshot(out, &s), 0);
    assert_int_equal(s.n_disks, 2);
    assert_string_equal(s.disks[0].target, "vda");
    assert_string_equal(s.disks[0].source, "/i/vda.sB.qcow2");
    assert_string_equal(s.disks[1].target, "vdb");
    assert_string_equal(s.disks[1].source, "/dev/vg/vdb.sA");
    cfs_snapxml_clear(&s);
    assert_non_null(strstr(out, "<source file=\"/i/vda.qcow2\"/>"));
    assert_non_null(strstr(out, "<parent><name>s0</name></parent>"));
    assert_non_null(strstr(out, "<disk name=\"vdc\" snapshot=\"no\"/>"));
    free(TAKE_PTR(out));

    /* a block overlay keeps dev= */
    assert_int_equal(cfs_domxml_snapshot_retarget(xml, "vdb", "/dev/vg/vdb.sB", &out), 0);
    assert_non_null(strstr(out, "<source dev=\"/dev/vg/vdb.sB\"/>"));
    assert_non_null(strstr(out, "<source file=\"/i/vda.sA.qcow2\"/>"));
    free(TAKE_PTR(out));

    assert_int_equal(cfs_domxml_snapshot_retarget(xml, "vdz", "/i/x.qcow2", &out), -ENOENT);
    assert_null(out);
    assert_int_equal(cfs_domxml_snapshot_retarget(xml, "vdc", "/i/x.qcow2", &out), -ENOENT);
    assert_null(out);
    assert_int_equal(cfs_domxml_snapshot_retarget(xml, "vdd", "/i/x.qcow2", &out), -ENOENT);
    assert_null(out);
    assert_int_equal(cfs_domxml_snapshot_retarget("<domainsnapshot><name>n</name></domainsnapshot>",
                                                  "vda", "/i/x.qcow2", &out), -ENOENT);
    assert_null(out);
}

static void test_snapshot_retarget_malformed(void **state)
{
    _cleanup_free_ char *out = NULL;
    (void)state;

    assert_int_equal(cfs_domxml_snapshot_retarget("<domainsnapshot><disks><disk name='vda'>",
                                                  "vda", "/i/x.qcow2", &out), -EINVAL);
    assert_null(out);
    assert_int_equal(cfs_domxml_snapshot_retarget("", "vda", "/i/x.qcow2", &out), -EINVAL);
    assert_null(out);
    assert_int_equal(cfs_domxml_snapshot_retarget(NULL, "vda", "/i/x.qcow2", &out), -EINVAL);
    assert_null(out);
    /* a domain, not a snapshot */
    assert_int_equal(cfs_domxml_snapshot_retarget("<domain><devices/></domain>",
                                                  "vda", "/i/x.qcow2", &out), -EINVAL);
    assert_null(out);
    /* no new source */
    assert_int_equal(cfs_domxml_snapshot_retarget(
                         "<domainsnapshot><disks><disk name='vda'><source file='/a'/></disk></disks></domainsnapshot>",
                         "vda", "", &out), -EINVAL);
    assert_null(out);
}

/* ---- mirror --------------------------------------------------------------- */

static void test_mirror_ready(void **state)
{
    _cleanup_free_ char *mid = read_fixture("active-commit-ready.xml");
    _cleanup_free_ char *idle = read_fixture("running-chain.xml");
    bool ready = true;
    (void)state;

    assert_int_equal(cfs_domxml_mirror_ready(mid, "vda", &ready), 0);
    assert_true(ready);
    assert_int_equal(cfs_domxml_mirror_ready(mid, "vdb", &ready), 0);
    assert_false(ready);
    assert_int_equal(cfs_domxml_mirror_ready(mid, "vdz", &ready), -ENOENT);
    assert_int_equal(cfs_domxml_mirror_ready(idle, "vda", &ready), 0);
    assert_false(ready);
    assert_int_equal(cfs_domxml_mirror_ready(
        "<domain><name>m</name><devices><disk type='file'><target dev='vda'/>"
        "<mirror type='file' job='active-commit'/></disk></devices></domain>",
        "vda", &ready), 0);
    assert_false(ready); /* mirror present, not ready yet */
    assert_int_equal(cfs_domxml_mirror_ready("junk", "vda", &ready), -EINVAL);
}

/* The parsed chain of the mid-job XML ignores the <mirror>'s <source>. */
static void test_mid_job_chain(void **state)
{
    struct cfs_domxml x;
    (void)state;

    parse_fixture("active-commit-ready.xml", &x);
    assert_int_equal(x.domain->disks[0].n_layers, 3);
    assert_layer(&x.domain->disks[0], 0, IMG "s2.qcow2", "qcow2", false);
    cfs_domxml_clear(&x);
}

/* ---- inactive XML edits --------------------------------------------------- */

static void test_set_disk_source(void **state)
{
    _cleanup_free_ char *xml = read_fixture("inactive-after-live-snapshot.xml");
    _cleanup_free_ char *out = NULL, *out2 = NULL;
    struct cfs_domxml x;
    (void)state;

    assert_int_equal(cfs_domxml_set_disk_source(xml, "vda", IMG "s1.qcow2",
                                                "qcow2", false, &out), 0);
    assert_int_equal(cfs_domxml_parse(out, &x), 0);
    assert_string_equal(x.domain->name, "cfsbe-4316-run");
    assert_int_equal(x.domain->n_disks, 2);
    assert_int_equal(x.domain->disks[0].n_layers, 1);
    assert_layer(&x.domain->disks[0], 0, IMG "s1.qcow2", "qcow2", false);
    assert_false(x.disks[0].chain_complete);
    assert_layer(&x.domain->disks[1], 0, IMG "data.raw", "raw", false);
    cfs_domxml_clear(&x);
    assert_null(strstr(out, "backingStore"));
    assert_non_null(strstr(out, "<address type=\"pci\""));

    /* to a raw block device: disk type and source attribute change */
    assert_int_equal(cfs_domxml_set_disk_source(out, "vda", "/dev/sdz", "raw",
                                                true, &out2), 0);
    assert_int_equal(cfs_domxml_parse(out2, &x), 0);
    assert_true(x.domain->disks[0].is_block);
    assert_layer(&x.domain->disks[0], 0, "/dev/sdz", "raw", true);
    cfs_domxml_clear(&x);
    assert_null(strstr(out2, "s1.qcow2"));
    free(TAKE_PTR(out2));

    assert_int_equal(cfs_domxml_set_disk_source(xml, "vdz", "/x", "raw", false, &out2), -ENOENT);
    assert_null(out2);
    assert_int_equal(cfs_domxml_set_disk_source("<x", "vda", "/x", "raw", false, &out2), -EINVAL);
}

static void test_drop_backing_store(void **state)
{
    _cleanup_free_ char *xml = read_fixture("inactive-after-live-snapshot.xml");
    _cleanup_free_ char *plain = read_fixture("shutoff-network.xml");
    _cleanup_free_ char *out = NULL, *out2 = NULL;
    struct cfs_domxml x;
    bool changed = false;
    (void)state;

    assert_int_equal(cfs_domxml_drop_backing_store(xml, "vda", &out, &changed), 0);
    assert_true(changed);
    assert_int_equal(cfs_domxml_parse(out, &x), 0);
    assert_int_equal(x.domain->disks[0].n_layers, 1);
    assert_layer(&x.domain->disks[0], 0, IMG "s2.qcow2", "qcow2", false);
    cfs_domxml_clear(&x);

    assert_int_equal(cfs_domxml_drop_backing_store(plain, "vda", &out2, &changed), 0);
    assert_false(changed);
    free(TAKE_PTR(out2));
    assert_int_equal(cfs_domxml_drop_backing_store(plain, "sdq", &out2, &changed), -ENOENT);
}

/* ---- qcow2 headers -------------------------------------------------------- */

static char tmpdir[64];

static void put32(uint8_t *p, uint32_t v) { v = htobe32(v); memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { v = htobe64(v); memcpy(p, &v, 8); }

/* A qcow2 header of VERSION with virtual SIZE, backing name BACKING (or
 * NULL) and backing format extension BFMT (or NULL). */
static void write_qcow2(const char *path, int version, uint64_t size,
                        const char *backing, const char *bfmt)
{
    uint8_t buf[1024] = {0};
    size_t hlen = version >= 3 ? 104 : 72, off = hlen;
    int fd;

    put32(buf, 0x514649fb);
    put32(buf + 4, (uint32_t)version);
    put32(buf + 20, 16);
    put64(buf + 24, size);
    if (version >= 3) {
        put32(buf + 96, 4);
        put32(buf + 100, (uint32_t)hlen);
    }
    if (bfmt) {
        put32(buf + off, 0xe2792aca);
        put32(buf + off + 4, (uint32_t)strlen(bfmt));
        memcpy(buf + off + 8, bfmt, strlen(bfmt));
        off += 8 + ((strlen(bfmt) + 7) & ~7u);
    }
    put32(buf + off, 0); /* end of extensions */
    if (backing) {
        put64(buf + 8, 512);
        put32(buf + 16, (uint32_t)strlen(backing));
        memcpy(buf + 512, backing, strlen(backing));
    }
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, buf, sizeof(buf)), (ssize_t)sizeof(buf));
    close(fd);
}

static int qcow2_setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/cfs-test-domxml-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int qcow2_teardown(void **state)
{
    const char *names[] = { "base.raw", "mid.qcow2", "top.qcow2", "loop1.qcow2",
                            "loop2.qcow2", "fake.raw", "orphan.qcow2",
                            "ov.qcow2", "ov-raw.qcow2", "ov-big.qcow2",
                            "ov-bad.qcow2", "ov-max.qcow2" };
    (void)state;
    for (size_t i = 0; i < ELEMENTSOF(names); i++) {
        _cleanup_free_ char *p = cfs_xasprintf("%s/%s", tmpdir, names[i]);
        unlink(p);
    }
    rmdir(tmpdir);
    return 0;
}

static char *tpath(const char *name)
{
    return cfs_xasprintf("%s/%s", tmpdir, name);
}

static void test_resolve_backing(void **state)
{
    (void)state;
    _cleanup_free_ char *a = cfs_image_resolve_backing("/d/e/top.qcow2", "base.qcow2");
    _cleanup_free_ char *b = cfs_image_resolve_backing("/d/e/top.qcow2", "/abs/b");
    _cleanup_free_ char *c = cfs_image_resolve_backing("/d/e/top.qcow2", "../x/b");
    _cleanup_free_ char *d = cfs_image_resolve_backing("top.qcow2", "b");
    _cleanup_free_ char *e = cfs_image_resolve_backing("/d/top", "nbd://h:10809/e");
    _cleanup_free_ char *f = cfs_image_resolve_backing("/d/top", "json:{\"a\":1}");
    assert_string_equal(a, "/d/e/base.qcow2");
    assert_string_equal(b, "/abs/b");
    assert_string_equal(c, "/d/e/../x/b");
    assert_string_equal(d, "b");
    assert_string_equal(e, "nbd://h:10809/e");
    assert_string_equal(f, "json:{\"a\":1}");
    assert_false(cfs_image_name_is_protocol("/a:b/c"));
    assert_false(cfs_image_name_is_protocol("./a:b"));
    assert_true(cfs_image_name_is_protocol("gluster://h/v/i"));
}

/* Two backing-format extensions (found by the qcow2 fuzz target): the last
 * one counts, as in QEMU, and the first is not leaked (ASan build). */
static void test_probe_two_backing_formats(void **state)
{
    _cleanup_free_ char *img = tpath("twofmt.qcow2");
    uint8_t buf[1024] = {0};
    struct cfs_image_info info;
    int fd;
    (void)state;

    put32(buf, 0x514649fb);
    put32(buf + 4, 2);
    put32(buf + 20, 16);
    put64(buf + 24, 1 << 20);
    put32(buf + 72, 0xe2792aca);
    put32(buf + 76, 5);
    memcpy(buf + 80, "qcow2", 5);
    put32(buf + 88, 0xe2792aca);
    put32(buf + 92, 3);
    memcpy(buf + 96, "raw", 3);
    put32(buf + 104, 0); /* end of extensions */
    put64(buf + 8, 512);
    put32(buf + 16, 4);
    memcpy(buf + 512, "base", 4);
    fd = open(img, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, buf, sizeof(buf)), (ssize_t)sizeof(buf));
    close(fd);

    assert_int_equal(cfs_image_probe(img, NULL, &info), 0);
    assert_string_equal(info.backing, "base");
    assert_string_equal(info.backing_format, "raw");
    cfs_image_info_clear(&info);
    unlink(img);
}

static void test_probe_and_extend(void **state)
{
    _cleanup_free_ char *base = tpath("base.raw");
    _cleanup_free_ char *mid = tpath("mid.qcow2");
    _cleanup_free_ char *top = tpath("top.qcow2");
    struct cfs_image_info info;
    struct cfs_disk disk = {0};
    int fd;
    (void)state;

    fd = open(base, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 8 << 20), 0);
    close(fd);
    write_qcow2(mid, 3, 64 << 20, "base.raw", "raw");      /* relative name */
    write_qcow2(top, 2, 64 << 20, mid, "qcow2");           /* absolute name */

    assert_int_equal(cfs_image_probe(top, "qcow2", &info), 0);
    assert_string_equal(info.format, "qcow2");
    assert_int_equal(info.virtual_size, 64 << 20);
    assert_string_equal(info.backing, mid);
    assert_string_equal(info.backing_format, "qcow2");
    cfs_image_info_clear(&info);

    assert_int_equal(cfs_image_probe(mid, NULL, &info), 0); /* magic decides */
    assert_string_equal(info.format, "qcow2");
    assert_string_equal(info.backing, "base.raw");
    assert_string_equal(info.backing_format, "raw");
    cfs_image_info_clear(&info);

    /* declared raw: never parsed, even if it held a qcow2 header */
    assert_int_equal(cfs_image_probe(mid, "raw", &info), 0);
    assert_string_equal(info.format, "raw");
    assert_null(info.backing);
    assert_int_equal(info.virtual_size, 1024);
    cfs_image_info_clear(&info);
    assert_int_equal(cfs_image_probe(base, "qcow2", &info), -EINVAL);
    assert_int_equal(cfs_image_probe(base, "", &info), 0);
    assert_string_equal(info.format, "raw");
    assert_int_equal(info.virtual_size, 8 << 20);
    cfs_image_info_clear(&info);
    assert_int_equal(cfs_image_probe("/nonexistent/x", NULL, &info), -ENOENT);

    disk.layers = cfs_xcalloc(1, sizeof(*disk.layers));
    disk.n_layers = 1;
    disk.layers[0].path = cfs_xstrdup(top);
    disk.layers[0].format = cfs_xstrdup("qcow2");
    assert_int_equal(cfs_image_extend_chain(&disk), 0);
    assert_int_equal(disk.n_layers, 3);
    assert_string_equal(disk.layers[1].path, mid);
    assert_string_equal(disk.layers[1].format, "qcow2");
    assert_string_equal(disk.layers[2].format, "raw");
    _cleanup_free_ char *resolved = tpath("base.raw");
    assert_string_equal(disk.layers[2].path, resolved);
    assert_int_equal(disk.layers[0].virtual_size, 64 << 20);
    assert_int_equal(disk.layers[1].virtual_size, 64 << 20);
    assert_int_equal(disk.layers[2].virtual_size, 8 << 20);
    assert_int_equal(disk.layers[2].physical, 8 << 20);
    assert_int_equal(disk.layers[1].physical, 1024);
    cfs_disk_clear(&disk);
}

static void test_extend_stops(void **state)
{
    _cleanup_free_ char *l1 = tpath("loop1.qcow2");
    _cleanup_free_ char *l2 = tpath("loop2.qcow2");
    _cleanup_free_ char *orphan = tpath("orphan.qcow2");
    struct cfs_disk disk = {0};
    (void)state;

    /* a loop: l1 -> l2 -> l1 stops after l2 */
    write_qcow2(l1, 3, 1 << 20, "loop2.qcow2", "qcow2");
    write_qcow2(l2, 3, 1 << 20, "loop1.qcow2", "qcow2");
    disk.layers = cfs_xcalloc(1, sizeof(*disk.layers));
    disk.n_layers = 1;
    disk.layers[0].path = cfs_xstrdup(l1);
    disk.layers[0].format = cfs_xstrdup("");
    assert_int_equal(cfs_image_extend_chain(&disk), 0);
    assert_int_equal(disk.n_layers, 2);
    assert_string_equal(disk.layers[0].format, "qcow2");
    cfs_disk_clear(&disk);

    /* a missing backing file is shown, then the walk stops */
    write_qcow2(orphan, 2, 1 << 20, "gone.qcow2", NULL);
    disk.layers = cfs_xcalloc(1, sizeof(*disk.layers));
    disk.n_layers = 1;
    disk.layers[0].path = cfs_xstrdup(orphan);
    disk.layers[0].format = cfs_xstrdup("qcow2");
    assert_int_equal(cfs_image_extend_chain(&disk), 0);
    assert_int_equal(disk.n_layers, 2);
    assert_string_equal(disk.layers[1].format, "");
    assert_int_equal(disk.layers[1].physical, 0);
    cfs_disk_clear(&disk);

    /* an unreadable active image is an error and leaves the chain alone */
    disk.layers = cfs_xcalloc(1, sizeof(*disk.layers));
    disk.n_layers = 1;
    disk.layers[0].path = cfs_xstrdup("/nonexistent/a.qcow2");
    disk.layers[0].format = cfs_xstrdup("qcow2");
    assert_int_equal(cfs_image_extend_chain(&disk), -ENOENT);
    assert_int_equal(disk.n_layers, 1);
    cfs_disk_clear(&disk);
}

/* Issue 12: a running domain's live XML nests one <backingStore> per layer;
 * libxml2 without XML_PARSE_HUGE stops at 256 elements deep. 1,000 layers
 * parse whole. */
static void test_parse_deep_chain(void **state)
{
    enum { DEPTH = 1000 };
    struct cfs_buf b = {0};
    struct cfs_domxml x = {0};
    (void)state;

    cfs_buf_printf(&b, "<domain type='kvm' id='1'><name>deep</name>"
                   "<uuid>11111111-2222-3333-4444-555555555555</uuid><devices>"
                   "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                   "<source file='/img/l%d.qcow2' index='%d'/>", DEPTH, DEPTH + 1);
    for (int i = DEPTH - 1; i >= 0; i--)
        cfs_buf_printf(&b, "<backingStore type='file' index='%d'><format type='%s'/>"
                       "<source file='/img/l%d.%s'/>", i + 1, i ? "qcow2" : "raw",
                       i, i ? "qcow2" : "raw");
    cfs_buf_printf(&b, "<backingStore/>");
    for (int i = 0; i < DEPTH; i++)
        cfs_buf_printf(&b, "</backingStore>");
    cfs_buf_printf(&b, "<target dev='vda' bus='virtio'/></disk></devices></domain>");
    _cleanup_free_ char *xml = cfs_buf_steal(&b);

    assert_int_equal(cfs_domxml_parse(xml, &x), 0);
    assert_non_null(x.domain);
    assert_int_equal(x.domain->n_disks, 1);
    assert_int_equal(x.domain->disks[0].n_layers, DEPTH + 1);
    assert_true(x.disks[0].chain_complete);
    assert_string_equal(x.domain->disks[0].layers[0].path, "/img/l1000.qcow2");
    assert_string_equal(x.domain->disks[0].layers[500].path, "/img/l500.qcow2");
    assert_string_equal(x.domain->disks[0].layers[DEPTH].path, "/img/l0.raw");
    assert_string_equal(x.domain->disks[0].layers[DEPTH].format, "raw");
    assert_int_equal(x.domain->disks[0].layers[DEPTH].index, 1);
    cfs_domxml_clear(&x);
}

/* Issue 12: a shut-off chain read from headers is followed past the old
 * 256-layer cap (1,000 layers here), and cut at CFS_CHAIN_MAX with 1
 * returned (the caller logs it). */
static void test_extend_deep(void **state)
{
    enum { DEPTH = 1000 };
    const unsigned total = CFS_CHAIN_MAX + 2;
    struct cfs_disk disk = {0};
    (void)state;

    for (unsigned i = 0; i < total; i++) {
        _cleanup_free_ char *p = cfs_xasprintf("%s/deep%u.qcow2", tmpdir, i);
        _cleanup_free_ char *below = cfs_xasprintf("deep%u.qcow2", i - 1);

        write_qcow2(p, 3, 1 << 20, i ? below : NULL, i ? "qcow2" : NULL);
    }
    disk.layers = cfs_xcalloc(1, sizeof(*disk.layers));
    disk.n_layers = 1;
    disk.layers[0].path = cfs_xasprintf("%s/deep%u.qcow2", tmpdir, DEPTH - 1);
    disk.layers[0].format = cfs_xstrdup("qcow2");
    assert_int_equal(cfs_image_extend_chain(&disk), 0);
    assert_int_equal(disk.n_layers, DEPTH);
    _cleanup_free_ char *last = cfs_xasprintf("%s/deep0.qcow2", tmpdir);
    assert_string_equal(disk.layers[DEPTH - 1].path, last);
    cfs_disk_clear(&disk);

    disk.layers = cfs_xcalloc(1, sizeof(*disk.layers));
    disk.n_layers = 1;
    disk.layers[0].path = cfs_xasprintf("%s/deep%u.qcow2", tmpdir, total - 1);
    disk.layers[0].format = cfs_xstrdup("qcow2");
    assert_int_equal(cfs_image_extend_chain(&disk), 1);
    assert_int_equal(disk.n_layers, CFS_CHAIN_MAX);
    cfs_disk_clear(&disk);
    for (unsigned i = 0; i < total; i++) {
        _cleanup_free_ char *p = cfs_xasprintf("%s/deep%u.qcow2", tmpdir, i);
        unlink(p);
    }
}

/* Issue 12: the json: image qemu-img commit gets, TOP over BASE and
 * nothing below; NULL (the caller gives TOP's name) without a format or a
 * local path. */
static void test_commit_json(void **state)
{
    struct cfs_layer top = { .path = "/img/s \"1\".qcow2", .format = "qcow2" };
    struct cfs_layer base = { .path = "/dev/vg/base", .format = "raw", .is_block = true };
    (void)state;

    _cleanup_free_ char *j = cfs_image_commit_json(&top, &base);
    assert_non_null(j);
    assert_string_equal(j, "json:{\"driver\":\"qcow2\",\"file\":{\"driver\":\"file\","
                        "\"filename\":\"/img/s \\\"1\\\".qcow2\"},\"backing\":{\"driver\":"
                        "\"raw\",\"file\":{\"driver\":\"host_device\",\"filename\":"
                        "\"/dev/vg/base\"},\"backing\":null}}");
    base.format = "";
    assert_null(cfs_image_commit_json(&top, &base));
    base.format = "qcow2";
    base.path = "nbd://h/x";
    assert_null(cfs_image_commit_json(&top, &base));
    base.path = "rel.qcow2";
    assert_null(cfs_image_commit_json(&top, &base));
    top.format = NULL;
    base.path = "/img/b.qcow2";
    assert_null(cfs_image_commit_json(&top, &base));
}

/* Issue 12: headers are cached by (dev, ino, size, mtime, ctime); a file
 * rewritten after it was cached (same size: only the backing name
 * changes, as `qemu-img rebase -u` does) is read again. */
static void test_probe_cache(void **state)
{
    _cleanup_free_ char *img = tpath("cached.qcow2");
    struct cfs_image_info info;
    (void)state;

    write_qcow2(img, 3, 1 << 20, "aaaa.qcow2", "qcow2");
    sleep(3); /* older than the cache's settle time: kept */
    assert_int_equal(cfs_image_probe(img, "qcow2", &info), 0);
    assert_string_equal(info.backing, "aaaa.qcow2");
    cfs_image_info_clear(&info);
    assert_int_equal(cfs_image_probe(img, NULL, &info), 0); /* from the cache */
    assert_string_equal(info.backing, "aaaa.qcow2");
    assert_string_equal(info.format, "qcow2");
    assert_int_equal(info.virtual_size, 1 << 20);
    cfs_image_info_clear(&info);
    write_qcow2(img, 3, 1 << 20, "bbbb.qcow2", "qcow2");
    assert_int_equal(cfs_image_probe(img, "qcow2", &info), 0);
    assert_string_equal(info.backing, "bbbb.qcow2");
    cfs_image_info_clear(&info);
    /* declared raw: never the cached qcow2 header */
    assert_int_equal(cfs_image_probe(img, "raw", &info), 0);
    assert_string_equal(info.format, "raw");
    assert_null(info.backing);
    cfs_image_info_clear(&info);
    unlink(img);
}

static uint16_t be16_at(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

/* The overlay creator: header fields read back through cfs_image_probe,
 * refcounts for exactly the clusters in use, the file's length, no
 * overwrite, nothing left on refusal. (tests/integration/overlay_format.sh
 * compares the bytes with qemu-img's own.) */
static void test_create_overlay(void **state)
{
    (void)state;
    _cleanup_free_ char *ov = tpath("ov.qcow2");
    _cleanup_free_ char *ov_raw = tpath("ov-raw.qcow2");
    _cleanup_free_ char *big = tpath("ov-big.qcow2");
    _cleanup_free_ char *bad = tpath("ov-bad.qcow2");
    struct cfs_image_info info;
    struct stat st;

    assert_int_equal(cfs_image_create_overlay(ov, "/var/lib/x/base.qcow2", "qcow2",
                                              512ull << 20), 0);
    assert_int_equal(cfs_image_probe(ov, "qcow2", &info), 0);
    assert_string_equal(info.format, "qcow2");
    assert_true(info.virtual_size == 512ull << 20);
    assert_string_equal(info.backing, "/var/lib/x/base.qcow2");
    assert_string_equal(info.backing_format, "qcow2");
    cfs_image_info_clear(&info);
    assert_int_equal(stat(ov, &st), 0);
    assert_int_equal(st.st_size, 3 * 65536 + 8); /* one L1 entry */
    assert_int_equal(st.st_mode & 0777, 0600);

    {
        uint8_t buf[3 * 65536];
        int fd = open(ov, O_RDONLY);
        assert_true(fd >= 0);
        assert_int_equal(pread(fd, buf, sizeof(buf), 0), (ssize_t)sizeof(buf));
        close(fd);
        assert_memory_equal(buf, "QFI\xfb\0\0\0\3", 8);
        assert_int_equal(be16_at(buf + 65536 + 4), 2); /* refcount table: 0x20000 */
        for (int c = 0; c < 4; c++)
            assert_int_equal(be16_at(buf + 2 * 65536 + 2 * c), 1);
        assert_int_equal(be16_at(buf + 2 * 65536 + 8), 0);
    }

    /* a raw backing; an odd size spanning two L1 entries */
    assert_int_equal(cfs_image_create_overlay(ov_raw, "/dev/vg/lv", "raw",
                                              (513ull << 20)), 0);
    assert_int_equal(cfs_image_probe(ov_raw, NULL, &info), 0);
    assert_true(info.virtual_size == 513ull << 20);
    assert_string_equal(info.backing_format, "raw");
    cfs_image_info_clear(&info);
    assert_int_equal(stat(ov_raw, &st), 0);
    assert_int_equal(st.st_size, 3 * 65536 + 16);

    /* 64 TiB, the largest written here: an L1 table of 16 clusters */
    {
        _cleanup_free_ char *max = tpath("ov-max.qcow2");
        assert_int_equal(cfs_image_create_overlay(max, "/b.qcow2", "qcow2", 64ull << 40), 0);
        assert_int_equal(stat(max, &st), 0);
        assert_int_equal(st.st_size, 3 * 65536 + 131072 * 8);
        unlink(max);
    }

    /* 5 TiB: an L1 table of two clusters, five clusters counted */
    assert_int_equal(cfs_image_create_overlay(big, "/b.qcow2", "qcow2", 5ull << 40), 0);
    assert_int_equal(stat(big, &st), 0);
    assert_int_equal(st.st_size, 3 * 65536 + 10240 * 8);
    {
        uint8_t rc[16];
        int fd = open(big, O_RDONLY);
        assert_true(fd >= 0);
        assert_int_equal(pread(fd, rc, sizeof(rc), 2 * 65536), (ssize_t)sizeof(rc));
        close(fd);
        for (int c = 0; c < 5; c++)
            assert_int_equal(be16_at(rc + 2 * c), 1);
        assert_int_equal(be16_at(rc + 10), 0);
    }

    /* never replaces a file: the existing one is left as it was */
    assert_int_equal(cfs_image_create_overlay(ov, "/other.qcow2", "qcow2", 1 << 20), -EEXIST);
    assert_int_equal(cfs_image_probe(ov, "qcow2", &info), 0);
    assert_string_equal(info.backing, "/var/lib/x/base.qcow2");
    cfs_image_info_clear(&info);

    /* what it does not make, it refuses before creating anything */
    assert_int_equal(cfs_image_create_overlay(bad, "/b.vmdk", "vmdk", 1 << 20), -EINVAL);
    assert_int_equal(cfs_image_create_overlay(bad, "/b.qcow2", "qcow2", 1000), -EINVAL);
    assert_int_equal(cfs_image_create_overlay(bad, "/b.qcow2", "qcow2", 0), -EINVAL);
    assert_int_equal(cfs_image_create_overlay(bad, "b.qcow2", "qcow2", 1 << 20), -EINVAL);
    assert_int_equal(cfs_image_create_overlay(bad, "/b.qcow2", "qcow2", 65ull << 40), -EINVAL);
    /* sizes whose L1 arithmetic would overflow are refused, not wrapped */
    assert_int_equal(cfs_image_create_overlay(bad, "/b.qcow2", "qcow2",
                                              UINT64_MAX - 511), -EINVAL);
    char long_name[1100];
    memset(long_name, 'a', sizeof(long_name) - 1);
    long_name[0] = '/';
    long_name[sizeof(long_name) - 1] = '\0';
    assert_int_equal(cfs_image_create_overlay(bad, long_name, "qcow2", 1 << 20), -EINVAL);
    assert_int_equal(lstat(bad, &st), -1);
    assert_int_equal(errno, ENOENT);
    /* a directory that is not there: -ENOENT, nothing made */
    assert_int_equal(cfs_image_create_overlay("/nonexistent/dir/ov.qcow2", "/b.qcow2",
                                              "qcow2", 1 << 20), -ENOENT);
}

/* A storage volume as virStorageVolGetXMLDesc gives it (libvirt 9.0). */
static void test_parse_volume(void **state)
{
    (void)state;
    static const char xml[] =
        "<volume type='file'>\n"
        "  <name>q1.qcow2</name>\n"
        "  <key>/var/lib/libvirt/images/q1.qcow2</key>\n"
        "  <capacity unit='bytes'>67108864</capacity>\n"
        "  <allocation unit='bytes'>200704</allocation>\n"
        "  <physical unit='bytes'>196616</physical>\n"
        "  <target>\n"
        "    <path>/var/lib/libvirt/images/q1.qcow2</path>\n"
        "    <format type='qcow2'/>\n"
        "    <permissions><mode>0644</mode><owner>0</owner><group>0</group></permissions>\n"
        "  </target>\n"
        "  <backingStore>\n"
        "    <path>/var/lib/libvirt/images/base.img</path>\n"
        "    <format type='raw'/>\n"
        "  </backingStore>\n"
        "</volume>\n";
    struct cfs_volxml v;

    assert_int_equal(cfs_domxml_parse_volume(xml, &v), 0);
    assert_string_equal(v.format, "qcow2");
    assert_int_equal(v.capacity, 67108864);
    assert_int_equal(v.allocation, 200704);
    assert_int_equal(v.physical, 196616);
    assert_string_equal(v.backing, "/var/lib/libvirt/images/base.img");
    assert_string_equal(v.backing_format, "raw");
    cfs_volxml_clear(&v);

    assert_int_equal(cfs_domxml_parse_volume("<volume><name>b</name><target><path>/b</path>"
                                             "<format type='raw'/></target></volume>", &v), 0);
    assert_string_equal(v.format, "raw");
    assert_null(v.backing);
    assert_null(v.backing_format);
    cfs_volxml_clear(&v);
    assert_int_equal(cfs_domxml_parse_volume("<domain/>", &v), -EINVAL);
    assert_int_equal(cfs_domxml_parse_volume("not xml", &v), -EINVAL);
}

/* Which URIs are remote: a network transport or a host; local otherwise. */
static void test_uri_remote(void **state)
{
    (void)state;
    static const struct {
        const char *uri;
        bool remote, embed;
        const char *why;
    } cases[] = {
        { "qemu:///system", false, false, NULL },
        { "qemu:///session", false, false, NULL },
        { "qemu:///session?socket=/tmp/x/libvirt-sock", false, false, NULL },
        { "qemu+unix:///system?socket=/run/libvirt/libvirt-sock", false, false, NULL },
        { "qemu:///embed?root=/var/tmp/vm", false, true, NULL },
        { "qemu+ssh://root@host.example/system", true, false, "over ssh" },
        { "qemu+tcp://10.0.0.2/system", true, false, "over tcp" },
        { "qemu+tls://h/system", true, false, "over tls" },
        { "qemu+libssh2://h/system?known_hosts=/x", true, false, "over libssh2" },
        { "qemu+unixx:///system", true, false, "over unixx" },
        { "qemu://host.example/system", true, false, "names the host host.example" },
        { "qemu+unix://localhost/system", true, false, "names the host localhost" },
        { "qemu:/system", true, false, "cannot parse" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char why[256] = "";
        bool embed = true;
        bool remote = cfs_uri_remote(cases[i].uri, why, sizeof(why), &embed);
        if (remote != cases[i].remote || embed != cases[i].embed ||
            (cases[i].why && !strstr(why, cases[i].why)))
            fail_msg("%s: remote %d embed %d why '%s'", cases[i].uri, remote, embed, why);
    }
}

int main(void)
{
    const struct CMUnitTest xml_tests[] = {
        cmocka_unit_test(test_running_chain),
        cmocka_unit_test(test_uri_remote),
        cmocka_unit_test(test_parse_volume),
        cmocka_unit_test(test_running_mixed),
        cmocka_unit_test(test_running_block_backing),
        cmocka_unit_test(test_shutoff_network),
        cmocka_unit_test(test_inactive_unterminated_chain),
        cmocka_unit_test(test_parse_garbage),
        cmocka_unit_test(test_snapshot_parse),
        cmocka_unit_test(test_snapshot_build),
        cmocka_unit_test(test_snapshot_build_multi),
        cmocka_unit_test(test_mirror_ready),
        cmocka_unit_test(test_mid_job_chain),
        cmocka_unit_test(test_set_disk_source),
        cmocka_unit_test(test_drop_backing_store),
    };
    const struct CMUnitTest image_tests[] = {
        cmocka_unit_test(test_resolve_backing),
        cmocka_unit_test(test_probe_and_extend),
        cmocka_unit_test(test_probe_two_backing_formats),
        cmocka_unit_test(test_extend_stops),
        cmocka_unit_test(test_create_overlay),
        cmocka_unit_test(test_parse_deep_chain),
        cmocka_unit_test(test_extend_deep),
        cmocka_unit_test(test_commit_json),
        cmocka_unit_test(test_probe_cache),
        cmocka_unit_test(test_snapshot_drop_disk),
        cmocka_unit_test(test_snapshot_retarget_one_disk),
        cmocka_unit_test(test_snapshot_retarget_two_disks),
        cmocka_unit_test(test_snapshot_retarget_malformed),
    };
    int failed;

    cfs_domxml_init();
    failed = cmocka_run_group_tests_name("domxml", xml_tests, NULL, NULL);
    failed += cmocka_run_group_tests_name("qcow2", image_tests, qcow2_setup,
                                          qcow2_teardown);
    return failed ? 1 : 0;
}
