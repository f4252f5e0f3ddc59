// CUDA kernel of rubikops::extract_cubes.
//
// One block writes one part of one (b, m, c) cube, picked by the cube's code:
//  - codes that keep W as the output's fastest axis (the paper's rotations):
//    each thread writes VEC consecutive outputs with one 16-byte store and
//    reads them straight from the source row (unit or reversed stride):
//    faster on an H100 than reading warp-coalesced runs (lane l takes run
//    element l, l+32, ...) regrouped into packs through shared memory (B=32 x
//    8 cubes of 64^3, paper codes, out=: float32 88.4% against 71.0% of the
//    clone ceiling, bfloat16 62.4% against 34.6%);
//  - codes that move W: a 64x64 tile in the plane (output axis fed by source W,
//    output W) goes through shared memory, so reads run along source W and
//    writes along output W, both coalesced; each thread has 16 loads in flight.
// Both paths share one launch (the block decides from its cube's code).
// Plain loads, not aligned 16-byte window loads shifted with __byte_perm, in
// the vector path (H100: float32 85.3% against 69.6% of clone, bfloat16 55.2%
// against 40.8%); one plane per step in the tiled path, not two with packed
// 4-byte stores for 16-bit types (bfloat16 W-moving 42.4% against 36.1%).
// The backward kernel (further down) scatters grad * scale with atomics.
// The affine read (augmentation in the cut, further down) has kernels of its
// own: one thread per output voxel, eight corners interpolated each.
// Only cuda_runtime and the fp16/bf16 headers are included, so CI can compile
// this file with nvcc on a machine without a CUDA build of torch.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../extract_cubes.h"
#include "extract_cubes_cuda.h"

namespace rubikops {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kTile = 64;                      // tiled path: kTile x kTile outputs per step
constexpr int kTileRows = kThreads / kTile;    // 4 rows of kTile threads
constexpr int kTileLoads = kTile / kTileRows;  // 16 loads in flight per thread

template <typename T> __device__ __forceinline__ float to_float(T x) { return static_cast<float>(x); }
template <> __device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename op_t, typename T> __device__ __forceinline__ op_t to_op(T x) {
  if constexpr (std::is_same_v<op_t, double> && std::is_same_v<T, double>) return x;
  else if constexpr (std::is_same_v<op_t, double>) return static_cast<double>(to_float(x));
  else return to_float(x);
}

// op_t -> out_t with torch's rounding (double goes through float on its way to 16-bit floats).
template <typename out_t, typename op_t> __device__ __forceinline__ out_t from_op(op_t v) {
  if constexpr (std::is_same_v<out_t, __half>) return __float2half_rn(static_cast<float>(v));
  else if constexpr (std::is_same_v<out_t, __nv_bfloat16>) return __float2bfloat16_rn(static_cast<float>(v));
  else return static_cast<out_t>(v);
}

__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }

template <typename in_t, typename out_t, typename op_t>
struct Converter {
  bool arithmetic;
  op_t scale, shift, lo, hi;
  __device__ __forceinline__ out_t operator()(in_t x) const {
    if constexpr (std::is_same_v<in_t, out_t>) {
      if (!arithmetic) return x;  // bit-exact copy
    }
    op_t v = to_op<op_t>(x);
    if (arithmetic) {
      // No fused multiply-add: the result must match the CPU kernel bit for bit.
      v = add_rn(mul_rn(v, scale), shift);
      v = v < lo ? lo : (v > hi ? hi : v);  // NaN passes through, as in torch.clamp
    }
    return from_op<out_t>(v);
  }
};

struct CubeGeom {
  int64_t start;    // offset of output voxel (0, 0, 0), channel included
  int64_t step[3];  // signed strides along the output axes
  int w_axis;       // output axis fed by source W (2 when W stays fastest)
};

