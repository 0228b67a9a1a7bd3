#include "engine/models/text_transformer.h"

#include <cmath>
#include <vector>

#include "engine/ops.h"

namespace clipcu::models {

TextTransformer::TextTransformer(const TextConfig& cfg, int64_t embed_dim)
    : T(cfg.context_length),
      V(cfg.vocab_size),
      W(cfg.width),
      E(embed_dim),
      eos_id(cfg.eos_id),
      token_embedding(cfg.vocab_size, cfg.width),
      transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_width(), cfg.act, cfg.ln_eps),
      ln_final(cfg.width, cfg.ln_eps) {
  positional_embedding = Tensor::zeros({T, W});
  text_projection = Tensor::zeros({W, E});
  register_module("token_embedding", &token_embedding);
  register_parameter("positional_embedding", &positional_embedding);
  register_module("transformer", &transformer);
  register_module("ln_final", &ln_final);
  register_parameter("text_projection", &text_projection);
}

Tensor TextTransformer::pool_positions(const Tensor& ids) const {
  const int64_t B = ids.size(0), L = ids.size(1);
  std::vector<int64_t> v = ids.to_i64_vector(), pos(size_t(B), -1);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t* row = v.data() + b * L;
    if (eos_id < 0) {
      int64_t best = 0;  // the first maximum, as torch.argmax
      for (int64_t t = 1; t < L; ++t)
        if (row[t] > row[best]) best = t;
      pos[size_t(b)] = best;
    } else {
      for (int64_t t = 0; t < L && pos[size_t(b)] < 0; ++t)
        if (row[t] == eos_id) pos[size_t(b)] = t;
      CLIPCU_CHECK(pos[size_t(b)] >= 0, "TextTransformer: token row " << b << " has no end-of-text token (id "
                                                                          << eos_id << ") to pool at");
    }
  }
  return Tensor::from_ints(pos, {B});
}

Tensor TextTransformer::forward(const Tensor& ids) {
  nn::ModuleScope scope(*this);
  CLIPCU_CHECK(ids.dim() == 2 && (ids.dtype() == DType::I64 || ids.dtype() == DType::I32),
               "TextTransformer: token ids must be an integer tensor [B, T], got " << ids.str());
  const int64_t B = ids.size(0), L = ids.size(1);
  CLIPCU_CHECK(B > 0 && L > 0 && L <= T, "TextTransformer: token ids " << shape_str(ids.shape())
                                                                      << " do not fit the context length " << T);
  // The checks and the pooled positions need the ids on the host: ids given on the host (the
  // trainer's batches) are read there and uploaded once; ids already on a device are read back.
  const Tensor host_ids = ids.device().is_cpu() ? ids : ids.to(Device::cpu());
  {
    std::vector<int64_t> v = host_ids.to_i64_vector();
    for (size_t i = 0; i < v.size(); ++i)
      CLIPCU_CHECK(v[i] >= 0 && v[i] < V, "TextTransformer: token id " << v[i] << " at [" << int64_t(i) / L << ", "
                                                                     << int64_t(i) % L
                                                                     << "] is outside the vocabulary (size " << V << ")");
  }
  const Device device = token_embedding.weight.device();
  const Tensor dev_ids = ids.device() == device ? ids : nn::to_model_input(ids, device, token_embedding.weight.dtype());
  Tensor x = token_embedding.forward(dev_ids);  // [B, L, W]
  x = ops::add(x, L == T ? positional_embedding : ops::slice(positional_embedding, 0, 0, L));
  x = transformer.forward(x, /*causal=*/true);
  // ln_final normalizes each token on its own, so pooling first and normalizing the B pooled
  // rows gives OpenAI's numbers (normalize all, then pool) for 1/L of the work.
  Tensor idx = pool_positions(host_ids);
  if (!x.device().is_cpu()) idx = nn::to_model_input(idx, x.device(), x.dtype());
  x = ops::gather_rows(x, idx);             // [B, W]
  x = ln_final.forward(x);
  return ops::matmul(x, text_projection);   // [B, E]
}

void TextTransformer::reset_own_parameters(Rng& rng) {
  const double layers = double(transformer.layers);
  const double attn_std = 1.0 / std::sqrt(double(W));
  const double proj_std = attn_std / std::sqrt(2.0 * std::max(layers, 1.0));
  const double fc_std = 1.0 / std::sqrt(2.0 * double(W));
  auto normal = [&](Tensor& t, const std::string& label, double std) {
    Rng r = rng.fork(label);
    nn::init_normal(t, r, std);
  };
  normal(token_embedding.weight, "token_embedding.weight", 0.02);
  normal(positional_embedding, "positional_embedding", 0.01);
  for (auto& block : transformer.resblocks) {
    const std::string p = "transformer." + block->name() + ".";
    normal(block->attn.in_proj_weight, p + "attn.in_proj_weight", attn_std);
    normal(block->attn.out_proj.weight, p + "attn.out_proj.weight", proj_std);
    normal(block->mlp.c_fc.weight, p + "mlp.c_fc.weight", fc_std);
    normal(block->mlp.c_proj.weight, p + "mlp.c_proj.weight", proj_std);
  }
  normal(text_projection, "text_projection", 1.0 / std::sqrt(double(W)));
}

}  // namespace clipcu::models
