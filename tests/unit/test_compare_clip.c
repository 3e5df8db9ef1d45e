/*
 * T3's clipping in float (cmp_clipped with float bounds) against the clipping in double it
 * replaced, written out here: the same float, bit for bit, for every value near the bounds.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "analysis/compare_internal.h"

/* The reference: clip in double against the double bounds, then store as float. */
static float clip_in_double(float value, double lo, double hi)
{
    double v = value;
    if (v > hi)
        v = hi;
    else if (v < lo)
        v = lo;
    return (float)v;
}

static bool same_float(float a, float b)
{
    if (isnan(a) || isnan(b))
        return isnan(a) && isnan(b);
    return memcmp(&a, &b, sizeof a) == 0; /* -0.0 and 0.0 differ here */
}

static uint64_t next_random(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Every float within a few ulps of both bounds, the bounds' own floats, and some far away. */
static int disagreements(double lo, double hi)
{
    float lo_f = (float)lo, hi_f = (float)hi;
    float probes[64];
    size_t n = 0;
    const float anchors[] = {lo_f, hi_f, 0.0f, -0.0f};
    for (size_t a = 0; a < sizeof anchors / sizeof *anchors; a++) {
        float down = anchors[a], up = anchors[a];
        probes[n++] = anchors[a];
        for (int k = 0; k < 4; k++) {
            down = nextafterf(down, -INFINITY);
            up = nextafterf(up, INFINITY);
            probes[n++] = down;
            probes[n++] = up;
        }
    }
    probes[n++] = INFINITY;
    probes[n++] = -INFINITY;
    probes[n++] = NAN;
    probes[n++] = FLT_MAX;
    probes[n++] = -FLT_MAX;
    probes[n++] = FLT_TRUE_MIN;
    int bad = 0;
    for (size_t i = 0; i < n; i++)
        bad += !same_float(cmp_clipped(probes[i], lo_f, hi_f), clip_in_double(probes[i], lo, hi));
    return bad;
}

static void bounds_that_floats_cannot_hold(void)
{
    /* 0.1 and 1/3 are not floats: their nearest float lies below or above them */
    CHECK_EQ_INT(disagreements(-0.1, 0.1), 0);
    CHECK_EQ_INT(disagreements(-1.0 / 3.0, 1.0 / 3.0), 0);
    CHECK_EQ_INT(disagreements(1.0 / 3.0, 2.0 / 3.0), 0);
    /* halfway between two floats: rounds to even */
    double half = (1.0 + (double)nextafterf(1.0f, 2.0f)) / 2.0;
    CHECK_EQ_INT(disagreements(-half, half), 0);
    /* exact floats, a zero-width interval, and bounds beyond the float range */
    CHECK_EQ_INT(disagreements(-2.0, 0.5), 0);
    CHECK_EQ_INT(disagreements(0.25, 0.25), 0);
    CHECK_EQ_INT(disagreements(-1e300, 1e300), 0);
    CHECK_EQ_INT(disagreements(-1e-300, 1e-300), 0);
    /* a constant block: sd 0, both bounds the mean */
    CHECK_EQ_INT(disagreements(0.0, 0.0), 0);
}

static void bounds_as_t3_computes_them(void)
{
    /* mean +- 3 sd in double, as clip_bounds() makes them, for many random blocks' moments;
     * a clipped value that differed would change T3's sums */
    uint64_t s = 0x9e3779b97f4a7c15ull;
    int bad = 0;
    for (int i = 0; i < 20000; i++) {
        double mean = ((double)(next_random(&s) >> 11) / 9007199254740992.0 - 0.5) * 1e-2;
        double sd = (double)(next_random(&s) >> 11) / 9007199254740992.0 * 3e-2;
        bad += disagreements(mean - 3.0 * sd, mean + 3.0 * sd);
        /* and random values anywhere around them */
        for (int k = 0; k < 8; k++) {
            float v = (float)(mean + sd * ((double)(next_random(&s) >> 11) / 9007199254740992.0 - 0.5) * 16.0);
            bad += !same_float(cmp_clipped(v, (float)(mean - 3.0 * sd), (float)(mean + 3.0 * sd)),
                               clip_in_double(v, mean - 3.0 * sd, mean + 3.0 * sd));
        }
    }
    CHECK_EQ_INT(bad, 0);
}

static void the_check_can_fail(void)
{
    /* rounding the bounds the other way (toward zero) is not the same: the reference sees it */
    double hi = 0.1, lo = -0.1;
    float hi_f = nextafterf((float)hi, 0.0f);
    CHECK(!same_float(cmp_clipped((float)hi, (float)lo, hi_f), clip_in_double((float)hi, lo, hi)));
}

TEST_MAIN(T(bounds_that_floats_cannot_hold), T(bounds_as_t3_computes_them), T(the_check_can_fail))
