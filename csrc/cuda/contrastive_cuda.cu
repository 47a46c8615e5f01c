// CUDA row pass. UNVERIFIED: compiled with nvcc, never run (no GPU was available).
//
// Blocks of rows against ALL keys, like the CPU kernel, on the current stream:
//   S = Q_blk K^T                 ATen GEMM (cuBLAS) in the input dtype, fp32 accumulate
//   lse, l_a                      row_logsumexp_kernel, one thread block per row, fp32
//   D = c invt (P - onehot)       row_grad_kernel, in place over S (gradient passes only)
//   dQ_blk = D K, dK += D^T Q_blk ATen GEMMs; dK accumulates in fp32 across blocks
// The scratch holds at most kScratchElements entries whatever M is, so memory is
// O((M + N) D) plus a constant, never M x N.
#include "../contrastive.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

namespace tase_loss {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kScratchElements = int64_t{1} << 26;  // 128 MiB in bf16/fp16

template <typename acc_t>
__device__ __forceinline__ acc_t device_exp(acc_t x) {
  return ::exp(x);
}

template <>
__device__ __forceinline__ float device_exp<float>(float x) {
  return ::expf(x);
}

template <typename acc_t>
__device__ __forceinline__ acc_t device_log(acc_t x) {
  return ::log(x);
}

template <>
__device__ __forceinline__ float device_log<float>(float x) {
  return ::logf(x);
}

// Running (max, sum exp(z - max)) pair of an online log-sum-exp.
template <typename acc_t>
struct MaxSum {
  acc_t max;
  acc_t sum;
};

template <typename acc_t>
__device__ __forceinline__ MaxSum<acc_t> combine(MaxSum<acc_t> left, MaxSum<acc_t> right) {
  if (left.max == -std::numeric_limits<acc_t>::infinity()) return right;
  if (right.max == -std::numeric_limits<acc_t>::infinity()) return left;
  const acc_t top = left.max > right.max ? left.max : right.max;
  return {top, left.sum * device_exp(left.max - top) + right.sum * device_exp(right.max - top)};
}

// Block-wide reductions; the result is valid in thread 0.
template <typename acc_t>
__device__ MaxSum<acc_t> block_reduce(MaxSum<acc_t> value) {
  __shared__ acc_t maxima[kWarps];
  __shared__ acc_t sums[kWarps];
  for (int offset = 16; offset > 0; offset /= 2) {
    MaxSum<acc_t> other{__shfl_down_sync(0xffffffffu, value.max, offset),
                        __shfl_down_sync(0xffffffffu, value.sum, offset)};
    value = combine(value, other);
  }
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (lane == 0) {
    maxima[warp] = value.max;
    sums[warp] = value.sum;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int other = 1; other < kWarps; ++other) value = combine(value, {maxima[other], sums[other]});
  }
  return value;
}

template <typename acc_t>
__device__ acc_t block_reduce(acc_t value) {
  __shared__ acc_t partial[kWarps];
  for (int offset = 16; offset > 0; offset /= 2) {
    value += __shfl_down_sync(0xffffffffu, value, offset);
  }
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = value;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int other = 1; other < kWarps; ++other) value += partial[other];
  }
  return value;
}

// One thread block per row of the block: lse (unless given) and l_a = lse - z_pos.
template <typename scalar_t, typename acc_t>
__global__ void row_logsumexp_kernel(const scalar_t* __restrict__ similarity, int64_t num_keys,
                                     const acc_t* __restrict__ inverse_temperature,
                                     const int64_t* __restrict__ positive,
                                     const int64_t* __restrict__ self_index, int64_t row0,
                                     bool have_lse, acc_t* __restrict__ lse,
                                     acc_t* __restrict__ row_loss) {
  const int64_t a = row0 + blockIdx.x;
  const scalar_t* row = similarity + static_cast<int64_t>(blockIdx.x) * num_keys;
  const acc_t invt = inverse_temperature[a];
  const int64_t pos = positive[a];
  const int64_t self = self_index[a];
  CUDA_KERNEL_ASSERT(pos >= 0 && pos < num_keys);
  CUDA_KERNEL_ASSERT(self >= -1 && self < num_keys);
  acc_t value = 0;
  if (have_lse) {
    value = lse[a];
  } else {
    MaxSum<acc_t> local{-std::numeric_limits<acc_t>::infinity(), 0};
    for (int64_t k = threadIdx.x; k < num_keys; k += blockDim.x) {
      if (k == self) continue;
      const acc_t z = invt * static_cast<acc_t>(row[k]);
      if (z <= local.max) {
        local.sum += device_exp(z - local.max);
      } else {  // new running max: rescale the sum once (exp(-inf) = 0 on the first key)
        local.sum = local.sum * device_exp(local.max - z) + acc_t(1);
        local.max = z;
      }
    }
    const MaxSum<acc_t> total = block_reduce(local);
    value = total.max + device_log(total.sum);
  }
  if (threadIdx.x == 0) {
    if (!have_lse) lse[a] = value;
    row_loss[a] = value - invt * static_cast<acc_t>(row[pos]);
  }
}

