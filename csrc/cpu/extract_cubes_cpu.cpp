// CPU kernel of rubikops::extract_cubes.
//
// One pass over the output: rows (b, m, c, i0, i1) of length w_out are spread
// over threads with at::parallel_for; each row is written contiguously and read
// with unit or reversed stride whenever the code keeps W as the fastest axis,
// so the inner loops vectorise.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "../extract_cubes.h"
#include "../extract_cubes_checks.h"

namespace rubikops {
namespace {

template <typename F>
void dispatch_dtype(c10::ScalarType t, const char* arg, F&& f) {
  switch (t) {
    case c10::kFloat: f(float{}); break;
    case c10::kDouble: f(double{}); break;
    case c10::kHalf: f(c10::Half{}); break;
    case c10::kBFloat16: f(c10::BFloat16{}); break;
    case c10::kShort: f(int16_t{}); break;
    case c10::kByte: f(uint8_t{}); break;
    default: TORCH_CHECK_TYPE(false, "rubikops.extract_cubes: unsupported dtype for ", arg, ": ", t);
  }
}

constexpr int64_t kRowBuffer = 4096;  // bytes; a row is built here (L1) before streaming out

#if defined(__SSE2__)
constexpr bool kCanStream = true;
// Copies `bytes` from an L1 buffer to `dst` with 16-byte non-temporal stores
// (unaligned head and tail with plain stores).
inline void stream_bytes(void* dst, const void* src, size_t bytes) {
  auto* d = static_cast<unsigned char*>(dst);
  auto* s = static_cast<const unsigned char*>(src);
  size_t head = (16 - reinterpret_cast<uintptr_t>(d) % 16) % 16;
  if (head > bytes) head = bytes;
  std::memcpy(d, s, head);
  size_t i = head;
  for (; i + 16 <= bytes; i += 16)
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i), _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i)));
  std::memcpy(d + i, s + i, bytes - i);
}
inline void stream_fence() { _mm_sfence(); }
#else
constexpr bool kCanStream = false;
inline void stream_bytes(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
inline void stream_fence() {}
#endif

constexpr int64_t kPrefetchRows = 4;

inline void prefetch_bytes(const void* p, size_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (size_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off, 0, 3);
  __builtin_prefetch(c + bytes - 1, 0, 3);
}

// Vector versions of the hot loops (name_avx512, name_avx2 beside the baseline name_body), picked by the
// CPU's features on first use.  Not target_clones: its arch= versions dispatch on the CPU model, and on
// this project's 2-core AMD EPYC VM (AVX-512 and AVX2 both reported) every call ran the baseline version.
enum class VectorIsa { kBaseline, kAvx2, kAvx512 };
#if defined(__x86_64__) && defined(__GNUC__)
#define RUBIKOPS_TARGET_AVX2 __attribute__((target("avx2")))
#define RUBIKOPS_TARGET_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw")))
// RUBIKOPS_CPU_ISA=baseline or avx2 (read once) caps the choice, so that the tests run every version.
inline VectorIsa vector_isa() {
  static const VectorIsa isa = [] {
    __builtin_cpu_init();
    const char* cap = std::getenv("RUBIKOPS_CPU_ISA");
    const bool no_avx512 = cap && (std::strcmp(cap, "avx2") == 0 || std::strcmp(cap, "baseline") == 0);
    const bool no_avx2 = cap && std::strcmp(cap, "baseline") == 0;
    if (!no_avx512 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw"))
      return VectorIsa::kAvx512;
    return !no_avx2 && __builtin_cpu_supports("avx2") ? VectorIsa::kAvx2 : VectorIsa::kBaseline;
  }();
  return isa;
}
#else
#define RUBIKOPS_TARGET_AVX2
#define RUBIKOPS_TARGET_AVX512
inline VectorIsa vector_isa() { return VectorIsa::kBaseline; }
#endif
#define RUBIKOPS_ALWAYS_INLINE __attribute__((always_inline)) inline
#define RUBIKOPS_UNPAREN(...) __VA_ARGS__
// name_avx512 and name_avx2 around name_body, and `name`, which calls the widest the CPU runs.  TEMPLATE:
// the parenthesised template head (or ()), PARAMS the parameter list, ARGS the arguments, both in
// parentheses.
#define RUBIKOPS_VECTOR_VERSIONS(TEMPLATE, name, PARAMS, ARGS)                          \
  RUBIKOPS_UNPAREN TEMPLATE RUBIKOPS_TARGET_AVX512 void name##_avx512 PARAMS { name##_body ARGS; } \
  RUBIKOPS_UNPAREN TEMPLATE RUBIKOPS_TARGET_AVX2 void name##_avx2 PARAMS { name##_body ARGS; }     \
  RUBIKOPS_UNPAREN TEMPLATE void name PARAMS {                                           \
    switch (vector_isa()) {                                                              \
      case VectorIsa::kAvx512: return name##_avx512 ARGS;                                \
      case VectorIsa::kAvx2: return name##_avx2 ARGS;                                    \
      default: return name##_body ARGS;                                                  \
    }                                                                                    \
  }

// Rubik's Cube+ keep decisions of `w` consecutive output voxels from k0.
// splitmix64 needs 64-bit multiplies, which only AVX-512 (vpmullq) has as
// vector instructions.  2 cores (Xeon with AVX-512),
// B=16 x 8 cubes of 48^3, 30% of cubes masked, keep_prob 0.5, out=: the
// masked call went 33.6 ms (branch per voxel) -> 29.1 (branch-free select,
// SSE2) -> 24.3 (scalar) -> 13.7 ms (the AVX-512 version; the unmasked call: 4-7 ms).
RUBIKOPS_ALWAYS_INLINE void keep_bits_body(uint8_t* keep, int64_t w, uint64_t k0, uint64_t seed, uint64_t threshold) {
  for (int64_t i = 0; i < w; ++i) keep[i] = keep_voxel(seed, k0 + i, threshold);
}
RUBIKOPS_VECTOR_VERSIONS((), keep_bits, (uint8_t * keep, int64_t w, uint64_t k0, uint64_t seed, uint64_t threshold),
                         (keep, w, k0, seed, threshold))

// target[i] = fill where voxel k0 + i is not kept (a branch-free select: the
// decision is a coin flip, which a branch would mispredict half the time).
template <typename out_t>
void apply_keep(out_t* target, int64_t w, uint64_t k0, uint64_t seed, uint64_t threshold, out_t fill) {
  uint8_t keep[256];
  for (int64_t s0 = 0; s0 < w; s0 += 256) {
    const int64_t n = std::min<int64_t>(256, w - s0);
    keep_bits(keep, n, k0 + s0, seed, threshold);
    for (int64_t i = 0; i < n; ++i) target[s0 + i] = keep[i] ? target[s0 + i] : fill;
  }
}

// Per-sample scale or shift: the (B,) tensor's values, or `value` for all.
template <typename T>
std::vector<T> per_sample(const std::optional<at::Tensor>& t, double value, int64_t B) {
  std::vector<T> v(B, static_cast<T>(value));
  if (t) {
    const at::Tensor d = t->to(at::kDouble).contiguous();
    for (int64_t b = 0; b < B; ++b) v[b] = static_cast<T>(d.const_data_ptr<double>()[b]);
  }
  return v;
}

// The value stage's constants of one call in the arithmetic type T: the
// per-sample scale and shift, the clamp bounds (infinite where unbounded),
// whether a bound is set, and the keep rule's threshold and seed.
template <typename T>
struct ValueStage {
  std::vector<T> scale, shift;
  T lo, hi;
  bool clamp;
  uint64_t threshold, seed;
};

template <typename T>
ValueStage<T> value_stage(const ExtractCubesArgs& a) {
  const int64_t B = a.origins.size(0);
  return {per_sample<T>(a.scale, a.scale_value, B), per_sample<T>(a.shift, a.shift_value, B),
          a.clamp_lo ? static_cast<T>(*a.clamp_lo) : -std::numeric_limits<T>::infinity(),
          a.clamp_hi ? static_cast<T>(*a.clamp_hi) : std::numeric_limits<T>::infinity(), a.has_clamp(),
          keep_threshold(a.keep_prob), static_cast<uint64_t>(a.seed)};
}

// The per-cube intensity stages of one call in T (none without cube_intensity) and each cube's bias
// factors along D, H and W (d + h + w values, 1 where its bias is off), formed once a call: the kernels
// multiply two of them a row and one a voxel instead of taking three exponentials a voxel.
template <typename T>
struct IntensityStages {
  std::vector<CubeIntensity<T>> cubes;
  std::vector<T> factors;
  int64_t per_cube = 0;
  const CubeIntensity<T>* of(int64_t bm) const { return cubes.empty() ? nullptr : &cubes[bm]; }
  const T* factors_of(int64_t bm) const { return factors.data() + bm * per_cube; }
};

template <typename T>
IntensityStages<T> intensity_stages(const ExtractCubesArgs& a) {
  IntensityStages<T> s;
  if (!a.cube_intensity) return s;
  const at::Tensor rows = a.cube_intensity->to(at::kDouble).contiguous();
  const int64_t cubes = a.origins.size(0) * a.origins.size(1);
  const int64_t* n = a.cube_size.data();
  s.per_cube = n[0] + n[1] + n[2];
  s.cubes.resize(cubes);
  s.factors.assign(cubes * s.per_cube, T(1));
  for (int64_t bm = 0; bm < cubes; ++bm) {
    s.cubes[bm] = cube_intensity_of<T>(rows.const_data_ptr<double>() + bm * kCubeIntensityWidth);
    if (!s.cubes[bm].bias_on) continue;
    T* f = s.factors.data() + bm * s.per_cube;
    for (int axis = 0; axis < 3; f += n[axis], ++axis)
      for (int64_t i = 0; i < n[axis]; ++i) f[i] = bias_factor(s.cubes[bm].bias[axis], i, n[axis]);
  }
  return s;
}

// t ** gamma for 0 < t < 1 and gamma > 0 in float, as exp2(gamma * log2(t)) with polynomials that a loop
// vectorises (glibc's powf does not: the default augmentation's gamma took 5.2 of the cut's 5.8 ms on one
// thread).  The series' truncation errors are below 3e-9 (log, |s| <= 0.172 to s^9) and 2e-10 (exp,
// |f| <= ln2 / 2 to f^8) relative, so the result is within a few float ulps of powf's (the tests' 1e-5
// is several hundred).  A denormal t (below 2^-126) is scaled by 2^24 first, which is exact.  gamma must be
// finite and positive (gamma_row_body takes std::pow otherwise), so y <= 0; a result below 2^-126, float's
// normal range, is 0 (powf's would be a denormal, below 1.2e-38).
RUBIKOPS_ALWAYS_INLINE float pow_unit(float t, float gamma) {
  const bool denormal = t < 1.17549435e-38f;
  t = denormal ? t * 16777216.0f : t;
  uint32_t bits;
  std::memcpy(&bits, &t, sizeof bits);
  int32_t e = static_cast<int32_t>(bits >> 23) - (denormal ? 127 + 24 : 127);
  const uint32_t mantissa = (bits & 0x007FFFFFu) | 0x3F800000u;
  float m;
  std::memcpy(&m, &mantissa, sizeof m);  // [1, 2)
  const bool high = m > 1.41421356f;
  m = high ? m * 0.5f : m;
  e = high ? e + 1 : e;
  const float s = (m - 1.0f) / (m + 1.0f), s2 = s * s;
  const float log_m = 2.0f * s * (1.0f + s2 * (1.0f / 3 + s2 * (1.0f / 5 + s2 * (1.0f / 7 + s2 * (1.0f / 9)))));
  float y = gamma * (static_cast<float>(e) + log_m * 1.44269504f);
  const bool underflow = !(y >= -126.0f);
  y = underflow ? 0.0f : (y < 0.0f ? y : 0.0f);
  const float whole = std::floor(y + 0.5f);
  const float f = (y - whole) * 0.693147181f;
  const float p = 1.0f + f * (1.0f + f * (1.0f / 2 + f * (1.0f / 6 + f * (1.0f / 24 + f * (1.0f / 120 +
                  f * (1.0f / 720 + f * (1.0f / 5040 + f * (1.0f / 40320))))))));
  const uint32_t scale_bits = static_cast<uint32_t>(static_cast<int32_t>(whole) + 127) << 23;
  float two_to_whole;
  std::memcpy(&two_to_whole, &scale_bits, sizeof two_to_whole);
  return underflow ? 0.0f : p * two_to_whole;
}

// The gamma step on a row: v = low + span * t ** gamma where 0 < t = (v - low) / span < 1.  float rows
// through pow_unit (vectorised), double rows and a gamma that is not finite and positive (validate=False)
// through std::pow (the reference's precision and its inf and NaN).
template <typename T>
RUBIKOPS_ALWAYS_INLINE void gamma_row_body(T* __restrict v, int64_t n, T low, T span, T gamma) {
  if constexpr (std::is_same_v<T, float>) {
    if (gamma > 0.0f && gamma < std::numeric_limits<float>::infinity()) {
      for (int64_t k = 0; k < n; ++k) {
        const float t = (v[k] - low) / span;
        const bool inside = (t > 0.0f) & (t < 1.0f);  // no short circuit: one select, not two branches
        const float powered = pow_unit(inside ? t : 0.5f, gamma);
        v[k] = inside ? low + span * powered : v[k];
      }
      return;
    }
  }
  for (int64_t k = 0; k < n; ++k) {
    const T t = (v[k] - low) / span;
    if (t > T(0) && t < T(1)) v[k] = low + span * std::pow(t, gamma);
  }
}


// The noise step on a row of voxels j0, j0 + 1, ...: 64-bit multiplies, vectorised where AVX-512 has them.
template <typename T>
RUBIKOPS_ALWAYS_INLINE void noise_row_body(T* __restrict v, int64_t n, T noise, uint64_t key, uint64_t j0) {
  for (int64_t k = 0; k < n; ++k) v[k] = v[k] + noise * cube_noise<T>(key, j0 + static_cast<uint64_t>(k));
}

// n consecutive values of one channel of a cube (after scale and shift), from its voxel `first` in
// (d, h, w) order, through its stage q: intensity_value's steps in its order, each step one loop over
// them so that it vectorises (a whole cube's, where the kernel has it: rows of 16 voxels cost a call and
// a loop's set-up per step and row).  factors: the cube's d + h + w bias factors; block: the channel's
// first voxel in the cube's (C, d, h, w) block (the noise counts from it).
template <typename T>
RUBIKOPS_ALWAYS_INLINE void intensity_span_body(T* __restrict values, int64_t n, const CubeIntensity<T>& q,
                                                const T* factors, const int64_t size[3], int64_t first,
                                                int64_t block) {
  for (int64_t k = 0; k < n; ++k) values[k] = values[k] * q.gain + q.offset;
  if (q.gamma_on) gamma_row_body(values, n, q.low, q.span, q.gamma);
  if (q.bias_on) {
    const T* fw = factors + size[0] + size[1];
    for (int64_t k = 0; k < n;) {  // row by row: the row's D and H factors, then each voxel's W factor
      const int64_t row = (first + k) / size[2], column = (first + k) % size[2];
      const int64_t count = std::min(n - k, size[2] - column);
      const T row_field = factors[row / size[1]] * factors[size[0] + row % size[1]];
      T* v = values + k;
      for (int64_t x = 0; x < count; ++x) v[x] = q.centre + (v[x] - q.centre) * (row_field * fw[column + x]);
      k += count;
    }
  }
  if (q.noise_on) noise_row_body(values, n, q.noise, q.key, static_cast<uint64_t>(block + first));
}
RUBIKOPS_VECTOR_VERSIONS((template <typename T>), intensity_span,
                         (T * values, int64_t n, const CubeIntensity<T>& q, const T* factors, const int64_t size[3],
                          int64_t first, int64_t block),
                         (values, n, q, factors, size, first, block))

// n values clamped and cast into dst.
template <typename op_t, typename out_t>
RUBIKOPS_ALWAYS_INLINE void clamp_and_cast_body(const op_t* __restrict values, int64_t n, op_t lo, op_t hi,
                                                out_t* __restrict dst) {
  for (int64_t k = 0; k < n; ++k) {
    op_t x = values[k];
    x = lo > x ? lo : x;
    x = hi < x ? hi : x;
    dst[k] = static_cast<out_t>(x);
  }
}
RUBIKOPS_VECTOR_VERSIONS((template <typename op_t, typename out_t>), clamp_and_cast,
                         (const op_t* values, int64_t n, op_t lo, op_t hi, out_t* dst), (values, n, lo, hi, dst))

// The samples b that read each volume n, in order (the backward kernels split their work by volume).
std::vector<std::vector<int64_t>> samples_by_volume(const std::vector<int64_t>& volume_of, int64_t N) {
  std::vector<std::vector<int64_t>> samples_of(N);
  for (int64_t b = 0; b < static_cast<int64_t>(volume_of.size()); ++b) samples_of[volume_of[b]].push_back(b);
  return samples_of;
}

// The strides of a 6-D tensor (the output gradient, read through them).
std::array<int64_t, 6> strides6(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3), t.stride(4), t.stride(5)};
}

