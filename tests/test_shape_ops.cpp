// Shape ops (reshape, permute, slice, concat, gather_rows, mean, sum_all): forward values
// against index arithmetic written out here, float64 finite-difference gradchecks on random,
// ones and arange inputs of odd sizes, gradient accumulation through fan-out, and bad
// arguments throwing clipcu::Error.
#include <algorithm>
#include <cmath>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "tests/support.h"

using namespace clipcu;
using namespace clipcu::test;

namespace {

// Row-major strides of a shape.
std::vector<int64_t> strides_of(const Shape& s) {
  std::vector<int64_t> st(s.size(), 1);
  for (size_t k = s.size(); k-- > 1;) st[k - 1] = st[k] * s[k];
  return st;
}

// Multi-index of flat position i in shape s.
std::vector<int64_t> unravel(int64_t i, const Shape& s) {
  std::vector<int64_t> idx(s.size());
  for (size_t k = s.size(); k-- > 0;) {
    idx[k] = i % s[k];
    i /= s[k];
  }
  return idx;
}

}  // namespace

TEST_CASE("reshape: values, -1 inference, gradient, errors") {
  for (DType dt : {DType::F32, DType::F64}) {
    Tensor x = Tensor::arange({3, 5, 7}, dt);
    Tensor y = ops::reshape(x, {5, -1});
    CHECK(y.shape() == Shape{5, 21});
    CHECK(y.to_f64_vector() == x.to_f64_vector());
    CHECK(y.dtype() == dt);
    CHECK(y.raw() == x.raw());  // a view: no copy, the storage is shared
    y.fill(0.0);
    CHECK(x.to_f64_vector()[4] == 0.0);
  }
  // A reshape of a view of a view keeps the offset (rows() starts past the first row).
  {
    Tensor x = Tensor::arange({4, 6});
    Tensor y = ops::reshape(x.rows(1, 2), {3, 4});
    CHECK(y.to_f32_vector() == std::vector<float>{6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17});
  }
  // On the tape: the view is a new variable with its own gradient, reshaped back into x's,
  // accumulated with x's other uses; x's value is never touched by backward.
  {
    tape().clear();
    Tensor x = make_input({2, 3, 5}, Fill::Random, 12);
    const std::vector<double> xv = x.to_f64_vector();
    Tensor y = ops::reshape(x, {6, 5});
    CHECK(y.requires_grad());
    CHECK(y.id() != x.id());
    CHECK(y.name() == "reshape");
    Tensor z = ops::add(ops::scale(y, 2.0), ops::reshape(x, {6, 5}));  // x used twice
    backward(z, Tensor::ones({6, 5}, DType::F64));
    CHECK(x.grad().shape() == x.shape());
    CHECK(x.grad().to_f64_vector() == std::vector<double>(30, 3.0));
    CHECK(x.to_f64_vector() == xv);
  }
  for (Fill f : kFills) {
    Tensor x = make_input({3, 1, 5}, f, 11);
    gradcheck([](const std::vector<Tensor>& in) { return ops::reshape(in[0], {-1, 3}); }, {x},
              std::string("reshape ") + fill_name(f));
  }
  Tensor x = Tensor::arange({2, 3});
  CHECK_THROWS_WITH_AS(ops::reshape(x, {4, 2}), doctest::Contains("reshape"), Error);
  CHECK_THROWS_AS(ops::reshape(x, {-1, -1}), Error);
  CHECK_THROWS_AS(ops::reshape(x, {4, -1}), Error);
  CHECK_THROWS_AS(ops::reshape(Tensor::from_ints({1, 2}, {2}), {2, 1}), Error);
}

