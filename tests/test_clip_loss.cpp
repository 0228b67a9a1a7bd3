// The fused CLIP contrastive loss: golden loss, logits and all three gradients; agreement with
// the unfused ops (l2_normalize, softmax_cross_entropy) and a float64 loop reference; float64
// finite-difference gradchecks (random, ones, arange; B = 1 and primes; E = 1 and primes);
// gradients only for the inputs that ask; stability at the clamped scale; bad arguments.
#include <cmath>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "tests/support.h"

using namespace clipcu;
using namespace clipcu::test;

namespace {

// The loss written out in float64 loops, straight from the definition.
double reference_loss(const Tensor& img, const Tensor& txt, double log_scale, std::vector<double>* logits) {
  const int64_t B = img.size(0), E = img.size(1);
  std::vector<double> a = img.to_f64_vector(), b = txt.to_f64_vector();
  for (std::vector<double>* v : {&a, &b}) {
    for (int64_t r = 0; r < B; ++r) {
      double s = 0;
      for (int64_t e = 0; e < E; ++e) s += (*v)[size_t(r * E + e)] * (*v)[size_t(r * E + e)];
      for (int64_t e = 0; e < E; ++e) (*v)[size_t(r * E + e)] /= std::max(std::sqrt(s), 1e-12);
    }
  }
  logits->assign(size_t(B * B), 0.0);
  for (int64_t i = 0; i < B; ++i)
    for (int64_t j = 0; j < B; ++j) {
      double d = 0;
      for (int64_t e = 0; e < E; ++e) d += a[size_t(i * E + e)] * b[size_t(j * E + e)];
      (*logits)[size_t(i * B + j)] = std::exp(log_scale) * d;
    }
  double loss = 0;
  for (int64_t i = 0; i < B; ++i) {
    double sr = 0, sc = 0;
    for (int64_t j = 0; j < B; ++j) {
      sr += std::exp((*logits)[size_t(i * B + j)]);
      sc += std::exp((*logits)[size_t(j * B + i)]);
    }
    loss += std::log(sr) + std::log(sc) - 2 * (*logits)[size_t(i * B + i)];
  }
  return loss / (2.0 * double(B));
}

}  // namespace

TEST_CASE("clip_loss matches the golden loss, logits and all three gradients") {
  const st::File& g = golden("ops.safetensors");
  for (DType dt : {DType::F32, DType::F64}) {
    WorstError worst;
    worst.group = std::string("clip_loss golden ") + std::string(dtype_name(dt));
    // F32 within the README's tolerances; F64 within the float32 rounding of the goldens
    const double tol_fwd = dt == DType::F32 ? 1e-5 : 1e-6, tol_grad = dt == DType::F32 ? 1e-4 : 1e-6;
    tape().clear();
    Tensor img = g.get("clip_loss.image_features", dt).clone().set_requires_grad(true);
    Tensor txt = g.get("clip_loss.text_features", dt).clone().set_requires_grad(true);
    Tensor ls = g.get("clip_loss.log_scale", dt).clone().set_requires_grad(true);
    ops::ClipLossOut out = ops::clip_loss(img, txt, ls);
    REQUIRE(out.loss.shape() == Shape{1});
    CHECK_FALSE(out.logits_per_image.requires_grad());
    struct Item {
      const char* name;
      Tensor got;
      double tol;
    };
    tape().backward(out.loss);
    for (const Item& it : {Item{"clip_loss.loss", out.loss, tol_fwd},
                           Item{"clip_loss.logits_per_image", out.logits_per_image, tol_fwd},
                           Item{"clip_loss.grad_image_features", img.grad(), tol_grad},
                           Item{"clip_loss.grad_text_features", txt.grad(), tol_grad},
                           Item{"clip_loss.grad_log_scale", ls.grad(), tol_grad}}) {
      check_close(it.got, g.get(it.name), it.tol, it.name);
      worst.add(it.name, rel_err(it.got, g.get(it.name)));
    }
  }
}

