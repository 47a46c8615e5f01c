// Schema of the tase_loss op family, the device-independent op bodies and the Python
// module stub that loads this library (importing tase_loss._C registers the ops).
#include "contrastive.h"

#include <Python.h>
#include <torch/library.h>

#ifndef TASE_LOSS_TORCH_VERSION
#define TASE_LOSS_TORCH_VERSION unknown
#endif
#define TASE_LOSS_STRINGIZE_VALUE(value) #value
#define TASE_LOSS_STRINGIZE(macro) TASE_LOSS_STRINGIZE_VALUE(macro)

namespace tase_loss {

at::ScalarType accumulation_type(at::ScalarType input_type) {
  return input_type == at::kDouble ? at::kDouble : at::kFloat;
}

void check_inputs(const RowInputs& inputs, c10::DeviceType device) {
  const auto& q = inputs.queries;
  const auto& k = inputs.keys;
  TORCH_CHECK(q.dim() == 2 && k.dim() == 2, "tase_loss: queries and keys must be 2-D, got ",
              q.sizes(), " and ", k.sizes());
  TORCH_CHECK(q.size(1) == k.size(1), "tase_loss: queries have ", q.size(1),
              " features but keys have ", k.size(1));
  TORCH_CHECK(q.scalar_type() == k.scalar_type(), "tase_loss: queries are ", q.scalar_type(),
              " but keys are ", k.scalar_type());
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                  dtype == at::kBFloat16,
              "tase_loss: queries must be float16, bfloat16, float32 or float64, got ", dtype);
  const int64_t rows = q.size(0);
  for (const auto* index : {&inputs.positive_index, &inputs.self_index}) {
    TORCH_CHECK(index->scalar_type() == at::kLong && index->dim() == 1 && index->size(0) == rows,
                "tase_loss: positive_index and self_index must be int64 of shape (", rows,
                ",), got ", index->scalar_type(), " ", index->sizes());
  }
  for (const auto* row_value : {&inputs.inverse_temperature, &inputs.weight}) {
    TORCH_CHECK(row_value->is_floating_point() && row_value->dim() == 1 &&
                    row_value->size(0) == rows,
                "tase_loss: inverse_temperature and weight must be floating of shape (", rows,
                ",), got ", row_value->scalar_type(), " ", row_value->sizes());
  }
  for (const auto* tensor : {&q, &k, &inputs.positive_index, &inputs.self_index,
                             &inputs.inverse_temperature, &inputs.weight}) {
    TORCH_CHECK(tensor->device().type() == device && tensor->device() == q.device(),
                "tase_loss: every input must be on ", q.device(), ", got one on ",
                tensor->device());
  }
}

std::tuple<at::Tensor, at::Tensor> forward_with(RowPass pass, const RowInputs& inputs) {
  auto result = pass(inputs, at::Tensor(), at::Tensor(), false);
  auto weight = inputs.weight.to(result.lse.scalar_type());
  return {weight * result.row_loss, result.lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_with_grad_with(
    RowPass pass, const RowInputs& inputs, bool grad_keys) {
  const auto accumulate = accumulation_type(inputs.queries.scalar_type());
  auto weight = inputs.weight.to(accumulate).contiguous();
  // The gradient for grad_loss == 1 on every row. The caller (tase_loss/ops/fused.py) scales it
  // by the actual grad_loss when it knows that one is uniform (a mean or sum of the rows),
  // so such a loss costs the three GEMMs Q K^T, P K and P^T Q, not four.
  auto result = pass(inputs, weight, at::Tensor(), grad_keys);
  auto unit_grad_keys = grad_keys ? result.grad_keys
                                  : at::empty({0}, inputs.keys.options().dtype(accumulate));
  return {weight * result.row_loss, result.lse, result.grad_queries, unit_grad_keys,
          result.grad_inverse_temperature};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_with(
    RowPass pass, const at::Tensor& grad_loss, const RowInputs& inputs, const at::Tensor& lse,
    bool grad_keys) {
  const auto accumulate = lse.scalar_type();
  TORCH_CHECK(grad_loss.dim() == 1 && grad_loss.size(0) == inputs.queries.size(0),
              "tase_loss: grad_loss must have shape (", inputs.queries.size(0), ",), got ",
              grad_loss.sizes());
  auto grad = grad_loss.to(accumulate);
  auto coefficient = (grad * inputs.weight.to(accumulate)).contiguous();
  auto result = pass(inputs, coefficient, lse.contiguous(), grad_keys);
  return {result.grad_queries.to(inputs.queries.scalar_type()),
          grad_keys ? result.grad_keys.to(inputs.keys.scalar_type())
                    : at::empty({0}, inputs.keys.options()),
          result.grad_inverse_temperature.to(inputs.inverse_temperature.scalar_type()),
          (grad * result.row_loss).to(inputs.weight.scalar_type())};
}

TORCH_LIBRARY(tase_loss, m) {
  m.def(
      "contrastive_forward(Tensor queries, Tensor keys, Tensor positive_index, "
      "Tensor self_index, Tensor inverse_temperature, Tensor weight) -> (Tensor loss, Tensor lse)");
  m.def(
      "contrastive_forward_with_grad(Tensor queries, Tensor keys, Tensor positive_index, "
      "Tensor self_index, Tensor inverse_temperature, Tensor weight, bool grad_keys) -> "
      "(Tensor loss, Tensor lse, Tensor unit_grad_queries, Tensor unit_grad_keys, "
      "Tensor unit_grad_inverse_temperature)");
  // grad_keys=False: no key gradient is computed and the grad_keys output is empty (0,).
  m.def(
      "contrastive_backward(Tensor grad_loss, Tensor queries, Tensor keys, "
      "Tensor positive_index, Tensor self_index, Tensor inverse_temperature, Tensor weight, "
      "Tensor lse, bool grad_keys) -> "
      "(Tensor grad_queries, Tensor grad_keys, Tensor grad_inverse_temperature, "
      "Tensor grad_weight)");
}

}  // namespace tase_loss

// Importing tase_loss._C runs the static registrations above; the module itself only
// reports how it was built, so the loader can refuse a build made for another torch.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                   "Registers torch.ops.tase_loss (fused contrastive rows).", -1,
                                   nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
  PyModule_AddStringConstant(module, "torch_version", TASE_LOSS_STRINGIZE(TASE_LOSS_TORCH_VERSION));
#ifdef TASE_LOSS_WITH_CUDA
  PyModule_AddIntConstant(module, "with_cuda", 1);
#else
  PyModule_AddIntConstant(module, "with_cuda", 0);
#endif
  return module;
}