// Geometry of one (b, m, c) cube in a tensor of the source's shape with
// strides `stride` (the source itself, or the backward's contiguous buffer).
__device__ __forceinline__ CubeGeom cube_geom(const ExtractCubesParams& p, int64_t cube, const int64_t stride[5]) {
  const int64_t c = cube % p.C;
  const int64_t bm = cube / p.C;
  const int64_t b = bm / p.M;
  const int64_t n = clamp_index(p.index ? p.index[b] : b, 0, p.N - 1);
  const int64_t dims[3] = {p.D, p.H, p.W};
  const int64_t spatial[3] = {stride[2], stride[3], stride[4]};
  CubeGeom g;
  const int64_t code = p.rotations ? p.rotations[bm] : 0;
  cube_geometry(code, p.cube, spatial, &g.start, g.step);
  g.start += n * stride[0] + c * stride[1];
  for (int k = 0; k < 3; ++k) g.start += clamp_index(p.origins[bm * 3 + k], 0, dims[k] - p.cube[k]) * spatial[k];
  // Which output axis reads along source W (checked in order 2, 1, 0 so that
  // W-keeping codes always take the vector path).
  g.w_axis = 2;
  int64_t c2 = ((code % kNumCodes) + kNumCodes) % kNumCodes;
  int order_p = static_cast<int>(c2 >> 3);
  if (p.cube[axis_order(order_p, 0)] == p.cube[0] && p.cube[axis_order(order_p, 1)] == p.cube[1] &&
      p.cube[axis_order(order_p, 2)] == p.cube[2]) {
    for (int a = 0; a < 3; ++a)
      if (axis_order(order_p, a) == 2) g.w_axis = a;
  }
  return g;
}

template <typename out_t>
__device__ __forceinline__ out_t apply_mask(const ExtractCubesParams& p, bool masked, int64_t k, out_t v, out_t fill) {
  if (!masked) return v;
  if (p.threshold == 0) return fill;
  return keep_voxel(p.seed, static_cast<uint64_t>(k), p.threshold) ? v : fill;
}

