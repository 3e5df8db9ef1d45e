#!/usr/bin/python3
"""Test-only reference implementations for ckptscope's metric core.

Run by the C unit tests (tests/ref/pyref.h) as
    /usr/bin/python3 tests/ref/ref.py <command> <dir>
Inputs and outputs are raw little-endian binary files in <dir>. Everything here is written
independently of the C code: the small-float decoders work from the bit-field definitions
with exact Python float arithmetic, the statistics use numpy/scipy or plain loops. Never
used by the library itself.
"""
import json
import math
import os
import struct
import sys

import numpy as np


def f32_bits_of(value):
    """float32 bit pattern of a Python float that float32 represents exactly (or +-inf)."""
    return struct.unpack('<I', struct.pack('<f', value))[0]


QNAN = 0x7FC00000


def minifloat_bits(code, exp_bits, man_bits, bias, variant):
    """Expected float32 bits of one small-float code, from the format definition."""
    sign = code >> (exp_bits + man_bits) & 1
    exponent = (code >> man_bits) & ((1 << exp_bits) - 1)
    mantissa = code & ((1 << man_bits) - 1)
    exp_max = (1 << exp_bits) - 1
    if variant == 'fn' and exponent == exp_max and mantissa == (1 << man_bits) - 1:
        return (sign << 31) | QNAN
    if variant == 'ieee' and exponent == exp_max:
        if mantissa == 0:
            return f32_bits_of(-math.inf if sign else math.inf)
        return (sign << 31) | QNAN
    if variant == 'fnuz' and code == 0x80:
        return QNAN
    if exponent == 0:
        value = mantissa * 2.0 ** (1 - bias - man_bits)
    else:
        value = (1 + mantissa / 2.0 ** man_bits) * 2.0 ** (exponent - bias)
    return f32_bits_of(-value if sign else value)


def e8m0_bits(code):
    return QNAN if code == 0xFF else f32_bits_of(2.0 ** (code - 127))


def f16_fields_value(code):
    sign = code >> 15
    exponent = (code >> 10) & 0x1F
    mantissa = code & 0x3FF
    if exponent == 31:
        return None  # inf/nan checked via numpy
    if exponent == 0:
        value = mantissa * 2.0 ** -24
    else:
        value = (1 + mantissa / 1024.0) * 2.0 ** (exponent - 15)
    return -value if sign else value


def bf16_bits(code):
    """bfloat16 from its fields: sign, 8-bit exponent (bias 127), 7-bit mantissa."""
    sign = code >> 15
    exponent = (code >> 7) & 0xFF
    mantissa = code & 0x7F
    if exponent == 0xFF:  # inf or NaN: the payload is defined as the upper float32 half
        return code << 16
    if exponent == 0:
        value = mantissa * 2.0 ** (1 - 127 - 7)
    else:
        value = (1 + mantissa / 128.0) * 2.0 ** (exponent - 127)
    return f32_bits_of(-value if sign else value)


SMALL_FLOATS = {
    'F8_E4M3': lambda c: minifloat_bits(c, 4, 3, 7, 'fn'),
    'F8_E5M2': lambda c: minifloat_bits(c, 5, 2, 15, 'ieee'),
    'F8_E4M3FNUZ': lambda c: minifloat_bits(c, 4, 3, 8, 'fnuz'),
    'F8_E5M2FNUZ': lambda c: minifloat_bits(c, 5, 2, 16, 'fnuz'),
    'F8_E8M0': e8m0_bits,
}

NUMPY_DTYPES = {
    'U8': np.uint8, 'I8': np.int8, 'I16': np.int16, 'U16': np.uint16, 'I32': np.int32,
    'U32': np.uint32, 'I64': np.int64, 'U64': np.uint64, 'F16': np.float16,
    'F32': np.float32, 'F64': np.float64,
}


def f16_table():
    codes = np.arange(65536, dtype=np.uint16)
    bits = codes.view(np.float16).astype(np.float32).view(np.uint32)
    for code in range(65536):  # cross-check numpy against the field definition
        value = f16_fields_value(code)
        if value is not None and f32_bits_of(value) != int(bits[code]):
            raise SystemExit('numpy and the field reference disagree on F16 code %#x' % code)
    return bits


