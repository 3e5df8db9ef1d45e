/*
 * report.c — the HTML report of a comparison (see report.h), and the read-tracking source
 * whose byte ranges go into the report's provenance section.
 *
 * The page is written in one pass with fprintf. Figures are inline SVG drawn here from the
 * numbers in cks_compare_result; nothing is fetched, nothing is scripted. Stream errors are
 * sticky in a FILE*, so the writers below do not check every call: cks_report_html() checks
 * ferror() once at the end.
 */
#include <ctype.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "ckptscope/report.h"
#include "ckptscope/text.h"

/* ------------------------------------------------------------------ read tracking */

struct track_source {
    cks_source base;          /* first: the checkpoint sees only this */
    cks_source *inner;        /* owned */
    pthread_mutex_t lock;     /* read_at may run on several threads */
    cks_range *ranges;        /* sorted, disjoint, non-adjacent */
    size_t n, cap;
    uint64_t bytes;
    bool approximate;
};

static const cks_source_ops track_ops;

/* Join the two neighbouring ranges with the smallest gap: the list stays a superset of what
 * was read, and a coarser list is better than a failed read or an unbounded one. */
static void track_coarsen(struct track_source *ts)
{
    size_t best = 0;
    uint64_t best_gap = UINT64_MAX;
    for (size_t i = 0; i + 1 < ts->n; i++) {
        uint64_t gap = ts->ranges[i + 1].offset - (ts->ranges[i].offset + ts->ranges[i].length);
        if (gap < best_gap) {
            best_gap = gap;
            best = i;
        }
    }
    if (ts->n >= 2) { /* callers only coarsen with two or more */
        ts->bytes += best_gap;
        ts->ranges[best].length =
            ts->ranges[best + 1].offset + ts->ranges[best + 1].length - ts->ranges[best].offset;
        memmove(&ts->ranges[best + 1], &ts->ranges[best + 2], (ts->n - best - 2) * sizeof *ts->ranges);
        ts->n--;
        ts->approximate = true;
    }
}

/* Room for one more range: grow up to the cap. false past the cap or without memory. */
static bool track_reserve(struct track_source *ts)
{
    size_t want = ts->cap ? ts->cap * 2 : 16;
    cks_range *grown = NULL;
    bool ok = ts->n < ts->cap;
    if (want > CKS_REPORT_MAX_RANGES)
        want = CKS_REPORT_MAX_RANGES;
    if (!ok && want > ts->cap)
        grown = realloc(ts->ranges, want * sizeof *grown);
    if (grown) {
        ts->ranges = grown;
        ts->cap = want;
        ok = true;
    }
    return ok;
}

/* Caller holds ts->lock. Never fails: past the cap or without memory it coarsens instead
 * (each pass removes one range, so the loop ends). */
static void track_add(struct track_source *ts, uint64_t off, uint64_t len)
{
    uint64_t end = off + len;
    bool done = len == 0;
    while (!done) {
        size_t lo = 0, hi = ts->n, first, last;
        /* first range whose end reaches off (adjacent ranges merge too) */
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (ts->ranges[mid].offset + ts->ranges[mid].length < off)
                lo = mid + 1;
            else
                hi = mid;
        }
        first = lo;
        last = first;
        while (last < ts->n && ts->ranges[last].offset <= end)
            last++;
        if (last > first) { /* merge ranges [first, last) with the new one */
            uint64_t start = ts->ranges[first].offset < off ? ts->ranges[first].offset : off;
            uint64_t stop = ts->ranges[last - 1].offset + ts->ranges[last - 1].length;
            if (stop < end)
                stop = end;
            for (size_t i = first; i < last; i++)
                ts->bytes -= ts->ranges[i].length;
            ts->ranges[first].offset = start;
            ts->ranges[first].length = stop - start;
            ts->bytes += stop - start;
            memmove(&ts->ranges[first + 1], &ts->ranges[last], (ts->n - last) * sizeof *ts->ranges);
            ts->n -= last - first - 1;
            done = true;
        } else if (track_reserve(ts)) {
            memmove(&ts->ranges[first + 1], &ts->ranges[first], (ts->n - first) * sizeof *ts->ranges);
            ts->ranges[first].offset = off;
            ts->ranges[first].length = len;
            ts->bytes += len;
            ts->n++;
            done = true;
        } else if (ts->n < 2) {
            done = true; /* no memory for even one or two ranges: the report shows what it has */
            ts->approximate = true;
        } else {
            track_coarsen(ts); /* make room, then try again: the new range may now merge, or fit */
        }
    }
}

static cks_err track_read_at(cks_source *src, uint64_t offset, void *buf, size_t len, cks_diag *diag)
{
    struct track_source *ts = (struct track_source *)src;
    cks_err err = cks_source_read_at(ts->inner, offset, buf, len, diag);
    if (err == CKS_OK) {
        pthread_mutex_lock(&ts->lock);
        track_add(ts, offset, len);
        pthread_mutex_unlock(&ts->lock);
    }
    return err;
}

/* Prefetches are plans, not reads: the reads that follow are what gets recorded. */
static cks_err track_prefetch(cks_source *src, const cks_range *ranges, size_t n, cks_diag *diag)
{
    struct track_source *ts = (struct track_source *)src;
    return cks_source_prefetch(ts->inner, ranges, n, diag);
}

static void track_destroy(cks_source *src)
{
    struct track_source *ts = (struct track_source *)src;
    cks_source_free(ts->inner);
    pthread_mutex_destroy(&ts->lock);
    free(ts->ranges);
    free(ts->base.name);
    free(ts);
}

/* Forward a batch to the wrapped sources, so tracking reads does not cost round trips. */
static cks_err track_prefetch_many(cks_source *const *srcs, const cks_range *ranges, size_t n, cks_diag *diag)
{
    cks_err err;
    cks_source **inner = malloc((n ? n : 1) * sizeof *inner);
    if (!inner)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        inner[i] = ((struct track_source *)srcs[i])->inner;
    err = cks_source_prefetch_many(inner, ranges, n, diag);
    free(inner);
    return err;
}

static void track_trim(cks_source *src)
{
    cks_source_trim(((struct track_source *)src)->inner);
}

static cks_err track_check_whole(cks_source *src, cks_diag *diag)
{
    return cks_source_check_whole(((struct track_source *)src)->inner, diag);
}

static bool track_discard(cks_source *src)
{
    return cks_source_discard(((struct track_source *)src)->inner);
}

static bool track_unverified(const cks_source *src)
{
    return cks_source_unverified(((const struct track_source *)src)->inner);
}

static const cks_source_ops track_ops = {.read_at = track_read_at,
                                         .prefetch = track_prefetch,
                                         .destroy = track_destroy,
                                         .prefetch_many = track_prefetch_many,
                                         .trim = track_trim,
                                         .check_whole = track_check_whole,
                                         .discard = track_discard,
                                         .unverified = track_unverified};

cks_err cks_report_track_reads(cks_ckpt *ckpt, cks_diag *diag)
{
    cks_err err = CKS_OK;
    if (!ckpt) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "no checkpoint to track");
        goto out;
    }
    for (size_t f = 0; f < ckpt->n_files; f++) {
        cks_source *inner = ckpt->files[f].source;
        struct track_source *ts;
        if (!inner || inner->ops == &track_ops)
            continue; /* already tracked: tracking twice would only slow reads */
        ts = calloc(1, sizeof *ts);
        if (!ts || !(ts->base.name = strdup(inner->name ? inner->name : ckpt->files[f].path))) {
            free(ts);
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory tracking reads of %s", ckpt->files[f].path);
            goto out;
        }
        pthread_mutex_init(&ts->lock, NULL);
        ts->base.ops = &track_ops;
        ts->base.size = inner->size;
        ts->base.thread_safe = inner->thread_safe;
        ts->base.sequential = inner->sequential;
        memcpy(ts->base.sha256_hex, inner->sha256_hex, sizeof ts->base.sha256_hex);
        ts->inner = inner;
        /* opening the checkpoint already read the length prefix and the JSON header */
        if (ckpt->files[f].header)
            track_add(ts, 0, 8 + ckpt->files[f].header->header_len);
        ckpt->files[f].source = &ts->base;
    }
out:
    return err;
}

bool cks_report_reads(const cks_source *src, const cks_range **ranges, size_t *n, uint64_t *bytes,
                      bool *approximate)
{
    const struct track_source *ts = (const struct track_source *)src;
    bool ok = src && src->ops == &track_ops;
    if (ok) {
        *ranges = ts->ranges;
        *n = ts->n;
        *bytes = ts->bytes;
        *approximate = ts->approximate;
    }
    return ok;
}