TEST_CASE("permute: values against index arithmetic, inverse gradient, errors") {
  const std::vector<std::pair<Shape, std::vector<int>>> cases = {
      {{2, 3, 5}, {2, 0, 1}},
      {{2, 3, 1, 5}, {0, 2, 1, 3}},  // heads: [B, T, H, D] -> [B, H, T, D]
      {{7}, {0}},
      {{3, 2, 5, 1}, {3, 2, 0, 1}},
      {{4, 6}, {-1, 0}},  // a negative dim counts from the end
  };
  for (const auto& [shape, dims] : cases) {
    Tensor x = Tensor::arange(shape, DType::F64);
    Tensor y = ops::permute(x, dims);
    const int64_t nd = int64_t(shape.size());
    Shape out(shape.size());
    for (size_t k = 0; k < dims.size(); ++k) out[k] = shape[size_t((dims[k] + nd) % nd)];
    REQUIRE(y.shape() == out);
    std::vector<int64_t> xs = strides_of(shape);
    std::vector<double> yv = y.to_f64_vector(), xv = x.to_f64_vector();
    bool all = true;
    for (int64_t i = 0; i < y.numel(); ++i) {
      std::vector<int64_t> idx = unravel(i, out);
      int64_t src = 0;
      for (size_t k = 0; k < dims.size(); ++k) src += idx[k] * xs[size_t((dims[k] + nd) % nd)];
      all = all && yv[size_t(i)] == xv[size_t(src)];
    }
    CHECK_MESSAGE(all, "permute of " << shape_str(shape));
    for (Fill f : kFills) {
      Tensor xi = make_input(shape, f, 5);
      gradcheck([&dims = dims](const std::vector<Tensor>& in) { return ops::permute(in[0], dims); }, {xi},
                "permute " + shape_str(shape) + " " + fill_name(f));
    }
  }
  Tensor f32 = ops::permute(Tensor::arange({2, 3}), {1, 0});
  CHECK(f32.to_f32_vector() == std::vector<float>{0, 3, 1, 4, 2, 5});
  Tensor x = Tensor::arange({2, 3, 4});
  CHECK_THROWS_WITH_AS(ops::permute(x, {0, 1}), doctest::Contains("permute"), Error);
  CHECK_THROWS_AS(ops::permute(x, {0, 0, 1}), Error);
  CHECK_THROWS_AS(ops::permute(x, {0, 1, 3}), Error);
}

TEST_CASE("slice: every dim, values, gradient scatters into zeros, errors") {
  const Shape shape{3, 5, 7};
  Tensor x = Tensor::arange(shape, DType::F64);
  std::vector<double> xv = x.to_f64_vector();
  std::vector<int64_t> xs = strides_of(shape);
  for (int dim = 0; dim < 3; ++dim) {
    const int64_t start = 1, end = shape[size_t(dim)] - 1;
    Tensor y = ops::slice(x, dim, start, end);
    Shape out = shape;
    out[size_t(dim)] = end - start;
    REQUIRE(y.shape() == out);
    std::vector<double> yv = y.to_f64_vector();
    bool all = true;
    for (int64_t i = 0; i < y.numel(); ++i) {
      std::vector<int64_t> idx = unravel(i, out);
      idx[size_t(dim)] += start;
      int64_t src = idx[0] * xs[0] + idx[1] * xs[1] + idx[2] * xs[2];
      all = all && yv[size_t(i)] == xv[size_t(src)];
    }
    CHECK_MESSAGE(all, "slice along dim " << dim);
    for (Fill f : kFills) {
      Tensor xi = make_input(shape, f, 3);
      gradcheck([dim, start, end](const std::vector<Tensor>& in) { return ops::slice(in[0], dim, start, end); },
                {xi}, "slice dim " + std::to_string(dim) + " " + fill_name(f));
    }
  }
  // backward writes only the sliced window; the rest of the gradient stays zero
  tape().clear();
  Tensor xr = make_input({2, 5}, Fill::Random, 9);
  Tensor s = ops::slice(xr, -1, 2, 3);
  tape().backward(ops::sum_all(s));
  CHECK(xr.grad().to_f64_vector() == std::vector<double>{0, 0, 1, 0, 0, 0, 0, 1, 0, 0});
  // a single position, and an empty slice
  CHECK(ops::slice(x, 1, 4, 5).shape() == Shape{3, 1, 7});
  CHECK(ops::slice(x, 2, 3, 3).numel() == 0);
  CHECK_THROWS_WITH_AS(ops::slice(x, 1, 2, 6), doctest::Contains("slice"), Error);
  CHECK_THROWS_AS(ops::slice(x, 1, 3, 2), Error);
  CHECK_THROWS_AS(ops::slice(x, 3, 0, 1), Error);
  CHECK_THROWS_AS(ops::slice(x, 0, -1, 1), Error);
}

