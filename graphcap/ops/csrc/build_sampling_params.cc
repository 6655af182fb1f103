// build_sampling_params: per-row sampling parameters for a batch of requests,
// as one graph-safe kernel (static output shapes, no host reads on device,
// infer_seed advanced in place).
//
// Semantics (FastDeploy's op):
//   B = len(seq_lens_this_time) requests. Per-request inputs may have more
//   rows than B (FastDeploy passes top_p / top_k / infer_seed / seq_lens_encoder
//   sized to the maximum batch and the lengths sized to the real one): the op
//   reads their first B rows (cu_seqlens_q_output: first B + 1) and leaves the
//   rest, infer_seed included, untouched. Fewer rows is an error.
//   rows of request b
//     GPU layout (cu_seqlens_q_output int32 [B+1]): [cu[b], cu[b+1])
//     encoder layout (seq_lens_encoder int32 [B]):  seq_lens_this_time[b] rows
//       when seq_lens_encoder[b] == 0 (decode), else 1 row (prefill); rows are
//       laid out in request order.
//   row j of request b: top_p[b], top_k[b], (infer_seed[b] + 4*j) mod max_seed
//   then for every b < B: infer_seed[b] = (infer_seed[b] + increment_value) mod max_seed
//   rows past the real row count (up to the output capacity) are padding:
//     top_p 1.0, top_k 0, seed 0.
//
// Registered ops (two layouts x two forms):
//   graphcap_sampling_params_cu / _enc            eager form, N = token_num_output rows
//   graphcap_sampling_params_cu_into / _enc_into  capture form: writes into caller-owned
//       out_top_p / out_top_k / out_seed in place; capacity = their row count; the
//       real row count comes only from device tensors (cu[B] or the sum of lengths).
//   graphcap_seeded_uniform                        splitmix64(seed) -> float32 in [0, 1)
//
// Both forms share one kernel: the eager form allocates N-row outputs and
// then runs the capture-form kernel on them.

#include <cstdint>
#include <vector>

#include "paddle/extension.h"

#include "build_sampling_params.h"

