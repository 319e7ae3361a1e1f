/* fake_img.c — see fake_img.h. */
#include "fake_img.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>

#include "chainfs/backend.h"
#include "chainfs/util.h"

struct fake {
    pthread_mutex_t lock;
    struct cfs_extent *runs;
    size_t n_runs;
    bool runs_set;
    int fail_err;
    char *fail_msg;
    unsigned starts, stops, running, sweeps, streams_open, streams_close,
        extents_calls;
    char *last_chain;
    uint64_t last_size;
};

struct cfs_img {
    struct fake *f;
    uint64_t size;
    struct cfs_extent *runs;
    size_t n_runs;
    bool fetched;
    unsigned streams;
};

struct cfs_img_stream {
    struct cfs_img *img;
};

static struct fake *F(struct cfs_imgserve *s) { return s->priv; }

static int fk_sweep(struct cfs_imgserve *s)
{
    struct fake *f = F(s);
    pthread_mutex_lock(&f->lock);
    f->sweeps++;
    pthread_mutex_unlock(&f->lock);
    return 0;
}

static int fk_start(struct cfs_imgserve *s, const struct cfs_img_spec *spec,
                    struct cfs_img **out)
{
    struct fake *f = F(s);
    pthread_mutex_lock(&f->lock);
    if (f->fail_err) {
        int err = f->fail_err;
        f->fail_err = 0;
        cfs_backend_set_errmsg("%s", f->fail_msg ? f->fail_msg : "injected");
        pthread_mutex_unlock(&f->lock);
        return err;
    }
    struct cfs_buf b = {0};
    for (size_t i = 0; i < spec->n_layers; i++)
        cfs_buf_printf(&b, "%s:%s%s\n", spec->layers[i].format,
                       spec->layers[i].is_block ? "block:" : "",
                       spec->layers[i].path);
    free(f->last_chain);
    f->last_chain = cfs_buf_steal(&b);
    f->last_size = spec->virtual_size;
    struct cfs_img *img = cfs_xcalloc(1, sizeof(*img));
    img->f = f;
    img->size = spec->virtual_size;
    if (f->runs_set) {
        img->n_runs = f->n_runs;
        img->runs = cfs_xcalloc(f->n_runs ? f->n_runs : 1, sizeof(*img->runs));
        memcpy(img->runs, f->runs, f->n_runs * sizeof(*img->runs));
    } else {
        img->n_runs = 1;
        img->runs = cfs_xcalloc(1, sizeof(*img->runs));
        img->runs[0] = (struct cfs_extent){ 0, spec->virtual_size / 2 };
    }
    f->starts++;
    f->running++;
    pthread_mutex_unlock(&f->lock);
    *out = img;
    return 0;
}

static int fk_stream_open(struct cfs_img *img, struct cfs_img_stream **out)
{
    struct cfs_img_stream *st = cfs_xcalloc(1, sizeof(*st));
    st->img = img;
    pthread_mutex_lock(&img->f->lock);
    img->f->streams_open++;
    img->streams++;
    pthread_mutex_unlock(&img->f->lock);
    *out = st;
    return 0;
}

static ssize_t fk_stream_read(struct cfs_img_stream *st, void *buf, size_t len,
                              uint64_t off)
{
    struct cfs_img *img = st->img;
    if (off + len > img->size)
        return -EINVAL; /* the caller clamps */
    unsigned char *p = buf;
    for (size_t i = 0; i < len; i++) {
        uint64_t o = off + i;
        bool data = false;
        for (size_t k = 0; k < img->n_runs && !data; k++)
            data = o >= img->runs[k].off && o < img->runs[k].off + img->runs[k].len;
        p[i] = data ? cfs_fake_img_byte(o) : 0;
    }
    return (ssize_t)len;
}

static void fk_stream_close(struct cfs_img_stream *st)
{
    pthread_mutex_lock(&st->img->f->lock);
    st->img->f->streams_close++;
    st->img->streams--;
    pthread_mutex_unlock(&st->img->f->lock);
    free(st);
}

static int fk_extents(struct cfs_img *img, const struct cfs_extent **runs,
                      size_t *n)
{
    pthread_mutex_lock(&img->f->lock);
    if (!img->fetched)
        img->f->extents_calls++;
    img->fetched = true;
    pthread_mutex_unlock(&img->f->lock);
    *runs = img->runs;
    *n = img->n_runs;
    return 0;
}

static void fk_stop(struct cfs_img *img)
{
    struct fake *f = img->f;
    pthread_mutex_lock(&f->lock);
    f->stops++;
    f->running--;
    pthread_mutex_unlock(&f->lock);
    free(img->runs);
    free(img);
}

static void fk_destroy(struct cfs_imgserve *s)
{
    struct fake *f = F(s);
    pthread_mutex_destroy(&f->lock);
    free(f->runs);
    free(f->fail_msg);
    free(f->last_chain);
    free(f);
    free(s);
}

static const struct cfs_imgserve_ops fake_ops = {
    .name = "fake",
    .sweep = fk_sweep,
    .start = fk_start,
    .stream_open = fk_stream_open,
    .stream_read = fk_stream_read,
    .stream_close = fk_stream_close,
    .extents = fk_extents,
    .stop = fk_stop,
    .destroy = fk_destroy,
};

struct cfs_imgserve *cfs_fake_imgserve_new(void)
{
    struct cfs_imgserve *s = cfs_xcalloc(1, sizeof(*s));
    struct fake *f = cfs_xcalloc(1, sizeof(*f));
    pthread_mutex_init(&f->lock, NULL);
    s->ops = &fake_ops;
    s->priv = f;
    return s;
}

void cfs_fake_img_set_runs(struct cfs_imgserve *s, const struct cfs_extent *runs,
                           size_t n)
{
    struct fake *f = F(s);
    pthread_mutex_lock(&f->lock);
    free(f->runs);
    f->runs = cfs_xcalloc(n ? n : 1, sizeof(*runs));
    memcpy(f->runs, runs, n * sizeof(*runs));
    f->n_runs = n;
    f->runs_set = true;
    pthread_mutex_unlock(&f->lock);
}

void cfs_fake_img_fail_next_start(struct cfs_imgserve *s, int err,
                                  const char *msg)
{
    struct fake *f = F(s);
    pthread_mutex_lock(&f->lock);
    f->fail_err = err;
    free(f->fail_msg);
    f->fail_msg = cfs_xstrdup(msg);
    pthread_mutex_unlock(&f->lock);
}

unsigned cfs_fake_img_count(struct cfs_imgserve *s, const char *what)
{
    struct fake *f = F(s);
    pthread_mutex_lock(&f->lock);
    unsigned v = cfs_streq(what, "start") ? f->starts
               : cfs_streq(what, "stop") ? f->stops
               : cfs_streq(what, "running") ? f->running
               : cfs_streq(what, "sweep") ? f->sweeps
               : cfs_streq(what, "stream_open") ? f->streams_open
               : cfs_streq(what, "stream_close") ? f->streams_close
               : cfs_streq(what, "extents") ? f->extents_calls : 0;
    pthread_mutex_unlock(&f->lock);
    return v;
}

char *cfs_fake_img_last_chain(struct cfs_imgserve *s, uint64_t *size)
{
    struct fake *f = F(s);
    pthread_mutex_lock(&f->lock);
    char *c = cfs_xstrdup(f->last_chain);
    if (size)
        *size = f->last_size;
    pthread_mutex_unlock(&f->lock);
    return c;
}
