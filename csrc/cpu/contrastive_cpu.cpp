// CPU row pass: blocks of rows in parallel (at::parallel_for), each block against ALL keys.
//
// Per block of R rows: S = Q_blk K^T (GEMM into an R x N scratch), then per row the exact
// log-sum-exp with a vectorized exp (one exp per similarity); for a gradient pass the
// scratch is overwritten in place with E = exp(z - shift), followed by dQ_blk = E K and
// dK_thread += E^T Q_blk (two more GEMMs) whose R x D operands and results carry the
// per-row scales and the one-hot corrections. Memory beyond inputs and outputs: one R x N
// scratch and one N x D key-gradient accumulator per thread, i.e.
// O((M + N) D + threads * (R N + N D)), never M x N.
#include "../contrastive.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace tase_loss {
namespace {

// Runtime-dispatched clones of the row loops: AVX-512 / AVX2 where the CPU has them,
// baseline SSE2 otherwise. GCC vectorizes the loops under `omp simd` (-fopenmp).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define TASE_ROW_LOOP __attribute__((target_clones("avx512f", "arch=haswell", "default")))
#else
#define TASE_ROW_LOOP
#endif

// exp(x) for float, branch-free so that it vectorizes: Cephes' expf polynomial on
// x - n ln2, scaled by 2^n through the exponent bits (the float32 parity tests hold at
// rtol 1e-5). Exactly 0 below the smallest normal. Needs IEEE rounding (no -ffast-math).
static inline float exp_float(float x) {
  const bool underflow = x < -87.33654f;
  x = std::min(std::max(x, -87.33654f), 88.0f);
  // Round to nearest through the float mantissa (1.5 * 2^23), which vectorizes.
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float poly = 1.9875691500e-4f;
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  const float value = poly * r * r + r + 1.0f;
  const int32_t exponent_bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &exponent_bits, sizeof(scale));
  return underflow ? 0.0f : value * scale;
}

// max_k z_k over k != self, z_k = invt * s_k.
TASE_ROW_LOOP static float row_max(const float* s, int64_t n, float invt, int64_t self) {
  float best = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : best)
  for (int64_t k = 0; k < n; ++k) {
    const float z = k == self ? -std::numeric_limits<float>::infinity() : s[k] * invt;
    best = std::max(best, z);
  }
  return best;
}

// sum_k exp(z_k - shift) over k != self.
TASE_ROW_LOOP static float row_sum_exp(const float* s, int64_t n, float invt, int64_t self,
                                       float shift) {
  float total = 0.0f;
#pragma omp simd reduction(+ : total)
  for (int64_t k = 0; k < n; ++k) {
    const float e = exp_float(s[k] * invt - shift);
    total += k == self ? 0.0f : e;
  }
  return total;
}

// Overwrites s with e_k = exp(z_k - shift) (0 at self); returns {sum_k e_k, sum_k e_k s_k}.
TASE_ROW_LOOP static void row_exp(float* s, int64_t n, float invt, int64_t self, float shift,
                                  float* sum_out, float* weighted_sum_out) {
  float total = 0.0f;
  float weighted = 0.0f;
#pragma omp simd reduction(+ : total, weighted)
  for (int64_t k = 0; k < n; ++k) {
    const float e = k == self ? 0.0f : exp_float(s[k] * invt - shift);
    total += e;
    weighted += e * s[k];
    s[k] = e;
  }
  *sum_out = total;
  *weighted_sum_out = weighted;
}

// float64 twins (tests and gradcheck; speed is not the point there).
static double row_max(const double* s, int64_t n, double invt, int64_t self) {
  double best = -std::numeric_limits<double>::infinity();
  for (int64_t k = 0; k < n; ++k) {
    if (k != self) best = std::max(best, s[k] * invt);
  }
  return best;
}

static double row_sum_exp(const double* s, int64_t n, double invt, int64_t self, double shift) {
  double total = 0.0;
  for (int64_t k = 0; k < n; ++k) {
    if (k != self) total += std::exp(s[k] * invt - shift);
  }
  return total;
}

