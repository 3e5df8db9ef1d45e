#!/usr/bin/python3
"""numpy/scipy baselines for bench/metrics, on the files bench_metrics wrote.

    baseline.py pearson DIR    the fair numpy Pearson of DESIGN.md §11: decode BF16 by
                               shifting, widen to float64, centre once, three dot products
    baseline.py cka DIR N P    debiased + biased linear CKA by the same feature-space formula
                               as the library (float32 matrix products through numpy's BLAS)
    baseline.py lap DIR N      scipy.optimize.linear_sum_assignment
Prints "key value" lines; times are the best of several runs, file reading excluded.
"""
import sys
import time

import numpy as np


def best_of(runs, fn):
    best, result = float('inf'), None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def pearson(d):
    ua = np.fromfile(d + '/a.bf16', dtype='<u2')
    ub = np.fromfile(d + '/b.bf16', dtype='<u2')

    def fair():
        a = (ua.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        b = (ub.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        a -= a.mean()
        b -= b.mean()
        return a.dot(b) / np.sqrt(a.dot(a) * b.dot(b))

    seconds, r = best_of(5, fair)
    print('numpy_pearson %.17g' % r)
    print('numpy_pearson_seconds %.6f' % seconds)


def cka(d, n, p):
    x = np.fromfile(d + '/x.f32', dtype='<f4').reshape(n, p)
    y = np.fromfile(d + '/y.f32', dtype='<f4').reshape(n, p)

    def formula():
        xc = (x - x.mean(axis=0, dtype=np.float64)).astype(np.float32)
        yc = (y - y.mean(axis=0, dtype=np.float64)).astype(np.float32)
        d_x = np.einsum('ij,ij->i', xc, xc, dtype=np.float64)
        d_y = np.einsum('ij,ij->i', yc, yc, dtype=np.float64)
        xx = np.square(xc.T @ xc, dtype=np.float64).sum()
        yy = np.square(yc.T @ yc, dtype=np.float64).sum()
        xy = np.square(xc.T @ yc, dtype=np.float64).sum()

        def hsic1(frob, sum_de, sum_d, sum_e):
            return frob - sum_de + sum_d * sum_e / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * sum_de

        h_xy = hsic1(xy, d_x @ d_y, d_x.sum(), d_y.sum())
        h_xx = hsic1(xx, d_x @ d_x, d_x.sum(), d_x.sum())
        h_yy = hsic1(yy, d_y @ d_y, d_y.sum(), d_y.sum())
        return h_xy / np.sqrt(h_xx * h_yy), xy / np.sqrt(xx * yy)

    seconds, (debiased, biased) = best_of(5, formula)
    print('numpy_cka_debiased %.10f' % debiased)
    print('numpy_cka_biased %.10f' % biased)
    print('numpy_cka_seconds %.6f' % seconds)


def lap(d, n):
    from scipy.optimize import linear_sum_assignment
    cost = np.fromfile(d + '/cost.f64', dtype='<f8').reshape(n, n)

    def solve():
        rows, cols = linear_sum_assignment(cost)
        return cost[rows, cols].sum()

    seconds, total = best_of(2, solve)
    print('scipy_lap_total %.12f' % total)
    print('scipy_lap_seconds %.6f' % seconds)


if __name__ == '__main__':
    mode = sys.argv[1]
    if mode == 'pearson':
        pearson(sys.argv[2])
    elif mode == 'cka':
        cka(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif mode == 'lap':
        lap(sys.argv[2], int(sys.argv[3]))
    else:
        raise SystemExit(__doc__)
