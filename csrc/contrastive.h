// Shared declarations of the fused temperature-scaled softmax cross-entropy op.
//
// Contract (see tase_loss/ops/reference.py, the pure-PyTorch twin):
//   s[a, k]  = <queries[a], keys[k]>
//   z[a, k]  = inverse_temperature[a] * s[a, k]
//   lse[a]   = log sum_{k != self_index[a]} exp(z[a, k])       (self_index -1: no exclusion)
//   loss[a]  = weight[a] * (lse[a] - z[a, positive_index[a]])
//
// Every device kernel implements one "row pass": for blocks of rows against ALL keys it
// computes the exact lse (or reuses a given one) and, when row coefficients c[a] are given,
// the gradients of sum_a c[a] * (lse[a] - z[a, pos[a]]) with respect to the queries, the
// keys and the inverse temperatures; the op bodies pass c[a] = grad_loss[a] * weight[a].
// Only a (block_rows x N) scratch per thread and one (N x D) key-gradient accumulator per
// thread exist; never the M x N matrix.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace tase_loss {

struct RowInputs {
  at::Tensor queries;              // (M, D) floating
  at::Tensor keys;                 // (N, D) same dtype/device
  at::Tensor positive_index;       // (M,) int64 in [0, N)
  at::Tensor self_index;           // (M,) int64 in [-1, N)
  at::Tensor inverse_temperature;  // (M,) floating, > 0
  at::Tensor weight;               // (M,) floating
};

struct RowPassResult {
  at::Tensor lse;                       // (M,) accumulation dtype
  at::Tensor row_loss;                  // (M,) unweighted l_a = lse_a - z_a,pos
  at::Tensor grad_queries;              // (M, D) accumulation dtype, or undefined
  at::Tensor grad_keys;                 // (N, D) accumulation dtype, or undefined
  at::Tensor grad_inverse_temperature;  // (M,) accumulation dtype, or undefined
};

// coefficient: (M,) accumulation dtype, c[a] = dL/dloss[a] * weight[a]; undefined for a
// forward-only pass. lse: (M,) accumulation dtype to reuse, or undefined to compute it.
using RowPass = RowPassResult (*)(const RowInputs& inputs, const at::Tensor& coefficient,
                                  const at::Tensor& lse, bool grad_keys);

// float64 stays float64, every other floating dtype accumulates in float32.
at::ScalarType accumulation_type(at::ScalarType input_type);

// Shapes, dtypes and devices; indices are range-checked inside the kernels.
void check_inputs(const RowInputs& inputs, c10::DeviceType device);

// The three op bodies, written once over a device's row pass.
std::tuple<at::Tensor, at::Tensor> forward_with(RowPass pass, const RowInputs& inputs);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_with_grad_with(
    RowPass pass, const RowInputs& inputs, bool grad_keys);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_with(
    RowPass pass, const at::Tensor& grad_loss, const RowInputs& inputs, const at::Tensor& lse,
    bool grad_keys);

// The op signatures over a device's row pass, so that each device file only registers
// `forward_op<its_pass>` and friends.
template <RowPass pass>
std::tuple<at::Tensor, at::Tensor> forward_op(const at::Tensor& queries, const at::Tensor& keys,
                                              const at::Tensor& positive_index,
                                              const at::Tensor& self_index,
                                              const at::Tensor& inverse_temperature,
                                              const at::Tensor& weight) {
  return forward_with(
      pass, RowInputs{queries, keys, positive_index, self_index, inverse_temperature, weight});
}

template <RowPass pass>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_with_grad_op(
    const at::Tensor& queries, const at::Tensor& keys, const at::Tensor& positive_index,
    const at::Tensor& self_index, const at::Tensor& inverse_temperature, const at::Tensor& weight,
    bool grad_keys) {
  return forward_with_grad_with(
      pass, RowInputs{queries, keys, positive_index, self_index, inverse_temperature, weight},
      grad_keys);
}

template <RowPass pass>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_op(
    const at::Tensor& grad_loss, const at::Tensor& queries, const at::Tensor& keys,
    const at::Tensor& positive_index, const at::Tensor& self_index,
    const at::Tensor& inverse_temperature, const at::Tensor& weight, const at::Tensor& lse,
    bool grad_keys) {
  return backward_with(
      pass, grad_loss,
      RowInputs{queries, keys, positive_index, self_index, inverse_temperature, weight}, lse,
      grad_keys);
}

}  // namespace tase_loss