namespace {

using paddle::DataType;
using paddle::Tensor;

// ---------------------------------------------------------------- checks
// Every message names the tensor, what was expected and what came in.

int64_t NumRows(const Tensor& t, const char* name) {
  const auto& shape = t.shape();
  PD_CHECK(shape.size() == 1 || (shape.size() == 2 && shape[1] == 1),
           name, " must have shape [n] or [n, 1] (got rank ", shape.size(),
           shape.size() == 2 ? " with trailing dim " : "",
           shape.size() == 2 ? std::to_string(shape[1]) : std::string(), ")");
  return shape[0];
}

void CheckDtype(const Tensor& t, const char* name, DataType want) {
  PD_CHECK(t.dtype() == want, name, " must be ", want, " (got ", t.dtype(),
           "); cast it before calling build_sampling_params");
}

void CheckLen(const Tensor& t, const char* name, int64_t want,
              const char* what) {
  const int64_t got = NumRows(t, name);
  PD_CHECK(got == want, name, " must have ", want, " rows (", what, "), got ",
           got);
}

// FastDeploy's convention: a per-request input may be sized to the maximum
// batch; only its first B + extra rows are read (extra = 1 for the prefix
// offsets cu_seqlens_q_output, 0 otherwise).
void CheckAtLeast(const Tensor& t, const char* name, int64_t batch,
                  int64_t extra) {
  const int64_t got = NumRows(t, name);
  PD_CHECK(got >= batch + extra, name, " has ", got,
           " rows but seq_lens_this_time has B = ", batch,
           " requests; pass at least ", extra ? "B + 1 = " : "B = ",
           batch + extra, " rows of ", name, " (rows past them are ignored)");
}

void CheckSamePlace(const Tensor& t, const char* name, const Tensor& ref) {
  PD_CHECK(t.place() == ref.place(), name, " is on ", t.place(),
           " but top_p is on ", ref.place(), "; move all inputs to one device");
}

// Shape, dtype and place checks of the common inputs; returns B.
int64_t CheckCommon(const Tensor& top_p, const Tensor& top_k,
                    const Tensor& infer_seed, const Tensor& seq_lens_this_time,
                    const Tensor& lens, bool cu_layout, int64_t max_seed) {
  CheckDtype(top_p, "top_p", DataType::FLOAT32);
  CheckDtype(top_k, "top_k", DataType::INT64);
  CheckDtype(infer_seed, "infer_seed", DataType::INT64);
  CheckDtype(seq_lens_this_time, "seq_lens_this_time", DataType::INT32);
  const char* lens_name =
      cu_layout ? "cu_seqlens_q_output" : "seq_lens_encoder";
  CheckDtype(lens, lens_name, DataType::INT32);
  // B is the real batch: the rows of seq_lens_this_time.
  const int64_t B = NumRows(seq_lens_this_time, "seq_lens_this_time");
  CheckAtLeast(top_p, "top_p", B, 0);
  CheckAtLeast(top_k, "top_k", B, 0);
  CheckAtLeast(infer_seed, "infer_seed", B, 0);
  CheckAtLeast(lens, lens_name, B, cu_layout ? 1 : 0);
  CheckSamePlace(top_k, "top_k", top_p);
  CheckSamePlace(infer_seed, "infer_seed", top_p);
  CheckSamePlace(seq_lens_this_time, "seq_lens_this_time", top_p);
  CheckSamePlace(lens, lens_name, top_p);
  PD_CHECK(max_seed > 0, "max_seed must be positive (got ", max_seed, ")");
  return B;
}

// Checks the caller-owned outputs of the capture form; returns the capacity.
int64_t CheckOutputs(const Tensor& top_p, const Tensor& out_top_p,
                     const Tensor& out_top_k, const Tensor& out_seed) {
  CheckDtype(out_top_p, "out_top_p", DataType::FLOAT32);
  CheckDtype(out_top_k, "out_top_k", DataType::INT64);
  CheckDtype(out_seed, "out_seed", DataType::INT64);
  const int64_t capacity = NumRows(out_top_p, "out_top_p");
  CheckLen(out_top_k, "out_top_k", capacity, "rows_capacity, like out_top_p");
  CheckLen(out_seed, "out_seed", capacity, "rows_capacity, like out_top_p");
  CheckSamePlace(out_top_p, "out_top_p", top_p);
  CheckSamePlace(out_top_k, "out_top_k", top_p);
  CheckSamePlace(out_seed, "out_seed", top_p);
  return capacity;
}

// ------------------------------------------------------------ CPU kernel

// Value checks and row starts. On CPU the "device" is the host, so reading
// lengths here is not a host sync; the CUDA kernel clamps instead of checking.
std::vector<int64_t> RowStartsCpu(const int32_t* slt, const int32_t* lens,
                                  int64_t B, bool cu_layout, int64_t capacity,
                                  const char* capacity_name) {
  std::vector<int64_t> start(B + 1);
  for (int64_t b = 0; b < B; ++b) {
    PD_CHECK(slt[b] >= 0, "seq_lens_this_time[", b,
             "] must be non-negative (got ", slt[b], ")");
  }
  if (cu_layout) {
    PD_CHECK(lens[0] == 0, "cu_seqlens_q_output[0] must be 0 (got ", lens[0],
             ")");
    for (int64_t b = 0; b < B; ++b) {
      PD_CHECK(lens[b + 1] >= lens[b],
               "cu_seqlens_q_output must be non-decreasing (got cu[", b,
               "]=", lens[b], " > cu[", b + 1, "]=", lens[b + 1], ")");
    }
    for (int64_t b = 0; b <= B; ++b) start[b] = lens[b];
  } else {
    start[0] = 0;
    for (int64_t b = 0; b < B; ++b) {
      PD_CHECK(lens[b] >= 0, "seq_lens_encoder[", b,
               "] must be non-negative (got ", lens[b], ")");
      start[b + 1] = start[b] + graphcap::RowsOfRequest(slt[b], lens[b]);
    }
  }
  PD_CHECK(start[B] <= capacity, "the batch needs ", start[B], " rows (",
           cu_layout ? "cu_seqlens_q_output[B]" : "sum of rows per request",
           ") but ", capacity_name, " is ", capacity,
           "; raise it to at least the real row count");
  return start;
}

void SamplingParamsCpu(const Tensor& top_p, const Tensor& top_k,
                       Tensor& infer_seed, const Tensor& seq_lens_this_time,
                       const Tensor& lens, bool cu_layout, Tensor& out_top_p,
                       Tensor& out_top_k, Tensor& out_seed, int64_t capacity,
                       const char* capacity_name, int64_t increment_value,
                       int64_t max_seed) {
  // Only the first B rows of the per-request inputs are read or advanced.
  const int64_t B = NumRows(seq_lens_this_time, "seq_lens_this_time");
  const std::vector<int64_t> start =
      RowStartsCpu(seq_lens_this_time.data<int32_t>(), lens.data<int32_t>(),
                   B, cu_layout, capacity, capacity_name);
  const float* p = top_p.data<float>();
  const int64_t* k = top_k.data<int64_t>();
  int64_t* seed = infer_seed.data<int64_t>();
  float* op = out_top_p.data<float>();
  int64_t* ok = out_top_k.data<int64_t>();
  int64_t* os = out_seed.data<int64_t>();
  // Rows read infer_seed before the advance loop below rewrites it: the
  // output seeds are those of this step, not the next.
  for (int64_t b = 0; b < B; ++b) {
    const int64_t base = graphcap::ReduceMod(seed[b], max_seed);
    for (int64_t r = start[b]; r < start[b + 1]; ++r) {
      op[r] = p[b];
      ok[r] = k[b];
      os[r] = graphcap::RowSeed(base, r - start[b], max_seed);
    }
  }
  for (int64_t r = start[B]; r < capacity; ++r) {
    op[r] = graphcap::kPadTopP;
    ok[r] = graphcap::kPadTopK;
    os[r] = graphcap::kPadSeed;
  }
  const int64_t inc = graphcap::ReduceMod(increment_value, max_seed);
  for (int64_t b = 0; b < B; ++b) {
    seed[b] = graphcap::AddMod(graphcap::ReduceMod(seed[b], max_seed), inc,
                               max_seed);
  }
}

}  // namespace