def expected_f32_bits(dtype, raw):
    """Expected float32 bits (uint32 array) of the elements in raw bytes."""
    if dtype == 'BF16':
        codes = np.frombuffer(raw, dtype='<u2')
        table = np.array([bf16_bits(c) for c in range(65536)], dtype=np.uint32)
        shifted = (np.arange(65536, dtype=np.uint32) << 16)
        finite = (np.arange(65536) >> 7 & 0xFF) != 0xFF
        if not np.array_equal(table[finite], shifted[finite]):
            raise SystemExit('BF16 field reference disagrees with the shift')
        return table[codes]
    if dtype in SMALL_FLOATS:
        table = np.array([SMALL_FLOATS[dtype](c) for c in range(256)], dtype=np.uint32)
        return table[np.frombuffer(raw, dtype=np.uint8)]
    if dtype == 'BOOL':
        return (np.frombuffer(raw, dtype=np.uint8) != 0).astype(np.float32).view(np.uint32)
    if dtype == 'F16':
        return f16_table()[np.frombuffer(raw, dtype='<u2')]
    return np.frombuffer(raw, dtype=np.dtype(NUMPY_DTYPES[dtype]).newbyteorder('<')) \
        .astype(np.float32).view(np.uint32)


def expected_f64_bits(dtype, raw):
    if dtype in NUMPY_DTYPES and dtype != 'F16':
        return np.frombuffer(raw, dtype=np.dtype(NUMPY_DTYPES[dtype]).newbyteorder('<')) \
            .astype(np.float64).view(np.uint64)
    # every other decodable dtype is exact in float32; widen its float32 reference
    return expected_f32_bits(dtype, raw).view(np.float32).astype(np.float64).view(np.uint64)


def cmd_decode_tables(d):
    """All codes of the 8- and 16-bit float formats -> expected float32 bits."""
    for name in list(SMALL_FLOATS) + ['BF16', 'F16']:
        width = 1 if name in SMALL_FLOATS else 2
        codes = np.arange(256 if width == 1 else 65536, dtype=np.uint8 if width == 1 else '<u2')
        expected_f32_bits(name, codes.tobytes()).astype('<u4').tofile(os.path.join(d, name + '.u32'))


def cmd_decode_bytes(d):
    """raw.bin interpreted as each dtype in dtypes.txt -> <dtype>.f32bits / .f64bits."""
    raw = open(os.path.join(d, 'raw.bin'), 'rb').read()
    for name in open(os.path.join(d, 'dtypes.txt')).read().split():
        expected_f32_bits(name, raw).astype('<u4').tofile(os.path.join(d, name + '.f32bits'))
        expected_f64_bits(name, raw).astype('<u8').tofile(os.path.join(d, name + '.f64bits'))


def cmd_decode_realdata(d):
    """files.txt: safetensors paths. Writes manifest.txt and per-tensor expected bits."""
    out = []
    index = 0
    for path in open(os.path.join(d, 'files.txt')).read().split('\n'):
        if not path:
            continue
        blob = open(path, 'rb').read()
        header_len = struct.unpack('<Q', blob[:8])[0]
        header = json.loads(blob[8:8 + header_len])
        for name, info in header.items():
            if name == '__metadata__':
                continue
            dtype = info['dtype']
            if dtype not in NUMPY_DTYPES and dtype not in SMALL_FLOATS and dtype not in ('BF16', 'BOOL'):
                continue
            begin, end = info['data_offsets']
            raw = blob[8 + header_len + begin: 8 + header_len + end]
            count = int(np.prod(info['shape'])) if info['shape'] else 1
            expected_f32_bits(dtype, raw).astype('<u4').tofile(os.path.join(d, 'e%d.f32bits' % index))
            expected_f64_bits(dtype, raw).astype('<u8').tofile(os.path.join(d, 'e%d.f64bits' % index))
            out.append('%d %s %d %d %s %s' % (index, dtype, 8 + header_len + begin, count, name, path))
            index += 1
    with open(os.path.join(d, 'manifest.txt'), 'w') as f:
        f.write('\n'.join(out) + '\n')