static void row_exp(double* s, int64_t n, double invt, int64_t self, double shift,
                    double* sum_out, double* weighted_sum_out) {
  double total = 0.0;
  double weighted = 0.0;
  for (int64_t k = 0; k < n; ++k) {
    const double e = k == self ? 0.0 : std::exp(s[k] * invt - shift);
    total += e;
    weighted += e * s[k];
    s[k] = e;
  }
  *sum_out = total;
  *weighted_sum_out = weighted;
}

// Rows per block: enough for efficient GEMMs (the dK update has the block as its inner
// dimension), small enough that a thread's scratch stays within a few MiB. At N = 8192,
// D = 128 on 2 cores, 64..256 rows ran within 5% of each other; 32 was 25% slower.
// At least 64: with a MoCo queue (M = 256, N = 65792) 16-row blocks re-read the keys so
// often that the op took 1.9x its two GEMMs; 64 rows took 1.08x.
int64_t block_rows_for(int64_t num_keys) {
  const int64_t target_elements = int64_t{1} << 20;  // 4 MiB of float32
  return std::clamp<int64_t>(target_elements / std::max<int64_t>(num_keys, 1), 64, 256);
}

// Gradient of one row, with P = softmax excluding self and c = grad_loss * weight:
//   dZ_ak = c_a (P_ak - [k == pos_a]),  dS = invt * dZ,
//   dQ_a = sum_k dS_ak K_k,  dK_k += dS_ak Q_a,  d invt_a = c_a (sum_k P_ak s_ak - s_a,pos).
// The scratch holds E (P up to a per-row factor), so the row scale r_a = c_a invt_a P/E is
// applied to the R x D GEMM operands and results instead of the R x N matrix, and the
// one-hot term is a rank-one correction per row.
//
// The pass runs in three stages per block of rows: row_statistics (lse, loss, E, scales),
// query_gradient (dQ of the block) and key_gradient (the thread's dK accumulator).

// Raw views of one pass's inputs (widened to acc_t) and outputs.
template <typename acc_t>
struct PassData {
  const acc_t* queries;
  const acc_t* keys;
  const acc_t* inverse_temperature;
  const int64_t* positive;
  const int64_t* self;
  const acc_t* coefficient;  // nullptr: forward only
  acc_t* lse;
  acc_t* row_loss;
  acc_t* grad_queries;
  acc_t* grad_inverse_temperature;
  int64_t num_keys;
  int64_t dim;
  bool have_lse;
};

// Per-row factors of a block in a gradient pass: r_a (E -> P and c invt) and c_a invt_a.
template <typename acc_t>
struct BlockScales {
  std::vector<acc_t> row;
  std::vector<acc_t> positive;
};

// Stage 1: rows [row0, row0 + count) with their similarities in `similarity` (count x N):
// the exact lse and unweighted loss of each row; in a gradient pass also E (in place),
// the block's scales and d invt.
template <typename acc_t>
void row_statistics(const PassData<acc_t>& data, acc_t* similarity, int64_t row0, int64_t count,
                    BlockScales<acc_t>& scales) {
  const int64_t num_keys = data.num_keys;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t a = row0 + i;
    acc_t* row = similarity + i * num_keys;
    const acc_t invt = data.inverse_temperature[a];
    const int64_t pos = data.positive[a];
    const int64_t self_column = data.self[a];
    TORCH_CHECK(pos >= 0 && pos < num_keys, "tase_loss: positive_index[", a, "] = ", pos,
                " is outside [0, ", num_keys, ")");
    TORCH_CHECK(self_column >= -1 && self_column < num_keys, "tase_loss: self_index[", a,
                "] = ", self_column, " is outside [-1, ", num_keys, ")");
    const acc_t positive_similarity = row[pos];
    // shift: the row max (then E sums to `total`), or the known lse (then E = P).
    const acc_t shift = data.have_lse ? data.lse[a] : row_max(row, num_keys, invt, self_column);
    acc_t total = 1;
    if (data.coefficient != nullptr) {
      acc_t weighted = 0;
      row_exp(row, num_keys, invt, self_column, shift, &total, &weighted);
      if (data.have_lse) total = 1;  // E is already normalized
      const acc_t c = data.coefficient[a];
      scales.row[i] = c * invt / total;
      scales.positive[i] = c * invt;
      data.grad_inverse_temperature[a] = c * (weighted / total - positive_similarity);
    } else if (!data.have_lse) {
      total = row_sum_exp(row, num_keys, invt, self_column, shift);
    }
    const acc_t lse = data.have_lse ? shift : shift + std::log(total);
    data.lse[a] = lse;
    data.row_loss[a] = lse - invt * positive_similarity;
  }
}