struct CubeJob {
  int64_t start;    // element offset of output voxel (0, 0, 0) of channel 0
  int64_t step[3];  // signed source strides along the three output axes
  bool masked;
};

// Per-cube geometry in a tensor of the source's shape with `like`'s strides
// (the source, or the backward's buffer), done once (B * M entries), and the
// volume each sample reads.  Indices and origins are clamped so that no input
// can make a kernel leave the tensor.
std::vector<CubeJob> cube_jobs(const ExtractCubesArgs& a, const at::Tensor& like, std::vector<int64_t>* volume_of) {
  const int64_t B = a.origins.size(0), M = a.origins.size(1), N = like.size(0);
  const int64_t dims[3] = {like.size(2), like.size(3), like.size(4)};
  const int64_t stride[3] = {like.stride(2), like.stride(3), like.stride(4)};
  const at::Tensor origins = a.origins.to(at::kLong).contiguous();
  const at::Tensor index = a.index ? a.index->to(at::kLong).contiguous() : at::Tensor();
  const at::Tensor rotations = a.rotations ? a.rotations->to(at::kLong).contiguous() : at::Tensor();
  const at::Tensor mask = a.mask ? a.mask->to(at::kBool).contiguous() : at::Tensor();
  const int64_t* org = origins.const_data_ptr<int64_t>();
  std::vector<CubeJob> jobs(B * M);
  if (volume_of) volume_of->assign(B, 0);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = clamp_index(index.defined() ? index.const_data_ptr<int64_t>()[b] : b, 0, N - 1);
    if (volume_of) (*volume_of)[b] = n;
    for (int64_t m = 0; m < M; ++m) {
      CubeJob& j = jobs[b * M + m];
      const int64_t code = rotations.defined() ? rotations.const_data_ptr<int64_t>()[b * M + m] : 0;
      cube_geometry(code, a.cube_size.data(), stride, &j.start, j.step);
      j.start += n * like.stride(0);
      for (int k = 0; k < 3; ++k)
        j.start += clamp_index(org[(b * M + m) * 3 + k], 0, dims[k] - a.cube_size[k]) * stride[k];
      j.masked = mask.defined() && mask.const_data_ptr<bool>()[b * M + m];
    }
  }
  return jobs;
}