TEST_CASE("concat: any dim, many inputs, gradient slices back, errors") {
  for (int dim = 0; dim < 3; ++dim) {
    Shape a{2, 3, 5}, b{2, 3, 5}, c{2, 3, 5};
    b[size_t(dim)] = 1;
    c[size_t(dim)] = 7;
    Tensor xa = Tensor::arange(a, DType::F64), xb = Tensor::full(b, -1.0, DType::F64);
    Tensor xc = Tensor::arange(c, DType::F64);
    Tensor y = ops::concat({xa, xb, xc}, dim - 3);  // negative dim: the same dim counted from the end
    Shape out = a;
    out[size_t(dim)] = a[size_t(dim)] + 1 + 7;
    REQUIRE(y.shape() == out);
    // every output element comes from the input that owns its position along dim
    std::vector<double> yv = y.to_f64_vector();
    bool all = true;
    for (int64_t i = 0; i < y.numel(); ++i) {
      std::vector<int64_t> idx = unravel(i, out);
      int64_t p = idx[size_t(dim)];
      const Tensor* src = &xa;
      const Shape* sh = &a;
      if (p >= a[size_t(dim)] + 1) {
        src = &xc, sh = &c, p -= a[size_t(dim)] + 1;
      } else if (p >= a[size_t(dim)]) {
        src = &xb, sh = &b, p -= a[size_t(dim)];
      }
      idx[size_t(dim)] = p;
      std::vector<int64_t> st = strides_of(*sh);
      int64_t off = idx[0] * st[0] + idx[1] * st[1] + idx[2] * st[2];
      all = all && yv[size_t(i)] == src->to_f64_vector()[size_t(off)];
    }
    CHECK_MESSAGE(all, "concat along dim " << dim);
    for (Fill f : kFills) {
      Tensor ia = make_input(a, f, 1), ib = make_input(b, f, 2), ic = make_input(c, f, 3, /*requires_grad=*/false);
      gradcheck([dim](const std::vector<Tensor>& in) { return ops::concat(in, dim); }, {ia, ib, ic},
                "concat dim " + std::to_string(dim) + " " + fill_name(f));
      CHECK_FALSE(ic.has_grad());  // an input without requires_grad gets no gradient
    }
  }
  // one input: a copy
  Tensor one = Tensor::arange({3});
  CHECK(ops::concat({one}, 0).to_f32_vector() == std::vector<float>{0, 1, 2});
  CHECK_THROWS_WITH_AS(ops::concat({Tensor::zeros({2, 3}), Tensor::zeros({3, 3})}, 1), doctest::Contains("concat"),
                       Error);
  CHECK_THROWS_AS(ops::concat({Tensor::zeros({2, 3}), Tensor::zeros({2, 3, 1})}, 0), Error);
  CHECK_THROWS_AS(ops::concat({Tensor::zeros({2, 3}), Tensor::zeros({2, 3}, DType::F64)}, 0), Error);
  CHECK_THROWS_AS(ops::concat({}, 0), Error);
  CHECK_THROWS_AS(ops::concat({Tensor::zeros({2, 3})}, 2), Error);
}