/* ------------------------------------------------------------------ text helpers */

/* Escape for element text and quoted attribute values alike. */
static void esc(FILE *f, const char *s)
{
    for (; s && *s; s++) {
        switch (*s) {
        case '&':
            fputs("&amp;", f);
            break;
        case '<':
            fputs("&lt;", f);
            break;
        case '>':
            fputs("&gt;", f);
            break;
        case '"':
            fputs("&quot;", f);
            break;
        case '\'':
            fputs("&#39;", f);
            break;
        default:
            /* control characters other than tab/newline would make the document invalid */
            if ((unsigned char)*s < 0x20 && *s != '\t' && *s != '\n')
                fputc(' ', f);
            else
                fputc(*s, f);
        }
    }
}

/* three significant digits in the tables ("1.46 GiB") */
static const char *human_bytes(uint64_t bytes, char *buf, size_t size)
{
    return cks_human_bytes(bytes, -1, buf, size);
}

/* A number for a table cell; a dash for "not applicable". */
static void num(FILE *f, const char *fmt, double v)
{
    if (isfinite(v))
        fprintf(f, fmt, v);
    else
        fputs("<span class=\"na\">—</span>", f);
}

static void pval(FILE *f, double p)
{
    if (!isfinite(p))
        fputs("<span class=\"na\">—</span>", f);
    else if (p < 1e-12)
        fputs("&lt; 10<sup>−12</sup>", f);
    else if (p < 1e-3)
        fprintf(f, "%.1e", p);
    else
        fprintf(f, "%.3g", p);
}

/* The verdict's name (cks_verdict_name, one list of names) as a title: "not derived" */
static const char *verdict_title(cks_verdict v)
{
    return v == CKS_VERDICT_NOT_DERIVED ? "not derived" : cks_verdict_name(v);
}

static const char *verdict_gloss(cks_verdict v)
{
    switch (v) {
    case CKS_VERDICT_IDENTICAL:
        return "B holds the same tensors as A, byte for byte.";
    case CKS_VERDICT_DERIVED:
        return "B was derived from A, or both from a common ancestor.";
    case CKS_VERDICT_NOT_DERIVED:
        return "No evidence that B was derived from A, under the transformations tested.";
    default:
        return "These tests cannot decide whether B was derived from A.";
    }
}

static const char *verdict_class(cks_verdict v)
{
    switch (v) {
    case CKS_VERDICT_IDENTICAL:
        return "v-identical";
    case CKS_VERDICT_DERIVED:
        return "v-derived";
    case CKS_VERDICT_NOT_DERIVED:
        return "v-notderived";
    default:
        return "v-inconclusive";
    }
}

/* ------------------------------------------------------------------ colours and plots */

/* RdBu-like diverging scale on [-1, 1]: blue below zero, red above, near-white at zero, so
 * "no correlation" reads as empty paper and sign stays visible. */
static void diverging(double v, char *buf, size_t size)
{
    static const double stops[5][3] = {
        {33, 102, 172}, {103, 169, 207}, {247, 247, 247}, {239, 138, 98}, {178, 24, 43}};
    double t, x;
    int i;
    if (!isfinite(v)) { /* a missing value is grey, never a colour that means something */
        snprintf(buf, size, "#dddddd");
    } else {
        v = v < -1 ? -1 : v > 1 ? 1 : v;
        x = (v + 1) * 2; /* 0..4 */
        i = (int)x;
        if (i > 3)
            i = 3;
        t = x - i;
        snprintf(buf, size, "#%02x%02x%02x", (int)lround(stops[i][0] + t * (stops[i + 1][0] - stops[i][0])),
                 (int)lround(stops[i][1] + t * (stops[i + 1][1] - stops[i][1])),
                 (int)lround(stops[i][2] + t * (stops[i + 1][2] - stops[i][2])));
    }
}

/* A step of 1, 2 or 5 times a power of ten giving about `want` ticks over `range`. */
static double nice_step(double range, int want)
{
    double raw, mag, norm, step = 1;
    if (range > 0 && want >= 1) {
        raw = range / want;
        mag = pow(10, floor(log10(raw)));
        norm = raw / mag;
        step = (norm < 1.5 ? 1 : norm < 3.5 ? 2 : norm < 7.5 ? 5 : 10) * mag;
    }
    return step;
}

typedef struct plot {
    FILE *f;
    double left, top, w, h;   /* plotting area inside the SVG */
    double xmin, xmax, ymin, ymax;
} plot;

static double plot_x(const plot *p, double x)
{
    return p->left + (p->xmax > p->xmin ? (x - p->xmin) / (p->xmax - p->xmin) : 0.5) * p->w;
}

static double plot_y(const plot *p, double y)
{
    return p->top + p->h - (p->ymax > p->ymin ? (y - p->ymin) / (p->ymax - p->ymin) : 0.5) * p->h;
}

/* Frame, gridlines, y ticks (nice numbers) and integer x ticks labelled by `xlabel_of`. */
static void plot_axes(const plot *p, const char *xlabel, const char *ylabel, int n_x, const char *const *xnames)
{
    FILE *f = p->f;
    double step = nice_step(p->ymax - p->ymin, 5);
    int xstep = n_x > 24 ? (n_x + 11) / 12 : 1;
    for (double y = ceil(p->ymin / step) * step; y <= p->ymax + step * 1e-9; y += step) {
        double yy = plot_y(p, y);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" class=\"grid\"/>", p->left, yy,
                p->left + p->w, yy);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" class=\"tick\" text-anchor=\"end\">%g</text>", p->left - 6, yy + 4,
                fabs(y) < step * 1e-6 ? 0.0 : y);
    }
    for (int i = 0; i < n_x; i += xstep) {
        double xx = plot_x(p, i);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" class=\"tick\" text-anchor=\"middle\">", xx, p->top + p->h + 16);
        if (xnames)
            esc(f, xnames[i]);
        else
            fprintf(f, "%d", i);
        fputs("</text>", f);
    }
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" class=\"frame\"/>", p->left, p->top, p->w,
            p->h);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" class=\"axis\" text-anchor=\"middle\">", p->left + p->w / 2,
            p->top + p->h + 36);
    esc(f, xlabel);
    fprintf(f, "</text><text class=\"axis\" text-anchor=\"middle\" transform=\"translate(%.1f %.1f) rotate(-90)\">",
            p->left - 44, p->top + p->h / 2);
    esc(f, ylabel);
    fputs("</text>", f);
}

/* One polyline with markers; NaN values break nothing, they are skipped. */
static void plot_series(const plot *p, const double *x, const double *y, size_t n, const char *colour, bool dashed,
                        bool hollow, const char *title)
{
    FILE *f = p->f;
    bool open = false;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(y[i]))
            continue;
        if (!open) {
            fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.6\"%s points=\"", colour,
                    dashed ? " stroke-dasharray=\"4 3\"" : "");
            open = true;
        }
        fprintf(f, "%.1f,%.1f ", plot_x(p, x[i]), plot_y(p, y[i]));
    }
    if (open)
        fputs("\"/>", f);
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(y[i]))
            continue;
        fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.2\" fill=\"%s\" stroke=\"%s\" stroke-width=\"1.4\">",
                plot_x(p, x[i]), plot_y(p, y[i]), hollow ? "#ffffff" : colour, colour);
        fputs("<title>", f);
        esc(f, title);
        fprintf(f, ": %.4g</title></circle>", y[i]);
    }
}

static void legend_item(FILE *f, double x, double y, const char *colour, bool dashed, bool hollow, const char *text)
{
    fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"1.6\"%s/>", x, y,
            x + 22, y, colour, dashed ? " stroke-dasharray=\"4 3\"" : "");
    fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.2\" fill=\"%s\" stroke=\"%s\" stroke-width=\"1.4\"/>", x + 11, y,
            hollow ? "#ffffff" : colour, colour);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" class=\"legend\">", x + 28, y + 4);
    esc(f, text);
    fputs("</text>", f);
}

/* ------------------------------------------------------------------ sections */