TEST_CASE("clip_loss agrees with a float64 loop reference and with the unfused ops") {
  for (auto [B, E] : {std::pair<int64_t, int64_t>{5, 3}, {1, 4}, {11, 7}}) {
    Tensor img = make_input({B, E}, Fill::Random, 41, false), txt = make_input({B, E}, Fill::Random, 42, false);
    Tensor ls = Tensor::full({1}, 2.3, DType::F64);
    std::vector<double> ref_logits;
    const double ref = reference_loss(img, txt, 2.3, &ref_logits);
    ops::ClipLossOut out = ops::clip_loss(img, txt, ls);
    CHECK(out.loss.item() == doctest::Approx(ref).epsilon(1e-12));
    check_close(out.logits_per_image, Tensor::from_vector(ref_logits, {B, B}), 1e-12, "logits vs loop reference");
    // unfused: CE over rows of the logits and over rows of their transpose, averaged
    Tensor labels = Tensor::arange({B}, DType::I64);
    Tensor per_text = ops::permute(out.logits_per_image, {1, 0});
    const double unfused = 0.5 * (ops::softmax_cross_entropy(out.logits_per_image, labels).item() +
                                  ops::softmax_cross_entropy(per_text, labels).item());
    CHECK(out.loss.item() == doctest::Approx(unfused).epsilon(1e-12));
  }
}

TEST_CASE("clip_loss gradchecks: features and log-scale, odd sizes, three fills") {
  struct Case {
    int64_t B, E;
  };
  for (Case c : {Case{2, 3}, Case{3, 2}, Case{7, 13}, Case{5, 8}, Case{13, 5}}) {
    for (Fill f : {Fill::Random, Fill::Ones, Fill::Arange}) {
      Tensor img = make_input({c.B, c.E}, f, 51);
      Tensor txt = make_input({c.B, c.E}, f == Fill::Ones ? Fill::Random : f, 52);  // ones twice: all logits equal
      Tensor ls = make_input({1}, f, 53);
      gradcheck([](const std::vector<Tensor>& in) { return ops::clip_loss(in[0], in[1], in[2]).loss; },
                {img, txt, ls}, "clip_loss B=" + std::to_string(c.B) + " E=" + std::to_string(c.E));
    }
  }
  // a scalar [] log-scale is accepted like [1]
  Tensor s0 = Tensor::full({}, 0.7, DType::F64).set_requires_grad(true);
  Tensor i2 = make_input({4, 3}, Fill::Random, 61), t2 = make_input({4, 3}, Fill::Random, 62);
  gradcheck([](const std::vector<Tensor>& in) { return ops::clip_loss(in[0], in[1], in[2]).loss; }, {i2, t2, s0},
            "clip_loss scalar log-scale");
}

TEST_CASE("clip_loss at degenerate sizes: closed forms") {
  // Where a gradient is zero in exact arithmetic, a finite-difference check would compare
  // rounding noise with zero; these cases check the closed form with an absolute bound.
  auto max_abs = [](const Tensor& t) {
    double m = 0;
    for (double v : t.to_f64_vector()) m = std::max(m, std::fabs(v));
    return m;
  };
  // B = 1: one logit, both cross entropies are 0, every gradient is 0
  tape().clear();
  Tensor img = make_input({1, 5}, Fill::Random, 81), txt = make_input({1, 5}, Fill::Arange, 82);
  Tensor ls = make_input({1}, Fill::Random, 83);
  Tensor loss = ops::clip_loss(img, txt, ls).loss;
  CHECK(std::fabs(loss.item()) < 1e-15);
  tape().backward(loss);
  CHECK(max_abs(img.grad()) < 1e-14);
  CHECK(max_abs(txt.grad()) < 1e-14);
  CHECK(max_abs(ls.grad()) < 1e-14);
  // all rows equal on both sides: every logit equal, loss = log B, every gradient 0
  tape().clear();
  Tensor i1 = make_input({3, 4}, Fill::Ones, 0), t1 = make_input({3, 4}, Fill::Ones, 0);
  Tensor s1 = make_input({1}, Fill::Ones, 0);
  loss = ops::clip_loss(i1, t1, s1).loss;
  CHECK(loss.item() == doctest::Approx(std::log(3.0)).epsilon(1e-14));
  tape().backward(loss);
  CHECK(max_abs(i1.grad()) < 1e-14);
  CHECK(max_abs(t1.grad()) < 1e-14);
  CHECK(max_abs(s1.grad()) < 1e-14);
  // E = 1: normalized features are signs, so the feature gradients are 0; the log-scale's is not
  for (Fill f : {Fill::Random, Fill::Arange}) {
    tape().clear();
    Tensor ie = make_input({5, 1}, f, 84), te = make_input({5, 1}, Fill::Random, 85);
    Tensor se = make_input({1}, f, 86);
    tape().backward(ops::clip_loss(ie, te, se).loss);
    CHECK(max_abs(ie.grad()) < 1e-14);
    CHECK(max_abs(te.grad()) < 1e-14);
    Tensor ie0 = make_input({5, 1}, f, 84, false), te0 = make_input({5, 1}, Fill::Random, 85, false);
    gradcheck([ie0, te0](const std::vector<Tensor>& in) { return ops::clip_loss(ie0, te0, in[0]).loss; }, {se},
              "clip_loss E=1 log-scale");
  }
}

