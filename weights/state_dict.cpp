#include "weights/state_dict.h"

#include <sstream>
#include <vector>

namespace clipcu::weights {

st::NamedTensors read_tensors(const st::File& file) {
  st::NamedTensors out;
  for (const st::Entry& e : file.entries()) out.emplace_back(e.name, file.get(e.name));
  return out;
}

static bool same_shape(const Shape& a, const Shape& b) {
  if (a == b) return true;
  // a 0-d scalar and a [1] tensor hold the same single value
  return shape_numel(a) == 1 && shape_numel(b) == 1 && a.size() <= 1 && b.size() <= 1;
}

// "a, b, c (and 12 more)"
static std::string name_list(const std::vector<std::string>& names, size_t max_shown = 12) {
  std::ostringstream s;
  for (size_t i = 0; i < names.size() && i < max_shown; ++i) s << (i ? ", " : "") << names[i];
  if (names.size() > max_shown) s << " (and " << names.size() - max_shown << " more)";
  return s.str();
}

void assign_state_dict(const st::NamedTensors& targets, const st::NamedTensors& source, const std::string& origin,
                       const std::set<std::string>& ignored) {
  std::map<std::string, const Tensor*> src;
  for (const auto& [name, t] : source) {
    CLIPCU_CHECK(src.emplace(name, &t).second, origin << ": tensor '" << name << "' appears twice");
  }
  std::vector<std::string> missing, misshaped, wrong_type;
  std::set<std::string> used;
  for (const auto& [name, t] : targets) {
    auto it = src.find(name);
    if (it == src.end()) {
      missing.push_back(name);
      continue;
    }
    used.insert(name);
    const Tensor& s = *it->second;
    if (!same_shape(s.shape(), t.shape())) {
      misshaped.push_back(name + " is " + shape_str(s.shape()) + " in the file, the model has " + shape_str(t.shape()));
    } else if (is_floating(t.dtype()) && !is_floating(s.dtype())) {
      wrong_type.push_back(name + " is " + std::string(dtype_name(s.dtype())) + ", a floating type is needed");
    }
  }
  std::vector<std::string> unexpected;
  for (const auto& [name, t] : source)
    if (!used.count(name) && !ignored.count(name)) unexpected.push_back(name);

  if (!missing.empty() || !unexpected.empty() || !misshaped.empty() || !wrong_type.empty()) {
    std::ostringstream msg;
    msg << origin << ": the weights do not match the model:";
    if (!missing.empty()) msg << "\n  missing tensors (" << missing.size() << "): " << name_list(missing);
    if (!unexpected.empty()) msg << "\n  unexpected tensors (" << unexpected.size() << "): " << name_list(unexpected);
    if (!misshaped.empty()) msg << "\n  mis-shaped tensors (" << misshaped.size() << "): " << name_list(misshaped, 6);
    if (!wrong_type.empty()) msg << "\n  wrong dtype (" << wrong_type.size() << "): " << name_list(wrong_type, 6);
    CLIPCU_FAIL(msg.str());
  }
  for (const auto& [name, t] : targets) {
    Tensor dst = t;  // a handle on the model's storage
    const Tensor& s = *src.at(name);
    if (s.shape() == dst.shape()) {
      dst.copy_from(s);
    } else {
      dst.copy_from(s.view(dst.shape()));  // [] <-> [1]
    }
  }
}

void load_state_dict(const st::NamedTensors& targets, const std::string& path, const std::set<std::string>& ignored) {
  st::File file = st::File::open(path);
  assign_state_dict(targets, read_tensors(file), path, ignored);
}

void save_state_dict(const std::string& path, const st::NamedTensors& tensors, DType float_dtype,
                     const std::map<std::string, std::string>& metadata) {
  CLIPCU_CHECK(float_dtype == DType::F32 || float_dtype == DType::F16 || float_dtype == DType::BF16,
               "save_state_dict: weights are stored as F32, F16 or BF16, not " << dtype_name(float_dtype));
  st::NamedTensors out;
  out.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    Tensor h = t.to(Device::cpu());
    out.emplace_back(name, is_floating(h.dtype()) ? h.to(float_dtype) : h);
  }
  st::save(path, out, metadata);
}

}  // namespace clipcu::weights
