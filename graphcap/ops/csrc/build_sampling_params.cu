// CUDA kernels of build_sampling_params and seeded_uniform. Compiled only when
// Paddle is a CUDA build (graphcap/ops/_loader.py adds this file then); the
// registration, shape checks and CPU kernel live in build_sampling_params.cc.
//
// Graph safety: every launch goes on the inputs' stream, reads the real row
// count from device memory (cu[B] or the scanned row counts) and never copies
// to the host, so the launches can be captured and replayed for any batch of
// the bucket. Value errors that the CPU kernel rejects (decreasing cu, rows
// past the capacity, negative lengths) cannot raise here without a sync; the
// kernels clamp instead: writes stay inside [0, capacity) and negative
// lengths count as 0.
//
// Batch: B = len(seq_lens_this_time). top_p / top_k / infer_seed (and
// seq_lens_encoder, cu_seqlens_q_output) may have more rows (FastDeploy sizes
// them to the maximum batch); the kernels touch only the first B (B + 1).
//
// Ordering: the rows read infer_seed before it is advanced. The GPU-layout
// path uses two launches on one stream (rows, then advance); the encoder path
// is a single block in which each thread advances only the requests whose
// rows it wrote itself, after writing them.

#include <cub/block/block_scan.cuh>

#include <cstdint>

#include "paddle/extension.h"

#include "build_sampling_params.h"

namespace graphcap {
namespace {

constexpr int kRowThreads = 256;
constexpr int kMaxRowBlocks = 4096;  // grid-stride beyond this
constexpr int kScanThreads = 1024;   // encoder layout: one block scans all B

// GPU layout: one thread per output row (grid-stride), no scan needed: the
// request of row r is the last b with cu[b] <= r, found by binary search, so
// the work is O(rows * log B) with no O(B^2) prefix.
__global__ void RowsFromCuKernel(const float* __restrict__ top_p,
                                 const int64_t* __restrict__ top_k,
                                 const int64_t* __restrict__ seed,
                                 const int32_t* __restrict__ cu, int64_t batch,
                                 float* __restrict__ out_p,
                                 int64_t* __restrict__ out_k,
                                 int64_t* __restrict__ out_s, int64_t capacity,
                                 int64_t max_seed) {
  // Real row count, read on the device and clamped to the capacity.
  int64_t total = batch > 0 ? static_cast<int64_t>(cu[batch]) : 0;
  total = total < 0 ? 0 : (total > capacity ? capacity : total);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       r < capacity; r += stride) {
    if (r >= total || r < cu[0]) {
      out_p[r] = kPadTopP;
      out_k[r] = kPadTopK;
      out_s[r] = kPadSeed;
      continue;
    }
    // Invariant: cu[lo] <= r < cu[hi]; ends with hi == lo + 1, so lo is the
    // request owning row r (empty requests, cu[b] == cu[b+1], are skipped).
    int64_t lo = 0;
    int64_t hi = batch;
    while (hi - lo > 1) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (cu[mid] <= r) {
        lo = mid;
      } else {
        hi = mid;
      }
    }
    out_p[r] = top_p[lo];
    out_k[r] = top_k[lo];
    out_s[r] = RowSeed(ReduceMod(seed[lo], max_seed), r - cu[lo], max_seed);
  }
}

// Runs after RowsFromCuKernel on the same stream, so every row has read its
// request's seed before this overwrites it.
__global__ void AdvanceSeedKernel(int64_t* __restrict__ seed, int64_t batch,
                                  int64_t increment, int64_t max_seed) {
  const int64_t b =
      static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b < batch) {
    seed[b] = AddMod(ReduceMod(seed[b], max_seed), increment, max_seed);
  }
}