static const char css[] =
    ":root{--ink:#1b1f24;--muted:#57606a;--line:#d0d7de;--soft:#f6f8fa;--accent:#0b5cad}"
    "*{box-sizing:border-box}"
    "body{margin:0;background:#fff;color:var(--ink);font:15px/1.5 system-ui,-apple-system,'Segoe UI',"
    "Roboto,'Helvetica Neue',Arial,sans-serif}"
    "main{max-width:1180px;margin:0 auto;padding:28px 32px 48px}"
    "h1{font-size:15px;font-weight:600;color:var(--muted);margin:0 0 14px;letter-spacing:.02em}"
    "h1 b{color:var(--ink)}"
    "h2{font-size:19px;margin:36px 0 10px;padding-bottom:6px;border-bottom:1px solid var(--line)}"
    "h3{font-size:15px;margin:20px 0 6px}"
    "code,.mono{font-family:ui-monospace,'SFMono-Regular',Menlo,Consolas,'DejaVu Sans Mono',monospace;"
    "font-size:12.5px}"
    ".verdict{border:1px solid var(--line);border-left:10px solid var(--vc);border-radius:8px;padding:18px 22px;"
    "background:linear-gradient(90deg,var(--vbg),#fff 70%)}"
    ".verdict .word{font-size:34px;font-weight:700;color:var(--vc);line-height:1.1;margin:0}"
    ".verdict .gloss{font-size:17px;font-weight:600;margin:4px 0 10px}"
    ".verdict .reason{margin:0 0 10px;max-width:900px}"
    ".verdict dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0;font-size:13.5px}"
    ".verdict dt{color:var(--muted)}.verdict dd{margin:0}"
    ".v-identical{--vc:#1f4e9c;--vbg:#eef3fb}.v-derived{--vc:#b2182b;--vbg:#fbeff0}"
    ".v-notderived{--vc:#1a7f37;--vbg:#eef8f1}.v-inconclusive{--vc:#9a6700;--vbg:#fcf6e6}"
    ".models{display:grid;grid-template-columns:1fr 1fr;gap:14px}"
    ".card{border:1px solid var(--line);border-radius:8px;padding:12px 16px}"
    ".card .tag{display:inline-block;font-weight:700;background:var(--ink);color:#fff;border-radius:4px;"
    "padding:0 7px;margin-right:8px}"
    ".card .spec{font-weight:600;word-break:break-all}"
    ".card dl{display:grid;grid-template-columns:max-content 1fr;gap:1px 12px;margin:8px 0 0;font-size:13.5px}"
    ".card dt{color:var(--muted)}.card dd{margin:0;word-break:break-all}"
    "table{border-collapse:collapse;width:100%;font-size:13.5px}"
    "th{text-align:left;font-weight:600;color:var(--muted);border-bottom:2px solid var(--line);padding:6px 8px;"
    "white-space:nowrap}"
    "td{border-bottom:1px solid var(--line);padding:6px 8px;vertical-align:top}"
    "td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}"
    "tr.notrun td{color:var(--muted)}"
    "table.tests tr.main td{border-bottom:none;padding-bottom:1px}"
    "table.tests tr.notes td{font-size:12.5px;color:var(--muted);padding-top:0;padding-bottom:9px}"
    "table.tests tr.notes b{color:#3d444d;font-weight:600}"
    "td.id{font-weight:700;white-space:nowrap}th.n{text-align:right}"
    ".sub{display:block;color:var(--muted);font-size:12.5px}"
    ".na{color:#8c959f}"
    ".badge{display:inline-block;border-radius:10px;padding:0 9px;font-size:12px;font-weight:700;"
    "white-space:nowrap}"
    ".b-rej{background:#b2182b;color:#fff}.b-null{background:#e8ebef;color:#333}.b-weak{background:#f4d58d;color:#333}"
    ".b-inv{background:#9a6700;color:#fff}.b-nr{background:#fff;color:#8c959f;border:1px solid var(--line)}"
    ".rawcos{background:#fff8c5;border-radius:4px;padding:1px 5px}"
    "figure{margin:18px 0 8px;break-inside:avoid;page-break-inside:avoid}"
    "figcaption{font-size:13px;color:var(--muted);max-width:860px;margin-top:4px}"
    "figcaption b{color:var(--ink)}"
    ".figs{display:flex;flex-wrap:wrap;gap:10px 24px;align-items:flex-start}.figs figure{max-width:540px}"
    ".figs figure.wide{max-width:none}"
    "svg{display:block;max-width:100%;height:auto}"
    "svg text{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Arial,sans-serif}"
    "svg .tick{font-size:11px;fill:#57606a}svg .axis{font-size:12px;fill:#1b1f24}"
    "svg .legend{font-size:12px;fill:#1b1f24}svg .cellv{font-size:10px;fill:#1b1f24}"
    "svg .grid{stroke:#eaeef2;stroke-width:1}svg .frame{fill:none;stroke:#8c959f;stroke-width:1}"
    "table.kv{width:auto;min-width:60%}table.kv td:first-child{color:var(--muted);padding-right:28px;"
    "white-space:nowrap}"
    "details{margin:6px 0}summary{cursor:pointer;color:var(--accent)}"
    ".ranges{font-size:12px;line-height:1.6;word-break:break-all}"
    ".note{font-size:13px;color:var(--muted)}"
    "footer{margin-top:36px;font-size:12.5px;color:var(--muted);border-top:1px solid var(--line);padding-top:10px}"
    "@media (max-width:760px){.models{grid-template-columns:1fr}}"
    "@media print{main{max-width:none;padding:0}body{font-size:11pt}h2{break-after:avoid}"
    ".verdict{background:none}details>summary{display:none}details{display:block}"
    "tr{break-inside:avoid}a{color:inherit;text-decoration:none}}"
    "@page{margin:14mm}";

static void section_verdict(FILE *f, const cks_compare_result *r)
{
    fprintf(f, "<section class=\"verdict %s\" aria-label=\"verdict\">", verdict_class(r->verdict));
    fprintf(f, "<p class=\"word\">%s</p><p class=\"gloss\">", verdict_title(r->verdict));
    /* the plain sentence first; the statistics behind it after */
    if (r->headline[0])
        esc(f, r->headline);
    else
        fputs(verdict_gloss(r->verdict), f);
    fputs("</p><p class=\"reason\">", f);
    esc(f, r->reason);
    fputs("</p><dl>", f);
    if (r->relation[0]) {
        fputs("<dt>relation</dt><dd>", f);
        esc(f, r->relation);
        fputs("</dd>", f);
    }
    if (r->covered[0]) {
        fputs("<dt>covers</dt><dd>", f);
        esc(f, r->covered);
        fputs("</dd>", f);
    }
    if (r->not_covered[0]) {
        fputs("<dt>does not cover</dt><dd>", f);
        esc(f, r->not_covered);
        fputs("</dd>", f);
    }
    fprintf(f, "<dt>controls</dt><dd>%zu negative, %zu positive (plus the built-in synthetic power checks)</dd>",
            r->n_controls_run, r->n_positives_run);
    fputs("</dl></section>", f);
}

static void model_card(FILE *f, const char *tag, const cks_report_model *m, const char *family, int layers,
                       size_t hidden, uint64_t bytes_read)
{
    char b1[32], b2[32];
    uint64_t total = 0;
    for (size_t i = 0; i < m->n_files; i++)
        total += m->files[i].size;
    fprintf(f, "<div class=\"card\"><span class=\"tag\">%s</span><span class=\"spec\">", tag);
    esc(f, m->spec);
    fputs("</span><dl>", f);
    fputs("<dt>architecture</dt><dd>", f);
    esc(f, family ? family : "unknown");
    fprintf(f, ", %d layers, hidden size %zu</dd>", layers, hidden);
    if (m->repo) {
        fputs("<dt>repository</dt><dd>", f);
        esc(f, m->repo);
        if (m->revision) {
            fputs(" @ ", f);
            esc(f, m->revision);
        }
        fputs("</dd>", f);
    }
    if (m->commit) {
        fputs("<dt>commit</dt><dd class=\"mono\">", f);
        esc(f, m->commit);
        fputs("</dd>", f);
    }
    fprintf(f, "<dt>files</dt><dd>%zu, %s</dd>", m->n_files, human_bytes(total, b1, sizeof b1));
    {
        /* the union of the tracked ranges is what left the files; the result's count adds re-reads */
        uint64_t uni = 0;
        bool tracked = false;
        for (size_t i = 0; i < m->n_files; i++) {
            uni += m->files[i].bytes_read;
            tracked |= m->files[i].ranges != NULL;
        }
        if (tracked)
            bytes_read = uni;
    }
    fprintf(f, "<dt>read</dt><dd>%s", human_bytes(bytes_read, b2, sizeof b2));
    if (total && bytes_read <= total)
        fprintf(f, " of %s (%.3g%%)", b1, 100.0 * (double)bytes_read / (double)total);
    fputs("</dd></dl></div>", f);
}

/* Two rows per test: the numbers a reader compares across tests, then one full-width line of
 * notes (what the statistic is, its null, power, tensors) that would otherwise make the number
 * columns unreadably narrow. */