// A row of w voxels: out[i] = cast(src[i * step]) with optional intensity
// arithmetic.  `step` is specialised for +1 and -1 so those loops vectorise.
template <typename in_t, typename out_t, typename op_t, bool ARITH>
void copy_row(const in_t* __restrict__ src, int64_t step, out_t* __restrict__ dst, int64_t w, op_t s,
              op_t t, op_t lo, op_t hi) {
  auto convert = [&](in_t x) -> out_t {
    if constexpr (ARITH) {
      op_t v = static_cast<op_t>(x) * s + t;
      // Two independent selects, each the exact semantics of one SSE
      // max/min (lo > v ? lo : v is maxps(lo, v), which returns v when v is
      // NaN, as torch.clamp does), so the loop vectorises instead of
      // branching on the data.
      v = lo > v ? lo : v;
      v = hi < v ? hi : v;
      return static_cast<out_t>(v);
    } else if constexpr (std::is_same_v<in_t, out_t>) {
      return x;
    } else {
      return static_cast<out_t>(static_cast<op_t>(x));
    }
  };
  if (step == 1) {
    if constexpr (!ARITH && std::is_same_v<in_t, out_t>) {
      std::memcpy(dst, src, sizeof(out_t) * w);
    } else {
      for (int64_t i = 0; i < w; ++i) dst[i] = convert(src[i]);
    }
  } else if (step == -1) {
    for (int64_t i = 0; i < w; ++i) dst[i] = convert(src[-i]);
  } else {
    for (int64_t i = 0; i < w; ++i) dst[i] = convert(src[i * step]);
  }
}

template <typename in_t, typename out_t>
void extract_cubes_kernel(const ExtractCubesArgs& a, at::Tensor& out) {
  using op_t = std::conditional_t<std::is_same_v<in_t, double> || std::is_same_v<out_t, double>, double, float>;
  const at::Tensor& src = a.source;
  const int64_t B = a.origins.size(0), M = a.origins.size(1);
  const int64_t C = src.size(1);
  const int64_t* size = a.cube_size.data();
  const int64_t o1 = size[1], o2 = size[2];
  const bool arith = a.arithmetic;

  const std::vector<CubeJob> jobs = cube_jobs(a, src, nullptr);
  const auto [scale, shift, lo, hi, clamp, threshold, seed] = value_stage<op_t>(a);
  const IntensityStages<op_t> stages = intensity_stages<op_t>(a);
  const out_t fill = static_cast<out_t>(a.fill);

  const in_t* src_ptr = src.const_data_ptr<in_t>();
  out_t* out_ptr = out.mutable_data_ptr<out_t>();
  const int64_t o0 = size[0];
  const int64_t planes = B * M * C * o0;  // (b, m, c, i0): o1 rows of o2 voxels, contiguous in the output
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(o1 * o2, 1));
  // Large outputs bypass the cache: building each row in an L1 buffer and
  // writing it with non-temporal stores skips the read-for-ownership of the
  // output lines (2 cores, B=16, 8 cubes of 48^3 from 128^3, f32, out=:
  // 12.7 -> 11.9 ms in one benchmark run; the machine's run-to-run noise is
  // of the same order, see docs/performance.md).
  const bool stream = out.nbytes() >= (size_t(8) << 20) && kCanStream;
  const int64_t chunk = kRowBuffer / sizeof(out_t);

  at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
    alignas(64) unsigned char buffer[kRowBuffer];
    out_t* buf = reinterpret_cast<out_t*>(buffer);
    for (int64_t pl = begin; pl < end; ++pl) {
      const int64_t cube = pl / (C * o0);
      const int64_t c = (pl / o0) % C;
      const int64_t i0 = pl % o0;
      const CubeJob& j = jobs[cube];
      const int64_t b = cube / M;
      const op_t s = scale[b], t = shift[b];
      const CubeIntensity<op_t>* q = stages.of(cube);
      const op_t* factors = q ? stages.factors_of(cube) : nullptr;
      const bool fill_all = j.masked && threshold == 0;
      const bool hash = j.masked && threshold > 0 && threshold < (uint64_t(1) << 24);
      const in_t* plane_src = src_ptr + j.start + c * src.stride(1) + i0 * j.step[0];
      // Rows that run along source W (unit or reversed stride) are fetched
      // kPrefetchRows ahead: the source rows of a plane are short runs at a
      // large stride.  2 cores, B=16 x 8 cubes of 48^3 from 128^3, f32, paper
      // codes, out=, prefetch on/off interleaved 40 times: 0.94 and 0.98 of
      // the time (4 rows ahead), 0.97 and 0.98 (8 rows ahead).
      const bool prefetch = !fill_all && (j.step[2] == 1 || j.step[2] == -1);
      const int64_t row_lo = j.step[2] < 0 ? -(o2 - 1) : 0;
      for (int64_t i1 = 0; i1 < o1; ++i1) {
        const int64_t r = pl * o1 + i1;
        out_t* dst = out_ptr + r * o2;
        const in_t* row_src = plane_src + i1 * j.step[1];
        if (prefetch) {
          const int64_t ahead = i1 + kPrefetchRows < o1 ? i1 + kPrefetchRows : -1;
          if (ahead >= 0) prefetch_bytes(plane_src + ahead * j.step[1] + row_lo, o2 * sizeof(in_t));
        }
        for (int64_t x0 = 0; x0 < o2; x0 += chunk) {
          const int64_t w = std::min(chunk, o2 - x0);
          out_t* target = stream ? buf : dst + x0;
          if (fill_all) {
            std::fill(target, target + w, fill);
          } else {
            const in_t* from = row_src + x0 * j.step[2];
            if (q) {
              const int64_t step = j.step[2];
              for (int64_t s0 = 0; s0 < w; s0 += 256) {
                const int64_t n = std::min<int64_t>(256, w - s0);
                op_t values[256];
                for (int64_t i = 0; i < n; ++i) values[i] = static_cast<op_t>(from[(s0 + i) * step]) * s + t;
                intensity_span(values, n, *q, factors, size, (i0 * o1 + i1) * o2 + x0 + s0, c * o0 * o1 * o2);
                clamp_and_cast(values, n, lo, hi, target + s0);
              }
            } else if (arith)
              copy_row<in_t, out_t, op_t, true>(from, j.step[2], target, w, s, t, lo, hi);
            else
              copy_row<in_t, out_t, op_t, false>(from, j.step[2], target, w, s, t, lo, hi);
            if (hash) {
              apply_keep(target, w, static_cast<uint64_t>(r * o2 + x0), seed, threshold, fill);
            }
          }
          if (stream) stream_bytes(dst + x0, buf, w * sizeof(out_t));
        }
      }
    }
    if (stream) stream_fence();
  });
}