template <typename in_t, typename out_t, typename op_t, int VEC, int kUnroll>
__global__ void __launch_bounds__(kThreads)
    extract_cubes_kernel(ExtractCubesParams p, int64_t blocks_per_cube) {
  __shared__ out_t tile[kTile][kTile + 1];  // tiled path; +1: no bank conflicts on the transposed read
  const in_t* __restrict__ src = static_cast<const in_t*>(p.src);
  out_t* __restrict__ out = static_cast<out_t*>(p.out);
  // Blocks of one cube are consecutive in launch order, so the blocks in
  // flight stream through a few source boxes rather than hundreds.
  const int64_t cube = blockIdx.x / blocks_per_cube;
  const uint32_t blk = static_cast<uint32_t>(blockIdx.x - cube * blocks_per_cube);
  const int64_t b = cube / p.C / p.M;
  // In-cube coordinates in 32-bit arithmetic (a cube holds < 2^31 voxels,
  // checked at launch); source and output offsets stay 64-bit.
  const uint32_t d0 = p.cube[0], d1 = p.cube[1], d2 = p.cube[2];
  const uint32_t cube_numel = d0 * d1 * d2;
  const CubeGeom g = cube_geom(p, cube, p.src_stride);
  const bool masked = p.mask && p.mask[cube / p.C] && p.threshold < (uint64_t(1) << 24);
  const bool fill_only = masked && p.threshold == 0;  // nothing to read
  Converter<in_t, out_t, op_t> cvt{p.arithmetic, static_cast<op_t>(p.scale ? p.scale[b] : p.scale_value),
                                   static_cast<op_t>(p.shift ? p.shift[b] : p.shift_value),
                                   static_cast<op_t>(p.clamp_lo), static_cast<op_t>(p.clamp_hi)};
  const out_t fill = from_op<out_t>(static_cast<op_t>(p.fill));
  const int64_t out_base = cube * static_cast<int64_t>(cube_numel);

  if (g.w_axis == 2) {
    // Vector path: kUnroll packs of VEC consecutive outputs per thread; all
    // loads are issued before any store so that several are in flight.
    const uint32_t nvec = cube_numel / VEC;
    const uint32_t first = blk * (kThreads * kUnroll) + threadIdx.x;
    in_t raw[kUnroll][VEC];
    if (!fill_only) {
      const uint32_t d2v = d2 / VEC;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const uint32_t v = first + u * kThreads;
        if (v < nvec) {
          const uint32_t row = v / d2v, col = (v - row * d2v) * VEC;
          const uint32_t i0 = row / d1, i1 = row - i0 * d1;
          const in_t* s = src + g.start + i0 * g.step[0] + i1 * g.step[1] + static_cast<int64_t>(col) * g.step[2];
#pragma unroll
          for (int e = 0; e < VEC; ++e) raw[u][e] = s[e * g.step[2]];
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const uint32_t v = first + u * kThreads;
      if (v < nvec) {
        const int64_t k = out_base + static_cast<int64_t>(v) * VEC;
        if constexpr (VEC > 1) {
          struct alignas(sizeof(out_t) * VEC) Pack { out_t v[VEC]; } pack;
#pragma unroll
          for (int e = 0; e < VEC; ++e)
            pack.v[e] = fill_only ? fill : apply_mask(p, masked, k + e, cvt(raw[u][e]), fill);
          *reinterpret_cast<Pack*>(out + k) = pack;  // one 16-byte store
        } else {
          out[k] = fill_only ? fill : apply_mask(p, masked, k, cvt(raw[u][0]), fill);
        }
      }
    }
    return;
  }

  // Tiled path: the plane (a = w_axis, output W) in kTile x kTile tiles; `o`
  // is the remaining output axis.
  const int a = g.w_axis;
  const int o = 1 - a;  // a is 0 or 1 here
  const uint32_t da = a == 0 ? d0 : d1, dout = o == 0 ? d0 : d1;
  const uint32_t ta = (da + kTile - 1) / kTile, t2 = (d2 + kTile - 1) / kTile;
  const uint32_t tiles = dout * ta * t2;
  const uint32_t tx = threadIdx.x % kTile, ty = threadIdx.x / kTile;
  for (uint32_t t = blk; t < tiles; t += static_cast<uint32_t>(blocks_per_cube)) {
    const uint32_t io = t / (ta * t2);
    const uint32_t ja = (t / t2) % ta * kTile, j2 = t % t2 * kTile;
    const int64_t base = g.start + static_cast<int64_t>(io) * g.step[o];
    in_t vals[kTileLoads];
#pragma unroll
    for (int r = 0; r < kTileLoads; ++r) {  // read: tx runs along source W
      const uint32_t ia = ja + tx, i2 = j2 + ty + r * kTileRows;
      if (ia < da && i2 < d2 && !fill_only) vals[r] = src[base + ia * g.step[a] + i2 * g.step[2]];
    }
#pragma unroll
    for (int r = 0; r < kTileLoads; ++r) tile[ty + r * kTileRows][tx] = fill_only ? fill : cvt(vals[r]);
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kTileLoads; ++r) {  // write: tx runs along output W
      const uint32_t ia = ja + ty + r * kTileRows, i2 = j2 + tx;
      if (ia < da && i2 < d2) {
        const uint32_t i0 = a == 0 ? ia : io, i1 = a == 0 ? io : ia;
        const int64_t k = out_base + (static_cast<int64_t>(i0) * d1 + i1) * d2 + i2;
        out[k] = fill_only ? fill : apply_mask(p, masked, k, tile[tx][ty + r * kTileRows], fill);
      }
    }
    __syncthreads();
  }
}

template <typename in_t, typename out_t, int kUnroll>
cudaError_t launch_typed(const ExtractCubesParams& p, cudaStream_t stream) {
  using op_t = std::conditional_t<std::is_same_v<in_t, double> || std::is_same_v<out_t, double>, double, float>;
  constexpr int kVec = 16 / sizeof(out_t) > 8 ? 8 : 16 / sizeof(out_t);  // 16-byte stores
  const int64_t cubes = p.B * p.M * p.C;
  const int64_t numel = p.cube[0] * p.cube[1] * p.cube[2];
  if (cubes == 0 || numel == 0) return cudaSuccess;
  if (numel >= (int64_t(1) << 31)) return cudaErrorInvalidValue;  // checked with a message before
  const bool aligned = reinterpret_cast<uintptr_t>(p.out) % 16 == 0 && p.cube[2] % kVec == 0;
  const int64_t per_block = int64_t(kThreads) * kUnroll * (aligned ? kVec : 1);
  const int64_t blocks_per_cube = (numel + per_block - 1) / per_block;
  if (cubes * blocks_per_cube > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(cubes * blocks_per_cube));
  if (aligned)
    extract_cubes_kernel<in_t, out_t, op_t, kVec, kUnroll><<<grid, kThreads, 0, stream>>>(p, blocks_per_cube);
  else
    extract_cubes_kernel<in_t, out_t, op_t, 1, kUnroll><<<grid, kThreads, 0, stream>>>(p, blocks_per_cube);
  return cudaGetLastError();
}