static void test_row_not_run(FILE *f, const cks_test_result *t)
{
    fputs("<tr class=\"notrun\"><td class=\"id\">", f);
    esc(f, t->id);
    fputs("</td><td>", f);
    esc(f, t->name);
    fputs("</td><td colspan=\"6\" class=\"na\">not run: ", f);
    esc(f, t->why_not);
    fputs("</td><td><span class=\"badge b-nr\">not run</span></td></tr>", f);
}

static void test_row(FILE *f, const cks_test_result *t)
{
    char b[32];
    fputs("<tr class=\"main\"><td class=\"id\">", f);
    esc(f, t->id);
    fputs("</td><td><b>", f);
    esc(f, t->name);
    fputs("</b>", f);
    if (!t->primary)
        fputs(" <span class=\"na\">(secondary)</span>", f);
    fputs("</td><td class=\"n\">", f);
    num(f, "%.4g", t->statistic);
    fputs("</td><td class=\"n\">", f);
    num(f, "%.3g", t->null_mean);
    fputs(" ± ", f);
    num(f, "%.2g", t->null_sd);
    fputs("</td><td class=\"n\">", f);
    if (isfinite(t->p_value) && t->p_exact && t->permutations > 0 &&
        t->p_value <= 1.0 / (t->permutations + 1.0) + 1e-15) {
        /* the smallest p T draws can give: never print less */
        fprintf(f, "<span title=\"exact permutation p with %" PRIu32 " draws\">≤ ", t->permutations);
        pval(f, t->p_value);
        fputs("</span>", f);
    } else {
        if (isfinite(t->p_value) && !t->p_exact && t->p_value >= 1e-12) /* "≈ < 1e-12" says nothing more */
            fputs("<span title=\"approximate\">≈ </span>", f);
        pval(f, t->p_value);
    }
    fputs("</td><td class=\"n\">", f);
    pval(f, t->p_holm);
    fputs("</td><td class=\"n\">", f);
    num(f, "%.1f", t->z);
    fputs("</td><td class=\"n\">", f);
    if (t->bytes_read)
        fputs(human_bytes(t->bytes_read, b, sizeof b), f);
    else
        fputs("<span class=\"na\">—</span>", f);
    fputs("</td><td>", f);
    /* the pill says what the test found, not a statistician's "rejects" */
    if (!t->valid)
        fputs("<span class=\"badge b-inv\">invalid</span>", f);
    else if (t->rejects && strcmp(t->id, "T1") == 0)
        fputs(t->evidence == CKS_EVIDENCE_COPY ? "<span class=\"badge b-rej\">byte-identical tensors</span>"
                                               : "<span class=\"badge b-rej\">more shared bits than chance</span>",
              f);
    else if (t->rejects && t->evidence == CKS_EVIDENCE_INIT)
        fputs("<span class=\"badge b-weak\">shared initialisation</span>", f);
    else if (t->rejects)
        fputs("<span class=\"badge b-rej\">agrees like a derivative</span>", f);
    else if (t->significant)
        fputs("<span class=\"badge b-weak\">weak: shared structure</span>", f);
    else
        fputs("<span class=\"badge b-null\">at its null</span>", f);
    fputs("</td></tr>\n<tr class=\"notes\"><td></td><td colspan=\"8\">", f);
    if (isfinite(t->raw_cosine))
        fprintf(f, "<span class=\"rawcos\">raw cosine %.4f — not evidence</span> (norm gains are positive around a "
                   "common offset, so any two models score near 1). ",
                t->raw_cosine);
    if (!t->valid && t->invalid_reason[0]) {
        fputs("<b>Invalid:</b> ", f);
        esc(f, t->invalid_reason);
        fputs(". ", f);
    }
    if (t->statistic_name[0]) {
        fputs("<b>Statistic:</b> ", f);
        esc(f, t->statistic_name);
        if (isfinite(t->effect) && isfinite(t->floor))
            fprintf(f, " (effect %.3g against a floor of %.2f: %s)", t->effect, t->floor,
                    t->effect_ok ? "above it" : "below it");
        else if (isfinite(t->effect))
            fprintf(f, " (effect %.3g)", t->effect);
        fputs(". ", f);
    }
    fprintf(f, "<b>Evidence of:</b> %s. ",
            t->evidence == CKS_EVIDENCE_TRAINED     ? "what training wrote (tensors that start from a constant)"
            : t->evidence == CKS_EVIDENCE_INIT      ? "what a random initialisation fixed (a shared seed agrees here too)"
            : t->evidence == CKS_EVIDENCE_ALIGNMENT ? "a correspondence found through a permutation"
            : t->evidence == CKS_EVIDENCE_COPY      ? "byte copies"
                                                    : "nothing decisive");
    if (t->p_method[0]) {
        fputs("<b>p:</b> ", f);
        esc(f, t->p_method);
        fputs(". ", f);
    }
    if (t->null_kind[0]) {
        fputs("<b>Null:</b> ", f);
        esc(f, t->null_kind);
        if (t->permutations)
            fprintf(f, ", %" PRIu32 " permutations", t->permutations);
        fputs(". ", f);
    }
    fputs("<b>Power:</b> ", f);
    fputs(t->power > 0 ? "shown" : t->power == 0 ? "NOT shown" : "not checked", f);
    if (t->power_note[0]) {
        fputs(" — ", f);
        esc(f, t->power_note);
    }
    fputs(". ", f);
    if (t->tensors[0]) {
        fputs("<b>Data:</b> ", f);
        esc(f, t->tensors);
        fputs(". ", f);
    }
    if (t->caveats[0] && !isfinite(t->raw_cosine))
        esc(f, t->caveats);
    fputs("</td></tr>\n", f);
}

static void section_tests(FILE *f, const cks_compare_result *r)
{
    fputs("<h2>Tests</h2><p class=\"note\">Each primary test asks whether B is independent of A. A test counts "
          "only when it is significant (Holm over the primary tests, or far out on its z when its draws are too few) "
          "<b>and</b> its effect reaches a floor that independent models sharing a base, a task or a recipe stay "
          "under; agreement beyond chance but below the floor is shared structure. Only agreement in what training "
          "changed can make <b>derived</b>, corroborated by more than one layer or tensor type; agreement in what a "
          "random initialisation fixed is a shared seed.</p>",
          f);
    fputs("<table class=\"tests\"><thead><tr><th>test</th><th>what it asks</th><th class=\"n\">statistic</th>"
          "<th class=\"n\">null mean ± sd</th><th class=\"n\">p</th><th class=\"n\">p (Holm)</th>"
          "<th class=\"n\">z</th><th class=\"n\">bytes</th><th>result</th></tr></thead><tbody>",
          f);
    for (size_t i = 0; i < r->n_tests && i < sizeof r->tests / sizeof r->tests[0]; i++) {
        if (r->tests[i].ran)
            test_row(f, &r->tests[i]);
        else
            test_row_not_run(f, &r->tests[i]);
    }
    fputs("</tbody></table>", f);
}