// The affine read (augmentation in the cut, a.affine given): every output
// voxel interpolates eight source voxels (csrc/extract_cubes.h, affine_read),
// then the value stage (scale, shift, clamp, cast) and the mask as above.
// One (sample, cube) per cube job: its code, crop-frame origin and volume.
struct AffineJob {
  int box_axis[3];     // output axis a reads box axis box_axis[a] ...
  bool flipped[3];     // ... backwards where flipped
  int64_t origin[3];   // crop-frame origin, as given
  int64_t bottom[3], top[3];  // the read box, inside the volume
  int64_t volume;
  bool masked;

  bool direct;  // the sample's affine holds an inf or NaN: read through the whole product (validate=False)

  // Box voxel j of output voxel (i0, i1, i2).
  void box_voxel(const int64_t i[3], const int64_t size[3], int64_t j[3]) const {
    for (int a = 0; a < 3; ++a) j[box_axis[a]] = flipped[a] ? size[a] - 1 - i[a] : i[a];
  }

  // The read positions of output row (i[0], i[1]): its first box voxel, then one step a voxel.
  AffineRow row(const double* A, const int64_t i[3], const int64_t size[3]) const {
    const int64_t first[3] = {i[0], i[1], 0};
    int64_t j0[3];
    box_voxel(first, size, j0);
    return affine_row(A, origin, j0, box_axis[2], flipped[2]);
  }

  // Where output voxel i reads, on its row.
  void read(const double* A, const AffineRow& row, const int64_t i[3], const int64_t size[3],
            TrilinearRead* r) const {
    if (direct) {
      int64_t j[3];
      box_voxel(i, size, j);
      affine_read_direct(A, origin, j, bottom, top, r);
    } else {
      affine_read(row, i[2], bottom, top, r);
    }
  }
};

std::vector<AffineJob> affine_jobs(const ExtractCubesArgs& a, std::vector<double>* matrices) {
  const int64_t B = a.origins.size(0), M = a.origins.size(1), N = a.source.size(0);
  const at::Tensor origins = a.origins.to(at::kLong).contiguous();
  const at::Tensor index = a.index ? a.index->to(at::kLong).contiguous() : at::Tensor();
  const at::Tensor rotations = a.rotations ? a.rotations->to(at::kLong).contiguous() : at::Tensor();
  const at::Tensor mask = a.mask ? a.mask->to(at::kBool).contiguous() : at::Tensor();
  const at::Tensor affine = a.affine->to(at::kDouble).contiguous();
  const at::Tensor read_box = a.read_box ? a.read_box->to(at::kLong).contiguous() : at::Tensor();
  const int64_t extent[3] = {a.source.size(2), a.source.size(3), a.source.size(4)};
  matrices->assign(affine.const_data_ptr<double>(), affine.const_data_ptr<double>() + B * 12);
  std::vector<AffineJob> jobs(B * M);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t m = 0; m < M; ++m) {
      AffineJob& j = jobs[b * M + m];
      int p, flips;
      kernel_code(rotations.defined() ? rotations.const_data_ptr<int64_t>()[b * M + m] : 0, a.cube_size.data(), &p, &flips);
      for (int k = 0; k < 3; ++k) {
        j.box_axis[k] = axis_order(p, k);
        j.flipped[k] = (flips >> k) & 1;
        j.origin[k] = origins.const_data_ptr<int64_t>()[(b * M + m) * 3 + k];
      }
      j.volume = clamp_index(index.defined() ? index.const_data_ptr<int64_t>()[b] : b, 0, N - 1);
      j.masked = mask.defined() && mask.const_data_ptr<bool>()[b * M + m];
      read_box_of(read_box.defined() ? read_box.const_data_ptr<int64_t>() : nullptr, b, extent, j.bottom, j.top);
      j.direct = !affine_is_finite(matrices->data() + b * 12);
    }
  }
  return jobs;
}

// The trilinear value at `r` of a volume with strides st[2..4], in double:
// corner_of's weights and summation order (bit-identical to the reference),
// with the per-axis weights and offsets formed once instead of per corner.
template <typename in_t>
inline double interpolate(const in_t* vol, const int64_t* st, const TrilinearRead& r) {
  double w[3][2];
  int64_t off[3][2];
  for (int a = 0; a < 3; ++a) {
    w[a][0] = 1.0 - r.frac[a];
    w[a][1] = r.frac[a];
    off[a][0] = r.lo[a] * st[2 + a];
    off[a][1] = r.hi[a] * st[2 + a];
  }
  double sum = 0.0;
  for (int z = 0; z < 2; ++z) {
    for (int y = 0; y < 2; ++y) {
      const double wzy = w[0][z] * w[1][y];
      const in_t* row = vol + off[0][z] + off[1][y];
      sum += wzy * w[2][0] * static_cast<double>(row[off[2][0]]);
      sum += wzy * w[2][1] * static_cast<double>(row[off[2][1]]);
    }
  }
  return sum;
}

// Whether every read of an output row of n voxels lies strictly inside the read box on every axis
// (bottom <= p < top), so that no read is clamped and each hi corner is lo + 1.  The positions are
// start + i2 * step, rounded monotonically, so the row's two ends bound all of them; NaN is never
// inside.  Most rows of a small rotation are (a 16^3 cube of the default crop: all but the edge's).
inline bool row_is_interior(const AffineRow& row, int64_t n, const int64_t bottom[3], const int64_t top[3]) {
  for (int a = 0; a < 3; ++a) {
    const double first = row.start[a], last = mul_add_unfused(static_cast<double>(n - 1), row.step[a], row.start[a]);
    const double low = first < last ? first : last, high = first < last ? last : first;
    if (!(low >= static_cast<double>(bottom[a]) && high < static_cast<double>(top[a]))) return false;
  }
  return true;
}