TEST_CASE("clip_loss writes gradients only into inputs that require them, and accumulates") {
  tape().clear();
  Tensor img = make_input({4, 6}, Fill::Random, 71, false);
  Tensor txt = make_input({4, 6}, Fill::Random, 72, true);
  Tensor ls = Tensor::full({1}, 1.5, DType::F64);
  Tensor loss = ops::clip_loss(img, txt, ls).loss;
  tape().backward(loss);
  CHECK_FALSE(img.has_grad());
  CHECK_FALSE(ls.has_grad());
  REQUIRE(txt.has_grad());
  std::vector<double> once = txt.grad().to_f64_vector();
  // a second forward + backward adds to the gradient (the tape's += contract)
  tape().backward(ops::clip_loss(img, txt, ls).loss);
  std::vector<double> twice = txt.grad().to_f64_vector();
  double worst = 0;
  for (size_t i = 0; i < once.size(); ++i) worst = std::max(worst, std::fabs(twice[i] - 2 * once[i]));
  CHECK(worst < 1e-15);
  // nothing requires a gradient: nothing is recorded
  Tensor plain = Tensor::ones({2, 2});
  ops::clip_loss(plain, plain, Tensor::zeros({1}));
  CHECK(tape().size() == 0);
}

TEST_CASE("clip_loss is stable at the clamped scale with identical features") {
  tape().clear();
  Rng rng(9);
  Tensor f = Tensor::randn({16, 32}, rng);
  Tensor img = f.clone().set_requires_grad(true), txt = f.clone().set_requires_grad(true);
  Tensor ls = Tensor::full({1}, std::log(100.0)).set_requires_grad(true);
  Tensor loss = ops::clip_loss(img, txt, ls).loss;
  CHECK(std::isfinite(loss.item()));
  CHECK(loss.item() >= 0.0);
  tape().backward(loss);
  bool finite = true;
  for (const Tensor& g : {img.grad(), txt.grad(), ls.grad()})
    for (float v : g.to_f32_vector()) finite = finite && std::isfinite(v);
  CHECK(finite);
}

TEST_CASE("clip_loss rejects bad arguments") {
  Tensor a = Tensor::zeros({4, 8}), ls = Tensor::zeros({1});
  CHECK_THROWS_WITH_AS(ops::clip_loss(a, Tensor::zeros({4, 7}), ls), doctest::Contains("text_features"), Error);
  CHECK_THROWS_AS(ops::clip_loss(a, Tensor::zeros({3, 8}), ls), Error);
  CHECK_THROWS_WITH_AS(ops::clip_loss(a, a, Tensor::zeros({2})), doctest::Contains("log_scale"), Error);
  CHECK_THROWS_AS(ops::clip_loss(a, a, Tensor::zeros({1}, DType::F64)), Error);  // mixed dtypes
  CHECK_THROWS_AS(ops::clip_loss(Tensor::zeros({8}), Tensor::zeros({8}), ls), Error);
  CHECK_THROWS_AS(ops::clip_loss(Tensor::zeros({0, 8}), Tensor::zeros({0, 8}), ls), Error);
  CHECK_THROWS_AS(ops::clip_loss(a, a, Tensor()), Error);
}
