// AdamW and gradient clipping: the golden step at t = 3, the update rule against a scalar
// computation over several steps, parameters without gradients and without decay, open_clip's
// decay rule, grad_norm / clip_grad_norm (PyTorch's rule, deterministic), and argument errors.
#include <cmath>
#include <string>
#include <vector>

#include "engine/optim/adamw.h"
#include "engine/rng.h"
#include "kernels/cpu/adamw.h"
#include "tests/support.h"

using namespace clipcu;
using namespace clipcu::test;
using clipcu::optim::AdamW;
using clipcu::optim::AdamWConfig;
using clipcu::optim::NamedParam;

namespace {
Tensor G(const std::string& name) { return golden("ops.safetensors").get(name).clone(); }

// The golden's settings (ops.safetensors __metadata__ "adamw").
AdamWConfig golden_config() {
  AdamWConfig c;
  c.lr = 1e-3;
  c.beta1 = 0.9;
  c.beta2 = 0.98;
  c.eps = 1e-6;
  c.weight_decay = 0.2;
  return c;
}
}  // namespace

TEST_CASE("adamw golden: one step at t = 3 from given moments (float32 and float64)") {
  for (DType dt : {DType::F32, DType::F64}) {
    const std::string tag = dt == DType::F32 ? " f32" : " f64";
    Tensor p = G("adamw.param").to(dt);
    AdamW opt({{"w", p, true}}, golden_config());
    opt.exp_avg()[0].copy_from(G("adamw.m"));
    opt.exp_avg_sq()[0].copy_from(G("adamw.v"));
    p.grad_buffer().copy_from(G("adamw.grad"));
    opt.set_steps(2);
    opt.step();
    CHECK(opt.steps() == 3);
    WorstError worst{"adamw golden" + tag, 0.0, {}};
    check_close(p, G("adamw.param_after"), 1e-5, "param_after" + tag);
    check_close(opt.exp_avg()[0], G("adamw.m_after"), 1e-5, "m_after" + tag);
    check_close(opt.exp_avg_sq()[0], G("adamw.v_after"), 1e-5, "v_after" + tag);
    worst.add("param_after", rel_err(p, G("adamw.param_after")));
    worst.add("m_after", rel_err(opt.exp_avg()[0], G("adamw.m_after")));
    worst.add("v_after", rel_err(opt.exp_avg_sq()[0], G("adamw.v_after")));
    // The step moves the parameter by ~lr per element: compare the update itself, not only the
    // (much larger) parameter, so an error in the update cannot hide under the 1e-5.
    Tensor upd = Tensor::zeros(p.shape(), DType::F64), upd_ref = Tensor::zeros(p.shape(), DType::F64);
    std::vector<double> p0 = G("adamw.param").to_f64_vector(), p1 = p.to_f64_vector(),
                        pr = G("adamw.param_after").to_f64_vector();
    for (size_t i = 0; i < p0.size(); ++i) {
      upd.data<double>()[i] = p1[i] - p0[i];
      upd_ref.data<double>()[i] = pr[i] - p0[i];
    }
    // the float32-rounded parameters limit this to ~1e-7 / 1e-3 relative
    check_close(upd, upd_ref, 1e-3, "update (param_after - param)" + tag);
  }
}

