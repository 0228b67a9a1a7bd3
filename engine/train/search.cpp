#include "engine/train/search.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/autograd.h"
#include "engine/data/image.h"
#include "engine/data/preprocess.h"
#include "engine/data/shapes.h"
#include "engine/train/metrics.h"
#include "engine/train/progress.h"
#include "weights/safetensors.h"

namespace clipcu::train {

namespace fs = std::filesystem;

namespace {
bool is_image_name(const fs::path& p) {
  std::string e = p.extension().string();
  std::transform(e.begin(), e.end(), e.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return e == ".png" || e == ".jpg" || e == ".jpeg" || e == ".bmp" || e == ".gif";
}

std::string base64(const std::vector<uint8_t>& in) {
  static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  for (size_t i = 0; i < in.size(); i += 3) {
    uint32_t v = uint32_t(in[i]) << 16;
    if (i + 1 < in.size()) v |= uint32_t(in[i + 1]) << 8;
    if (i + 2 < in.size()) v |= in[i + 2];
    out += t[(v >> 18) & 63];
    out += t[(v >> 12) & 63];
    out += i + 1 < in.size() ? t[(v >> 6) & 63] : '=';
    out += i + 2 < in.size() ? t[v & 63] : '=';
  }
  return out;
}

std::string html_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      default: o += c;
    }
  }
  return o;
}
}  // namespace

std::vector<std::string> collect_images(const std::vector<std::string>& inputs) {
  std::vector<std::string> out;
  for (const auto& in : inputs) {
    fs::path p(in);
    if (fs::is_directory(p)) {
      std::vector<std::string> found;
      for (const auto& e : fs::recursive_directory_iterator(p))
        if (e.is_regular_file() && is_image_name(e.path())) found.push_back(e.path().string());
      std::sort(found.begin(), found.end());
      out.insert(out.end(), found.begin(), found.end());
    } else if (p.extension() == ".txt") {
      std::ifstream f(in);
      CLIPCU_CHECK(f, "cannot open image list '" << in << "'");
      std::string line;
      while (std::getline(f, line))
        if (!line.empty()) out.push_back(line);
    } else {
      CLIPCU_CHECK(fs::exists(p), "no such image or folder: '" << in << "'");
      out.push_back(in);
    }
  }
  CLIPCU_CHECK(!out.empty(), "no images found in the given inputs");
  return out;
}

SearchIndex build_index(models::CLIP& model, const std::vector<std::string>& image_paths, int batch_size,
                        const std::string& model_desc, bool progress) {
  CLIPCU_CHECK(batch_size >= 1, "batch size must be at least 1");
  bool was_training = model.training();
  model.eval();
  NoGradGuard ng;
  int R = int(model.config().vision.image_size);
  SearchIndex idx;
  idx.model = model_desc;
  std::vector<Tensor> parts;
  Progress bar("index", int64_t(image_paths.size()));
  std::vector<std::string> batch_paths;
  std::vector<Tensor> batch_pix;
  auto flush = [&] {
    if (batch_pix.empty()) return;
    Tensor x = Tensor::empty({int64_t(batch_pix.size()), 3, R, R});
    for (size_t i = 0; i < batch_pix.size(); ++i) x.rows(int64_t(i), 1).copy_from(batch_pix[i].view({1, 3, R, R}));
    // encode_image brings the batch to the model's device and type (pinned staging upload)
    parts.push_back(model.encode_image(x).to(Device::cpu()));
    idx.paths.insert(idx.paths.end(), batch_paths.begin(), batch_paths.end());
    batch_paths.clear();
    batch_pix.clear();
  };
  for (size_t i = 0; i < image_paths.size(); ++i) {
    try {
      data::Image img = data::decode_image_file(image_paths[i]);
      batch_pix.push_back(data::preprocess(img, R));
      batch_paths.push_back(image_paths[i]);
    } catch (const Error& e) {
      std::fprintf(stderr, "\nclipcu: warning: skipping image: %s\n", e.what());
    }
    if (int(batch_pix.size()) == batch_size) flush();
    if (progress) bar.update(int64_t(i + 1));
  }
  flush();
  if (progress) bar.finish();
  CLIPCU_CHECK(!parts.empty(), "none of the " << image_paths.size() << " images could be read");
  int64_t n = 0, e = parts[0].size(1);
  for (auto& p : parts) n += p.size(0);
  Tensor all = Tensor::empty({n, e});
  int64_t at = 0;
  for (auto& p : parts) {
    all.rows(at, p.size(0)).copy_from(p.to(DType::F32));
    at += p.size(0);
  }
  // normalize rows
  float* d = all.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    double s = 0;
    for (int64_t k = 0; k < e; ++k) s += double(d[i * e + k]) * d[i * e + k];
    float inv = float(1.0 / std::max(std::sqrt(s), 1e-12));
    for (int64_t k = 0; k < e; ++k) d[i * e + k] *= inv;
  }
  idx.features = all;
  model.train(was_training);
  return idx;
}