TEST_CASE("gather_rows: text pooling values, I32 and I64, scatter gradient, bad indices") {
  const int64_t B = 3, T = 5, C = 7;
  Tensor x = Tensor::arange({B, T, C}, DType::F64);
  for (DType it : {DType::I32, DType::I64}) {
    Tensor idx = Tensor::from_ints({4, 0, 2}, {B}, it);
    Tensor y = ops::gather_rows(x, idx);
    REQUIRE(y.shape() == Shape{B, C});
    std::vector<double> yv = y.to_f64_vector();
    const int64_t pick[] = {4, 0, 2};
    bool all = true;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < C; ++c) all = all && yv[size_t(b * C + c)] == double((b * T + pick[b]) * C + c);
    CHECK(all);
    for (Fill f : kFills) {
      Tensor xi = make_input({B, T, C}, f, 4);
      gradcheck([idx](const std::vector<Tensor>& in) { return ops::gather_rows(in[0], idx); }, {xi},
                std::string("gather_rows ") + fill_name(f));
    }
  }
  // B = 1, T = 1, C = 1
  Tensor x1 = make_input({1, 1, 1}, Fill::Random, 8);
  gradcheck([](const std::vector<Tensor>& in) { return ops::gather_rows(in[0], Tensor::from_ints({0}, {1})); }, {x1},
            "gather_rows 1x1x1");
  CHECK_THROWS_WITH_AS(ops::gather_rows(x, Tensor::from_ints({4, 5, 0}, {B})), doctest::Contains("index 5"), Error);
  CHECK_THROWS_WITH_AS(ops::gather_rows(x, Tensor::from_ints({-1, 0, 0}, {B}, DType::I32)),
                       doctest::Contains("index -1"), Error);
  CHECK_THROWS_AS(ops::gather_rows(x, Tensor::from_ints({0, 0}, {2})), Error);                  // [B] mismatch
  CHECK_THROWS_AS(ops::gather_rows(x, Tensor::zeros({B})), Error);                              // float index
  CHECK_THROWS_AS(ops::gather_rows(Tensor::zeros({B, T}), Tensor::from_ints({0, 0, 0}, {B})), Error);  // not 3-d
}

TEST_CASE("mean over one dim (keepdim or not) and sum_all") {
  const Shape shape{3, 5, 7};
  Tensor x = Tensor::arange(shape, DType::F64);
  std::vector<double> xv = x.to_f64_vector();
  for (int dim = 0; dim < 3; ++dim) {
    for (bool keep : {false, true}) {
      Tensor y = ops::mean(x, dim, keep);
      Shape out = shape;
      if (keep) {
        out[size_t(dim)] = 1;
      } else {
        out.erase(out.begin() + dim);
      }
      REQUIRE(y.shape() == out);
      Shape full = shape;
      full[size_t(dim)] = 1;
      std::vector<double> yv = y.to_f64_vector();
      std::vector<int64_t> xs = strides_of(shape);
      double worst = 0;
      for (int64_t i = 0; i < y.numel(); ++i) {
        std::vector<int64_t> idx = unravel(i, full);
        double acc = 0;
        for (int64_t d = 0; d < shape[size_t(dim)]; ++d) {
          idx[size_t(dim)] = d;
          acc += xv[size_t(idx[0] * xs[0] + idx[1] * xs[1] + idx[2] * xs[2])];
        }
        worst = std::max(worst, std::fabs(yv[size_t(i)] - acc / double(shape[size_t(dim)])));
      }
      CHECK_MESSAGE(worst < 1e-12, "mean dim " << dim << " keepdim " << keep << " max abs err " << worst);
    }
    for (Fill f : kFills) {
      Tensor xi = make_input(shape, f, 6);
      gradcheck([dim](const std::vector<Tensor>& in) { return ops::mean(in[0], dim, dim == 1); }, {xi},
                "mean dim " + std::to_string(dim) + " " + fill_name(f));
    }
  }
  CHECK(ops::mean(Tensor::arange({1, 3}), -1).to_f32_vector() == std::vector<float>{1});
  CHECK_THROWS_AS(ops::mean(x, 3), Error);
  CHECK_THROWS_AS(ops::mean(Tensor::zeros({2, 0}), 1), Error);

  CHECK(ops::sum_all(Tensor::arange({3, 5, 7})).item() == 104.0 * 105.0 / 2.0);
  CHECK(ops::sum_all(Tensor::ones({1})).shape() == Shape{1});
  CHECK(ops::sum_all(Tensor::zeros({0, 3})).item() == 0.0);
  for (Fill f : kFills) {
    Tensor xi = make_input({2, 7}, f, 7);
    gradcheck([](const std::vector<Tensor>& in) { return ops::sum_all(in[0]); }, {xi},
              std::string("sum_all ") + fill_name(f));
  }
}

