// Arithmetic shared by the CPU kernel (build_sampling_params.cc) and the CUDA
// kernel (build_sampling_params.cu), so both compute bit-identical seeds.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define GRAPHCAP_HD __host__ __device__ __forceinline__
#else
#define GRAPHCAP_HD inline
#endif

namespace graphcap {

// Padding written to rows past the real row count of the capture form.
constexpr float kPadTopP = 1.0f;
constexpr int64_t kPadTopK = 0;
constexpr int64_t kPadSeed = 0;

// x mod m in [0, m) for any int64 x and m > 0 (C++ % truncates toward zero).
GRAPHCAP_HD int64_t ReduceMod(int64_t x, int64_t m) {
  const int64_t r = x % m;
  return r < 0 ? r + m : r;  // r > -m, so r + m cannot overflow
}

// (a + b) mod m for a, b in [0, m) without forming a + b, which overflows
// int64 when both are near 2^63 (MAX_INFER_SEED = 2^63 - 2).
GRAPHCAP_HD int64_t AddMod(int64_t a, int64_t b, int64_t m) {
  return a >= m - b ? a - (m - b) : a + b;
}

// Seed of row j of a request whose reduced seed is base: (base + 4*j) mod m,
// exact for every j >= 0 (4*j is built by two doublings mod m).
GRAPHCAP_HD int64_t RowSeed(int64_t base, int64_t j, int64_t m) {
  int64_t step = ReduceMod(j, m);
  step = AddMod(step, step, m);
  step = AddMod(step, step, m);
  return AddMod(base, step, m);
}

// Rows a request produces in the encoder layout: 1 for a prefill request
// (seq_lens_encoder > 0), seq_lens_this_time for a decode request, 0 for an
// empty slot. Negative lengths count as 0 (the CPU kernel rejects them first).
GRAPHCAP_HD int64_t RowsOfRequest(int32_t seq_len_this_time,
                                  int32_t seq_len_encoder) {
  if (seq_len_encoder > 0) return 1;
  return seq_len_this_time > 0 ? seq_len_this_time : 0;
}

// splitmix64 finaliser of the seed, top 24 bits as a float in [0, 1).
// Counter-based: the same seed gives the same number on every device.
GRAPHCAP_HD float UniformFromSeed(int64_t seed) {
  uint64_t z = static_cast<uint64_t>(seed) + 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) * (1.0f / 16777216.0f);
}

}  // namespace graphcap