// Whether every read of a cube lies inside the read box (row_is_interior for all its rows at once): its
// positions are an affine map of its box voxels, whose extremes lie at the box's eight corners.  The rows
// compute their positions another way (start + i2 * step) than the corners (affine_position), so the two
// differ by their rounding, a few ulps of the largest term they add (A[a][k] * q_k, A[a][3]).  Where every
// term is below 2^20 that is below 2^-30, far inside the 1e-6 margin; a larger term (an origin near 2^40,
// a huge translation cancelled by it, validate=False) leaves the decision to row_is_interior, which tests
// the row's own positions.  Saves the per-row test on the cubes wholly inside (all of the default crop's
// but those at a volume's edge).
inline bool cube_is_interior(const AffineJob& j, const double* A, const int64_t size[3]) {
  constexpr double kLargestTerm = 1048576.0;  // 2^20
  for (int corner = 0; corner < 8; ++corner) {
    int64_t box[3];
    for (int a = 0; a < 3; ++a) box[j.box_axis[a]] = (corner >> a) & 1 ? size[a] - 1 : 0;
    double q[3];
    crop_position(j.origin, box, q);
    for (int a = 0; a < 3; ++a) {
      const double terms = std::fabs(A[4 * a] * q[0]) + std::fabs(A[4 * a + 1] * q[1]) +
                           std::fabs(A[4 * a + 2] * q[2]) + std::fabs(A[4 * a + 3]);
      const double p = affine_position(A, q, a);
      if (!(terms < kLargestTerm && p >= static_cast<double>(j.bottom[a]) + 1e-6 &&
            p < static_cast<double>(j.top[a]) - 1e-6))
        return false;
    }
  }
  return true;
}

// A chunk of one output row's values (the interpolation, before scale and shift): interpolate's weights,
// corners and summation order (bit-identical), in two loops that the compiler vectorises: the positions,
// weights and int32 corner offsets, then the eight reads and the sum.  An interior row (row_is_interior)
// skips the clamps and reads each hi corner one voxel on; any other (kClamped) clamps its positions into
// the read box as clamped_read does, its hi corner staying on the top voxel.  The default geometry's fused
// cut (benchmarks/affine_cut.py, 16 x 8 cubes of 16^3 from a float32 bank, 2 threads of the idle 2-core
// AMD VM): 5.9 ms with every row voxel by voxel, 3.05 ms with the interior rows vectorised.
constexpr int64_t kRowChunk = 64;

template <bool kClamped, typename in_t, typename op_t>
RUBIKOPS_ALWAYS_INLINE void interpolate_chunk_body(const in_t* __restrict vol, const int32_t st[3],
                                                   const AffineRow& row, const int64_t bottom[3],
                                                   const int64_t top[3], int64_t i0, int64_t n,
                                                   op_t* __restrict values) {
  double w0[kRowChunk], w1[kRowChunk], w2[kRowChunk];
  int32_t corner[kRowChunk], up0[kRowChunk], up1[kRowChunk], up2[kRowChunk];
  const int32_t sz = st[0], sy = st[1], sx = st[2];
  const double s0 = row.step[0], s1 = row.step[1], s2 = row.step[2];
  const double t0 = row.start[0], t1 = row.start[1], t2 = row.start[2];
  const double lo0 = static_cast<double>(bottom[0]), lo1 = static_cast<double>(bottom[1]),
               lo2 = static_cast<double>(bottom[2]);
  const double hi0 = static_cast<double>(top[0]), hi1 = static_cast<double>(top[1]), hi2 = static_cast<double>(top[2]);
  const int32_t top0 = static_cast<int32_t>(top[0]), top1 = static_cast<int32_t>(top[1]),
                top2 = static_cast<int32_t>(top[2]);
  for (int64_t k = 0; k < n; ++k) {
    const double i2 = static_cast<double>(i0 + k);
    double p0 = i2 * s0 + t0, p1 = i2 * s1 + t1, p2 = i2 * s2 + t2;  // mul_add_unfused on the host
    if constexpr (kClamped) {  // clamped_read's selects: NaN reads the bottom
      p0 = p0 > lo0 ? (p0 < hi0 ? p0 : hi0) : lo0;
      p1 = p1 > lo1 ? (p1 < hi1 ? p1 : hi1) : lo1;
      p2 = p2 > lo2 ? (p2 < hi2 ? p2 : hi2) : lo2;
    }
    // the reads lie inside the volume, whose offsets fit an int32
    const int32_t l0 = static_cast<int32_t>(p0), l1 = static_cast<int32_t>(p1), l2 = static_cast<int32_t>(p2);
    w0[k] = p0 - static_cast<double>(l0);
    w1[k] = p1 - static_cast<double>(l1);
    w2[k] = p2 - static_cast<double>(l2);
    corner[k] = l0 * sz + l1 * sy + l2 * sx;
    if constexpr (kClamped) {
      up0[k] = l0 + 1 <= top0 ? sz : 0;
      up1[k] = l1 + 1 <= top1 ? sy : 0;
      up2[k] = l2 + 1 <= top2 ? sx : 0;
    }
  }
  for (int64_t k = 0; k < n; ++k) {
    const in_t* r = vol + corner[k];
    const int32_t dz = kClamped ? up0[k] : sz, dy = kClamped ? up1[k] : sy, dx = kClamped ? up2[k] : sx;
    const double a0 = 1.0 - w0[k], a1 = 1.0 - w1[k], a2 = 1.0 - w2[k];
    const double b0 = w0[k], b1 = w1[k], b2 = w2[k];
    double sum = 0.0;
    sum += a0 * a1 * a2 * static_cast<double>(r[0]);
    sum += a0 * a1 * b2 * static_cast<double>(r[dx]);
    sum += a0 * b1 * a2 * static_cast<double>(r[dy]);
    sum += a0 * b1 * b2 * static_cast<double>(r[dy + dx]);
    sum += b0 * a1 * a2 * static_cast<double>(r[dz]);
    sum += b0 * a1 * b2 * static_cast<double>(r[dz + dx]);
    sum += b0 * b1 * a2 * static_cast<double>(r[dz + dy]);
    sum += b0 * b1 * b2 * static_cast<double>(r[dz + dy + dx]);
    values[k] = static_cast<op_t>(sum);
  }
}

// values * scale + shift, in place.
template <typename T>
RUBIKOPS_ALWAYS_INLINE void scale_and_shift_body(T* __restrict values, int64_t n, T scale, T shift) {
  for (int64_t k = 0; k < n; ++k) values[k] = values[k] * scale + shift;
}
RUBIKOPS_VECTOR_VERSIONS((template <typename T>), scale_and_shift, (T * values, int64_t n, T scale, T shift),
                         (values, n, scale, shift))

// One row of `w` voxels, chunk by chunk through interpolate_chunk_body.
template <bool kClamped, typename in_t, typename op_t>
RUBIKOPS_ALWAYS_INLINE void interpolate_row(const in_t* vol, const int32_t st[3], const AffineRow& row,
                                            const int64_t bottom[3], const int64_t top[3], int64_t w, op_t* values) {
  for (int64_t first = 0; first < w; first += kRowChunk)
    interpolate_chunk_body<kClamped>(vol, st, row, bottom, top, first, std::min<int64_t>(kRowChunk, w - first),
                                     values + first);
}

// Interior rows (row_is_interior) of `w` voxels each, one after the other into `values`.
template <typename in_t, typename op_t>
RUBIKOPS_ALWAYS_INLINE void interior_rows_body(const in_t* __restrict vol, const int32_t st[3], const AffineRow* rows,
                                               int64_t count, int64_t w, const int64_t bottom[3],
                                               const int64_t top[3], op_t* __restrict values) {
  for (int64_t r = 0; r < count; ++r, values += w) interpolate_row<false>(vol, st, rows[r], bottom, top, w, values);
}
RUBIKOPS_VECTOR_VERSIONS((template <typename in_t, typename op_t>), interior_rows,
                         (const in_t* vol, const int32_t st[3], const AffineRow* rows, int64_t count, int64_t w,
                          const int64_t bottom[3], const int64_t top[3], op_t* values),
                         (vol, st, rows, count, w, bottom, top, values))

#if defined(__x86_64__) && defined(__GNUC__)
// The same rows where the volume is float32 or int16 with unit W stride, with AVX-512, eight voxels at a
// time: a voxel's two corners along W are adjacent, so one 64-bit (float32) or 32-bit (int16) load
// brings both, and four loads a voxel serve its eight corners.  The compiler's version of
// interpolate_chunk_body emulates its 64 reads with scalar loads and inserts (they and their spills
// were 33% of the default pretraining's batch, perf on the 2-core AMD EPYC VM; hardware gathers of the
// pairs ran no faster than these loads).  Same positions, weights, products and summation order:
// bit-identical.