def cmd_pair_stats(d):
    """a.f64, b.f64 -> stats.f64: n, mean_a, mean_b, std_a, std_b, cosine, pearson,
    rel_l2_over_a, rel_l2_over_b, max_abs_diff, spearman (pairs with a non-finite side dropped)."""
    import scipy.stats
    a = np.fromfile(os.path.join(d, 'a.f64'), dtype='<f8')
    b = np.fromfile(os.path.join(d, 'b.f64'), dtype='<f8')
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    ac, bc = a - a.mean(), b - b.mean()
    diff = np.linalg.norm(a - b)
    out = [len(a), a.mean(), b.mean(), a.std(ddof=1), b.std(ddof=1),
           a.dot(b) / (np.linalg.norm(a) * np.linalg.norm(b)),
           np.corrcoef(a, b)[0, 1], diff / np.linalg.norm(a), diff / np.linalg.norm(b),
           np.max(np.abs(a - b)), scipy.stats.spearmanr(a, b).correlation,
           ac.dot(bc) / np.sqrt(ac.dot(ac) * bc.dot(bc))]
    np.array(out, dtype='<f8').tofile(os.path.join(d, 'stats.f64'))


def cmd_bf16_pair_stats(d):
    """a.bf16, b.bf16 raw codes -> same as pair_stats, decoding by the shift definition."""
    for side in 'ab':
        codes = np.fromfile(os.path.join(d, side + '.bf16'), dtype='<u2')
        values = (codes.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        values.tofile(os.path.join(d, side + '.f64'))
    cmd_pair_stats(d)


def cmd_ulp(d):
    """dtype.txt, a.codes, b.codes (uint16 codes) -> ulp.u64 distances (2**64-1 marks NaN):
    the distance is the difference of the two values' positions among all distinct
    non-NaN values of the format, found by sorting them (no bit tricks)."""
    name = open(os.path.join(d, 'dtype.txt')).read().strip()
    width = 1 if name in SMALL_FLOATS else 2
    values = expected_f32_bits(name, np.arange(256 if width == 1 else 65536,
                                               dtype=np.uint8 if width == 1 else '<u2').tobytes()).view(np.float32)
    distinct = sorted(set(float(v) for v in values if not math.isnan(v)))
    position = {v: i for i, v in enumerate(distinct)}
    a = np.fromfile(os.path.join(d, 'a.codes'), dtype='<u2')
    b = np.fromfile(os.path.join(d, 'b.codes'), dtype='<u2')
    out = []
    for x, y in zip(a, b):
        vx, vy = float(values[x]), float(values[y])
        out.append(2 ** 64 - 1 if math.isnan(vx) or math.isnan(vy) else abs(position[vx] - position[vy]))
    np.array(out, dtype='<u8').tofile(os.path.join(d, 'ulp.u64'))


def cmd_xoshiro(d):
    """seed.txt -> rng.u64: the first 1000 outputs of xoshiro256** seeded by four splitmix64
    outputs, written from the algorithm descriptions in Python integers."""
    mask = (1 << 64) - 1
    x = int(open(os.path.join(d, 'seed.txt')).read())
    state = []
    for _ in range(4):
        x = (x + 0x9E3779B97F4A7C15) & mask
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        state.append(z ^ (z >> 31))

    def rotl(v, k):
        return ((v << k) | (v >> (64 - k))) & mask

    out = []
    for _ in range(1000):
        s0, s1, s2, s3 = state
        out.append(rotl((s1 * 5) & mask, 7) * 9 & mask)
        t = (s1 << 17) & mask
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        s3 = rotl(s3, 45)
        state = [s0, s1, s2, s3]
    np.array(out, dtype='<u8').tofile(os.path.join(d, 'rng.u64'))


def cmd_lap(d):
    """shape.txt "rows cols", cost.f64 -> assign.i64 (column per row, -1 if none), total.f64
    from scipy.optimize.linear_sum_assignment (minimisation)."""
    from scipy.optimize import linear_sum_assignment
    rows, cols = map(int, open(os.path.join(d, 'shape.txt')).read().split())
    cost = np.fromfile(os.path.join(d, 'cost.f64'), dtype='<f8').reshape(rows, cols)
    r, c = linear_sum_assignment(cost)
    assign = -np.ones(rows, dtype='<i8')
    assign[r] = c
    assign.tofile(os.path.join(d, 'assign.i64'))
    np.array([cost[r, c].sum()], dtype='<f8').tofile(os.path.join(d, 'total.f64'))


def cmd_cka(d):
    """shape.txt "n p1 p2", x.f32, y.f32 (row-major, rows = samples) -> cka.f64:
    biased CKA, debiased CKA, HSIC1(x,y), HSIC1(x,x), HSIC1(y,y), computed the textbook way
    with n x n Gram matrices in float64 (H K H for the biased one, Song et al.'s formula for
    the unbiased HSIC)."""
    n, p1, p2 = map(int, open(os.path.join(d, 'shape.txt')).read().split())
    x = np.fromfile(os.path.join(d, 'x.f32'), dtype='<f4').astype(np.float64).reshape(n, p1)
    y = np.fromfile(os.path.join(d, 'y.f32'), dtype='<f4').astype(np.float64).reshape(n, p2)
    k, l = x @ x.T, y @ y.T
    h = np.eye(n) - np.ones((n, n)) / n

    def hsic0(a, b):
        return np.trace(a @ h @ b @ h)

    def hsic1(a, b):
        a, b = a.copy(), b.copy()
        np.fill_diagonal(a, 0)
        np.fill_diagonal(b, 0)
        one = np.ones(n)
        return (np.trace(a @ b) + (one @ a @ one) * (one @ b @ one) / ((n - 1) * (n - 2))
                - 2.0 / (n - 2) * (one @ a @ b @ one)) / (n * (n - 3))

    biased = hsic0(k, l) / np.sqrt(hsic0(k, k) * hsic0(l, l))
    xy, xx, yy = hsic1(k, l), hsic1(k, k), hsic1(l, l)
    np.array([biased, xy / np.sqrt(xx * yy), xy, xx, yy], dtype='<f8').tofile(os.path.join(d, 'cka.f64'))


def cmd_curves(d):
    """a.f64, b.f64, degree.txt -> resid_a.f64 (a minus numpy.polyfit of that degree over
    relative depth) and r.f64 (Pearson of the detrended curves after np.interp of the
    shorter onto the longer one's relative depths)."""
    a = np.fromfile(os.path.join(d, 'a.f64'), dtype='<f8')
    b = np.fromfile(os.path.join(d, 'b.f64'), dtype='<f8')
    degree = int(open(os.path.join(d, 'degree.txt')).read())

    def detrend(y):
        x = np.linspace(0.0, 1.0, len(y))
        return y - np.polyval(np.polyfit(x, y, degree), x)

    detrend(a).astype('<f8').tofile(os.path.join(d, 'resid_a.f64'))
    length = max(len(a), len(b))
    grid = np.linspace(0.0, 1.0, length)
    ra = np.interp(grid, np.linspace(0.0, 1.0, len(a)), a)
    rb = np.interp(grid, np.linspace(0.0, 1.0, len(b)), b)
    r = np.corrcoef(detrend(ra), detrend(rb))[0, 1]
    np.array([r], dtype='<f8').tofile(os.path.join(d, 'r.f64'))


COMMANDS = {name[4:]: fn for name, fn in globals().items() if name.startswith('cmd_')}

if __name__ == '__main__':
    np.seterr(all='ignore')  # NaN/inf casts are the point of several checks
    if len(sys.argv) != 3 or sys.argv[1] not in COMMANDS:
        raise SystemExit('usage: ref.py {%s} DIR' % ','.join(sorted(COMMANDS)))
    COMMANDS[sys.argv[1]](sys.argv[2])
