// Image search: embed a set of images once into an index file, then rank them for a text (or
// image) query by cosine similarity, and write an HTML page of the results with thumbnails.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/data/loader.h"
#include "engine/models/clip.h"

namespace clipcu::train {

struct SearchIndex {
  Tensor features;  // [N, E] F32, rows L2-normalized
  std::vector<std::string> paths;
  std::string model;  // where the model came from (for the user's information)
};

// Image files under a folder (recursively; .png .jpg .jpeg .bmp .gif), or listed one per line in
// a .txt file, or given directly; sorted within a folder.
std::vector<std::string> collect_images(const std::vector<std::string>& inputs);

// Embeds the images (CLIP preprocessing, inference mode). Unreadable images are skipped with a
// warning and left out of the index.
SearchIndex build_index(models::CLIP& model, const std::vector<std::string>& image_paths, int batch_size,
                        const std::string& model_desc, bool progress = true);
void save_index(const SearchIndex& index, const std::string& path);
SearchIndex load_index(const std::string& path);

struct Hit {
  int64_t index = 0;
  double score = 0;  // cosine similarity
};
// The k best rows of the index for one query feature [E] (normalized here).
std::vector<Hit> top_k(const SearchIndex& index, const Tensor& query, int k);

struct ResultRow {
  std::string query;  // the text, or the query image's path
  std::vector<Hit> hits;
};
// An HTML page: one row per query with the hits' thumbnails (embedded as PNG data URIs, so the
// page stands alone), their scores and file names.
void write_results_html(const std::string& out_path, const std::string& title, const SearchIndex& index,
                        const std::vector<ResultRow>& rows, int thumb_size = 128);

}  // namespace clipcu::train