TEST_CASE("adamw: several steps against a scalar reference, decay flag, missing gradients") {
  const AdamWConfig cfg = golden_config();
  Rng rng(4);
  Tensor a = Tensor::randn({3, 5}, rng, 0, 1, DType::F64);  // decays
  Tensor b = Tensor::randn({5}, rng, 0, 1, DType::F64);     // no decay (decay = false)
  Tensor c = Tensor::randn({2, 2}, rng, 0, 1, DType::F64);  // never gets a gradient
  std::vector<double> ra = a.to_f64_vector(), rb = b.to_f64_vector(), c0 = c.to_f64_vector();
  std::vector<double> ma(ra.size()), va(ra.size()), mb(rb.size()), vb(rb.size());
  AdamW opt({{"a", a, true}, {"b", b, false}, {"c", c, true}}, cfg);
  const double lrs[] = {1e-3, 5e-4, 2e-3, 1e-3};
  auto ref_step = [&](std::vector<double>& p, std::vector<double>& m, std::vector<double>& v,
                      const std::vector<double>& g, double lr, double wd, int t) {
    for (size_t i = 0; i < p.size(); ++i) {
      p[i] *= 1 - lr * wd;
      m[i] = cfg.beta1 * m[i] + (1 - cfg.beta1) * g[i];
      v[i] = cfg.beta2 * v[i] + (1 - cfg.beta2) * g[i] * g[i];
      p[i] -= lr * (m[i] / (1 - std::pow(cfg.beta1, t))) / (std::sqrt(v[i] / (1 - std::pow(cfg.beta2, t))) + cfg.eps);
    }
  };
  for (int t = 1; t <= 4; ++t) {
    opt.zero_grad();
    CHECK_FALSE(a.has_grad());
    Tensor ga = Tensor::randn(a.shape(), rng, 0, 1, DType::F64), gb = Tensor::randn(b.shape(), rng, 0, 1, DType::F64);
    a.grad_buffer().copy_from(ga);
    b.grad_buffer().copy_from(gb);
    opt.step(lrs[t - 1]);
    ref_step(ra, ma, va, ga.to_f64_vector(), lrs[t - 1], cfg.weight_decay, t);
    ref_step(rb, mb, vb, gb.to_f64_vector(), lrs[t - 1], 0.0, t);
  }
  CHECK(opt.steps() == 4);
  check_close(a, Tensor::from_vector(ra, a.shape()), 1e-14, "decayed parameter after 4 steps");
  check_close(b, Tensor::from_vector(rb, b.shape()), 1e-14, "undecayed parameter after 4 steps");
  check_close(opt.exp_avg_sq()[0], Tensor::from_vector(va, a.shape()), 1e-14, "second moment after 4 steps");
  CHECK(c.to_f64_vector() == c0);  // no gradient: untouched, moments too
  CHECK(opt.exp_avg()[2].to_f64_vector() == std::vector<double>(4, 0.0));
  CHECK(opt.exp_avg_sq()[2].to_f64_vector() == std::vector<double>(4, 0.0));
}

TEST_CASE("adamw: first step from zero moments moves by ~lr * sign(g), plus decay") {
  // t = 1: m/(1-b1) = g, v/(1-b2) = g^2, so the update is lr * g / (|g| + eps).
  Tensor p = Tensor::from_vector(std::vector<float>{1.0f, -2.0f, 0.5f, 3.0f}, {2, 2});
  AdamWConfig cfg;
  cfg.lr = 0.01;
  cfg.weight_decay = 0.1;
  AdamW opt({{"p", p, true}}, cfg);
  p.grad_buffer().copy_from(Tensor::from_vector(std::vector<float>{0.3f, -4.0f, 1e-3f, 0.0f}, {2, 2}));
  opt.step();
  std::vector<float> got = p.to_f32_vector();
  const double p0[] = {1.0, -2.0, 0.5, 3.0}, g[] = {0.3, -4.0, 1e-3, 0.0};
  for (int i = 0; i < 4; ++i) {
    const double gf = double(float(g[i]));
    const double want = p0[i] * (1 - 0.01 * 0.1) - 0.01 * gf / (std::fabs(gf) + cfg.eps);
    CHECK(got[size_t(i)] == doctest::Approx(want).epsilon(1e-6));
  }
}

TEST_CASE("open_clip_decay: no decay for 1-d tensors, bn, ln, bias, logit_scale") {
  using optim::open_clip_decay;
  Tensor w4 = Tensor::zeros({4, 3, 3, 3}), w2 = Tensor::zeros({4, 3}), w1 = Tensor::zeros({4}), w0 = Tensor::zeros({});
  CHECK(open_clip_decay("visual.conv1.weight", w4));
  CHECK(open_clip_decay("visual.layer1.0.downsample.0.weight", w4));
  CHECK(open_clip_decay("transformer.resblocks.0.attn.in_proj_weight", w2));
  CHECK(open_clip_decay("positional_embedding", w2));
  CHECK(open_clip_decay("text_projection", w2));
  CHECK(open_clip_decay("token_embedding.weight", w2));
  CHECK_FALSE(open_clip_decay("visual.class_embedding", w1));  // 1-d
  CHECK_FALSE(open_clip_decay("logit_scale", w0));             // 0-d
  CHECK_FALSE(open_clip_decay("logit_scale", w2));             // by name
  CHECK_FALSE(open_clip_decay("visual.bn1.weight", w2));
  CHECK_FALSE(open_clip_decay("ln_final.weight", w2));
  CHECK_FALSE(open_clip_decay("transformer.resblocks.0.ln_1.weight", w2));
  CHECK_FALSE(open_clip_decay("transformer.resblocks.0.attn.in_proj_bias", w2));
  CHECK_FALSE(open_clip_decay("visual.attnpool.c_proj.bias", w1));
}

