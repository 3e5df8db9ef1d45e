/*
 * src/cli/cli_progress.c — the one progress line on stderr (cli.h).
 *
 * Several things report progress at once: the hasher (bytes hashed of a known total, from its
 * worker threads), the range engine (bytes fetched over the network, from whichever thread
 * drives it) and compare's stages. Before, the hasher and the engine each drew their own line
 * over the other's, and a run that had planned nothing yet drew "0 B of 0 B planned". Now they
 * all feed one state, under one mutex, and one line is drawn from it:
 *
 *   resolving lab-a/moe-base
 *   hashing A: 1.2 GiB / 4.0 GiB  85.3 MiB/s  ETA 34 s  (fetched 900.0 MiB, 120 requests)
 *   compare: layer pairing · fetched 12.3 MiB of a 384.0 MiB budget per model
 *   fetching: 3.1 MiB of 8.0 MiB planned, 12 requests, 1.5 MiB/s
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

#define REDRAW_SECONDS 0.1
#define LINE_MAX_CHARS 160

static struct {
    pthread_mutex_t mu;
    bool terminal_checked, terminal;
    bool drawn;               /* a line is on the screen */
    double last_draw;
    cli_progress *active;     /* a known total (hash, fetch) */
    bool stage_on;
    char stage[128];
    uint64_t budget;
    double stage_started;
    uint64_t wire_bytes, wire_planned, wire_requests;
    double wire_seconds;
} g = {.mu = PTHREAD_MUTEX_INITIALIZER};

double cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static bool on_terminal(const cli_opts *opts)
{
    if (!g.terminal_checked) {
        g.terminal = isatty(STDERR_FILENO) == 1;
        g.terminal_checked = true;
    }
    return g.terminal && !(opts && opts->quiet);
}

static void format_eta(double seconds, char *out, size_t cap)
{
    if (seconds < 90)
        snprintf(out, cap, "%.0f s", seconds);
    else if (seconds < 5400)
        snprintf(out, cap, "%.0f min", seconds / 60);
    else
        snprintf(out, cap, "%.1f h", seconds / 3600);
}

/* Compose the line from the state; called with the mutex held. */
static void draw_locked(bool force)
{
    char line[512], a[32], b[32], r[32], w[32], eta[32];
    double now = cli_now();
    size_t at = 0;
    if (!force && now - g.last_draw < REDRAW_SECONDS)
        return;
    line[0] = '\0';
    if (g.active) {
        cli_progress *p = g.active;
        /* remote bytes are fetched (read ahead) before they are hashed: while the network
         * is ahead of the consumer, its count is the better measure of how far along we are */
        uint64_t wire = g.wire_bytes > p->wire_start ? g.wire_bytes - p->wire_start : 0;
        uint64_t done = p->done > wire ? p->done : wire < p->total ? wire : p->total;
        double elapsed = now - p->started, rate = elapsed > 0 ? (double)done / elapsed : 0;
        at += (size_t)snprintf(line + at, sizeof line - at, "%s: %s / %s  %s/s", p->what,
                               cli_human_bytes(done, a, sizeof a), cli_human_bytes(p->total, b, sizeof b),
                               cli_human_bytes((uint64_t)rate, r, sizeof r));
        if (rate > 0 && done < p->total && elapsed > 0.5) {
            format_eta((double)(p->total - done) / rate, eta, sizeof eta);
            at += (size_t)snprintf(line + at, sizeof line - at, "  ETA %s", eta);
        }
        if (g.wire_bytes && at < sizeof line)
            snprintf(line + at, sizeof line - at, "  (fetched %s, %llu requests)",
                     cli_human_bytes(g.wire_bytes, w, sizeof w), (unsigned long long)g.wire_requests);
    } else if (g.stage_on) {
        at += (size_t)snprintf(line + at, sizeof line - at, "%s", g.stage);
        if (g.budget && at < sizeof line)
            snprintf(line + at, sizeof line - at, " · fetched %s of a %s budget per model",
                     cli_human_bytes(g.wire_bytes, w, sizeof w), cli_human_bytes(g.budget, b, sizeof b));
    } else if (g.wire_planned) {
        double rate = g.wire_seconds > 0 ? (double)g.wire_bytes / g.wire_seconds : 0;
        snprintf(line, sizeof line, "fetching: %s of %s planned, %llu requests, %s/s",
                 cli_human_bytes(g.wire_bytes, a, sizeof a), cli_human_bytes(g.wire_planned, b, sizeof b),
                 (unsigned long long)g.wire_requests, cli_human_bytes((uint64_t)rate, r, sizeof r));
    } else {
        return; /* nothing to say yet */
    }
    /* one terminal line: a wrapped line could not be erased with \r */
    if (strlen(line) > LINE_MAX_CHARS)
        memcpy(line + LINE_MAX_CHARS - 3, "...", 4);
    fprintf(stderr, "\r\033[K%s", line);
    fflush(stderr);
    g.drawn = true;
    g.last_draw = now;
}

void cli_progress_init(cli_progress *p, const cli_opts *opts, const char *what)
{
    memset(p, 0, sizeof *p);
    p->enabled = on_terminal(opts);
    p->what = what;
    p->started = cli_now();
    if (!p->enabled)
        return;
    pthread_mutex_lock(&g.mu);
    g.active = p;
    p->wire_start = g.wire_bytes;
    pthread_mutex_unlock(&g.mu);
}

void cli_progress_update(void *ctx, uint64_t done, uint64_t total)
{
    cli_progress *p = ctx;
    if (!p->enabled)
        return;
    pthread_mutex_lock(&g.mu);
    p->done = done;
    p->total = total;
    if (g.active == p)
        draw_locked(done >= total);
    pthread_mutex_unlock(&g.mu);
}

void cli_progress_done(cli_progress *p)
{
    if (!p->enabled)
        return;
    pthread_mutex_lock(&g.mu);
    if (g.active == p)
        g.active = NULL;
    if (g.drawn)
        fputs("\r\033[K", stderr);
    g.drawn = false;
    pthread_mutex_unlock(&g.mu);
}

void cli_progress_stage(const cli_opts *opts, const char *stage, uint64_t budget)
{
    if (!on_terminal(opts))
        return;
    pthread_mutex_lock(&g.mu);
    if (stage) {
        g.stage_on = true;
        snprintf(g.stage, sizeof g.stage, "%s", cli_esc(stage)); /* names come from outside */
        g.budget = budget;
        g.stage_started = cli_now();
        draw_locked(true);
    } else {
        g.stage_on = false;
        if (g.drawn)
            fputs("\r\033[K", stderr);
        g.drawn = false;
    }
    pthread_mutex_unlock(&g.mu);
}

void cli_progress_wire(uint64_t bytes_fetched, uint64_t bytes_planned, uint64_t requests, double seconds)
{
    if (!g.terminal_checked || !g.terminal)
        return;
    pthread_mutex_lock(&g.mu);
    g.wire_bytes = bytes_fetched;
    g.wire_planned = bytes_planned;
    g.wire_requests = requests;
    g.wire_seconds = seconds;
    /* the engine's counters alone are shown only once there is something to show */
    if (g.active || g.stage_on || seconds >= 0.5)
        draw_locked(false);
    pthread_mutex_unlock(&g.mu);
}

void cli_progress_clear(void)
{
    pthread_mutex_lock(&g.mu);
    if (g.drawn) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
    }
    g.drawn = false;
    pthread_mutex_unlock(&g.mu);
}