void save_index(const SearchIndex& index, const std::string& path) {
  nlohmann::json paths = index.paths;
  st::save(path, {{"features", index.features}},
           {{"format", "clipcu-search-index-1"}, {"paths", paths.dump()}, {"model", index.model}});
}

SearchIndex load_index(const std::string& path) {
  st::File f = st::File::open(path);
  auto it = f.metadata().find("format");
  CLIPCU_CHECK(it != f.metadata().end() && it->second == "clipcu-search-index-1" && f.metadata().count("paths") &&
                   f.contains("features"),
               "'" << path << "' is not a clipcu search index");
  SearchIndex idx;
  idx.features = f.get("features", DType::F32);
  nlohmann::json p = nlohmann::json::parse(f.metadata().at("paths"), nullptr, false);
  CLIPCU_CHECK(p.is_array() && int64_t(p.size()) == idx.features.size(0),
               "search index '" << path << "': the path list does not match the features");
  for (auto& s : p) idx.paths.push_back(s.get<std::string>());
  idx.model = f.metadata().count("model") ? f.metadata().at("model") : "";
  return idx;
}

std::vector<Hit> top_k(const SearchIndex& index, const Tensor& query, int k) {
  Tensor q = query.to(Device::cpu()).to(DType::F32);
  int64_t e = index.features.size(1);
  CLIPCU_CHECK(q.numel() == e, "query has " << q.numel() << " features, the index " << e);
  Tensor sims = cosine_similarity(q.view({1, e}), index.features);
  const float* s = sims.data<float>();
  std::vector<Hit> hits;
  for (int64_t i = 0; i < index.features.size(0); ++i) hits.push_back({i, double(s[i])});
  size_t kk = std::min<size_t>(size_t(std::max(k, 0)), hits.size());
  std::partial_sort(hits.begin(), hits.begin() + long(kk), hits.end(), [](const Hit& a, const Hit& b) {
    return a.score != b.score ? a.score > b.score : a.index < b.index;
  });
  hits.resize(kk);
  return hits;
}

void write_results_html(const std::string& out_path, const std::string& title, const SearchIndex& index,
                        const std::vector<ResultRow>& rows, int thumb_size) {
  std::ofstream o(out_path);
  CLIPCU_CHECK(o, "cannot write '" << out_path << "'");
  o << "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>" << html_escape(title) << "</title>\n"
    << "<style>body{font-family:sans-serif;margin:20px}h2{font-size:16px;margin:18px 0 6px}"
       ".hits{display:flex;gap:10px;flex-wrap:wrap}.hit{text-align:center;font-size:11px;width:"
    << thumb_size + 8 << "px}.hit img{width:" << thumb_size << "px;height:" << thumb_size
    << "px;object-fit:contain;border:1px solid #ccc;image-rendering:pixelated}</style></head><body>\n"
    << "<h1>" << html_escape(title) << "</h1>\n";
  if (!index.model.empty()) o << "<p>model: " << html_escape(index.model) << "</p>\n";
  for (const auto& r : rows) {
    o << "<h2>" << html_escape(r.query) << "</h2>\n<div class=\"hits\">\n";
    for (const auto& h : r.hits) {
      const std::string& p = index.paths.at(size_t(h.index));
      std::string img_tag;
      try {
        data::Image img = data::to_rgb(data::decode_image_file(p));
        int w = img.width, hgt = img.height;
        int tw = thumb_size, th = thumb_size;
        if (w >= hgt) th = std::max(1, int(std::lround(double(hgt) * thumb_size / w)));
        else tw = std::max(1, int(std::lround(double(w) * thumb_size / hgt)));
        data::Image t = (w > tw || hgt > th) ? data::resize_bicubic(img, tw, th) : img;
        img_tag = "<img src=\"data:image/png;base64," + base64(data::encode_png(t)) + "\">";
      } catch (const Error&) {
        img_tag = "<div>(unreadable)</div>";
      }
      char score[32];
      std::snprintf(score, sizeof score, "%.3f", h.score);
      o << "<div class=\"hit\">" << img_tag << "<br>" << score << "<br>"
        << html_escape(fs::path(p).filename().string()) << "</div>\n";
    }
    o << "</div>\n";
  }
  o << "</body></html>\n";
  CLIPCU_CHECK(o.good(), "failed writing '" << out_path << "'");
}

}  // namespace clipcu::train