TEST_CASE("shape ops compose and accumulate through fan-out") {
  // x is used three times (two slices and a permute): its gradient is the sum of three shares
  for (Fill f : kFills) {
    Tensor x = make_input({3, 4, 5}, f, 21);
    auto fn = [](const std::vector<Tensor>& in) {
      Tensor a = ops::slice(in[0], 1, 0, 2);
      Tensor b = ops::slice(in[0], 1, 1, 4);
      Tensor c = ops::reshape(ops::permute(in[0], {1, 0, 2}), {3, 4, 5});
      Tensor cat = ops::concat({a, b, ops::slice(c, 1, 0, 1)}, 1);  // [3, 6, 5]
      return ops::mean(cat, 2, false);
    };
    gradcheck(fn, {x}, std::string("composition ") + fill_name(f));
  }
  // no tape entries when nothing needs a gradient, or under NoGradGuard
  tape().clear();
  Tensor plain = Tensor::arange({2, 3});
  ops::sum_all(ops::permute(plain, {1, 0}));
  CHECK(tape().size() == 0);
  Tensor g = Tensor::arange({2, 3}).set_requires_grad(true);
  {
    NoGradGuard ng;
    Tensor y = ops::slice(g, 0, 0, 1);
    CHECK_FALSE(y.requires_grad());
  }
  CHECK(tape().size() == 0);
}

TEST_CASE("large tensors take the threaded paths and give the same values") {
  // sizes past the kernels' OpenMP thresholds (2^16 elements)
  constexpr int64_t D = 24;
  const Shape shape{6, 50, 12, D};  // [B, T, H, D] -> [B, H, T, D]
  Rng rng(77);
  Tensor x = Tensor::randn(shape, rng);
  Tensor y = ops::permute(x, {0, 2, 1, 3});
  REQUIRE(y.shape() == Shape{6, 12, 50, D});
  const float* xv = x.data<float>();
  const float* yv = y.data<float>();
  bool all = true;
  for (int64_t b = 0; b < 6; ++b)
    for (int64_t h = 0; h < 12; ++h)
      for (int64_t t = 0; t < 50; ++t)
        for (int64_t d = 0; d < D; ++d)
          all = all && yv[((b * 12 + h) * 50 + t) * D + d] == xv[((b * 50 + t) * 12 + h) * D + d];
  CHECK(all);
  // concat of slices along T gives x back
  Tensor back = ops::concat({ops::slice(x, 1, 0, 17), ops::slice(x, 1, 17, 50)}, 1);
  CHECK(back.to_f32_vector() == x.to_f32_vector());
  // sum_all: float64 partial sums in a fixed order, equal to a serial float64 sum within rounding
  double serial = 0;
  for (int64_t i = 0; i < x.numel(); ++i) serial += xv[i];
  CHECK(ops::sum_all(x).item() == doctest::Approx(serial).epsilon(1e-6));
  CHECK(ops::sum_all(x).item() == ops::sum_all(x).item());
  // mean over T equals the per-(b, h, d) average
  Tensor m = ops::mean(x, 1);
  double worst = 0;
  for (int64_t b = 0; b < 6; ++b)
    for (int64_t hd = 0; hd < 12 * D; ++hd) {
      double acc = 0;
      for (int64_t t = 0; t < 50; ++t) acc += xv[(b * 50 + t) * 12 * D + hd];
      worst = std::max(worst, std::fabs(double(m.data<float>()[b * 12 * D + hd]) - acc / 50));
    }
  CHECK(worst < 1e-6);
}

