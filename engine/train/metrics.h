// Evaluation metrics on embeddings: zero-shot classification and image<->text retrieval.
// Features need not be normalized: every function normalizes rows first (cosine similarity).
#pragma once
#include <cstdint>
#include <vector>

#include "engine/tensor.h"

namespace clipcu::train {

struct ZeroShotResult {
  double top1 = 0, top5 = 0;  // fractions in [0, 1]
  int64_t n = 0;
  std::vector<double> per_class_top1;  // accuracy per class (NaN-free: classes with no sample get 0 and count 0)
  std::vector<int64_t> per_class_count;
};

// Zero-shot classifier weights: text_features [C * P, E] holds P prompt embeddings per class,
// class-major. Each is normalized, averaged over the P prompts, and normalized again (CLIP's
// prompt ensembling). Returns [C, E] F32.
Tensor class_embeddings(const Tensor& text_features, int64_t num_classes, int64_t prompts_per_class);

// image_features [N, E], classes [C, E], labels [N] in [0, C).
ZeroShotResult zero_shot(const Tensor& image_features, const Tensor& classes, const std::vector<int64_t>& labels);

struct RetrievalResult {
  // image -> text and text -> image recall at 1/5/10 (fractions), mean and median rank (1 = best).
  double i2t_r1 = 0, i2t_r5 = 0, i2t_r10 = 0, t2i_r1 = 0, t2i_r5 = 0, t2i_r10 = 0;
  double i2t_mean_rank = 0, t2i_mean_rank = 0, i2t_median_rank = 0, t2i_median_rank = 0;
  int64_t n = 0;
};

// image_features [N, E] and text_features [N, E]: row i of each is a matching pair. The rank of
// the true match is 1 + the number of candidates that score strictly higher.
RetrievalResult retrieval(const Tensor& image_features, const Tensor& text_features);

// Cosine similarity matrix [N, M] of the rows of a [N, E] and b [M, E], in F32.
Tensor cosine_similarity(const Tensor& a, const Tensor& b);

}  // namespace clipcu::train