/* Layer×layer matrix with the pairing drawn on it and the row margins beside it. */
static void heatmap_draw(FILE *f, const cks_compare_result *r, const double *m, int id, const char *title,
                         const char *caption)
{
    int la = r->layers_a, lb = r->layers_b;
    double cell, left = 56, top = 34, gw, gh, legend_x;
    int big = la > lb ? la : lb, step;
    char col[16];
    cell = (big > 16 ? 480.0 : 320.0) / big; /* deep models get room for their layers */
    if (cell > 56)
        cell = 56;
    if (cell < 4)
        cell = 4;
    gw = cell * lb;
    gh = cell * la;
    step = big > 24 ? (big + 11) / 12 : 1;
    legend_x = left + gw + (r->row_margin ? 70 : 24);
    fprintf(f, "<figure%s><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
               "viewBox=\"0 0 %.0f %.0f\" role=\"img\" aria-label=\"",
            legend_x + 80 > 540 ? " class=\"wide\"" : "", legend_x + 80, top + gh + 52, legend_x + 80, top + gh + 52);
    esc(f, title);
    fputs("\">", f);
    fprintf(f, "<text x=\"%.1f\" y=\"14\" class=\"axis\" font-weight=\"600\">", left);
    esc(f, title);
    fputs("</text>", f);
    for (int i = 0; i < la; i++)
        for (int j = 0; j < lb; j++) {
            double v = m[(size_t)i * (size_t)lb + (size_t)j];
            diverging(v, col, sizeof col);
            fprintf(f, "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"%s\"><title>A layer %d, "
                       "B layer %d: %.4f</title></rect>",
                    left + j * cell, top + i * cell, cell + 0.3, cell + 0.3, col, i, j, v);
        }
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" class=\"frame\"/>", left, top, gw, gh);
    for (int j = 0; j < lb; j += step)
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" class=\"tick\" text-anchor=\"middle\">%d</text>",
                left + (j + 0.5) * cell, top - 5, j);
    for (int i = 0; i < la; i += step)
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" class=\"tick\" text-anchor=\"end\">%d</text>", left - 5,
                top + (i + 0.5) * cell + 4, i);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" class=\"axis\" text-anchor=\"middle\">layer of B</text>", left + gw / 2,
            top + gh + 20);
    fprintf(f, "<text class=\"axis\" text-anchor=\"middle\" transform=\"translate(%.1f %.1f) rotate(-90)\">layer of "
               "A</text>",
            left - 34, top + gh / 2);
    /* the pairing the tests used: a line through the paired cells, each paired cell outlined */
    if (r->n_path) {
        fputs("<polyline fill=\"none\" stroke=\"#111\" stroke-width=\"1.6\" stroke-linejoin=\"round\" "
              "stroke-opacity=\"0.7\" points=\"",
              f);
        for (size_t p = 0; p < r->n_path; p++)
            if (r->path_a[p] >= 0 && r->path_a[p] < la && r->path_b[p] >= 0 && r->path_b[p] < lb)
                fprintf(f, "%.1f,%.1f ", left + (r->path_b[p] + 0.5) * cell, top + (r->path_a[p] + 0.5) * cell);
        fputs("\"/>", f);
        for (size_t p = 0; p < r->n_path; p++)
            if (r->path_a[p] >= 0 && r->path_a[p] < la && r->path_b[p] >= 0 && r->path_b[p] < lb)
                fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
                           "stroke=\"#111\" stroke-width=\"%.1f\"><title>pair %d/%d</title></rect>",
                        left + r->path_b[p] * cell + 1, top + r->path_a[p] * cell + 1, cell - 2, cell - 2,
                        cell > 12 ? 2.0 : 1.0, r->path_a[p], r->path_b[p]);
    }
    /* values on top, with a halo so the path line never hides them */
    if (cell >= 30)
        for (int i = 0; i < la; i++)
            for (int j = 0; j < lb; j++) {
                double v = m[(size_t)i * (size_t)lb + (size_t)j];
                if (isfinite(v))
                    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" class=\"cellv\" text-anchor=\"middle\" "
                               "paint-order=\"stroke\" stroke=\"%s\" stroke-width=\"2.5\"%s>%.2f</text>",
                            left + (j + 0.5) * cell, top + (i + 0.5) * cell + 3.5, fabs(v) > 0.6 ? "#7a1020" : "#fff",
                            fabs(v) > 0.6 ? " style=\"fill:#fff\"" : "", v);
            }
    /* row margins: how far each A layer's best B layer stands above its runner-up */
    if (r->row_margin) {
        double mx = left + gw + 10;
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" class=\"tick\">margin</text>", mx, top - 5);
        for (int i = 0; i < la; i++) {
            double v = r->row_margin[i];
            if (!isfinite(v))
                continue;
            if (v < 0)
                v = 0;
            if (v > 1)
                v = 1;
            fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#8c959f\"><title>A layer "
                       "%d: best B layer %d, margin %.3f</title></rect>",
                    mx, top + i * cell + cell * 0.2, 48 * v, cell * 0.6, i, r->row_best ? r->row_best[i] : -1,
                    r->row_margin[i]);
        }
    }
    /* colour legend: a vertical gradient from +1 (top) to -1 (bottom) */
    fprintf(f, "<defs><linearGradient id=\"rdbu%d\" x1=\"0\" y1=\"0\" x2=\"0\" y2=\"1\">", id);
    for (int s = 0; s <= 8; s++) {
        diverging(1.0 - s * 0.25, col, sizeof col);
        fprintf(f, "<stop offset=\"%.3f\" stop-color=\"%s\"/>", s / 8.0, col);
    }
    fputs("</linearGradient></defs>", f);
    {
        double lh = gh < 160 ? gh : 160;
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"14\" height=\"%.1f\" fill=\"url(#rdbu%d)\" stroke=\"#8c959f\"/>",
                legend_x, top, lh, id);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" class=\"tick\">+1</text>", legend_x + 19, top + 8);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" class=\"tick\">0</text>", legend_x + 19, top + lh / 2 + 4);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" class=\"tick\">−1</text>", legend_x + 19, top + lh);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" class=\"tick\">Pearson r</text>", legend_x - 4, top - 5);
    }
    fputs("</svg><figcaption>", f);
    fputs(caption, f); /* captions are literals of this file, not data */
    fputs("</figcaption></figure>", f);
}

/* Past a few hundred layers a cell is under a pixel and the page would weigh megabytes. */
static void heatmap(FILE *f, const cks_compare_result *r, const double *m, int id, const char *title,
                    const char *caption)
{
    if (m && r->layers_a > 0 && r->layers_b > 0 && r->layers_a <= 1024 && r->layers_b <= 1024)
        heatmap_draw(f, r, m, id, title, caption);
}

/* Items labelled "layer A/B role" (T2, T4b-norms) → one series per role along the pairing. */
#define MAX_ROLES 4
static void norm_chart(FILE *f, const cks_compare_result *r, const cks_test_result *t, const char *title,
                       const char *caption)
{
    static const char *colours[MAX_ROLES] = {"#0b5cad", "#d1570b", "#6f42c1", "#1a7f37"};
    char roles[MAX_ROLES][32];
    size_t n_roles = 0, n_pairs = 0;
    int pair_a[512], pair_b[512];
    double *vals = NULL, *raws = NULL, *xs = NULL;
    char **names = NULL;
    double band, ymin = -0.25, ymax = 1.0;
    size_t hidden = r->hidden_a ? r->hidden_a : r->hidden_b;
    plot p;
    bool any_raw = false;

    if (!t || !t->ran || t->n_items == 0)
        goto out;
    vals = malloc(MAX_ROLES * 512 * sizeof *vals);
    raws = malloc(MAX_ROLES * 512 * sizeof *raws);
    xs = malloc(512 * sizeof *xs);
    names = calloc(512, sizeof *names);
    if (!vals || !raws || !xs || !names)
        goto out;
    for (size_t i = 0; i < MAX_ROLES * 512; i++)
        vals[i] = raws[i] = NAN;
    for (size_t i = 0; i < t->n_items; i++) {
        int la, lb, used = 0;
        char role[32];
        size_t ri, pi;
        if (sscanf(t->items[i].label, "layer %d/%d %31s%n", &la, &lb, role, &used) != 3)
            continue;
        for (ri = 0; ri < n_roles && strcmp(roles[ri], role) != 0; ri++)
            ;
        if (ri == n_roles) {
            if (n_roles == MAX_ROLES)
                continue;
            snprintf(roles[n_roles++], sizeof roles[0], "%s", role);
        }
        for (pi = 0; pi < n_pairs && !(pair_a[pi] == la && pair_b[pi] == lb); pi++)
            ;
        if (pi == n_pairs) {
            if (n_pairs == 512)
                continue;
            pair_a[n_pairs] = la;
            pair_b[n_pairs] = lb;
            n_pairs++;
        }
        vals[ri * 512 + pi] = t->items[i].value;
        raws[ri * 512 + pi] = t->items[i].raw_cosine;
        if (isfinite(t->items[i].raw_cosine))
            any_raw = true;
        if (t->items[i].value < ymin)
            ymin = -1.0;
    }
    if (n_pairs == 0)
        goto out;
    for (size_t i = 0; i < n_pairs; i++) {
        xs[i] = (double)i;
        names[i] = malloc(24);
        if (!names[i])
            goto out;
        if (pair_a[i] == pair_b[i])
            snprintf(names[i], 24, "%d", pair_a[i]);
        else
            snprintf(names[i], 24, "%d/%d", pair_a[i], pair_b[i]);
    }
    /* The permutation distribution of Pearson r between a fixed vector and a uniformly
     * permuted one has mean 0 and variance exactly 1/(d-1): that is the band of one vector.
     * (The test itself uses the joint null of all vectors at once; see the table.) */
    band = hidden > 1 ? 3.0 / sqrt((double)hidden - 1.0) : NAN;
    p.f = f;
    p.left = 64;
    p.top = 34;
    p.w = n_pairs > 40 ? 960 : 400;
    p.h = 240;
    p.xmin = -0.5;
    p.xmax = (double)n_pairs - 0.5;
    p.ymin = ymin;
    p.ymax = ymax;
    fprintf(f, "<figure%s><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f "
               "%.0f\" role=\"img\" aria-label=\"",
            p.w > 500 ? " class=\"wide\"" : "", p.left + p.w + 20, p.top + p.h + 50 + 22.0 * ((double)n_roles + 2),
            p.left + p.w + 20,
            p.top + p.h + 50 + 22.0 * ((double)n_roles + 2));
    esc(f, title);
    fprintf(f, "\"><text x=\"%.1f\" y=\"14\" class=\"axis\" font-weight=\"600\">", p.left);
    esc(f, title);
    fputs("</text>", f);
    if (isfinite(band))
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#e3e8ee\"/>", p.left,
                plot_y(&p, band < ymax ? band : ymax), p.w,
                plot_y(&p, -band > ymin ? -band : ymin) - plot_y(&p, band < ymax ? band : ymax));
    plot_axes(&p, r->n_path && r->layers_a == r->layers_b ? "layer" : "layer pair (A/B)", "r", (int)n_pairs,
              (const char *const *)names);
    if (any_raw) {
        double *mean_raw = malloc(n_pairs * sizeof *mean_raw);
        if (mean_raw) {
            for (size_t i = 0; i < n_pairs; i++) {
                double s = 0;
                int c = 0;
                for (size_t k = 0; k < n_roles; k++)
                    if (isfinite(raws[k * 512 + i])) {
                        s += raws[k * 512 + i];
                        c++;
                    }
                mean_raw[i] = c ? s / c : NAN;
            }
            plot_series(&p, xs, mean_raw, n_pairs, "#8c959f", true, true, "raw cosine (not evidence)");
            free(mean_raw);
        }
    }
    for (size_t k = 0; k < n_roles; k++)
        plot_series(&p, xs, vals + k * 512, n_pairs, colours[k], false, false, roles[k]);
    {
        double ly = p.top + p.h + 56;
        for (size_t k = 0; k < n_roles; k++, ly += 22) {
            char text[96];
            snprintf(text, sizeof text, "Pearson r, %.40s", roles[k]);
            legend_item(f, p.left, ly, colours[k], false, false, text);
        }
        if (any_raw) {
            legend_item(f, p.left, ly, "#8c959f", true, true, "raw cosine, mean over roles (not evidence)");
            ly += 22;
        }
        if (isfinite(band)) {
            fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"22\" height=\"10\" fill=\"#e3e8ee\"/>", p.left, ly - 5);
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" class=\"legend\">no-relation band of one vector: 0 ± "
                       "3/√(d−1) = ±%.3f, d = %zu</text>",
                    p.left + 28, ly + 4, band, hidden);
        }
    }
    fputs("</svg><figcaption>", f);
    fputs(caption, f); /* a literal of this file */
    fputs("</figcaption></figure>", f);