// One thread block per row: overwrites S with D = c invt (P - onehot(pos)) (0 at self) and
// writes d invt_a = c (sum_k P_ak s_ak - s_a,pos).
template <typename scalar_t, typename acc_t>
__global__ void row_grad_kernel(scalar_t* __restrict__ similarity, int64_t num_keys,
                                const acc_t* __restrict__ inverse_temperature,
                                const int64_t* __restrict__ positive,
                                const int64_t* __restrict__ self_index,
                                const acc_t* __restrict__ coefficient,
                                const acc_t* __restrict__ lse, int64_t row0,
                                acc_t* __restrict__ grad_inverse_temperature) {
  const int64_t a = row0 + blockIdx.x;
  scalar_t* row = similarity + static_cast<int64_t>(blockIdx.x) * num_keys;
  const acc_t invt = inverse_temperature[a];
  const int64_t pos = positive[a];
  const int64_t self = self_index[a];
  const acc_t c = coefficient[a];
  const acc_t row_lse = lse[a];
  const acc_t positive_similarity = static_cast<acc_t>(row[pos]);
  __syncthreads();  // every thread has read s_pos before any thread overwrites the row
  acc_t expected = 0;
  for (int64_t k = threadIdx.x; k < num_keys; k += blockDim.x) {
    const acc_t s = static_cast<acc_t>(row[k]);
    const acc_t p = k == self ? acc_t(0) : device_exp(invt * s - row_lse);
    expected += p * s;
    row[k] = static_cast<scalar_t>(c * invt * (p - (k == pos ? acc_t(1) : acc_t(0))));
  }
  expected = block_reduce(expected);
  if (threadIdx.x == 0) grad_inverse_temperature[a] = c * (expected - positive_similarity);
}

RowPassResult row_pass_cuda(const RowInputs& inputs, const at::Tensor& coefficient,
                            const at::Tensor& lse_in, bool grad_keys) {
  check_inputs(inputs, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard device_guard(inputs.queries.device());
  const auto accumulate = accumulation_type(inputs.queries.scalar_type());
  // detach(): the op is its own autograd node; out= GEMMs refuse inputs needing grad.
  const at::Tensor queries = inputs.queries.detach().contiguous();
  const at::Tensor keys = inputs.keys.detach().contiguous();
  const at::Tensor positive = inputs.positive_index.contiguous();
  const at::Tensor self = inputs.self_index.contiguous();
  const at::Tensor inverse_temperature =
      inputs.inverse_temperature.detach().to(accumulate).contiguous();
  const int64_t rows = queries.size(0);
  const int64_t num_keys = keys.size(0);
  const int64_t dim = queries.size(1);
  const bool want_grad = coefficient.defined();
  const bool have_lse = lse_in.defined();
  const auto accumulate_options = queries.options().dtype(accumulate);

  RowPassResult result;
  result.lse = have_lse ? lse_in.contiguous() : at::empty({rows}, accumulate_options);
  result.row_loss = at::empty({rows}, accumulate_options);
  if (want_grad) {
    result.grad_queries = at::empty({rows, dim}, accumulate_options);
    result.grad_inverse_temperature = at::empty({rows}, accumulate_options);
    if (grad_keys) result.grad_keys = at::zeros({num_keys, dim}, accumulate_options);
  }
  if (rows == 0) return result;
  const at::Tensor coefficients = want_grad ? coefficient.contiguous() : at::Tensor();
  const int64_t block_rows =
      std::clamp<int64_t>(kScratchElements / std::max<int64_t>(num_keys, 1), 1, rows);
  at::Tensor scratch = at::empty({block_rows, num_keys}, queries.options());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor keys_t = keys.t();

  for (int64_t row0 = 0; row0 < rows; row0 += block_rows) {
    const int64_t count = std::min(block_rows, rows - row0);
    const at::Tensor block_queries = queries.narrow(0, row0, count);
    at::Tensor similarity = scratch.narrow(0, 0, count);
    at::mm_out(similarity, block_queries, keys_t);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::ScalarType::Half, at::ScalarType::BFloat16, queries.scalar_type(), "tase_loss_rows",
        [&] {
          using acc_t = at::opmath_type<scalar_t>;
          const auto grid = static_cast<unsigned int>(count);
          row_logsumexp_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
              similarity.data_ptr<scalar_t>(), num_keys, inverse_temperature.data_ptr<acc_t>(),
              positive.data_ptr<int64_t>(), self.data_ptr<int64_t>(), row0, have_lse,
              result.lse.data_ptr<acc_t>(), result.row_loss.data_ptr<acc_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          if (want_grad) {
            row_grad_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
                similarity.data_ptr<scalar_t>(), num_keys, inverse_temperature.data_ptr<acc_t>(),
                positive.data_ptr<int64_t>(), self.data_ptr<int64_t>(),
                coefficients.data_ptr<acc_t>(), result.lse.data_ptr<acc_t>(), row0,
                result.grad_inverse_temperature.data_ptr<acc_t>());
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          }
        });
    if (!want_grad) continue;
    result.grad_queries.narrow(0, row0, count).copy_(at::mm(similarity, keys));
    if (grad_keys) result.grad_keys.add_(at::mm(similarity.t(), block_queries));
  }
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(tase_loss, CUDA, m) {
  m.impl("contrastive_forward", &forward_op<row_pass_cuda>);
  m.impl("contrastive_forward_with_grad", &forward_with_grad_op<row_pass_cuda>);
  m.impl("contrastive_backward", &backward_op<row_pass_cuda>);
}

}  // namespace tase_loss