// Stage 2: dQ_blk = r * (E K) - (c invt) K[pos]; also writes r * Q_blk for stage 3.
template <typename acc_t>
void query_gradient(const PassData<acc_t>& data, const at::Tensor& exp_block, const at::Tensor& keys,
                    int64_t row0, int64_t count, const BlockScales<acc_t>& scales,
                    at::Tensor& grad_queries, acc_t* scaled_queries) {
  at::Tensor block_grad_queries = grad_queries.narrow(0, row0, count);
  at::mm_out(block_grad_queries, exp_block, keys);
  const int64_t dim = data.dim;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t a = row0 + i;
    acc_t* grad_row = data.grad_queries + a * dim;
    const acc_t* positive_key = data.keys + data.positive[a] * dim;
    const acc_t* query = data.queries + a * dim;
    for (int64_t d = 0; d < dim; ++d) {
      grad_row[d] = scales.row[i] * grad_row[d] - scales.positive[i] * positive_key[d];
      scaled_queries[i * dim + d] = scales.row[i] * query[d];
    }
  }
}

// Stage 3: dK += E^T (r * Q_blk) - (c invt) Q_a at row pos_a, into this thread's accumulator.
template <typename acc_t>
void key_gradient(const PassData<acc_t>& data, const at::Tensor& exp_block,
                  const at::Tensor& scaled_queries, int64_t row0, int64_t count,
                  const BlockScales<acc_t>& scales, at::Tensor& key_grad) {
  key_grad.addmm_(exp_block.t(), scaled_queries);
  acc_t* key_grad_data = key_grad.data_ptr<acc_t>();
  const int64_t dim = data.dim;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t a = row0 + i;
    acc_t* grad_row = key_grad_data + data.positive[a] * dim;
    const acc_t* query = data.queries + a * dim;
    for (int64_t d = 0; d < dim; ++d) grad_row[d] -= scales.positive[i] * query[d];
  }
}