TEST_CASE("permute: every kernel path, small and threaded sizes, forward and accumulated backward") {
  // The kernel merges dims that stay adjacent and then copies contiguous rows, transposes tiles,
  // gathers strided rows or copies flat; each case below lands on one path, once below and once
  // above the threading threshold (2^16 elements), with sizes that are not multiples of the
  // 16 x 16 tile. Values against index arithmetic; backward (the inverse permute, accumulated
  // onto a gradient that already holds ones) against the same arithmetic.
  struct Case {
    Shape shape;
    std::vector<int> dims;
    const char* path;
  };
  const Case cases[] = {
      {{3, 5, 2, 7}, {0, 2, 1, 3}, "rows"},         {{9, 41, 3, 48}, {0, 2, 1, 3}, "rows"},
      {{2, 7, 19}, {0, 2, 1}, "transpose"},         {{33, 96, 37}, {0, 2, 1}, "transpose"},
      {{5, 17}, {1, 0}, "transpose"},               {{300, 257}, {1, 0}, "transpose"},
      {{2, 3, 5}, {2, 0, 1}, "gather"},             {{41, 43, 47}, {2, 0, 1}, "gather"},
      {{4, 1, 6}, {1, 0, 2}, "flat (size-1 dim)"},  {{70, 1, 1000}, {0, 2, 1}, "flat (size-1 dim)"},
      {{3, 4, 5, 1}, {3, 2, 1, 0}, "gather"},       {{2, 1, 3, 1}, {3, 1, 0, 2}, "flat"},
  };
  for (const Case& c : cases) {
    const std::string label = std::string("permute ") + shape_str(c.shape) + " (" + c.path + ")";
    Rng rng(91);
    Tensor x = Tensor::randn(c.shape, rng).set_requires_grad(true);
    tape().clear();
    Tensor y = ops::permute(x, c.dims);
    const std::vector<int64_t> xs = strides_of(c.shape);
    const std::vector<float> xv = x.to_f32_vector(), yv = y.to_f32_vector();
    Tensor gy = Tensor::randn(y.shape(), rng);
    const std::vector<float> gyv = gy.to_f32_vector();
    std::vector<float> expect_gx(xv.size(), 1.0f);
    bool fwd_ok = true;
    for (int64_t i = 0; i < y.numel(); ++i) {
      const std::vector<int64_t> idx = unravel(i, y.shape());
      int64_t src = 0;
      for (size_t k = 0; k < c.dims.size(); ++k) src += idx[k] * xs[size_t(c.dims[k])];
      fwd_ok = fwd_ok && yv[size_t(i)] == xv[size_t(src)];
      expect_gx[size_t(src)] += gyv[size_t(i)];
    }
    CHECK_MESSAGE(fwd_ok, label);
    x.grad_buffer().fill(1.0);
    backward(y, gy);
    CHECK_MESSAGE(x.grad().to_f32_vector() == expect_gx, label << " backward");
  }
}