out:
    if (names)
        for (size_t i = 0; i < 512; i++)
            free(names[i]);
    free(names);
    free(xs);
    free(raws);
    free(vals);
}

/* The layer number in a tensor name: the first ".N." after a layers/h/blocks-like part. */
static int layer_of(const char *name)
{
    const char *s = name;
    int layer = -1;
    while (layer < 0 && (s = strchr(s, '.')) != NULL) {
        s++;
        if (isdigit((unsigned char)*s)) {
            char *end;
            long v = strtol(s, &end, 10);
            if ((*end == '.' || *end == '\0') && v >= 0 && v < 100000)
                layer = (int)v;
        }
    }
    return layer;
}

/* T1's per-tensor bit-identical fractions, grouped by layer: a dot per tensor, a bar per layer. */
static void equality_chart(FILE *f, const cks_compare_result *r, const cks_test_result *t)
{
    int n_layers = r->layers_a > 0 ? r->layers_a : 0, cols;
    double *sum = NULL, *cnt = NULL, ymax = 0.05;
    plot p;
    char **names = NULL;
    size_t shown = 0;

    if (!t || !t->ran || t->n_items == 0 || n_layers > 4096)
        goto out;
    for (size_t i = 0; i < t->n_items; i++) {
        int l = layer_of(t->items[i].label);
        if (l >= n_layers && l < 4096)
            n_layers = l + 1; /* e.g. an MTP block stored after the decoder layers */
    }
    cols = n_layers + 1; /* column 0: tensors outside the layers (embeddings, head, final norm) */
    sum = calloc((size_t)cols, sizeof *sum);
    cnt = calloc((size_t)cols, sizeof *cnt);
    names = calloc((size_t)cols, sizeof *names);
    if (!sum || !cnt || !names)
        goto out;
    for (size_t i = 0; i < t->n_items; i++) {
        int l = layer_of(t->items[i].label);
        int c = l >= 0 && l < n_layers ? l + 1 : 0;
        if (!isfinite(t->items[i].value))
            continue;
        sum[c] += t->items[i].value;
        cnt[c] += 1;
        if (t->items[i].value > ymax)
            ymax = t->items[i].value;
    }
    ymax = ymax > 0.5 ? 1.0 : ceil(ymax * 1.15 / nice_step(ymax, 4)) * nice_step(ymax, 4);
    for (int c = 0; c < cols; c++) {
        names[c] = malloc(16);
        if (!names[c])
            goto out;
        if (c == 0)
            snprintf(names[c], 16, "other");
        else
            snprintf(names[c], 16, "%d", c - 1);
    }
    p.f = f;
    p.left = 64;
    p.top = 34;
    p.w = cols > 40 ? 960 : 400;
    p.h = 220;
    p.xmin = -0.5;
    p.xmax = cols - 0.5;
    p.ymin = 0;
    p.ymax = ymax;
    fprintf(f, "<figure%s><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f "
               "%.0f\" role=\"img\" aria-label=\"bit-identical fraction per layer\">",
            p.w > 500 ? " class=\"wide\"" : "", p.left + p.w + 20, p.top + p.h + 100, p.left + p.w + 20,
            p.top + p.h + 100);
    fprintf(f, "<text x=\"%.1f\" y=\"14\" class=\"axis\" font-weight=\"600\">Bit-identical elements per layer "
               "(T1)</text>",
            p.left);
    plot_axes(&p, "layer (\"other\": embeddings, head, final norm)", "fraction equal", cols,
              (const char *const *)names);
    for (int c = 0; c < cols; c++) {
        double bw = p.w / cols * 0.6, x = plot_x(&p, c);
        if (!cnt[c])
            continue;
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#c9d7e8\"><title>%s: mean "
                   "%.4f over %.0f tensors</title></rect>",
                x - bw / 2, plot_y(&p, sum[c] / cnt[c]), bw, plot_y(&p, 0) - plot_y(&p, sum[c] / cnt[c]), names[c],
                sum[c] / cnt[c], cnt[c]);
    }
    /* one dot per tensor; norms in orange because they are where fine-tunes leave bits untouched */
    for (size_t i = 0; i < t->n_items; i++) {
        int l = layer_of(t->items[i].label);
        int c = l >= 0 && l < n_layers ? l + 1 : 0;
        double jitter = ((double)((i * 2654435761u) % 1000) / 1000.0 - 0.5) * (p.w / cols * 0.45);
        bool is_norm = strstr(t->items[i].label, "norm") != NULL;
        if (!isfinite(t->items[i].value))
            continue;
        fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.6\" fill=\"%s\" fill-opacity=\"0.85\"><title>", plot_x(&p, c) + jitter,
                plot_y(&p, t->items[i].value), is_norm ? "#d1570b" : "#0b5cad");
        esc(f, t->items[i].label);
        fprintf(f, ": %.4f</title></circle>", t->items[i].value);
        shown++;
    }
    if (isfinite(t->null_mean)) {
        double y = plot_y(&p, t->null_mean);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#b2182b\" stroke-width=\"1.3\" "
                   "stroke-dasharray=\"5 3\"/>",
                p.left, y, p.left + p.w, y);
    }
    {
        double ly = p.top + p.h + 58;
        fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"#0b5cad\"/><text x=\"%.1f\" y=\"%.1f\" "
                   "class=\"legend\">weight tensor</text>",
                p.left + 11, ly, p.left + 28, ly + 4);
        fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"#d1570b\"/><text x=\"%.1f\" y=\"%.1f\" "
                   "class=\"legend\">norm gain</text>",
                p.left + 151, ly, p.left + 168, ly + 4);
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"22\" height=\"10\" fill=\"#c9d7e8\"/><text x=\"%.1f\" "
                   "y=\"%.1f\" class=\"legend\">mean per layer</text>",
                p.left + 270, ly - 5, p.left + 298, ly + 4);
        ly += 22;
        if (isfinite(t->null_mean))
            fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#b2182b\" stroke-width=\"1.3\" "
                   "stroke-dasharray=\"5 3\"/><text x=\"%.1f\" y=\"%.1f\" class=\"legend\">expected by chance "
                   "(null mean %.2g)</text>",
                p.left, ly, p.left + 22, ly, p.left + 28, ly + 4, t->null_mean);
    }
    fprintf(f, "</svg><figcaption><b>Fraction of bit-identical elements</b> of role-matched tensors, per layer "
               "(%zu tensors in the result). Independent models share bits only by chance (the dashed line); "
               "fine-tunes leave many elements, especially of norm gains, untouched.</figcaption></figure>",
            shown);