// The two W-adjacent corners of eight voxels at base + at[k] (x0, x1), from eight 64-bit loads
// (float32) or 32-bit loads (int16).
RUBIKOPS_TARGET_AVX512 RUBIKOPS_ALWAYS_INLINE void corner_pairs(const float* base, const int32_t* at, __m512d* x0,
                                                                __m512d* x1) {
  const auto pair = [&](int k) {  // memcpy: the pair is 4-byte aligned, and read as bytes, not as a double
    long long bits;
    std::memcpy(&bits, base + at[k], sizeof bits);
    return bits;
  };
  const __m128i q01 = _mm_set_epi64x(pair(1), pair(0)), q23 = _mm_set_epi64x(pair(3), pair(2));
  const __m128i q45 = _mm_set_epi64x(pair(5), pair(4)), q67 = _mm_set_epi64x(pair(7), pair(6));
  const __m512i q = _mm512_inserti64x4(
      _mm512_castsi256_si512(_mm256_inserti128_si256(_mm256_castsi128_si256(q01), q23, 1)),
      _mm256_inserti128_si256(_mm256_castsi128_si256(q45), q67, 1), 1);
  // 16 floats: voxel k's (x0, x1) at lanes 2k, 2k + 1; evens to the low half, odds to the high half
  const __m512i evens_then_odds = _mm512_set_epi32(15, 13, 11, 9, 7, 5, 3, 1, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512 pairs = _mm512_permutexvar_ps(evens_then_odds, _mm512_castsi512_ps(q));
  *x0 = _mm512_cvtps_pd(_mm512_castps512_ps256(pairs));
  *x1 = _mm512_cvtps_pd(_mm512_extractf32x8_ps(pairs, 1));
}
RUBIKOPS_TARGET_AVX512 RUBIKOPS_ALWAYS_INLINE void corner_pairs(const int16_t* base, const int32_t* at, __m512d* x0,
                                                                __m512d* x1) {
  int32_t q[8];
  for (int k = 0; k < 8; ++k) std::memcpy(&q[k], base + at[k], 4);
  const __m256i pairs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));  // x1 << 16 | x0
  *x0 = _mm512_cvtepi32_pd(_mm256_srai_epi32(_mm256_slli_epi32(pairs, 16), 16));
  *x1 = _mm512_cvtepi32_pd(_mm256_srai_epi32(pairs, 16));
}

template <typename in_t, typename op_t>
RUBIKOPS_TARGET_AVX512 void interior_rows_pairs_avx512(const in_t* __restrict vol, const int32_t st[3],
                                                       const AffineRow* rows, int64_t count, int64_t w,
                                                       const int64_t bottom[3], const int64_t top[3],
                                                       op_t* __restrict values) {
  const __m512d iota = _mm512_set_pd(7, 6, 5, 4, 3, 2, 1, 0), one = _mm512_set1_pd(1.0);
  const __m256i sz = _mm256_set1_epi32(st[0]), sy = _mm256_set1_epi32(st[1]);
  const int64_t vector_end = w - w % 8;
  for (int64_t r = 0; r < count; ++r, values += w) {
    const AffineRow& row = rows[r];
    const __m512d s0 = _mm512_set1_pd(row.step[0]), s1 = _mm512_set1_pd(row.step[1]),
                  s2 = _mm512_set1_pd(row.step[2]);
    const __m512d t0 = _mm512_set1_pd(row.start[0]), t1 = _mm512_set1_pd(row.start[1]),
                  t2 = _mm512_set1_pd(row.start[2]);
    for (int64_t k = 0; k < vector_end; k += 8) {
      const __m512d i2 = _mm512_add_pd(_mm512_set1_pd(static_cast<double>(k)), iota);
      const __m512d p0 = _mm512_add_pd(_mm512_mul_pd(i2, s0), t0), p1 = _mm512_add_pd(_mm512_mul_pd(i2, s1), t1),
                    p2 = _mm512_add_pd(_mm512_mul_pd(i2, s2), t2);
      const __m256i l0 = _mm512_cvttpd_epi32(p0), l1 = _mm512_cvttpd_epi32(p1), l2 = _mm512_cvttpd_epi32(p2);
      const __m512d b0 = _mm512_sub_pd(p0, _mm512_cvtepi32_pd(l0)), b1 = _mm512_sub_pd(p1, _mm512_cvtepi32_pd(l1)),
                    b2 = _mm512_sub_pd(p2, _mm512_cvtepi32_pd(l2));
      const __m512d a0 = _mm512_sub_pd(one, b0), a1 = _mm512_sub_pd(one, b1), a2 = _mm512_sub_pd(one, b2);
      alignas(32) int32_t corner[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(corner),
                         _mm256_add_epi32(_mm256_add_epi32(_mm256_mullo_epi32(l0, sz), _mm256_mullo_epi32(l1, sy)), l2));
      __m512d v0, v1, sum = _mm512_setzero_pd(), wzy;
      corner_pairs(vol, corner, &v0, &v1);
      wzy = _mm512_mul_pd(a0, a1);
      sum = _mm512_add_pd(sum, _mm512_mul_pd(_mm512_mul_pd(wzy, a2), v0));
      sum = _mm512_add_pd(sum, _mm512_mul_pd(_mm512_mul_pd(wzy, b2), v1));
      corner_pairs(vol + st[1], corner, &v0, &v1);
      wzy = _mm512_mul_pd(a0, b1);
      sum = _mm512_add_pd(sum, _mm512_mul_pd(_mm512_mul_pd(wzy, a2), v0));
      sum = _mm512_add_pd(sum, _mm512_mul_pd(_mm512_mul_pd(wzy, b2), v1));
      corner_pairs(vol + st[0], corner, &v0, &v1);
      wzy = _mm512_mul_pd(b0, a1);
      sum = _mm512_add_pd(sum, _mm512_mul_pd(_mm512_mul_pd(wzy, a2), v0));
      sum = _mm512_add_pd(sum, _mm512_mul_pd(_mm512_mul_pd(wzy, b2), v1));
      corner_pairs(vol + st[0] + st[1], corner, &v0, &v1);
      wzy = _mm512_mul_pd(b0, b1);
      sum = _mm512_add_pd(sum, _mm512_mul_pd(_mm512_mul_pd(wzy, a2), v0));
      sum = _mm512_add_pd(sum, _mm512_mul_pd(_mm512_mul_pd(wzy, b2), v1));
      if constexpr (std::is_same_v<op_t, float>)
        _mm256_storeu_ps(values + k, _mm512_cvtpd_ps(sum));
      else
        _mm512_storeu_pd(values + k, sum);
    }
    if (vector_end < w)
      interpolate_chunk_body<false>(vol, st, row, bottom, top, vector_end, w - vector_end, values + vector_end);
  }
}
#endif

// Interior rows through the widest version the CPU and the volume allow.
template <typename in_t, typename op_t>
void interior_rows_any(const in_t* vol, const int32_t st[3], const AffineRow* rows, int64_t count, int64_t w,
                       const int64_t bottom[3], const int64_t top[3], op_t* values) {
#if defined(__x86_64__) && defined(__GNUC__)
  if constexpr (std::is_same_v<in_t, float> || std::is_same_v<in_t, int16_t>) {
    if (st[2] == 1 && vector_isa() == VectorIsa::kAvx512)
      return interior_rows_pairs_avx512(vol, st, rows, count, w, bottom, top, values);
  }
#endif
  interior_rows(vol, st, rows, count, w, bottom, top, values);
}