// Backward: each thread takes VEC consecutive output-gradient voxels of one
// row (one VEC-wide load of grad, one set of index divisions) and adds
// grad * scale into the source positions they were read from (atomics: boxes
// may overlap and indices repeat), zero where a voxel was masked out or
// clamped.  The buffer `acc` is contiguous in the source's shape; the clamp
// recomputes the forward value from the (possibly strided) source.
constexpr int kBackwardUnroll = 4;

template <typename src_t, typename grad_t, typename acc_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    extract_cubes_backward_kernel(ExtractCubesParams p, int64_t blocks_per_cube) {
  const src_t* __restrict__ src = static_cast<const src_t*>(p.src);
  const grad_t* __restrict__ grad = static_cast<const grad_t*>(p.grad);
  acc_t* __restrict__ acc = static_cast<acc_t*>(p.out);
  const int64_t cube = blockIdx.x / blocks_per_cube;
  const uint32_t blk = static_cast<uint32_t>(blockIdx.x - cube * blocks_per_cube);
  const int64_t b = cube / p.C / p.M;
  const uint32_t d1 = p.cube[1], d2 = p.cube[2];
  const uint32_t cube_numel = static_cast<uint32_t>(p.cube[0]) * d1 * d2;
  const bool masked = p.mask && p.mask[cube / p.C] && p.threshold < (uint64_t(1) << 24);
  if (masked && p.threshold == 0) return;  // the whole cube was filled: no gradient
  const int64_t acc_stride[5] = {p.C * p.D * p.H * p.W, p.D * p.H * p.W, p.H * p.W, p.W, 1};
  const CubeGeom ga = cube_geom(p, cube, acc_stride);
  const CubeGeom gs = p.clamp ? cube_geom(p, cube, p.src_stride) : ga;
  const acc_t scale = static_cast<acc_t>(p.scale ? p.scale[b] : p.scale_value);
  const acc_t shift = static_cast<acc_t>(p.shift ? p.shift[b] : p.shift_value);
  const acc_t lo = static_cast<acc_t>(p.clamp_lo), hi = static_cast<acc_t>(p.clamp_hi);
  const int64_t out_base = cube * static_cast<int64_t>(cube_numel);
#pragma unroll
  for (int u = 0; u < kBackwardUnroll; ++u) {
    const uint32_t r = ((blk * kBackwardUnroll + u) * kThreads + threadIdx.x) * VEC;
    if (r >= cube_numel) continue;
    const int64_t k = out_base + r;
    grad_t gv[VEC];
    if constexpr (VEC > 1) {  // d2 % VEC == 0 and grad aligned (checked at launch)
      struct alignas(sizeof(grad_t) * VEC) Pack { grad_t v[VEC]; };
      const Pack pack = *reinterpret_cast<const Pack*>(grad + k);
#pragma unroll
      for (int e = 0; e < VEC; ++e) gv[e] = pack.v[e];
    } else {
      gv[0] = grad[k];
    }
    const uint32_t row = r / d2, i2 = r - row * d2;
    const uint32_t i0 = row / d1, i1 = row - i0 * d1;
    const int64_t a0 = ga.start + i0 * ga.step[0] + i1 * ga.step[1] + i2 * ga.step[2];
    const int64_t s0 = gs.start + i0 * gs.step[0] + i1 * gs.step[1] + i2 * gs.step[2];
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      if (masked && !keep_voxel(p.seed, static_cast<uint64_t>(k + e), p.threshold)) continue;
      if (p.clamp) {
        // torch.clamp passes the gradient where lo <= v <= hi (absent bounds
        // are -inf/+inf; NaN passes none).
        const acc_t v = add_rn(mul_rn(to_op<acc_t>(src[s0 + e * gs.step[2]]), scale), shift);
        if (!(v >= lo && v <= hi)) continue;
      }
      atomicAdd(acc + a0 + e * ga.step[2], mul_rn(to_op<acc_t>(gv[e]), scale));
    }
  }
}