// Encoder layout: one block. Thread t owns requests [t*chunk, (t+1)*chunk):
// it sums their row counts, a block-wide exclusive scan (cub::BlockScan)
// gives the first row of its chunk, then it writes its rows (bounds-checked
// against the capacity) and advances its own requests' seeds.
__global__ void __launch_bounds__(kScanThreads)
    RowsFromEncoderKernel(const float* __restrict__ top_p,
                          const int64_t* __restrict__ top_k,
                          int64_t* __restrict__ seed,
                          const int32_t* __restrict__ seq_lens_this_time,
                          const int32_t* __restrict__ seq_lens_encoder,
                          int64_t batch, float* __restrict__ out_p,
                          int64_t* __restrict__ out_k,
                          int64_t* __restrict__ out_s, int64_t capacity,
                          int64_t increment, int64_t max_seed) {
  using BlockScan = cub::BlockScan<int64_t, kScanThreads>;
  __shared__ typename BlockScan::TempStorage scan_storage;

  const int64_t chunk = (batch + kScanThreads - 1) / kScanThreads;
  const int64_t first = static_cast<int64_t>(threadIdx.x) * chunk;
  const int64_t last = first + chunk < batch ? first + chunk : batch;

  int64_t my_rows = 0;
  for (int64_t b = first; b < last; ++b) {
    my_rows += RowsOfRequest(seq_lens_this_time[b], seq_lens_encoder[b]);
  }
  int64_t row = 0;
  int64_t total = 0;
  BlockScan(scan_storage).ExclusiveSum(my_rows, row, total);

  for (int64_t b = first; b < last; ++b) {
    const int64_t rows =
        RowsOfRequest(seq_lens_this_time[b], seq_lens_encoder[b]);
    const int64_t base = ReduceMod(seed[b], max_seed);
    // Rows past the capacity are dropped (the CPU kernel raises instead).
    for (int64_t j = 0; j < rows && row < capacity; ++j, ++row) {
      out_p[row] = top_p[b];
      out_k[row] = top_k[b];
      out_s[row] = RowSeed(base, j, max_seed);
    }
    // This thread is the only reader of seed[b]; it has read it above.
    seed[b] = AddMod(base, increment, max_seed);
  }

  for (int64_t r = (total < capacity ? total : capacity) + threadIdx.x;
       r < capacity; r += blockDim.x) {
    out_p[r] = kPadTopP;
    out_k[r] = kPadTopK;
    out_s[r] = kPadSeed;
  }
}

__global__ void SeededUniformKernel(const int64_t* __restrict__ seed,
                                    int64_t rows, float* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       r < rows; r += stride) {
    out[r] = UniformFromSeed(seed[r]);
  }
}

int RowBlocks(int64_t rows) {
  const int64_t blocks = (rows + kRowThreads - 1) / kRowThreads;
  return static_cast<int>(blocks < kMaxRowBlocks ? blocks : kMaxRowBlocks);
}

}  // namespace

void SamplingParamsCuda(const paddle::Tensor& top_p,
                        const paddle::Tensor& top_k,
                        paddle::Tensor& infer_seed,
                        const paddle::Tensor& lens, bool cu_layout,
                        const paddle::Tensor& seq_lens_this_time,
                        paddle::Tensor& out_top_p, paddle::Tensor& out_top_k,
                        paddle::Tensor& out_seed, int64_t capacity,
                        int64_t increment_value, int64_t max_seed) {
  // B is the real batch (rows of seq_lens_this_time); the per-request inputs
  // may be sized to the maximum batch, and only their first B rows are read
  // and (infer_seed) advanced.
  const int64_t batch = seq_lens_this_time.shape()[0];
  const int64_t increment = ReduceMod(increment_value, max_seed);
  auto stream = top_p.stream();
  if (cu_layout) {
    if (capacity > 0) {
      RowsFromCuKernel<<<RowBlocks(capacity), kRowThreads, 0, stream>>>(
          top_p.data<float>(), top_k.data<int64_t>(),
          infer_seed.data<int64_t>(), lens.data<int32_t>(), batch,
          out_top_p.data<float>(), out_top_k.data<int64_t>(),
          out_seed.data<int64_t>(), capacity, max_seed);
    }
    if (batch > 0) {
      const int blocks =
          static_cast<int>((batch + kRowThreads - 1) / kRowThreads);
      AdvanceSeedKernel<<<blocks, kRowThreads, 0, stream>>>(
          infer_seed.data<int64_t>(), batch, increment, max_seed);
    }
  } else if (batch > 0 || capacity > 0) {
    RowsFromEncoderKernel<<<1, kScanThreads, 0, stream>>>(
        top_p.data<float>(), top_k.data<int64_t>(), infer_seed.data<int64_t>(),
        seq_lens_this_time.data<int32_t>(), lens.data<int32_t>(), batch,
        out_top_p.data<float>(), out_top_k.data<int64_t>(),
        out_seed.data<int64_t>(), capacity, increment, max_seed);
  }
  const cudaError_t status = cudaGetLastError();
  PD_CHECK(status == cudaSuccess, "build_sampling_params CUDA launch failed: ",
           cudaGetErrorString(status));
}

void SeededUniformCuda(const paddle::Tensor& seed, paddle::Tensor& out) {
  const int64_t rows = seed.shape()[0];
  if (rows == 0) return;
  SeededUniformKernel<<<RowBlocks(rows), kRowThreads, 0, seed.stream()>>>(
      seed.data<int64_t>(), rows, out.data<float>());
  const cudaError_t status = cudaGetLastError();
  PD_CHECK(status == cudaSuccess, "seeded_uniform CUDA launch failed: ",
           cudaGetErrorString(status));
}

}  // namespace graphcap