// An unmasked cube's d * h * w values after scale and shift: its rows' positions first, then each run of
// interior rows in one call (all of a 16^3 cube's 256 rows, at the default crop, but those at the
// volume's edge), the others in chunks through the clamped interpolate_chunk_body where the volume's
// offsets fit an int32 and the affine is finite, voxel by voxel otherwise.
template <typename in_t, typename op_t>
void affine_cube_values(const AffineJob& j, const double* A_b, const in_t* vol, const int64_t* st,
                        const int32_t* st32, bool offsets_fit, const int64_t* size, op_t scale_b, op_t shift_b,
                        AffineRow* rows, uint8_t* interior, op_t* values) {
  const int64_t count = size[0] * size[1], w = size[2];
  const bool fast = offsets_fit && !j.direct, whole_cube_interior = fast && cube_is_interior(j, A_b, size);
  int64_t i[3] = {0, 0, 0};
  for (int64_t r = 0; r < count; ++r) {
    i[0] = r / size[1];
    i[1] = r % size[1];
    rows[r] = j.row(A_b, i, size);
    interior[r] = whole_cube_interior || (fast && row_is_interior(rows[r], w, j.bottom, j.top));
  }
  for (int64_t r = 0; r < count;) {
    int64_t run = 1;
    if (interior[r]) {
      while (r + run < count && interior[r + run]) ++run;
      interior_rows_any(vol, st32, rows + r, run, w, j.bottom, j.top, values + r * w);
    } else if (fast) {
      interpolate_row<true>(vol, st32, rows[r], j.bottom, j.top, w, values + r * w);
    } else {
      i[0] = r / size[1];
      i[1] = r % size[1];
      for (i[2] = 0; i[2] < w; ++i[2]) {
        TrilinearRead tr;
        j.read(A_b, rows[r], i, size, &tr);
        values[r * w + i[2]] = static_cast<op_t>(interpolate(vol, st, tr));
      }
    }
    r += run;
  }
  scale_and_shift(values, count * w, scale_b, shift_b);
}

template <typename in_t, typename out_t>
void extract_cubes_affine_kernel(const ExtractCubesArgs& a, at::Tensor& out) {
  using op_t = std::conditional_t<std::is_same_v<in_t, double> || std::is_same_v<out_t, double>, double, float>;
  const at::Tensor& src = a.source;
  const int64_t B = a.origins.size(0), M = a.origins.size(1), C = src.size(1);
  const int64_t* size = a.cube_size.data();
  const int64_t numel = a.cube_numel();
  const int64_t st[5] = {src.stride(0), src.stride(1), src.stride(2), src.stride(3), src.stride(4)};
  // the interior rows' fast path addresses a volume in int32 (vectorised): where its voxels' offsets fit
  int64_t last_offset = 0;
  bool offsets_fit = true;
  for (int a3 = 0; a3 < 3; ++a3) {
    offsets_fit &= st[2 + a3] >= 0 && st[2 + a3] <= std::numeric_limits<int32_t>::max() &&
                   src.size(2 + a3) <= std::numeric_limits<int32_t>::max();
    last_offset += (src.size(2 + a3) - 1) * st[2 + a3];
  }
  offsets_fit &= last_offset <= std::numeric_limits<int32_t>::max();
  const int32_t st32[3] = {static_cast<int32_t>(st[2]), static_cast<int32_t>(st[3]), static_cast<int32_t>(st[4])};
  std::vector<double> A;
  const std::vector<AffineJob> jobs = affine_jobs(a, &A);
  const auto [scale, shift, lo, hi, clamp, threshold, seed] = value_stage<op_t>(a);
  const IntensityStages<op_t> stages = intensity_stages<op_t>(a);
  const out_t fill = static_cast<out_t>(a.fill);
  const in_t* src_ptr = src.const_data_ptr<in_t>();
  out_t* out_ptr = out.mutable_data_ptr<out_t>();
  at::parallel_for(0, B * M * C, 1, [&](int64_t begin, int64_t end) {
    std::vector<op_t> cube_values(numel);  // an unmasked cube's values before the clamp and the cast
    std::vector<AffineRow> rows(size[0] * size[1]);
    std::vector<uint8_t> interior(size[0] * size[1]);
    for (int64_t cube = begin; cube < end; ++cube) {
      // the job, the sample's matrix and its value stage as locals: behind references, every store
      // to dst (which may alias them for all the compiler knows) reloaded them once a voxel
      const AffineJob j = jobs[cube / C];
      const int64_t b = cube / (C * M), c = cube % C;
      const double* A_b = &A[b * 12];
      const op_t scale_b = scale[b], shift_b = shift[b];
      const in_t* vol = src_ptr + j.volume * st[0] + c * st[1];
      out_t* dst = out_ptr + cube * numel;
      const bool masked = j.masked, hash = j.masked && threshold > 0;
      const CubeIntensity<op_t>* q = stages.of(cube / C);
      const op_t* factors = q ? stages.factors_of(cube / C) : nullptr;
      int64_t i[3];
      int64_t v = 0;
      if (!masked) {  // the values of the whole cube, then its stage, clamp and cast
        op_t* values = cube_values.data();
        affine_cube_values(j, A_b, vol, st, st32, offsets_fit, size, scale_b, shift_b, rows.data(), interior.data(),
                           values);
        if (q) intensity_span(values, numel, *q, factors, size, 0, c * numel);
        clamp_and_cast(values, numel, lo, hi, dst);
        continue;
      }
      for (i[0] = 0; i[0] < size[0]; ++i[0]) {  // a masked cube: voxel by voxel, reading only the kept ones
        for (i[1] = 0; i[1] < size[1]; ++i[1]) {
          const AffineRow row = j.row(A_b, i, size);
          for (i[2] = 0; i[2] < size[2]; ++i[2], ++v) {
            if (masked && !(hash && keep_voxel(seed, static_cast<uint64_t>(cube * numel + v), threshold))) {
              dst[v] = fill;
              continue;
            }
            TrilinearRead r;
            j.read(A_b, row, i, size, &r);
            op_t x = static_cast<op_t>(interpolate(vol, st, r)) * scale_b + shift_b;
            if (q) intensity_span(&x, 1, *q, factors, size, v, c * numel);
            clamp_and_cast(&x, 1, lo, hi, dst + v);
          }
        }
      }
    }
  });
}

// Its gradient: grad * scale (zero where masked out or clamped) spread over
// the eight corners with their weights, threads split by (volume, channel) as
// in the copy's backward (no two threads add into one voxel; a fixed order).
template <typename src_t, typename grad_t>
void extract_cubes_affine_backward_kernel(const ExtractCubesArgs& a, const at::Tensor& grad, at::Tensor& acc) {
  using acc_t = std::conditional_t<std::is_same_v<src_t, double> || std::is_same_v<grad_t, double>, double, float>;
  const at::Tensor& src = a.source;
  const int64_t B = a.origins.size(0), M = a.origins.size(1), N = src.size(0), C = src.size(1);
  const int64_t* size = a.cube_size.data();
  const int64_t numel = a.cube_numel();
  const int64_t st[5] = {src.stride(0), src.stride(1), src.stride(2), src.stride(3), src.stride(4)};
  const int64_t at_[5] = {acc.stride(0), acc.stride(1), acc.stride(2), acc.stride(3), acc.stride(4)};
  std::vector<double> A;
  const std::vector<AffineJob> jobs = affine_jobs(a, &A);
  std::vector<int64_t> volume_of(B);
  for (int64_t b = 0; b < B; ++b) volume_of[b] = jobs[b * M].volume;
  const auto samples_of = samples_by_volume(volume_of, N);
  const auto [scale, shift, lo, hi, clamp, threshold, seed] = value_stage<acc_t>(a);
  const grad_t* grad_ptr = grad.const_data_ptr<grad_t>();
  const auto gs = strides6(grad);
  at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t n = nc / C, c = nc % C;
      const src_t* vol = src.const_data_ptr<src_t>() + n * st[0] + c * st[1];  // volume n, channel c
      acc_t* vacc = acc.mutable_data_ptr<acc_t>() + n * at_[0] + c * at_[1];
      for (const int64_t b : samples_of[n]) {
        for (int64_t m = 0; m < M; ++m) {
          const AffineJob& j = jobs[b * M + m];
          const int64_t cube = (b * M + m) * C + c;
          int64_t i[3];
          int64_t v = 0;
          for (i[0] = 0; i[0] < size[0]; ++i[0]) {
            for (i[1] = 0; i[1] < size[1]; ++i[1]) {
              const AffineRow row = j.row(&A[b * 12], i, size);
              for (i[2] = 0; i[2] < size[2]; ++i[2], ++v) {
                const uint64_t k = static_cast<uint64_t>(cube * numel + v);
                if (j.masked && !(threshold > 0 && keep_voxel(seed, k, threshold))) continue;
                TrilinearRead r;
                j.read(&A[b * 12], row, i, size, &r);
                acc_t g = static_cast<acc_t>(grad_ptr[b * gs[0] + m * gs[1] + c * gs[2] + i[0] * gs[3] +
                                                      i[1] * gs[4] + i[2] * gs[5]]) * scale[b];
                if (clamp) {  // torch.clamp passes the gradient where lo <= v <= hi
                  const acc_t x = static_cast<acc_t>(interpolate(vol, st, r)) * scale[b] + shift[b];
                  if (!(x >= lo && x <= hi)) continue;
                }
                for (int corner = 0; corner < 8; ++corner) {
                  int64_t p[3];
                  const double w = corner_of(r, corner, p);
                  vacc[p[0] * at_[2] + p[1] * at_[3] + p[2] * at_[4]] += static_cast<acc_t>(w) * g;
                }
              }
            }
          }
        }
      }
    }
  });
}