TEST_CASE("grad_norm and clip_grad_norm follow PyTorch's clip_grad_norm_") {
  Tensor a = Tensor::from_vector(std::vector<float>{3.0f, 0.0f}, {2});
  Tensor b = Tensor::from_vector(std::vector<double>{0.0, 4.0, 12.0}, {3});
  Tensor none = Tensor::zeros({5});  // no gradient: counts as zero
  a.grad_buffer().copy_from(a);
  b.grad_buffer().copy_from(b);
  std::vector<Tensor> ps{a, b, none};
  CHECK(optim::grad_norm(ps) == 13.0);
  // below the threshold: untouched
  CHECK(optim::clip_grad_norm(ps, 13.0) == 13.0);
  CHECK(a.grad().to_f32_vector() == std::vector<float>{3.0f, 0.0f});
  // above: scaled by max_norm / (norm + 1e-6)
  CHECK(optim::clip_grad_norm(ps, 1.0) == 13.0);
  const double coef = 1.0 / (13.0 + 1e-6);
  CHECK(b.grad().to_f64_vector()[2] == doctest::Approx(12.0 * coef).epsilon(1e-15));
  CHECK(a.grad().to_f32_vector()[0] == doctest::Approx(3.0 * coef).epsilon(1e-7));
  CHECK(optim::grad_norm(ps) == doctest::Approx(13.0 * coef).epsilon(1e-7));
  CHECK_FALSE(none.has_grad());
  // a non-finite norm is reported and the gradients are left for the caller to discard
  b.grad_buffer().data<double>()[0] = INFINITY;
  std::vector<double> before = a.grad().to_f64_vector();
  CHECK(std::isinf(optim::clip_grad_norm(ps, 1.0)));
  CHECK(a.grad().to_f64_vector() == before);
  b.grad_buffer().data<double>()[0] = NAN;
  CHECK(std::isnan(optim::grad_norm(ps)));
  CHECK_THROWS_AS(optim::clip_grad_norm(ps, -1.0), Error);
}

TEST_CASE("grad_norm over many blocks: accurate and repeatable bit for bit") {
  Rng rng(21);
  Tensor big = Tensor::randn({100003}, rng, 0, 1, DType::F32);  // several 16K blocks, a ragged tail
  big.grad_buffer().copy_from(big);
  Tensor small = Tensor::randn({7, 3}, rng, 0, 1, DType::F32);
  small.grad_buffer().copy_from(small);
  std::vector<Tensor> ps{big, small};
  long double ref = 0;
  for (const Tensor* t : {&big, &small})
    for (float v : t->to_f32_vector()) ref += (long double)v * (long double)v;
  const double n1 = optim::grad_norm(ps), n2 = optim::grad_norm(ps);
  CHECK(n1 == n2);
  CHECK(n1 == doctest::Approx(double(std::sqrt(ref))).epsilon(1e-13));
  CHECK(cpu::sum_squares<float>(0, nullptr) == 0.0);
}

TEST_CASE("adamw rejects bad arguments with clipcu::Error") {
  AdamWConfig bad;
  bad.beta1 = 1.0;
  CHECK_THROWS_AS(AdamW({{"p", Tensor::zeros({2}), true}}, bad), Error);
  bad = AdamWConfig();
  bad.lr = -1;
  CHECK_THROWS_AS(AdamW({{"p", Tensor::zeros({2}), true}}, bad), Error);
  CHECK_THROWS_AS(AdamW({{"p", Tensor::zeros({2}, DType::BF16), true}}, AdamWConfig()), Error);
  CHECK_THROWS_AS(AdamW({{"p", Tensor::zeros({2}, DType::I64), true}}, AdamWConfig()), Error);
  CHECK_THROWS_AS(AdamW({{"p", Tensor(), true}}, AdamWConfig()), Error);
  Tensor p = Tensor::zeros({2, 3});
  AdamW opt({{"p", p, true}}, AdamWConfig());
  p.grad_buffer().fill(1.0);
  opt.exp_avg()[0] = Tensor::zeros({3, 2});  // a checkpoint with the wrong shape
  CHECK_THROWS_AS(opt.step(), Error);
  opt.exp_avg()[0] = Tensor::zeros({2, 3});
  CHECK_NOTHROW(opt.step());
  CHECK_THROWS_AS(opt.step(std::nan("")), Error);
}