#ifdef PADDLE_WITH_CUDA
// Defined in build_sampling_params.cu (external linkage, so outside the
// anonymous namespace). They launch on the inputs' stream and never sync.
namespace graphcap {
void SamplingParamsCuda(const paddle::Tensor& top_p,
                        const paddle::Tensor& top_k,
                        paddle::Tensor& infer_seed,
                        const paddle::Tensor& lens, bool cu_layout,
                        const paddle::Tensor& seq_lens_this_time,
                        paddle::Tensor& out_top_p, paddle::Tensor& out_top_k,
                        paddle::Tensor& out_seed, int64_t capacity,
                        int64_t increment_value, int64_t max_seed);
void SeededUniformCuda(const paddle::Tensor& seed, paddle::Tensor& out);
}  // namespace graphcap
#endif

namespace {

void Dispatch(const Tensor& top_p, const Tensor& top_k, Tensor& infer_seed,
              const Tensor& seq_lens_this_time, const Tensor& lens,
              bool cu_layout, Tensor& out_top_p, Tensor& out_top_k,
              Tensor& out_seed, int64_t capacity, const char* capacity_name,
              int64_t increment_value, int64_t max_seed) {
  if (top_p.is_cpu()) {
    SamplingParamsCpu(top_p, top_k, infer_seed, seq_lens_this_time, lens,
                      cu_layout, out_top_p, out_top_k, out_seed, capacity,
                      capacity_name, increment_value, max_seed);
    return;
  }
#ifdef PADDLE_WITH_CUDA
  if (top_p.is_gpu()) {
    graphcap::SamplingParamsCuda(top_p, top_k, infer_seed, lens, cu_layout,
                                 seq_lens_this_time, out_top_p, out_top_k,
                                 out_seed, capacity, increment_value,
                                 max_seed);
    return;
  }
#endif
  PD_THROW("build_sampling_params has no kernel for place ", top_p.place(),
           " in this build (CPU",
#ifdef PADDLE_WITH_CUDA
           " and CUDA",
#endif
           " only); pass impl=\"paddle\" (or \"auto\") to use the portable "
           "Paddle-ops kernel, or move the inputs");
}

// ------------------------------------------------------------ eager form

std::vector<Tensor> EagerForm(const Tensor& top_p, const Tensor& top_k,
                              Tensor& infer_seed,
                              const Tensor& seq_lens_this_time,
                              const Tensor& lens, bool cu_layout,
                              int64_t token_num_output,
                              int64_t increment_value, int64_t max_seed) {
  CheckCommon(top_p, top_k, infer_seed, seq_lens_this_time, lens, cu_layout,
              max_seed);
  PD_CHECK(token_num_output >= 0, "token_num_output must be non-negative (got ",
           token_num_output, ")");
  auto out_p = paddle::empty({token_num_output, 1}, DataType::FLOAT32,
                             top_p.place());
  auto out_k = paddle::empty({token_num_output, 1}, DataType::INT64,
                             top_p.place());
  auto out_s = paddle::empty({token_num_output, 1}, DataType::INT64,
                             top_p.place());
  Dispatch(top_p, top_k, infer_seed, seq_lens_this_time, lens, cu_layout,
           out_p, out_k, out_s, token_num_output, "token_num_output",
           increment_value, max_seed);
  return {out_p, out_k, out_s};
}

std::vector<Tensor> EagerCu(const Tensor& top_p, const Tensor& top_k,
                            Tensor& infer_seed,
                            const Tensor& seq_lens_this_time,
                            const Tensor& cu_seqlens_q_output,
                            int64_t token_num_output, int64_t increment_value,
                            int64_t max_seed) {
  return EagerForm(top_p, top_k, infer_seed, seq_lens_this_time,
                   cu_seqlens_q_output, true, token_num_output,
                   increment_value, max_seed);
}

std::vector<Tensor> EagerEnc(const Tensor& top_p, const Tensor& top_k,
                             Tensor& infer_seed,
                             const Tensor& seq_lens_this_time,
                             const Tensor& seq_lens_encoder,
                             int64_t token_num_output, int64_t increment_value,
                             int64_t max_seed) {
  return EagerForm(top_p, top_k, infer_seed, seq_lens_this_time,
                   seq_lens_encoder, false, token_num_output, increment_value,
                   max_seed);
}

std::vector<std::vector<int64_t>> EagerInferShape(
    const std::vector<int64_t>& top_p_shape,
    const std::vector<int64_t>& top_k_shape,
    const std::vector<int64_t>& infer_seed_shape,
    const std::vector<int64_t>& seq_lens_this_time_shape,
    const std::vector<int64_t>& lens_shape, int64_t token_num_output,
    int64_t increment_value, int64_t max_seed) {
  return {{token_num_output, 1}, {token_num_output, 1}, {token_num_output, 1}};
}

std::vector<DataType> EagerInferDtype(const DataType& top_p_dtype,
                                      const DataType& top_k_dtype,
                                      const DataType& infer_seed_dtype,
                                      const DataType& slt_dtype,
                                      const DataType& lens_dtype) {
  return {DataType::FLOAT32, DataType::INT64, DataType::INT64};
}

// ---------------------------------------------------------- capture form

void IntoForm(const Tensor& top_p, const Tensor& top_k, Tensor& infer_seed,
              const Tensor& seq_lens_this_time, const Tensor& lens,
              bool cu_layout, Tensor& out_top_p, Tensor& out_top_k,
              Tensor& out_seed, int64_t increment_value, int64_t max_seed) {
  CheckCommon(top_p, top_k, infer_seed, seq_lens_this_time, lens, cu_layout,
              max_seed);
  const int64_t capacity =
      CheckOutputs(top_p, out_top_p, out_top_k, out_seed);
  Dispatch(top_p, top_k, infer_seed, seq_lens_this_time, lens, cu_layout,
           out_top_p, out_top_k, out_seed, capacity,
           "rows_capacity (rows of out_top_p)", increment_value, max_seed);
}

void IntoCu(const Tensor& top_p, const Tensor& top_k, Tensor& infer_seed,
            const Tensor& seq_lens_this_time, const Tensor& cu_seqlens_q_output,
            Tensor& out_top_p, Tensor& out_top_k, Tensor& out_seed,
            int64_t increment_value, int64_t max_seed) {
  IntoForm(top_p, top_k, infer_seed, seq_lens_this_time, cu_seqlens_q_output,
           true, out_top_p, out_top_k, out_seed, increment_value, max_seed);
}

void IntoEnc(const Tensor& top_p, const Tensor& top_k, Tensor& infer_seed,
             const Tensor& seq_lens_this_time, const Tensor& seq_lens_encoder,
             Tensor& out_top_p, Tensor& out_top_k, Tensor& out_seed,
             int64_t increment_value, int64_t max_seed) {
  IntoForm(top_p, top_k, infer_seed, seq_lens_this_time, seq_lens_encoder,
           false, out_top_p, out_top_k, out_seed, increment_value, max_seed);
}

// ------------------------------------------------------- seeded uniform

std::vector<Tensor> SeededUniform(const Tensor& seed) {
  CheckDtype(seed, "seed", DataType::INT64);
  const int64_t rows = NumRows(seed, "seed");
  auto out = paddle::empty({rows}, DataType::FLOAT32, seed.place());
  if (seed.is_cpu()) {
    const int64_t* s = seed.data<int64_t>();
    float* u = out.data<float>();
    for (int64_t r = 0; r < rows; ++r) u[r] = graphcap::UniformFromSeed(s[r]);
    return {out};
  }
#ifdef PADDLE_WITH_CUDA
  if (seed.is_gpu()) {
    graphcap::SeededUniformCuda(seed, out);
    return {out};
  }
#endif
  PD_THROW("seeded_uniform has no kernel for place ", seed.place());
}

std::vector<std::vector<int64_t>> SeededUniformInferShape(
    const std::vector<int64_t>& seed_shape) {
  return {{seed_shape.empty() ? 1 : seed_shape[0]}};
}

std::vector<DataType> SeededUniformInferDtype(const DataType& seed_dtype) {
  return {DataType::FLOAT32};
}

}  // namespace