// The forward kernel entry: the output's dtype pair picks the kernel.
void extract_cubes_cpu(const ExtractCubesArgs& a, at::Tensor& out) {
  dispatch_dtype(a.source.scalar_type(), "source", [&](auto in_tag) {
    using in_t = decltype(in_tag);
    dispatch_dtype(out.scalar_type(), "out_dtype", [&](auto out_tag) {
      using out_t = decltype(out_tag);
      if (a.affine)
        extract_cubes_affine_kernel<in_t, out_t>(a, out);
      else
        extract_cubes_kernel<in_t, out_t>(a, out);
    });
  });
}

// Backward: grad * scale added at the source voxel each output came from, zero
// where masked out or clamped, into a contiguous buffer of the source's shape
// in float (double for double inputs).  Boxes of one volume may overlap and
// samples may share a volume, so threads split the work by (volume, channel):
// no two threads ever add into the same voxel, no atomics are needed, and the
// additions into each voxel happen in one fixed order (deterministic).
template <typename src_t, typename grad_t>
void extract_cubes_backward_kernel(const ExtractCubesArgs& a, const at::Tensor& grad, at::Tensor& acc) {
  using acc_t = std::conditional_t<std::is_same_v<src_t, double> || std::is_same_v<grad_t, double>, double, float>;
  const at::Tensor& src = a.source;
  const int64_t M = a.origins.size(1);
  const int64_t N = src.size(0), C = src.size(1);
  const int64_t* size = a.cube_size.data();
  const int64_t o0 = size[0], o1 = size[1], o2 = size[2];
  const int64_t numel = o0 * o1 * o2;

  std::vector<int64_t> volume_of;
  const std::vector<CubeJob> src_jobs = cube_jobs(a, src, &volume_of);
  const std::vector<CubeJob> acc_jobs = cube_jobs(a, acc, nullptr);
  const auto samples_of = samples_by_volume(volume_of, N);
  const auto [scale, shift, lo, hi, clamp, threshold, seed] = value_stage<acc_t>(a);
  const src_t* src_ptr = src.const_data_ptr<src_t>();
  const grad_t* grad_ptr = grad.const_data_ptr<grad_t>();
  acc_t* acc_ptr = acc.mutable_data_ptr<acc_t>();

  // The gradient is read through its strides: autograd often hands over an
  // expanded one (the gradient of a sum), which a contiguous copy would
  // materialise at the full output size.
  const auto gs = strides6(grad);
  at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
    constexpr int64_t kChunk = 256;
    acc_t g[kChunk];
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t n = nc / C, c = nc % C;
      for (const int64_t b : samples_of[n]) {
        for (int64_t m = 0; m < M; ++m) {
          const CubeJob& js = src_jobs[b * M + m];
          const CubeJob& ja = acc_jobs[b * M + m];
          if (js.masked && threshold == 0) continue;  // filled: no gradient
          const bool hash = js.masked && threshold < (uint64_t(1) << 24);
          const int64_t cube = (b * M + m) * C + c;
          for (int64_t i0 = 0; i0 < o0; ++i0) {
            for (int64_t i1 = 0; i1 < o1; ++i1) {
              const int64_t k_row = cube * numel + (i0 * o1 + i1) * o2;  // output index, for the keep rule
              const grad_t* grow = grad_ptr + b * gs[0] + m * gs[1] + c * gs[2] + i0 * gs[3] + i1 * gs[4];
              const src_t* srow = src_ptr + js.start + c * src.stride(1) + i0 * js.step[0] + i1 * js.step[1];
              acc_t* arow = acc_ptr + ja.start + c * acc.stride(1) + i0 * ja.step[0] + i1 * ja.step[1];
              for (int64_t x0 = 0; x0 < o2; x0 += kChunk) {
                const int64_t w = std::min(kChunk, o2 - x0);
                if (gs[5] == 1) {
                  for (int64_t i = 0; i < w; ++i) g[i] = static_cast<acc_t>(grow[x0 + i]) * scale[b];
                } else {
                  for (int64_t i = 0; i < w; ++i) g[i] = static_cast<acc_t>(grow[(x0 + i) * gs[5]]) * scale[b];
                }
                if (clamp) {  // torch.clamp passes the gradient where lo <= v <= hi (NaN passes none)
                  for (int64_t i = 0; i < w; ++i) {
                    const acc_t v = static_cast<acc_t>(srow[(x0 + i) * js.step[2]]) * scale[b] + shift[b];
                    g[i] = (v >= lo && v <= hi) ? g[i] : acc_t(0);
                  }
                }
                if (hash) apply_keep(g, w, static_cast<uint64_t>(k_row + x0), seed, threshold, acc_t(0));
                acc_t* target = arow + x0 * ja.step[2];
                if (ja.step[2] == 1) {
                  for (int64_t i = 0; i < w; ++i) target[i] += g[i];
                } else if (ja.step[2] == -1) {
                  for (int64_t i = 0; i < w; ++i) target[-i] += g[i];
                } else {
                  for (int64_t i = 0; i < w; ++i) target[i * ja.step[2]] += g[i];
                }
              }
            }
          }
        }
      }
    }
  });
}

void extract_cubes_backward_cpu(const ExtractCubesArgs& a, const at::Tensor& grad, at::Tensor& acc) {
  dispatch_dtype(a.source.scalar_type(), "source", [&](auto src_tag) {
    using src_t = decltype(src_tag);
    dispatch_dtype(grad.scalar_type(), "grad", [&](auto grad_tag) {
      using grad_t = decltype(grad_tag);
      if constexpr (!std::is_integral_v<src_t> && !std::is_integral_v<grad_t>) {
        if (a.affine)
          extract_cubes_affine_backward_kernel<src_t, grad_t>(a, grad, acc);
        else
          extract_cubes_backward_kernel<src_t, grad_t>(a, grad, acc);
      }
    });
  });
}

// A fresh output of many megabytes is untouched memory that the kernel
// page-faults in as the op writes it, 4 KB at a time: with the faults, an
// allocating call ran at about a fifth of the `out=` speed.  Asking for
// transparent huge pages first (honoured where the system's THP mode is
// "madvise" or "always") makes it 2 MB per fault.  2 cores, an output-sized
// (57 MB) float32 tensor: torch.empty + copy_ 15.7 -> 8.8 ms with the advice
// (torch.clone, which does not ask, 15.5 ms).  Advice only: no effect on the
// result, and a refusal is ignored.
void advise_huge_pages(at::Tensor& out) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr size_t kMinBytes = size_t(4) << 20;
  const size_t bytes = out.nbytes();
  if (bytes < kMinBytes) return;
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(out.data_ptr());
  const uintptr_t first = (begin + page - 1) / page * page;
  const uintptr_t last = (begin + bytes) / page * page;
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)out;
#endif
}

}  // namespace
}  // namespace rubikops

TORCH_LIBRARY_IMPL(rubikops, CPU, m) {
  using namespace rubikops;
  m.impl("extract_cubes", &extract_cubes_functional<&extract_cubes_cpu, &advise_huge_pages>);
  m.impl("extract_cubes.out", &extract_cubes_out<&extract_cubes_cpu>);
  m.impl("extract_cubes_backward", &extract_cubes_backward<&extract_cubes_backward_cpu>);
}