template <typename src_t, typename grad_t>
cudaError_t launch_backward_typed(const ExtractCubesParams& p, cudaStream_t stream) {
  using acc_t = std::conditional_t<std::is_same_v<src_t, double> || std::is_same_v<grad_t, double>, double, float>;
  constexpr int kVec = 4;
  const int64_t cubes = p.B * p.M * p.C;
  const int64_t numel = p.cube[0] * p.cube[1] * p.cube[2];
  if (cubes == 0 || numel == 0) return cudaSuccess;
  if (numel >= (int64_t(1) << 31)) return cudaErrorInvalidValue;  // checked with a message before
  const bool vec = p.cube[2] % kVec == 0 && reinterpret_cast<uintptr_t>(p.grad) % (sizeof(grad_t) * kVec) == 0;
  const int64_t per_block = int64_t(kThreads) * kBackwardUnroll * (vec ? kVec : 1);
  const int64_t blocks_per_cube = (numel + per_block - 1) / per_block;
  if (cubes * blocks_per_cube > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const unsigned grid = static_cast<unsigned>(cubes * blocks_per_cube);
  if (vec)
    extract_cubes_backward_kernel<src_t, grad_t, acc_t, kVec><<<grid, kThreads, 0, stream>>>(p, blocks_per_cube);
  else
    extract_cubes_backward_kernel<src_t, grad_t, acc_t, 1><<<grid, kThreads, 0, stream>>>(p, blocks_per_cube);
  return cudaGetLastError();
}

// The affine read (p.affine set): output voxel k interpolates eight source
// voxels at the position affine_read (csrc/extract_cubes.h) gives, then goes
// through the value stage (scale, shift, clamp, cast) and the mask, as the
// CPU kernel does (extract_cubes_affine_kernel); one thread per output voxel.
// All arithmetic is unfused and in the CPU kernel's order, so both kernels
// give the same bits: nvcc would otherwise fuse the products into FMAs.
// A launch covers at most kAffineBlocks blocks; their threads stride over
// the rest, so any output size fits one launch.
constexpr int64_t kAffineBlocks = int64_t(1) << 16;

// Output voxel k: its (sample, cube) pair bm, sample b, channel c and
// position i in its cube (output axis order).
struct AffineVoxel {
  int64_t bm, b, c;
  int64_t i[3];
};

__device__ __forceinline__ AffineVoxel affine_voxel(const ExtractCubesParams& p, int64_t k) {
  const int64_t numel = p.cube[0] * p.cube[1] * p.cube[2];
  AffineVoxel v;
  const int64_t cube = k / numel;
  const int64_t in_cube = k - cube * numel;
  const int64_t row = in_cube / p.cube[2];
  v.i[2] = in_cube - row * p.cube[2];
  v.i[0] = row / p.cube[1];
  v.i[1] = row - v.i[0] * p.cube[1];
  v.c = cube % p.C;
  v.bm = cube / p.C;
  v.b = v.bm / p.M;
  return v;
}

// Where voxel v reads in its volume: the box voxel its cube's code maps it
// to, read through its sample's affine.
__device__ __forceinline__ TrilinearRead affine_position(const ExtractCubesParams& p, const AffineVoxel& v) {
  int order, flips;
  kernel_code(p.rotations ? p.rotations[v.bm] : 0, p.cube, &order, &flips);
  // Its box voxel, or with a finite affine its row's first one (i2 = 0) and then i2 steps along the
  // row: the CPU kernel's positions, operation for operation.
  const double* A = p.affine + v.b * 12;
  const bool direct = !affine_is_finite(A);
  int64_t j[3];
#pragma unroll
  for (int a = 0; a < 3; ++a) {
    const int64_t at = a == 2 && !direct ? 0 : v.i[a];
    const int64_t along = (flips >> a) & 1 ? p.cube[a] - 1 - at : at;
    const int to = axis_order(order, a);
#pragma unroll
    for (int e = 0; e < 3; ++e)  // j[to] = along with constant indices: j stays in registers
      if (to == e) j[e] = along;
  }
  const int64_t extent[3] = {p.D, p.H, p.W};
  int64_t bottom[3], top[3];
  read_box_of(p.read_box, v.b, extent, bottom, top);
  TrilinearRead r;
  if (direct) {
    affine_read_direct(A, p.origins + v.bm * 3, j, bottom, top, &r);
  } else {
    const AffineRow row = affine_row(A, p.origins + v.bm * 3, j, axis_order(order, 2), (flips >> 2) & 1);
    affine_read(row, v.i[2], bottom, top, &r);
  }
  return r;
}

// Whether output voxel k, of (sample, cube) pair bm, is filled by the mask
// (a masked cube keeps a voxel only by the keep rule, for keep_prob > 0).
__device__ __forceinline__ bool affine_dropped(const ExtractCubesParams& p, int64_t bm, int64_t k) {
  return p.mask && p.mask[bm] && !(p.threshold > 0 && keep_voxel(p.seed, static_cast<uint64_t>(k), p.threshold));
}

// The trilinear value at r of one channel of one volume (`vol`, spatial
// strides st), in double: the CPU kernel's interpolate, term for term.
template <typename in_t>
__device__ __forceinline__ double interpolate(const in_t* __restrict__ vol, const int64_t st[3],
                                              const TrilinearRead& r) {
  double w[3][2];
  int64_t off[3][2];
  for (int a = 0; a < 3; ++a) {
    w[a][0] = __dsub_rn(1.0, r.frac[a]);
    w[a][1] = r.frac[a];
    off[a][0] = r.lo[a] * st[a];
    off[a][1] = r.hi[a] * st[a];
  }
  double sum = 0.0;
#pragma unroll
  for (int z = 0; z < 2; ++z) {
#pragma unroll
    for (int y = 0; y < 2; ++y) {
      const double wzy = __dmul_rn(w[0][z], w[1][y]);
      const in_t* row = vol + off[0][z] + off[1][y];
      sum = __dadd_rn(sum, __dmul_rn(__dmul_rn(wzy, w[2][0]), to_op<double>(row[off[2][0]])));
      sum = __dadd_rn(sum, __dmul_rn(__dmul_rn(wzy, w[2][1]), to_op<double>(row[off[2][1]])));
    }
  }
  return sum;
}

// interp * scale + shift in op_t, before the clamp.
template <typename op_t>
__device__ __forceinline__ op_t affine_value(const ExtractCubesParams& p, double interp, int64_t b) {
  return add_rn(mul_rn(static_cast<op_t>(interp), static_cast<op_t>(p.scale ? p.scale[b] : p.scale_value)),
                static_cast<op_t>(p.shift ? p.shift[b] : p.shift_value));
}

// Voxel v's value x (after scale and shift) through its cube's intensity stage, where there is one.
template <typename op_t>
__device__ __forceinline__ op_t cube_stage(const ExtractCubesParams& p, const AffineVoxel& v, op_t x) {
  if (!p.cube_intensity) return x;
  const CubeIntensity<op_t> q = cube_intensity_of<op_t>(p.cube_intensity + v.bm * kCubeIntensityWidth);
  const op_t field = q.bias_on ? bias_factor(q.bias[0], v.i[0], p.cube[0]) * bias_factor(q.bias[1], v.i[1], p.cube[1]) *
                                     bias_factor(q.bias[2], v.i[2], p.cube[2])
                               : op_t(1);
  const int64_t j = (v.c * p.cube[0] + v.i[0]) * p.cube[1] * p.cube[2] + v.i[1] * p.cube[2] + v.i[2];
  return intensity_value(x, q, field, static_cast<uint64_t>(j));
}

// A plain copy with cube_intensity (no affine): one thread per output voxel, as the affine read, since
// the stage needs each voxel's position in its cube (the copy kernel's vector and tiled paths do not
// track it).
template <typename in_t, typename out_t, typename op_t>
__global__ void __launch_bounds__(kThreads) extract_cubes_intensity_kernel(ExtractCubesParams p, int64_t total) {
  const in_t* __restrict__ src = static_cast<const in_t*>(p.src);
  out_t* __restrict__ out = static_cast<out_t*>(p.out);
  const out_t fill = from_op<out_t>(static_cast<op_t>(p.fill));
  const op_t lo = static_cast<op_t>(p.clamp_lo), hi = static_cast<op_t>(p.clamp_hi);
  const int64_t numel = p.cube[0] * p.cube[1] * p.cube[2];
  for (int64_t k = blockIdx.x * int64_t(kThreads) + threadIdx.x; k < total; k += gridDim.x * int64_t(kThreads)) {
    const AffineVoxel v = affine_voxel(p, k);
    if (affine_dropped(p, v.bm, k)) {
      out[k] = fill;
      continue;
    }
    const CubeGeom g = cube_geom(p, k / numel, p.src_stride);
    const in_t raw = src[g.start + v.i[0] * g.step[0] + v.i[1] * g.step[1] + v.i[2] * g.step[2]];
    op_t x = add_rn(mul_rn(to_op<op_t>(raw), static_cast<op_t>(p.scale ? p.scale[v.b] : p.scale_value)),
                    static_cast<op_t>(p.shift ? p.shift[v.b] : p.shift_value));
    x = cube_stage<op_t>(p, v, x);
    x = lo > x ? lo : x;
    x = hi < x ? hi : x;
    out[k] = from_op<out_t>(x);
  }
}

template <typename in_t, typename out_t, typename op_t>
__global__ void __launch_bounds__(kThreads) extract_cubes_affine_kernel(ExtractCubesParams p, int64_t total) {
  const in_t* __restrict__ src = static_cast<const in_t*>(p.src);
  out_t* __restrict__ out = static_cast<out_t*>(p.out);
  const int64_t st[3] = {p.src_stride[2], p.src_stride[3], p.src_stride[4]};
  const out_t fill = from_op<out_t>(static_cast<op_t>(p.fill));
  const op_t lo = static_cast<op_t>(p.clamp_lo), hi = static_cast<op_t>(p.clamp_hi);
  for (int64_t k = blockIdx.x * int64_t(kThreads) + threadIdx.x; k < total; k += gridDim.x * int64_t(kThreads)) {
    const AffineVoxel v = affine_voxel(p, k);
    if (affine_dropped(p, v.bm, k)) {
      out[k] = fill;
      continue;
    }
    const int64_t n = clamp_index(p.index ? p.index[v.b] : v.b, 0, p.N - 1);
    const double interp = interpolate(src + n * p.src_stride[0] + v.c * p.src_stride[1], st, affine_position(p, v));
    op_t x = cube_stage<op_t>(p, v, affine_value<op_t>(p, interp, v.b));
    x = lo > x ? lo : x;  // the CPU kernel's clamp: NaN passes through, as in torch.clamp
    x = hi < x ? hi : x;
    out[k] = from_op<out_t>(x);
  }
}

// Its gradient: grad * scale (zero where masked out or clamped) added into
// the eight corners with their weights (atomics: corners of neighbouring
// voxels, boxes and samples coincide).  A zero contribution is skipped: the
// buffer starts at +0 and never holds -0, so adding +-0 changes no bit, and an
// identity-like affine has weight 0 at 7 of the 8 corners.
template <typename src_t, typename grad_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    extract_cubes_affine_backward_kernel(ExtractCubesParams p, int64_t total) {
  const src_t* __restrict__ src = static_cast<const src_t*>(p.src);
  const grad_t* __restrict__ grad = static_cast<const grad_t*>(p.grad);
  acc_t* __restrict__ acc = static_cast<acc_t*>(p.out);
  const int64_t st[3] = {p.src_stride[2], p.src_stride[3], p.src_stride[4]};
  const acc_t lo = static_cast<acc_t>(p.clamp_lo), hi = static_cast<acc_t>(p.clamp_hi);
  for (int64_t k = blockIdx.x * int64_t(kThreads) + threadIdx.x; k < total; k += gridDim.x * int64_t(kThreads)) {
    const AffineVoxel v = affine_voxel(p, k);
    if (affine_dropped(p, v.bm, k)) continue;
    const int64_t n = clamp_index(p.index ? p.index[v.b] : v.b, 0, p.N - 1);
    const TrilinearRead r = affine_position(p, v);
    const acc_t g = mul_rn(to_op<acc_t>(grad[k]), static_cast<acc_t>(p.scale ? p.scale[v.b] : p.scale_value));
    if (p.clamp) {  // torch.clamp passes the gradient where lo <= v <= hi (NaN passes none)
      const acc_t x = affine_value<acc_t>(
          p, interpolate(src + n * p.src_stride[0] + v.c * p.src_stride[1], st, r), v.b);
      if (!(x >= lo && x <= hi)) continue;
    }
    acc_t* channel = acc + (n * p.C + v.c) * p.D * p.H * p.W;  // acc is contiguous
#pragma unroll
    for (int corner = 0; corner < 8; ++corner) {
      int64_t at[3];
      const acc_t add = mul_rn(static_cast<acc_t>(corner_of(r, corner, at)), g);
      if (add != acc_t(0)) atomicAdd(channel + (at[0] * p.H + at[1]) * p.W + at[2], add);
    }
  }
}

// The affine read's forward (or a copy with an intensity stage; other_t: the output's type) or backward
// (other_t: the gradient's type) kernel over every output voxel; the
// arithmetic is in double when either type is double, else float.
template <typename src_t, typename other_t, bool kBackward>
cudaError_t launch_affine_typed(const ExtractCubesParams& p, cudaStream_t stream) {
  using math_t = std::conditional_t<std::is_same_v<src_t, double> || std::is_same_v<other_t, double>, double, float>;
  const int64_t total = p.B * p.M * p.C * p.cube[0] * p.cube[1] * p.cube[2];
  if (total == 0) return cudaSuccess;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  const dim3 grid(static_cast<unsigned>(blocks < kAffineBlocks ? blocks : kAffineBlocks));
  if constexpr (kBackward)
    extract_cubes_affine_backward_kernel<src_t, other_t, math_t><<<grid, kThreads, 0, stream>>>(p, total);
  else if (p.affine)
    extract_cubes_affine_kernel<src_t, other_t, math_t><<<grid, kThreads, 0, stream>>>(p, total);
  else
    extract_cubes_intensity_kernel<src_t, other_t, math_t><<<grid, kThreads, 0, stream>>>(p, total);
  return cudaGetLastError();
}

template <typename F>
cudaError_t dispatch(DType t, F&& f) {
  switch (t) {
    case DType::kFloat32: return f(float{});
    case DType::kFloat64: return f(double{});
    case DType::kFloat16: return f(__half{});
    case DType::kBFloat16: return f(__nv_bfloat16{});
    case DType::kInt16: return f(int16_t{});
    case DType::kUInt8: return f(uint8_t{});
  }
  return cudaErrorInvalidValue;
}

template <typename T> constexpr bool is_float_v = std::is_floating_point_v<T> || std::is_same_v<T, __half> ||
                                                std::is_same_v<T, __nv_bfloat16>;

}  // namespace