out:
    if (names)
        for (int c = 0; c < n_layers + 1; c++)
            free(names[c]);
    free(names);
    free(cnt);
    free(sum);
}

static void std_chart(FILE *f, const cks_compare_result *r)
{
    int n = r->layers_a > r->layers_b ? r->layers_a : r->layers_b;
    double lo = INFINITY, hi = -INFINITY, *xs = NULL, pad;
    plot p;
    if (!r->std_curve_a || !r->std_curve_b || n <= 0)
        goto out;
    xs = malloc((size_t)n * sizeof *xs);
    if (!xs)
        goto out;
    for (int i = 0; i < n; i++)
        xs[i] = i;
    for (int i = 0; i < r->layers_a; i++)
        if (isfinite(r->std_curve_a[i])) {
            lo = fmin(lo, r->std_curve_a[i]);
            hi = fmax(hi, r->std_curve_a[i]);
        }
    for (int i = 0; i < r->layers_b; i++)
        if (isfinite(r->std_curve_b[i])) {
            lo = fmin(lo, r->std_curve_b[i]);
            hi = fmax(hi, r->std_curve_b[i]);
        }
    if (!(hi >= lo))
        goto out; /* no finite value: nothing to draw */
    pad = (hi - lo) * 0.12 + 1e-9;
    p.f = f;
    p.left = 72;
    p.top = 34;
    p.w = n > 40 ? 960 : 400;
    p.h = 200;
    p.xmin = -0.5;
    p.xmax = n - 0.5;
    p.ymin = lo - pad;
    p.ymax = hi + pad;
    fprintf(f, "<figure%s><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f "
               "%.0f\" role=\"img\" aria-label=\"std curves\">",
            p.w > 500 ? " class=\"wide\"" : "", p.left + p.w + 20, p.top + p.h + 80, p.left + p.w + 20,
            p.top + p.h + 80);
    fprintf(f, "<text x=\"%.1f\" y=\"14\" class=\"axis\" font-weight=\"600\">Per-layer std of sampled k rows "
               "(descriptive)</text>",
            p.left);
    plot_axes(&p, "layer", "std", n, NULL);
    /* A drawn wide and pale underneath, so that identical curves still show both */
    fputs("<g stroke-width=\"3\" opacity=\"0.55\">", f);
    plot_series(&p, xs, r->std_curve_a, (size_t)r->layers_a, "#0b5cad", false, false, "A");
    fputs("</g>", f);
    plot_series(&p, xs, r->std_curve_b, (size_t)r->layers_b, "#d1570b", true, false, "B");
    legend_item(f, p.left, p.top + p.h + 58, "#0b5cad", false, false, "A");
    legend_item(f, p.left + 80, p.top + p.h + 58, "#d1570b", true, false, "B");
    fputs("</svg><figcaption><b>Std curves</b> are weak evidence: independent models of one recipe draw similar "
          "curves, so they never decide a verdict. ",
          f);
    if (isfinite(r->std_curve_corr))
        fprintf(f, "Detrended correlation of the two curves: %.3f.", r->std_curve_corr);
    fputs("</figcaption></figure>", f);
out:
    free(xs);
}

static const cks_test_result *find_test(const cks_compare_result *r, const char *id)
{
    const cks_test_result *found = NULL;
    for (size_t i = 0; !found && i < r->n_tests && i < sizeof r->tests / sizeof r->tests[0]; i++)
        if (strcmp(r->tests[i].id, id) == 0)
            found = &r->tests[i];
    return found;
}

static void figures(FILE *f, const cks_compare_result *r, const cks_test_result *t1, const cks_test_result *t2,
                    const cks_test_result *t4)
{
    fputs("<div class=\"figs\">", f);
    heatmap(f, r, r->layer_matrix, 0, "Norm-gain Pearson, layer of A × layer of B",
            "<b>Layer × layer similarity</b> of the norm gains (Pearson r). The black line is the layer pairing "
            "the tests used; bars on the right are each row's margin (best minus runner-up). A derivative shows a "
            "bright diagonal; independent models show a pale field.");
    if (r->layer_matrix_aligned)
        heatmap(f, r, r->layer_matrix_aligned, 1, "The same after the T4 alignment of B",
                "<b>After alignment</b>: the same matrix once B's hidden dimensions are re-indexed by the "
                "permutation and signs recovered from shared-token embeddings (T4).");
    fputs("</div><div class=\"figs\">", f);
    norm_chart(f, r, t2, "Norm gains per layer (T2)",
               "<b>Per-layer Pearson of the norm gains</b> (centred cosine) along the layer pairing. Inside the "
               "grey band a layer looks like two unrelated vectors. The dashed grey line is raw cosine: it sits "
               "near 1 for any two models because norm gains are positive around a common offset, which is why it "
               "is shown and never used.");
    if (t4 && t4->ran)
        norm_chart(f, r, t4, "Norm gains per layer after alignment (T4b)",
                   "<b>The same after alignment</b>: B re-indexed by the permutation and signs that T4 recovered. "
                   "A derivative whose hidden dimensions were shuffled sits in the band on the left and near 1 "
                   "here.");
    fputs("</div><div class=\"figs\">", f);
    equality_chart(f, r, t1);
    std_chart(f, r);
    fputs("</div>", f);
}

static void section_figures(FILE *f, const cks_compare_result *r)
{
    const cks_test_result *t2 = find_test(r, "T2"), *t4 = find_test(r, "T4b-norms"), *t1 = find_test(r, "T1");
    fputs("<h2>Figures</h2>", f);
    if (r->layer_matrix || (t2 && t2->ran) || (t1 && t1->ran) || r->std_curve_a)
        figures(f, r, t1, t2, t4);
    else
        fputs("<p class=\"note\">No per-layer data: the architectures were not recognised, so only name- and "
              "shape-matched tensors were compared.</p>",
              f);
}

static void section_details(FILE *f, const cks_compare_result *r)
{
    size_t informative = 0;
    fputs("<h2>Details</h2><table><tbody>", f);
    for (size_t i = 0; i < r->n_hash_matches; i++)
        informative += !r->hash_matches[i].low_information;
    fprintf(f, "<tr><td>byte-identical tensors</td><td>%zu (%zu high-entropy, %zu low-information: constants or few "
               "distinct values, never counted as evidence); tensors hashed: %zu in A, %zu in B%s</td></tr>",
            r->n_hash_matches, informative, r->n_hash_matches - informative, r->tensors_hashed_a,
            r->tensors_hashed_b, r->full_coverage ? " (all of them)" : "");
    if (r->vocab_a || r->vocab_b)
        fprintf(f, "<tr><td>vocabularies</td><td>%zu and %zu tokens, %zu shared by string</td></tr>", r->vocab_a,
                r->vocab_b, r->vocab_shared);
    if (isfinite(r->router_match))
        fprintf(f, "<tr><td>router experts</td><td>mean |cos| of assignment-matched router rows: %.3f "
                   "(descriptive)</td></tr>",
                r->router_match);
    if (r->config_diff[0]) {
        fputs("<tr><td>config differences</td><td>", f);
        esc(f, r->config_diff);
        fputs("</td></tr>", f);
    }
    if (r->sampling[0]) {
        fputs("<tr><td>sampling</td><td>", f);
        esc(f, r->sampling);
        fputs("</td></tr>", f);
    }
    fputs("</tbody></table>", f);
    if (r->n_hash_matches) {
        fprintf(f, "<details><summary>%zu byte-identical tensor pairs</summary><table><thead><tr><th>A</th><th>B</th>"
                   "<th></th></tr></thead><tbody>",
                r->n_hash_matches);
        for (size_t i = 0; i < r->n_hash_matches && i < 2000; i++) {
            fputs("<tr><td class=\"mono\">", f);
            esc(f, r->hash_matches[i].name_a);
            fputs("</td><td class=\"mono\">", f);
            esc(f, r->hash_matches[i].name_b);
            fprintf(f, "</td><td>%s</td></tr>", r->hash_matches[i].low_information ? "low information" : "");
        }
        if (r->n_hash_matches > 2000)
            fprintf(f, "<tr><td colspan=\"3\">… and %zu more (see --json)</td></tr>", r->n_hash_matches - 2000);
        fputs("</tbody></table></details>", f);
    }
}

#define RANGES_INLINE 6
#define RANGES_MAX_LISTED 1000