// ----------------------------------------------------------- registration

PD_BUILD_OP(graphcap_sampling_params_cu)
    .Inputs({"top_p", "top_k", "infer_seed", "seq_lens_this_time",
             "cu_seqlens_q_output"})
    .Outputs({"top_p_padding", "top_k_padding", "topp_seed", "infer_seed_out"})
    .Attrs({"token_num_output: int64_t", "increment_value: int64_t",
            "max_seed: int64_t"})
    .SetInplaceMap({{"infer_seed", "infer_seed_out"}})
    .SetKernelFn(PD_KERNEL(EagerCu))
    .SetInferShapeFn(PD_INFER_SHAPE(EagerInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(EagerInferDtype));

PD_BUILD_OP(graphcap_sampling_params_enc)
    .Inputs({"top_p", "top_k", "infer_seed", "seq_lens_this_time",
             "seq_lens_encoder"})
    .Outputs({"top_p_padding", "top_k_padding", "topp_seed", "infer_seed_out"})
    .Attrs({"token_num_output: int64_t", "increment_value: int64_t",
            "max_seed: int64_t"})
    .SetInplaceMap({{"infer_seed", "infer_seed_out"}})
    .SetKernelFn(PD_KERNEL(EagerEnc))
    .SetInferShapeFn(PD_INFER_SHAPE(EagerInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(EagerInferDtype));

PD_BUILD_OP(graphcap_sampling_params_cu_into)
    .Inputs({"top_p", "top_k", "infer_seed", "seq_lens_this_time",
             "cu_seqlens_q_output", "out_top_p", "out_top_k", "out_seed"})
    .Outputs({"infer_seed_out", "out_top_p_out", "out_top_k_out",
              "out_seed_out"})
    .Attrs({"increment_value: int64_t", "max_seed: int64_t"})
    .SetInplaceMap({{"infer_seed", "infer_seed_out"},
                    {"out_top_p", "out_top_p_out"},
                    {"out_top_k", "out_top_k_out"},
                    {"out_seed", "out_seed_out"}})
    .SetKernelFn(PD_KERNEL(IntoCu));

PD_BUILD_OP(graphcap_sampling_params_enc_into)
    .Inputs({"top_p", "top_k", "infer_seed", "seq_lens_this_time",
             "seq_lens_encoder", "out_top_p", "out_top_k", "out_seed"})
    .Outputs({"infer_seed_out", "out_top_p_out", "out_top_k_out",
              "out_seed_out"})
    .Attrs({"increment_value: int64_t", "max_seed: int64_t"})
    .SetInplaceMap({{"infer_seed", "infer_seed_out"},
                    {"out_top_p", "out_top_p_out"},
                    {"out_top_k", "out_top_k_out"},
                    {"out_seed", "out_seed_out"}})
    .SetKernelFn(PD_KERNEL(IntoEnc));

PD_BUILD_OP(graphcap_seeded_uniform)
    .Inputs({"seed"})
    .Outputs({"uniform"})
    .SetKernelFn(PD_KERNEL(SeededUniform))
    .SetInferShapeFn(PD_INFER_SHAPE(SeededUniformInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(SeededUniformInferDtype));
