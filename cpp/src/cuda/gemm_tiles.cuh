// The tiled GEMM engine behind convolution (implicit GEMM) and linear layers:
//   C[batch][m, j] = sum over k in the batch's split of A[batch][m, k] * B[batch][k, j]
// Each block owns a BM x BN tile of C in registers (TM x TN per thread) and walks k in steps of
// BK: operand loaders fetch the next BK-slice into registers (global loads in flight while the
// current slice is multiplied out of shared memory), then store it transposed as [BK][BM] and
// [BK][BN] tiles. Loaders, not the engine, know where an element lives (a weight matrix, an
// implicit im2col column of the input, ...), and return 0 outside the problem, so every shared
// element is written before it is read. An epilogue functor writes each finished element.
//
// Split-K: with splits > 1 the k range is cut into `splits` fixed chunks and the epilogue gets
// the split index; callers write per-split partials and add them in split order afterwards, so
// reductions never use atomics and results are identical run to run.
#pragma once

#include "cuda/common.cuh"

namespace juanji::cuda {

template <int BM_, int BN_, int BK_, int TM_, int TN_>
struct TileConfig {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, TM = TM_, TN = TN_;
  static constexpr int kRowThreads = BM / TM;
  static constexpr int kColThreads = BN / TN;
  static constexpr int kThreads = kRowThreads * kColThreads;
  static_assert(BM % TM == 0 && BN % TN == 0, "micro-tiles must divide the block tile");
  static_assert(kThreads == 256, "the engine runs 256-thread blocks");
  static_assert(kThreads % BK == 0 && kThreads % BM == 0 && kThreads % BN == 0,
                "every thread loads whole columns or rows of a slice");
  static_assert(BM * BK % kThreads == 0 && BN * BK % kThreads == 0, "slices split evenly");
};

// Square problems with a large M: 8x8 outputs per thread (float32 only; double would spill).
using LargeTiles = TileConfig<128, 128, 8, 8, 8>;
// The general case.
using SmallTiles = TileConfig<64, 64, 16, 4, 4>;
// Few rows (filters per group, output features): a wide tile keeps the threads busy.
using NarrowTiles = TileConfig<16, 128, 16, 1, 8>;

// Where thread `tid` puts its `kCount` elements of a BK x W slice: k_of is the k offset and
// line_of the row (operand A) or column (operand B) within the tile. K-fastest: consecutive
// threads take consecutive k (for operands contiguous along k); otherwise consecutive threads
// take consecutive lines. Either way one of the two coordinates is fixed per thread.
template <class Cfg, int W, bool KFastest>
struct SliceMap {
  static constexpr int kCount = Cfg::BK * W / Cfg::kThreads;
  static constexpr int kThreads = Cfg::kThreads;
  __device__ static int k_of(int tid, int i) {
    return KFastest ? tid % Cfg::BK : tid / W + (kThreads / W) * i;
  }
  __device__ static int line_of(int tid, int i) {
    return KFastest ? tid / Cfg::BK + (kThreads / Cfg::BK) * i : tid % W;
  }
};

template <class T, class Cfg>
struct __align__(16) SharedTiles {
  // +4 columns: the k-fastest stores of consecutive threads land in different banks, and every
  // row still starts on a 16-byte boundary for the vector reads below.
  T a[Cfg::BK][Cfg::BM + 4];
  T b[Cfg::BK][Cfg::BN + 4];
};

// Which of a tile's lines (rows of A, columns of B) a thread's i-th accumulator line is, for
// `Threads` threads along that side holding `Count` lines each. With Count a multiple of 4 a
// thread holds runs of 4 adjacent lines, so it reads them from shared memory as one 16-byte
// vector (float32): 4 reads per 64 multiply-adds of an 8x8 thread tile instead of 16, which
// would otherwise bound the loop. Otherwise lines are dealt out one per thread in turn.
template <int Count, int Threads>
__device__ inline int thread_line(int thread, int i) {
  if constexpr (Count % 4 == 0) return (i / 4) * (Threads * 4) + thread * 4 + i % 4;
  return thread + i * Threads;
}

// A thread's Count values of one k row of a shared tile, at the lines thread_line gives.
template <int Count, int Threads, class T>
__device__ inline void read_lines(const T* row, int thread, T (&out)[Count]) {
  if constexpr (Count % 4 == 0 && sizeof(T) == 4) {
#pragma unroll
    for (int g = 0; g < Count / 4; ++g) {
      const float4 v = *reinterpret_cast<const float4*>(row + thread_line<Count, Threads>(thread, 4 * g));
      out[4 * g] = v.x;
      out[4 * g + 1] = v.y;
      out[4 * g + 2] = v.z;
      out[4 * g + 3] = v.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < Count; ++i) out[i] = row[thread_line<Count, Threads>(thread, i)];
  }
}

struct GemmShape {
  index_t M, N, K;   // C is M x N, summed over K
  index_t batches;   // independent problems (groups of a convolution)
  index_t splits;    // fixed chunks of K per problem (split-K), >= 1
};

// Loader interface (both operands): `Map` (a SliceMap), `State` (what a thread keeps per tile),
//   State begin(index_t batch, index_t origin, int tid) const  -- origin: first row (A) or
//                                                                column (B) of the tile
//   void load(const State&, index_t k0, index_t k_end, T (&regs)[Map::kCount]) const
// load fetches the thread's elements of slice [k0, k0 + BK), zero where k >= k_end or the
// row/column lies outside the problem. Loaders stay in the kernel's parameter space (constant
// memory); only the small State lives in registers. Epilogue: void operator()(index_t batch,
// index_t split, index_t m, index_t j, T value) const, called for m < M, j < N only.
template <class T, class Cfg, class LoadA, class LoadB, class Epilogue>
__global__ void __launch_bounds__(256)
    tiled_gemm(GemmShape shape, LoadA load_a, LoadB load_b, Epilogue epilogue) {
  using MapA = typename LoadA::Map;
  using MapB = typename LoadB::Map;
  __shared__ SharedTiles<T, Cfg> tiles;
  const int tid = threadIdx.x;
  const int ty = tid / Cfg::kColThreads, tx = tid % Cfg::kColThreads;
  const index_t row_tiles = ceil_div(shape.M, Cfg::BM);
  const index_t col_tiles = ceil_div(shape.N, Cfg::BN);
  const index_t k_chunk = ceil_div(ceil_div(shape.K, Cfg::BK), shape.splits) * Cfg::BK;
  T ra[MapA::kCount], rb[MapB::kCount];

  // Block-uniform loops (grids may be smaller than the tile counts): every thread of a block
  // takes the same trips, so the barriers inside are reached by all.
  for (index_t z = blockIdx.z; z < shape.batches * shape.splits; z += gridDim.z) {
    const index_t batch = z / shape.splits, split = z % shape.splits;
    const index_t k_begin = split * k_chunk;
    const index_t k_end = k_begin + k_chunk < shape.K ? k_begin + k_chunk : shape.K;
    for (index_t rt = blockIdx.y; rt < row_tiles; rt += gridDim.y) {
      for (index_t ct = blockIdx.x; ct < col_tiles; ct += gridDim.x) {
        const typename LoadA::State sa = load_a.begin(batch, rt * Cfg::BM, tid);
        const typename LoadB::State sb = load_b.begin(batch, ct * Cfg::BN, tid);
        T acc[Cfg::TM][Cfg::TN];
#pragma unroll
        for (int i = 0; i < Cfg::TM; ++i)
#pragma unroll
          for (int j = 0; j < Cfg::TN; ++j) acc[i][j] = T(0);
        if (k_begin < k_end) {
          load_a.load(sa, k_begin, k_end, ra);
          load_b.load(sb, k_begin, k_end, rb);
        }
        for (index_t k0 = k_begin; k0 < k_end; k0 += Cfg::BK) {
#pragma unroll
          for (int i = 0; i < MapA::kCount; ++i)
            tiles.a[MapA::k_of(tid, i)][MapA::line_of(tid, i)] = ra[i];
#pragma unroll
          for (int i = 0; i < MapB::kCount; ++i)
            tiles.b[MapB::k_of(tid, i)][MapB::line_of(tid, i)] = rb[i];
          __syncthreads();
          if (k0 + Cfg::BK < k_end) {
            load_a.load(sa, k0 + Cfg::BK, k_end, ra);
            load_b.load(sb, k0 + Cfg::BK, k_end, rb);
          }
#pragma unroll
          for (int kk = 0; kk < Cfg::BK; ++kk) {
            T av[Cfg::TM], bv[Cfg::TN];
            read_lines<Cfg::TM, Cfg::kRowThreads>(tiles.a[kk], ty, av);
            read_lines<Cfg::TN, Cfg::kColThreads>(tiles.b[kk], tx, bv);
#pragma unroll
            for (int i = 0; i < Cfg::TM; ++i)
#pragma unroll
              for (int j = 0; j < Cfg::TN; ++j) acc[i][j] += av[i] * bv[j];
          }
          __syncthreads();
        }
#pragma unroll
        for (int i = 0; i < Cfg::TM; ++i) {
          const index_t m = rt * Cfg::BM + thread_line<Cfg::TM, Cfg::kRowThreads>(ty, i);
          if (m >= shape.M) continue;
#pragma unroll
          for (int j = 0; j < Cfg::TN; ++j) {
            const index_t col = ct * Cfg::BN + thread_line<Cfg::TN, Cfg::kColThreads>(tx, j);
            if (col < shape.N) epilogue(batch, split, m, col, acc[i][j]);
          }
        }
      }
    }
  }
}

// Launches tiled_gemm<Cfg> over the whole problem.
template <class T, class Cfg, class LoadA, class LoadB, class Epilogue>
void launch_gemm(const GemmShape& shape, const LoadA& a, const LoadB& b, const Epilogue& epilogue) {
  if (shape.M == 0 || shape.N == 0 || shape.batches == 0) return;  // no output (a grid of 0 is an error)
  constexpr index_t kMaxGridYZ = 65535;
  const index_t row_tiles = ceil_div(shape.M, Cfg::BM), col_tiles = ceil_div(shape.N, Cfg::BN);
  const index_t z = shape.batches * shape.splits;
  const dim3 grid(static_cast<unsigned>(col_tiles < 0x7fffffff ? col_tiles : 0x7fffffff),
                  static_cast<unsigned>(row_tiles < kMaxGridYZ ? row_tiles : kMaxGridYZ),
                  static_cast<unsigned>(z < kMaxGridYZ ? z : kMaxGridYZ));
  tiled_gemm<T, Cfg><<<grid, Cfg::kThreads>>>(shape, a, b, epilogue);
  JUANJI_CUDA_CHECK_LAUNCH();
}

// The tile shape for a problem of M rows and N columns: a function of the shape only.
enum class TileKind { large, small, narrow };
template <class T>
TileKind pick_tiles(index_t M, index_t N) {
  if (M <= 16) return TileKind::narrow;
  if (sizeof(T) == 4 && M >= 128 && N >= 128) return TileKind::large;
  return TileKind::small;
}

// Calls f(Cfg{}) with the configuration pick_tiles chose.
template <class T, class F>
void with_tiles(index_t M, index_t N, F&& f) {
  switch (pick_tiles<T>(M, N)) {
    case TileKind::large:
      if constexpr (sizeof(T) == 4) return f(LargeTiles{});
      break;
    case TileKind::narrow: return f(NarrowTiles{});
    case TileKind::small: break;
  }
  f(SmallTiles{});
}

// How many K-splits a problem gets: enough blocks to fill a large GPU, each split at least
// kMinSlices slices long. A function of the shape only, so results never depend on the device.
template <class Cfg>
index_t pick_splits(const GemmShape& shape) {
  constexpr index_t kTargetBlocks = 264, kMinSlices = 8;
  const index_t tiles = ceil_div(shape.M, Cfg::BM) * ceil_div(shape.N, Cfg::BN) * shape.batches;
  const index_t slices = ceil_div(shape.K, Cfg::BK);
  const index_t wanted = ceil_div(kTargetBlocks, tiles);
  const index_t most = slices / kMinSlices > 1 ? slices / kMinSlices : 1;
  return wanted < most ? wanted : most;
}

// dst[i] = sum over s of partials[s * count + i], added in split order.
template <class T>
__global__ void sum_splits(const T* partials, index_t splits, index_t count, T* dst) {
  for (index_t i = global_thread(); i < count; i += global_stride()) {
    T sum = partials[i];
    for (index_t s = 1; s < splits; ++s) sum += partials[s * count + i];
    dst[i] = sum;
  }
}

// Adds the partials [split][batch][m][j] of a split-K GEMM in split order and hands each whole
// sum to the epilogue (which may add a bias, activate, and scatter into any layout).
template <class T, class Epilogue>
__global__ void finish_splits(const T* partials, GemmShape shape, Epilogue epilogue) {
  const index_t per_batch = shape.M * shape.N, count = shape.batches * per_batch;
  for (index_t i = global_thread(); i < count; i += global_stride()) {
    T sum = partials[i];
    for (index_t s = 1; s < shape.splits; ++s) sum += partials[s * count + i];
    const index_t batch = div_nonneg(i, per_batch), within = i - batch * per_batch;
    const index_t m = div_nonneg(within, shape.N);
    epilogue(batch, 0, m, within - m * shape.N, sum);
  }
}

// ---- plain matrix operands --------------------------------------------------------------

// E[r, k] = base[batch * batch_stride + r * ld + k]: rows contiguous along k.
template <class T, class Cfg, int W>
struct RowsAlongK {
  using Map = SliceMap<Cfg, W, true>;
  struct State {
    const T* rows;  // the batch's first row
    index_t first;
    int tid;
  };
  const T* base;
  index_t rows, ld, batch_stride;
  __device__ State begin(index_t batch, index_t first, int tid) const {
    return {base + batch * batch_stride, first, tid};
  }
  __device__ void load(const State& st, index_t k0, index_t k_end, T (&regs)[Map::kCount]) const {
    const index_t k = k0 + Map::k_of(st.tid, 0);
#pragma unroll
    for (int i = 0; i < Map::kCount; ++i) {
      const index_t r = st.first + Map::line_of(st.tid, i);
      regs[i] = r < rows && k < k_end ? st.rows[r * ld + k] : T(0);
    }
  }
};

// E[r, k] = base[batch * batch_stride + k * ld + r]: contiguous along r.
template <class T, class Cfg, int W>
struct RowsAcrossK {
  using Map = SliceMap<Cfg, W, false>;
  struct State {
    const T* column;  // the batch's element r of row k = 0
    bool valid;
    int tid;
  };
  const T* base;
  index_t rows, ld, batch_stride;
  __device__ State begin(index_t batch, index_t first, int tid) const {
    const index_t r = first + Map::line_of(tid, 0);
    return {base + batch * batch_stride + (r < rows ? r : 0), r < rows, tid};
  }
  __device__ void load(const State& st, index_t k0, index_t k_end, T (&regs)[Map::kCount]) const {
#pragma unroll
    for (int i = 0; i < Map::kCount; ++i) {
      const index_t k = k0 + Map::k_of(st.tid, i);
      regs[i] = st.valid && k < k_end ? st.column[k * ld] : T(0);
    }
  }
};

// A row-major result: out[split * split_stride + batch * batch_stride + m * ld + j]
// (split_stride 0 when there is one split).
template <class T>
struct StoreMatrix {
  T* out;
  index_t ld, batch_stride, split_stride;
  __device__ void operator()(index_t batch, index_t split, index_t m, index_t j, T value) const {
    out[split * split_stride + batch * batch_stride + m * ld + j] = value;
  }
};

// ---- split-K for whole-sum epilogues ---------------------------------------------------

// Runs a GEMM whose epilogue needs whole sums. With fewer tiles than a large GPU has
// multiprocessors (a deep K over a small output: the 3x3 layers late in a network) K is split as
// pick_splits says, the partials go to scratch `slot`, and finish_splits feeds the epilogue.
// kOneWave is an H100's count, a constant so that results never depend on the device.
template <class T, class Cfg, class LoadA, class LoadB, class Epilogue>
void launch_gemm_filling(GemmShape shape, const LoadA& a, const LoadB& b, const Epilogue& epilogue,
                         const Tensor& like, Scratch slot) {
  constexpr index_t kOneWave = 132;
  const index_t tiles = ceil_div(shape.M, Cfg::BM) * ceil_div(shape.N, Cfg::BN) * shape.batches;
  shape.splits = tiles < kOneWave ? pick_splits<Cfg>(shape) : 1;
  if (shape.splits == 1) return launch_gemm<T, Cfg>(shape, a, b, epilogue);
  const index_t count = shape.batches * shape.M * shape.N;
  T* partials = static_cast<T*>(scratch(like, slot, sizeof(T) * static_cast<std::size_t>(shape.splits * count)));
  launch_gemm<T, Cfg>(shape, a, b, StoreMatrix<T>{partials, shape.N, shape.M * shape.N, count});
  finish_splits<T><<<grid_for(count), kBlockThreads>>>(partials, shape, epilogue);
  JUANJI_CUDA_CHECK_LAUNCH();
}

}  // namespace juanji::cuda