static void ranges_list(FILE *f, const cks_report_file *file)
{
    size_t n = file->n_ranges;
    fprintf(f, "<span class=\"ranges mono\">");
    for (size_t i = 0; i < n && i < RANGES_INLINE; i++)
        fprintf(f, "%s[%" PRIu64 ", %" PRIu64 ")", i ? " " : "", file->ranges[i].offset,
                file->ranges[i].offset + file->ranges[i].length);
    fputs("</span>", f);
    if (n > RANGES_INLINE) {
        fprintf(f, "<details><summary>all %zu ranges</summary><span class=\"ranges mono\">", n);
        for (size_t i = RANGES_INLINE; i < n && i < RANGES_MAX_LISTED; i++)
            fprintf(f, "[%" PRIu64 ", %" PRIu64 ") ", file->ranges[i].offset,
                    file->ranges[i].offset + file->ranges[i].length);
        if (n > RANGES_MAX_LISTED)
            fprintf(f, "… %zu more", n - RANGES_MAX_LISTED);
        fputs("</span></details>", f);
    }
    if (file->ranges_approximate)
        fputs("<span class=\"sub\">coarsened: a superset of the bytes read</span>", f);
}

static void ranges_cell(FILE *f, const cks_report_file *file)
{
    if (file->ranges && file->n_ranges)
        ranges_list(f, file);
    else
        fputs("<span class=\"na\">not recorded</span>", f);
}

static void provenance_model(FILE *f, const char *tag, const cks_report_model *m)
{
    char b1[32], b2[32];
    fprintf(f, "<h3>%s: ", tag);
    esc(f, m->spec);
    fputs("</h3><table class=\"kv\"><tbody>", f);
    fputs("<tr><td>kind</td><td>", f);
    esc(f, m->kind ? m->kind : "local");
    fputs("</td></tr>", f);
    if (m->endpoint) {
        fputs("<tr><td>endpoint</td><td class=\"mono\">", f);
        esc(f, m->endpoint);
        fputs("</td></tr>", f);
    }
    if (m->repo) {
        fputs("<tr><td>repository</td><td class=\"mono\">", f);
        esc(f, m->repo);
        fputs("</td></tr>", f);
    }
    if (m->revision) {
        fputs("<tr><td>revision</td><td class=\"mono\">", f);
        esc(f, m->revision);
        fputs("</td></tr>", f);
    }
    if (m->commit) {
        fputs("<tr><td>commit</td><td class=\"mono\">", f);
        esc(f, m->commit);
        fputs("</td></tr>", f);
    }
    if (m->url) {
        fputs("<tr><td>URL</td><td class=\"mono\">", f);
        esc(f, m->url);
        fputs("</td></tr>", f);
    }
    if (m->index) {
        fputs("<tr><td>index</td><td class=\"mono\">", f);
        esc(f, m->index);
        fputs("</td></tr>", f);
    }
    fputs("</tbody></table>", f);
    fputs("<table><thead><tr><th>file</th><th>size</th><th>SHA-256</th><th>read</th><th>byte ranges read "
          "[start, end)</th></tr></thead><tbody>",
          f);
    for (size_t i = 0; i < m->n_files; i++) {
        const cks_report_file *file = &m->files[i];
        fputs("<tr><td class=\"mono\">", f);
        esc(f, file->path);
        fprintf(f, "</td><td class=\"n\">%s</td><td class=\"mono\" style=\"word-break:break-all;max-width:260px\">",
                human_bytes(file->size, b1, sizeof b1));
        if (file->sha256 && file->sha256[0])
            esc(f, file->sha256);
        else
            fputs("<span class=\"na\">not known (local file; the Hub supplies it for remote files)</span>", f);
        fprintf(f, "</td><td class=\"n\">%s</td><td>", human_bytes(file->bytes_read, b2, sizeof b2));
        ranges_cell(f, file);
        fputs("</td></tr>", f);
    }
    fputs("</tbody></table>", f);
}

static void section_provenance(FILE *f, const cks_compare_result *r, const cks_report_meta *meta)
{
    char b[32];
    fputs("<h2>Provenance</h2><p class=\"note\">Where every number above comes from: the exact commit and file of "
          "each model, the file's SHA-256 as the Hub states it, and the byte ranges the analysis read (the header "
          "of each file included). Rerunning with the same seed on the same commits reproduces every figure.</p>",
          f);
    provenance_model(f, "A", &meta->a);
    provenance_model(f, "B", &meta->b);
    for (size_t i = 0; i < meta->n_controls; i++) {
        char tag[48];
        snprintf(tag, sizeof tag, "Negative control %zu", i + 1);
        provenance_model(f, tag, &meta->controls[i]);
    }
    for (size_t i = 0; i < meta->n_positives; i++) {
        char tag[48];
        snprintf(tag, sizeof tag, "Positive control %zu", i + 1);
        provenance_model(f, tag, &meta->positives[i]);
    }
    fputs("<h3>Run</h3><table class=\"kv\"><tbody>", f);
    fprintf(f, "<tr><td>seed</td><td>%" PRIu64 "</td></tr>", r->seed);
    if (meta->alpha > 0)
        fprintf(f, "<tr><td>alpha (family-wise)</td><td>%g</td></tr>", meta->alpha);
    else
        fputs("<tr><td>alpha (family-wise)</td><td>0.001 (default)</td></tr>", f);
    if (meta->permutations)
        fprintf(f, "<tr><td>permutations</td><td>%" PRIu64 "</td></tr>", meta->permutations);
    fprintf(f, "<tr><td>bytes read by the analysis</td><td>A %s, ", human_bytes(r->bytes_a, b, sizeof b));
    fprintf(f, "B %s</td></tr>", human_bytes(r->bytes_b, b, sizeof b));
    if (meta->have_transfer) {
        fprintf(f, "<tr><td>network</td><td>%s in %" PRIu64 " requests, %.2f s%s</td></tr>",
                human_bytes(meta->transfer_bytes, b, sizeof b), meta->transfer_requests, meta->transfer_seconds,
                meta->transfer_bytes == 0 ? " (everything came from the cache)" : "");
    }
    if (meta->command_line) {
        fputs("<tr><td>command</td><td class=\"mono\">", f);
        esc(f, meta->command_line);
        fputs("</td></tr>", f);
    }
    if (meta->tool_version) {
        fputs("<tr><td>ckptscope</td><td>", f);
        esc(f, meta->tool_version);
        fputs("</td></tr>", f);
    }
    if (meta->generated_at) {
        fputs("<tr><td>generated</td><td>", f);
        esc(f, meta->generated_at);
        fputs("</td></tr>", f);
    }
    fputs("</tbody></table>", f);
}

cks_err cks_report_html(const cks_compare_result *r, const cks_report_meta *meta, FILE *out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    FILE *f = out;
    if (!r || !meta || !out) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "report: missing result, metadata or output stream");
        goto out;
    }
    fputs("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
          "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
          "<meta name=\"generator\" content=\"ckptscope\">"
          /* a strict policy makes "nothing is fetched" something the browser enforces */
          "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
          "img-src data:\"><title>",
          f);
    fprintf(f, "ckptscope: %s — ", verdict_title(r->verdict));
    esc(f, meta->a.spec);
    fputs(" vs ", f);
    esc(f, meta->b.spec);
    fprintf(f, "</title><style>%s</style></head><body><main>\n", css);
    fputs("<h1>ckptscope compare · <b>", f);
    esc(f, meta->a.spec);
    fputs("</b> (A) → <b>", f);
    esc(f, meta->b.spec);
    fputs("</b> (B)</h1>\n", f);
    section_verdict(f, r);
    fputs("\n<h2>Models</h2><div class=\"models\">", f);
    model_card(f, "A", &meta->a, r->family_a, r->layers_a, r->hidden_a, r->bytes_a);
    model_card(f, "B", &meta->b, r->family_b, r->layers_b, r->hidden_b, r->bytes_b);
    fputs("</div>\n", f);
    section_tests(f, r);
    fputs("\n", f);
    section_figures(f, r);
    fputs("\n", f);
    section_details(f, r);
    fputs("\n", f);
    section_provenance(f, r, meta);
    fputs("\n<footer>How to read this report: the verdict comes only from the primary tests (statistic against "
          "its null, Holm-corrected, gated by controls). Raw cosine, std curves and heatmaps are descriptive: they "
          "help a person see what the tests measured, and none of them can make a verdict on its own.</footer>"
          "</main></body></html>\n",
          f);
    if (fflush(f) != 0 || ferror(f))
        err = cks_fail(diag, CKS_ERR_IO, "report: writing the HTML failed");
out:
    return err;
}