cudaError_t launch_extract_cubes_backward(const ExtractCubesParams& p, cudaStream_t stream) {
  return dispatch(p.in_dtype, [&](auto src_tag) {
    using src_t = decltype(src_tag);
    return dispatch(p.out_dtype, [&](auto grad_tag) {
      using grad_t = decltype(grad_tag);
      if constexpr (is_float_v<src_t> && is_float_v<grad_t>) {
        if (p.affine) return launch_affine_typed<src_t, grad_t, true>(p, stream);
        return launch_backward_typed<src_t, grad_t>(p, stream);
      } else {
        return cudaErrorInvalidValue;  // integer sources have no gradient (checked before)
      }
    });
  });
}

cudaError_t launch_extract_cubes(const ExtractCubesParams& p, cudaStream_t stream) {
  return dispatch(p.in_dtype, [&](auto in_tag) {
    using in_t = decltype(in_tag);
    return dispatch(p.out_dtype, [&](auto out_tag) {
      using out_t = decltype(out_tag);
      constexpr bool out_float = !std::is_integral_v<out_t>;
      if constexpr (out_float) {
        // one thread a voxel: the affine read, and a copy with an intensity stage
        if (p.affine || p.cube_intensity) return launch_affine_typed<in_t, out_t, false>(p, stream);
      }
      // an affine read or an intensity stage has a floating output (checked before)
      if (p.affine || p.cube_intensity) return cudaErrorInvalidValue;
      if constexpr (out_float || std::is_same_v<in_t, out_t>) {
        // 16-byte packs in flight per thread in the vector path.  H100, B=32 x 8
        // cubes of 64^3, paper codes, out=, one run: float32 4 -> 8 packs went
        // 70.6% -> 78.4% of the clone ceiling; bfloat16 8 -> 4 packs 54.9% -> 64.2%.
        if constexpr (sizeof(out_t) >= 4) return launch_typed<in_t, out_t, 8>(p, stream);
        else return launch_typed<in_t, out_t, 4>(p, stream);
      } else {
        return cudaErrorInvalidValue;  // integer outputs are plain copies of the same dtype (checked before)
      }
    });
  });
}

}  // namespace cuda
}  // namespace rubikops