template <typename acc_t>
RowPassResult row_pass_typed(const RowInputs& inputs, const at::Tensor& coefficient,
                             const at::Tensor& lse_in, bool grad_keys) {
  const auto accumulate = c10::CppTypeToScalarType<acc_t>::value;
  // Half inputs are widened once (O((M + N) D)); every product then runs in fp32.
  // detach(): the op is its own autograd node, and out= GEMMs refuse inputs needing grad.
  const at::Tensor queries = inputs.queries.detach().to(accumulate).contiguous();
  const at::Tensor keys = inputs.keys.detach().to(accumulate).contiguous();
  const at::Tensor positive = inputs.positive_index.contiguous();
  const at::Tensor self = inputs.self_index.contiguous();
  const at::Tensor inverse_temperature =
      inputs.inverse_temperature.detach().to(accumulate).contiguous();
  const int64_t rows = queries.size(0);
  const int64_t num_keys = keys.size(0);
  const int64_t dim = queries.size(1);
  const bool want_grad = coefficient.defined();

  RowPassResult result;
  result.lse = lse_in.defined() ? lse_in : at::empty({rows}, queries.options());
  result.row_loss = at::empty({rows}, queries.options());
  if (want_grad) {
    result.grad_queries = at::empty({rows, dim}, queries.options());
    result.grad_inverse_temperature = at::empty({rows}, queries.options());
  }
  const int64_t block_rows = block_rows_for(num_keys);
  const int64_t num_blocks = (rows + block_rows - 1) / block_rows;
  const int64_t num_threads =
      std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), num_blocks));
  // One key-gradient accumulator per thread, summed at the end (no atomics, deterministic
  // for a given thread count).
  at::Tensor key_grad_partials;
  if (want_grad && grad_keys) {
    key_grad_partials = at::zeros({num_threads, num_keys, dim}, queries.options());
  }
  const PassData<acc_t> data{
      queries.data_ptr<acc_t>(),
      keys.data_ptr<acc_t>(),
      inverse_temperature.data_ptr<acc_t>(),
      positive.data_ptr<int64_t>(),
      self.data_ptr<int64_t>(),
      want_grad ? coefficient.data_ptr<acc_t>() : nullptr,
      result.lse.data_ptr<acc_t>(),
      result.row_loss.data_ptr<acc_t>(),
      want_grad ? result.grad_queries.data_ptr<acc_t>() : nullptr,
      want_grad ? result.grad_inverse_temperature.data_ptr<acc_t>() : nullptr,
      num_keys,
      dim,
      lse_in.defined(),
  };
  const at::Tensor keys_t = keys.t();

  // Chunks of blocks, one chunk per thread, so that each thread owns its scratch and
  // accumulator; GEMMs inside a parallel region run single-threaded.
  const int64_t blocks_per_chunk = (num_blocks + num_threads - 1) / num_threads;
  at::parallel_for(0, num_threads, 1, [&](int64_t first_chunk, int64_t end_chunk) {
    at::Tensor scratch = at::empty({block_rows, num_keys}, queries.options());
    at::Tensor scaled_queries = at::empty({block_rows, dim}, queries.options());
    BlockScales<acc_t> scales{std::vector<acc_t>(block_rows), std::vector<acc_t>(block_rows)};
    for (int64_t chunk = first_chunk; chunk < end_chunk; ++chunk) {
      at::Tensor key_grad = key_grad_partials.defined() ? key_grad_partials[chunk] : at::Tensor();
      const int64_t first_block = chunk * blocks_per_chunk;
      const int64_t end_block = std::min(num_blocks, first_block + blocks_per_chunk);
      for (int64_t block = first_block; block < end_block; ++block) {
        const int64_t row0 = block * block_rows;
        const int64_t count = std::min(block_rows, rows - row0);
        at::Tensor similarity = scratch.narrow(0, 0, count);
        at::mm_out(similarity, queries.narrow(0, row0, count), keys_t);
        row_statistics(data, similarity.data_ptr<acc_t>(), row0, count, scales);
        if (!want_grad) continue;
        query_gradient(data, similarity, keys, row0, count, scales, result.grad_queries,
                       scaled_queries.data_ptr<acc_t>());
        if (key_grad.defined()) {
          key_gradient(data, similarity, scaled_queries.narrow(0, 0, count), row0, count, scales,
                       key_grad);
        }
      }
    }
  });
  if (key_grad_partials.defined()) result.grad_keys = key_grad_partials.sum(0);
  return result;
}

RowPassResult row_pass_cpu(const RowInputs& inputs, const at::Tensor& coefficient,
                           const at::Tensor& lse, bool grad_keys) {
  check_inputs(inputs, c10::DeviceType::CPU);
  if (inputs.queries.scalar_type() == at::kDouble) {
    return row_pass_typed<double>(inputs, coefficient, lse, grad_keys);
  }
  return row_pass_typed<float>(inputs, coefficient, lse, grad_keys);
}

}  // namespace

TORCH_LIBRARY_IMPL(tase_loss, CPU, m) {
  m.impl("contrastive_forward", &forward_op<row_pass_cpu>);
  m.impl("contrastive_forward_with_grad", &forward_with_grad_op<row_pass_cpu>);
  m.impl("contrastive_backward", &backward_op<row_pass_cpu>);
}

}  // namespace tase_loss