TEST_CASE("split_qkv_heads / merge_heads: equal to the slice + reshape + permute composition they replace") {
  struct Case {
    int64_t B, T, H, D;
  };
  // odd sizes, a single element, and one past the threading threshold (2^16 elements)
  const Case cases[] = {{3, 5, 2, 7}, {1, 1, 1, 1}, {2, 17, 3, 4}, {8, 65, 2, 48}};
  for (const Case& c : cases)
    for (DType dt : {DType::F32, DType::F64}) {
      const std::string label = "B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) + " H=" +
                                std::to_string(c.H) + " D=" + std::to_string(c.D) + " " + std::string(dtype_name(dt));
      const int64_t W = c.H * c.D;
      Rng rng(uint64_t(c.B * 1000 + c.T));
      Tensor qkv = Tensor::randn({c.B, c.T, 3 * W}, rng, 0.0, 1.0, dt).set_requires_grad(true);
      Tensor seeds[3] = {Tensor::randn({c.B, c.H, c.T, c.D}, rng, 0.0, 1.0, dt),
                         Tensor::randn({c.B, c.H, c.T, c.D}, rng, 0.0, 1.0, dt),
                         Tensor::randn({c.B, c.H, c.T, c.D}, rng, 0.0, 1.0, dt)};
      Tensor seed_out = Tensor::randn({c.B, c.T, W}, rng, 0.0, 1.0, dt);
      // the fused ops; the loss contracts q, k, v and merge_heads(v) with fixed seeds
      auto loss = [&](const std::vector<Tensor>& qkv_parts, const Tensor& merged) {
        Tensor l = ops::sum_all(ops::mul(merged, seed_out));
        for (int p = 0; p < 3; ++p) l = ops::add(l, ops::sum_all(ops::mul(qkv_parts[size_t(p)], seeds[p])));
        return l;
      };
      tape().clear();
      std::vector<Tensor> fused = ops::split_qkv_heads(qkv, c.H);
      Tensor fused_merged = ops::merge_heads(fused[2]);
      backward(loss(fused, fused_merged));
      const Tensor g_fused = qkv.grad().clone();
      qkv.zero_grad();
      // the composition
      std::vector<Tensor> comp;
      for (int64_t p = 0; p < 3; ++p)
        comp.push_back(ops::permute(ops::reshape(ops::slice(qkv, 2, p * W, (p + 1) * W), {c.B, c.T, c.H, c.D}),
                                    {0, 2, 1, 3}));
      Tensor comp_merged = ops::reshape(ops::permute(comp[2], {0, 2, 1, 3}), {c.B, c.T, W});
      backward(loss(comp, comp_merged));
      for (int p = 0; p < 3; ++p) {
        REQUIRE(fused[size_t(p)].shape() == comp[size_t(p)].shape());
        CHECK_MESSAGE(fused[size_t(p)].to_f64_vector() == comp[size_t(p)].to_f64_vector(), label << " part " << p);
      }
      CHECK_MESSAGE(fused_merged.shape() == comp_merged.shape(), label);
      CHECK_MESSAGE(fused_merged.to_f64_vector() == comp_merged.to_f64_vector(), label << " merge");
      // both gradients are sums of the same terms in the same order: equal bits
      CHECK_MESSAGE(g_fused.to_f64_vector() == qkv.grad().to_f64_vector(), label << " gradient");
    }
}

TEST_CASE("split_qkv_heads / merge_heads: gradchecks, unused parts, names, errors") {
  for (Fill f : kFills) {
    Tensor qkv = make_input({2, 3, 12}, f, 31);  // H = 2, D = 2
    gradcheck(
        [](const std::vector<Tensor>& in) {
          std::vector<Tensor> p = ops::split_qkv_heads(in[0], 2);
          return ops::add(ops::add(p[0], ops::scale(p[1], 2.0)), ops::mul(p[2], p[2]));
        },
        {qkv}, std::string("split_qkv_heads ") + fill_name(f));
    Tensor x = make_input({2, 3, 5, 2}, f, 32);
    gradcheck([](const std::vector<Tensor>& in) { return ops::merge_heads(in[0]); }, {x},
              std::string("merge_heads ") + fill_name(f));
  }
  // Only k is used: q's and v's places in the gradient stay zero.
  {
    tape().clear();
    Tensor qkv = Tensor::arange({1, 2, 6}, DType::F64).set_requires_grad(true);
    std::vector<Tensor> p = ops::split_qkv_heads(qkv, 1);
    CHECK(p[0].name() == "split_qkv_heads.0");
    CHECK(p[2].name() == "split_qkv_heads.2");
    backward(ops::sum_all(p[1]));
    CHECK(qkv.grad().to_f64_vector() == std::vector<double>{0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0});
  }
  // No gradient wanted: nothing recorded.
  tape().clear();
  ops::merge_heads(ops::split_qkv_heads(Tensor::zeros({2, 3, 6}), 2)[0]);
  CHECK(tape().size() == 0);
  CHECK_THROWS_WITH_AS(ops::split_qkv_heads(Tensor::zeros({2, 3, 10}), 2), doctest::Contains("op split_qkv_heads"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::split_qkv_heads(Tensor::zeros({2, 12}), 2), doctest::Contains("[B, T, 3*H*D]"), Error);
  CHECK_THROWS_WITH_AS(ops::split_qkv_heads(Tensor::zeros({2, 3, 12}), 0), doctest::Contains("op split_qkv_heads"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::merge_heads(Tensor::zeros({2, 3, 4})), doctest::Contains("op merge_heads"), Error);
  CHECK_THROWS_AS(ops::merge_heads(Tensor::from_ints({1, 2}, {1, 1, 1, 2})), Error);
}
