// Shared, dependency-free helpers for every extract_cubes backend (C++ and CUDA).
// Keep this header free of torch includes: it is compiled by nvcc in CI, where
// only the CUDA toolkit is present.
#pragma once
#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define RUBIKOPS_HD __host__ __device__ __forceinline__
#else
#define RUBIKOPS_HD inline
#endif

namespace rubikops {

constexpr int kNumCodes = 48;

// The six spatial axis orders, lexicographic (code = 8 * order + flip bits).
RUBIKOPS_HD int axis_order(int p, int a) {
  // (0,1,2) (0,2,1) (1,0,2) (1,2,0) (2,0,1) (2,1,0): one byte per order
  // (lowest byte first), two bits per entry.
  return static_cast<int>((0x061209211824ull >> (8 * p + 2 * a)) & 3);
}

// Output geometry of one cube: output voxel (i0, i1, i2) reads
// source[start + i0*step[0] + i1*step[1] + i2*step[2]] (element offsets).
// Out-of-range codes are reduced mod 48, and a code whose axis order would
// change a non-cubic cube's shape falls back to the identity order (flips
// kept); both only matter with validate=False, where the kernels must still
// stay in bounds.
// The axis order p and flip bits the kernels apply for any integer code.
RUBIKOPS_HD void kernel_code(int64_t code, const int64_t size[3], int* p_out, int* flips_out) {
  code %= kNumCodes;
  if (code < 0) code += kNumCodes;
  int p = static_cast<int>(code >> 3);
  if (size[axis_order(p, 0)] != size[0] || size[axis_order(p, 1)] != size[1] ||
      size[axis_order(p, 2)] != size[2]) {
    p = 0;
  }
  *p_out = p;
  *flips_out = static_cast<int>(code & 7);
}

RUBIKOPS_HD void cube_geometry(int64_t code, const int64_t size[3], const int64_t src_stride[3],
                               int64_t* start, int64_t step[3]) {
  int p, flips;
  kernel_code(code, size, &p, &flips);
  int64_t s = 0;
  for (int a = 0; a < 3; ++a) {
    const int64_t st = src_stride[axis_order(p, a)];
    if ((flips >> a) & 1) {
      s += st * (size[a] - 1);
      step[a] = -st;
    } else {
      step[a] = st;
    }
  }
  *start = s;
}

RUBIKOPS_HD int64_t clamp_index(int64_t v, int64_t lo, int64_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// splitmix64 of seed + (k + 1) * golden (normative: the keep rule and the intensity stage's noise).
RUBIKOPS_HD uint64_t splitmix64(uint64_t seed, uint64_t k) {
  uint64_t z = seed + (k + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Rubik's Cube+ keep decision for output voxel k.
RUBIKOPS_HD bool keep_voxel(uint64_t seed, uint64_t k, uint64_t threshold) {
  return (splitmix64(seed, k) >> 40) < threshold;
}

// The per-cube intensity stage (rubikops/_schema.py, CUBE_INTENSITY_FIELDS: the normative rule), after the
// per-sample scale and shift, in the arithmetic type T.
constexpr int kCubeIntensityWidth = 10;
constexpr int64_t kNoiseCentre = 131070;                 // 4 * (2^16 - 1) / 2
constexpr double kNoiseUnit = 0x1.bb67ae8584caap-16;  // sqrt(3) / 2^16 (rubikops._schema.NOISE_UNIT): unit variance

// a * b rounded on its own: nvcc would otherwise fuse it with a following sum (a host build has
// -ffp-contract=off).
template <typename T>
RUBIKOPS_HD T mul_rounded(T a, T b) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == 8) return __dmul_rn(a, b);
  else return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

template <typename T>
struct CubeIntensity {
  T gain, offset, gamma, low, span, noise, bias[3];
  T centre;  // the window's, low + span * 0.5: the bias field's fixed point
  uint64_t key;
  bool gamma_on, bias_on, noise_on;  // each step is skipped where it is the identity
};

// A cube's noise_key field (the row as given, in double): truncated, 0 unless in [0, 2^64).
RUBIKOPS_HD uint64_t noise_key_of(double v) {
  return v >= 0.0 && v < 18446744073709551616.0 ? static_cast<uint64_t>(v) : 0;
}

// One cube's row of cube_intensity (double, as given) in T.
template <typename T>
RUBIKOPS_HD CubeIntensity<T> cube_intensity_of(const double* row) {
  CubeIntensity<T> q;
  q.gain = static_cast<T>(row[0]);
  q.offset = static_cast<T>(row[1]);
  q.gamma = static_cast<T>(row[2]);
  q.low = static_cast<T>(row[3]);
  q.span = static_cast<T>(row[4]);
  q.noise = static_cast<T>(row[5]);
  q.centre = q.low + mul_rounded(q.span, T(0.5));
  for (int a = 0; a < 3; ++a) q.bias[a] = static_cast<T>(row[6 + a]);
  q.key = noise_key_of(row[9]);
  q.gamma_on = q.gamma != T(1);
  q.bias_on = q.bias[0] != T(0) || q.bias[1] != T(0) || q.bias[2] != T(0);
  q.noise_on = q.noise != T(0);
  return q;
}

// exp(bias[a] * r) of output voxel i along an axis of n voxels, r = i * (2 / (n - 1)) - 1 (0 for n = 1).
template <typename T>
RUBIKOPS_HD T bias_factor(T coefficient, int64_t i, int64_t n) {
  const T r = n > 1 ? mul_rounded(static_cast<T>(i), static_cast<T>(2.0 / static_cast<double>(n - 1))) - T(1) : T(0);
  return exp(coefficient * r);
}

// The noise of cube voxel j (its index in the cube's (C, d, h, w) block): the four 16-bit fields of its
// hash summed, centred and scaled (Irwin-Hall, unit variance).
template <typename T>
RUBIKOPS_HD T cube_noise(uint64_t key, uint64_t j) {
  const uint64_t z = splitmix64(key, j);
  const int64_t total = static_cast<int64_t>((z & 0xFFFF) + ((z >> 16) & 0xFFFF) + ((z >> 32) & 0xFFFF) + (z >> 48));
  return static_cast<T>(total - kNoiseCentre) * static_cast<T>(kNoiseUnit);
}


// v through the cube's stage; `field` the voxel's bias factor (the product of its three bias_factor,
// D and H first), read only where the bias is on.  Each product and sum rounded as the reference's.
template <typename T>
RUBIKOPS_HD T intensity_value(T v, const CubeIntensity<T>& q, T field, uint64_t j) {
  v = mul_rounded(v, q.gain) + q.offset;
  if (q.gamma_on) {
    const T t = (v - q.low) / q.span;
    if (t > T(0) && t < T(1)) v = q.low + mul_rounded(q.span, static_cast<T>(pow(t, q.gamma)));
  }
  if (q.bias_on) v = q.centre + mul_rounded(v - q.centre, field);
  if (q.noise_on) v = v + mul_rounded(q.noise, cube_noise<T>(q.key, j));
  return v;
}

// floor(keep_prob * 2^24), clamped to [0, 2^24].
inline uint64_t keep_threshold(double keep_prob) {
  if (!(keep_prob > 0.0)) return 0;
  if (keep_prob >= 1.0) return uint64_t(1) << 24;
  return static_cast<uint64_t>(keep_prob * double(1 << 24));
}

// The affine read (augmentation in the cut): output voxel i of a cube reads
// box voxel j (j[axis_order(p, a)] = i[a], or size[a] - 1 - i[a] where axis a
// is flipped; kernel_code gives p and the flips), which sits at crop-frame
// position origin + j and is read at A[:, :3] @ position + A[:, 3] (A
// row-major 3 x 4, voxel units, (d, h, w) order), clamped into the sample's
// read box (edge values repeat; NaN reads its lowest voxel) and interpolated trilinearly:
// corner (c0, c1, c2) is at lo or hi along each axis, with weight frac or
// 1 - frac.
struct TrilinearRead {
  int64_t lo[3], hi[3];
  double frac[3];
};

// a * b + c rounded twice, as the host computes it: nvcc would otherwise fuse
// it into one FMA on the device (rounded once), and the CUDA kernel's read
// positions would differ from the CPU kernel's in the last bit.
RUBIKOPS_HD double mul_add_unfused(double a, double b, double c) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(__dmul_rn(a, b), c);
#else
  return a * b + c;
#endif
}

// The read positions along one output row (i0, i1 fixed, i2 = 0, 1, ...):
// the row's first box voxel j0 sits at crop-frame position origin + j0, and
// each step along the row moves box axis `axis` by one (backwards where that
// axis is flipped), so the position of i2 is start + i2 * step: one multiply
// and add per axis and voxel instead of three.  An affine with an infinite or
// NaN entry (validate=False) is read with affine_read_direct instead: in the
// row form 0 * inf would turn a read the reference clamps to an edge into NaN.
struct AffineRow {
  double start[3], step[3];
};

// A[4a : 4a + 4] . (q, 1), in the reference's order.
RUBIKOPS_HD double affine_position(const double A[12], const double q[3], int a) {
  double p = A[4 * a] * q[0];
  p = mul_add_unfused(A[4 * a + 1], q[1], p);
  p = mul_add_unfused(A[4 * a + 2], q[2], p);
  return p + A[4 * a + 3];
}

RUBIKOPS_HD bool affine_is_finite(const double A[12]) {
  bool finite = true;
  for (int k = 0; k < 12; ++k) finite &= A[k] - A[k] == 0.0;  // false for inf and NaN
  return finite;
}

// In double: an origin near the int64 limits (validate=False) must not overflow.
RUBIKOPS_HD void crop_position(const int64_t origin[3], const int64_t j[3], double q[3]) {
  for (int a = 0; a < 3; ++a) q[a] = static_cast<double>(origin[a]) + static_cast<double>(j[a]);
}

RUBIKOPS_HD AffineRow affine_row(const double A[12], const int64_t origin[3], const int64_t j0[3], int axis,
                                 bool backwards) {
  AffineRow row;
  double q[3];
  crop_position(origin, j0, q);
  for (int a = 0; a < 3; ++a) {
    row.start[a] = affine_position(A, q, a);
    row.step[a] = backwards ? -A[4 * a + axis] : A[4 * a + axis];
  }
  return row;
}

// Position p along axis a clamped into [bottom, top] (the read box, inside
// the volume) so edge values repeat; NaN reads bottom.
RUBIKOPS_HD void clamped_read(double p, int a, const int64_t bottom[3], const int64_t top[3], TrilinearRead* r) {
  const double lo = static_cast<double>(bottom[a]), hi = static_cast<double>(top[a]);
  p = p > lo ? (p < hi ? p : hi) : lo;
  // p >= lo >= 0: truncation is floor here, and x86-64 builds without SSE4.1 would call libm's floor
  // three times a voxel (the affine cut ran 1.7x slower with it).
  r->lo[a] = static_cast<int64_t>(p);
  r->hi[a] = r->lo[a] + 1 <= top[a] ? r->lo[a] + 1 : r->lo[a];
  r->frac[a] = p - static_cast<double>(r->lo[a]);
}

// Voxel i2 of the row.
RUBIKOPS_HD void affine_read(const AffineRow& row, int64_t i2, const int64_t bottom[3], const int64_t top[3],
                             TrilinearRead* r) {
  for (int a = 0; a < 3; ++a)
    clamped_read(mul_add_unfused(static_cast<double>(i2), row.step[a], row.start[a]), a, bottom, top, r);
}

// Box voxel j through the whole product A @ (origin + j) + t, as the reference forms it.
RUBIKOPS_HD void affine_read_direct(const double A[12], const int64_t origin[3], const int64_t j[3],
                                    const int64_t bottom[3], const int64_t top[3], TrilinearRead* r) {
  double q[3];
  crop_position(origin, j, q);
  for (int a = 0; a < 3; ++a) clamped_read(affine_position(A, q, a), a, bottom, top, r);
}

// Sample b's read box from a (B, 2, 3) row-major read_box (nullptr: the whole volume), clamped into the
// volume as validate=False requires: 0 <= bottom <= top <= extent - 1.
RUBIKOPS_HD void read_box_of(const int64_t* read_box, int64_t b, const int64_t extent[3], int64_t bottom[3],
                             int64_t top[3]) {
  for (int a = 0; a < 3; ++a) {
    bottom[a] = read_box ? clamp_index(read_box[b * 6 + a], 0, extent[a] - 1) : 0;
    top[a] = read_box ? clamp_index(read_box[b * 6 + 3 + a], bottom[a], extent[a] - 1) : extent[a] - 1;
  }
}

// Weight and (z, y, x) of corner k (bit 2: D, bit 1: H, bit 0: W picks hi).
RUBIKOPS_HD double corner_of(const TrilinearRead& r, int k, int64_t at[3]) {
  double w = 1.0;
  for (int a = 0; a < 3; ++a) {
    const bool hi = (k >> (2 - a)) & 1;
    at[a] = hi ? r.hi[a] : r.lo[a];
    w *= hi ? r.frac[a] : 1.0 - r.frac[a];
  }
  return w;
}

}  // namespace rubikops
