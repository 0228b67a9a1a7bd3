#include "engine/train/metrics.h"

#include <algorithm>
#include <cmath>

namespace clipcu::train {

namespace {
// Rows of x as normalized float64 vectors.
std::vector<double> normalized_rows(const Tensor& x, int64_t* rows, int64_t* cols) {
  CLIPCU_CHECK(x.defined() && x.dim() == 2, "metrics: features must be [N, E], got " << x.str());
  *rows = x.size(0);
  *cols = x.size(1);
  std::vector<double> v = x.to_f64_vector();
  for (int64_t i = 0; i < *rows; ++i) {
    double s = 0;
    for (int64_t j = 0; j < *cols; ++j) s += v[size_t(i * *cols + j)] * v[size_t(i * *cols + j)];
    double inv = 1.0 / std::max(std::sqrt(s), 1e-12);
    for (int64_t j = 0; j < *cols; ++j) v[size_t(i * *cols + j)] *= inv;
  }
  return v;
}

std::vector<double> similarity(const Tensor& a, const Tensor& b, int64_t* n, int64_t* m) {
  int64_t ea, eb;
  std::vector<double> x = normalized_rows(a, n, &ea), y = normalized_rows(b, m, &eb);
  CLIPCU_CHECK(ea == eb, "metrics: embedding widths differ: " << a.str() << " vs " << b.str());
  std::vector<double> s(size_t(*n * *m));
  for (int64_t i = 0; i < *n; ++i)
    for (int64_t j = 0; j < *m; ++j) {
      double acc = 0;
      for (int64_t k = 0; k < ea; ++k) acc += x[size_t(i * ea + k)] * y[size_t(j * ea + k)];
      s[size_t(i * *m + j)] = acc;
    }
  return s;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t h = v.size() / 2;
  return v.size() % 2 ? v[h] : 0.5 * (v[h - 1] + v[h]);
}
}  // namespace

Tensor cosine_similarity(const Tensor& a, const Tensor& b) {
  int64_t n, m;
  std::vector<double> s = similarity(a, b, &n, &m);
  return Tensor::from_vector(s, {n, m}, DType::F32);
}

Tensor class_embeddings(const Tensor& text_features, int64_t num_classes, int64_t prompts_per_class) {
  int64_t rows, e;
  std::vector<double> v = normalized_rows(text_features, &rows, &e);
  CLIPCU_CHECK(num_classes > 0 && prompts_per_class > 0 && rows == num_classes * prompts_per_class,
               "class_embeddings: " << rows << " text features for " << num_classes << " classes x "
                                    << prompts_per_class << " prompts");
  std::vector<double> out(size_t(num_classes * e), 0.0);
  for (int64_t c = 0; c < num_classes; ++c) {
    for (int64_t p = 0; p < prompts_per_class; ++p)
      for (int64_t k = 0; k < e; ++k) out[size_t(c * e + k)] += v[size_t((c * prompts_per_class + p) * e + k)];
  }
  Tensor t = Tensor::from_vector(out, {num_classes, e}, DType::F64);
  int64_t r2, e2;
  std::vector<double> n = normalized_rows(t, &r2, &e2);
  return Tensor::from_vector(n, {num_classes, e}, DType::F32);
}

ZeroShotResult zero_shot(const Tensor& image_features, const Tensor& classes, const std::vector<int64_t>& labels) {
  int64_t n, c;
  std::vector<double> s = similarity(image_features, classes, &n, &c);
  CLIPCU_CHECK(int64_t(labels.size()) == n, "zero_shot: " << labels.size() << " labels for " << n << " images");
  ZeroShotResult r;
  r.n = n;
  r.per_class_top1.assign(size_t(c), 0.0);
  r.per_class_count.assign(size_t(c), 0);
  int64_t hit1 = 0, hit5 = 0;
  for (int64_t i = 0; i < n; ++i) {
    int64_t y = labels[size_t(i)];
    CLIPCU_CHECK(y >= 0 && y < c, "zero_shot: label " << y << " of image " << i << " outside [0, " << c << ")");
    double true_score = s[size_t(i * c + y)];
    int64_t higher = 0;
    for (int64_t j = 0; j < c; ++j) higher += s[size_t(i * c + j)] > true_score;
    hit1 += higher < 1;
    hit5 += higher < 5;
    r.per_class_count[size_t(y)]++;
    r.per_class_top1[size_t(y)] += higher < 1;
  }
  for (int64_t j = 0; j < c; ++j)
    if (r.per_class_count[size_t(j)]) r.per_class_top1[size_t(j)] /= double(r.per_class_count[size_t(j)]);
  r.top1 = n ? double(hit1) / double(n) : 0;
  r.top5 = n ? double(hit5) / double(n) : 0;
  return r;
}

RetrievalResult retrieval(const Tensor& image_features, const Tensor& text_features) {
  int64_t n, m;
  std::vector<double> s = similarity(image_features, text_features, &n, &m);
  CLIPCU_CHECK(n == m, "retrieval: " << n << " images but " << m << " texts (pairs expected)");
  RetrievalResult r;
  r.n = n;
  std::vector<double> ri(static_cast<size_t>(n)), rt(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    double t = s[size_t(i * n + i)];
    int64_t hi = 0, ht = 0;
    for (int64_t j = 0; j < n; ++j) {
      hi += s[size_t(i * n + j)] > t;  // texts scoring above the true one for image i
      ht += s[size_t(j * n + i)] > t;  // images scoring above the true one for text i
    }
    ri[size_t(i)] = double(hi + 1);
    rt[size_t(i)] = double(ht + 1);
  }
  auto recall = [&](const std::vector<double>& ranks, double k) {
    double c = 0;
    for (double x : ranks) c += x <= k;
    return n ? c / double(n) : 0.0;
  };
  auto mean = [&](const std::vector<double>& v) {
    double a = 0;
    for (double x : v) a += x;
    return v.empty() ? 0.0 : a / double(v.size());
  };
  r.i2t_r1 = recall(ri, 1), r.i2t_r5 = recall(ri, 5), r.i2t_r10 = recall(ri, 10);
  r.t2i_r1 = recall(rt, 1), r.t2i_r5 = recall(rt, 5), r.t2i_r10 = recall(rt, 10);
  r.i2t_mean_rank = mean(ri), r.t2i_mean_rank = mean(rt);
  r.i2t_median_rank = median(ri), r.t2i_median_rank = median(rt);
  return r;
}

}  // namespace clipcu::train
