#include "engine/graph.h"

#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <vector>

#include "engine/inspect.h"

namespace clipcu::graph {

namespace {

std::string quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '\n') {
      out += "\\n";  // DOT's line break in a label
      continue;
    }
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

// Fill colours by kind of op, so that the heavy ops stand out.
const char* fill_for(const std::string& op) {
  static const std::set<std::string> dense = {"linear", "matmul", "conv2d", "attention", "attention_causal"};
  static const std::set<std::string> norm = {"layer_norm", "batch_norm2d", "batch_norm2d_relu", "l2_normalize"};
  static const std::set<std::string> move = {"reshape", "permute", "slice", "concat", "gather_rows"};
  static const std::set<std::string> loss = {"clip_loss", "softmax_cross_entropy"};
  if (dense.count(op)) return "#f9c784";
  if (norm.count(op)) return "#b5e3b5";
  if (move.count(op)) return "#eeeeee";
  if (loss.count(op)) return "#f4a6a6";
  return "#cfe0f7";
}

struct Vertex {
  std::string id;
  std::string attrs;                 // [label=..., ...]
  std::vector<std::string> cluster;  // module components of the enclosing clusters
};

struct Cluster {
  std::map<std::string, std::unique_ptr<Cluster>> children;
  std::vector<std::string> children_order;
  std::vector<const Vertex*> vertices;
};

void emit(std::ostringstream& out, const Cluster& c, const std::string& path, int indent) {
  const std::string pad(size_t(indent) * 2, ' ');
  for (const Vertex* v : c.vertices) out << pad << quote(v->id) << " " << v->attrs << ";\n";
  for (const std::string& name : c.children_order) {
    const std::string sub = path.empty() ? name : path + "." + name;
    out << pad << "subgraph " << quote("cluster_" + sub) << " {\n"
        << pad << "  label=" << quote(name) << "; tooltip=" << quote(sub) << ";\n";
    emit(out, *c.children.at(name), sub, indent + 1);
    out << pad << "}\n";
  }
}

}  // namespace

std::string to_dot(const Tape& tape, const Options& opt) {
  const auto& nodes = tape.nodes();
  std::vector<Vertex> vertices;
  vertices.reserve(nodes.size() * 2 + 8);
  std::map<std::string, size_t> vertex_index;  // id -> index in vertices
  std::vector<std::string> vertex_of(nodes.size());
  // Collapsed blocks: key -> (ops, last node)
  std::map<std::string, std::pair<int, size_t>> blocks;
  std::map<const void*, size_t> producer;

  for (size_t i = 0; i < nodes.size(); ++i) {
    const Node& n = nodes[i];
    const std::vector<std::string> comps = inspect::module_components(n.scope);
    if (opt.depth > 0 && int(comps.size()) >= opt.depth) {
      const std::string key = inspect::truncate_path(n.scope, opt.depth);
      auto& b = blocks[key];
      b.first += 1;
      b.second = i;
      vertex_of[i] = "block:" + key;
    } else {
      vertex_of[i] = "op:" + std::to_string(i);
    }
    for (const Tensor& o : n.outputs)
      if (o.defined() && o.id()) producer[o.id()] = i;
  }

  auto add_vertex = [&](const std::string& id, const std::string& attrs, std::vector<std::string> cluster) {
    if (vertex_index.count(id)) return;
    vertex_index[id] = vertices.size();
    vertices.push_back({id, attrs, std::move(cluster)});
  };

  // Op and block vertices, in recording order.
  for (size_t i = 0; i < nodes.size(); ++i) {
    const Node& n = nodes[i];
    std::vector<std::string> comps = inspect::module_components(n.scope);
    const std::string& vid = vertex_of[i];
    if (vid.rfind("block:", 0) == 0) {
      const std::string key = vid.substr(6);
      const auto& b = blocks[key];
      if (b.second != i) continue;  // the block's vertex is added at its last node
      comps.resize(size_t(opt.depth));
      const std::string shape =
          n.outputs.empty() || !n.outputs[0].defined() ? std::string() : shape_str(n.outputs[0].shape());
      if (b.first == 1) {
        // A module of one op (a Linear, a LayerNorm): the op itself, named by its module.
        add_vertex(vid,
                   std::string("[shape=box, style=\"rounded,filled\", fillcolor=\"") + fill_for(n.op) + "\", label=" +
                       quote(comps.back() + ": " + n.op + "\n" + shape) + ", tooltip=" + quote(n.name) + "]",
                   std::vector<std::string>(comps.begin(), comps.end() - 1));
        continue;
      }
      const std::string label = comps.back() + "\n" + std::to_string(b.first) + " ops\n" + shape;
      comps.pop_back();
      add_vertex(
          vid,
          "[shape=box3d, style=filled, fillcolor=\"#d9d2f2\", label=" + quote(label) + ", tooltip=" + quote(key) + "]",
          comps);
    } else {
      std::string label = n.op;
      for (const Tensor& o : n.outputs)
        if (o.defined()) label.append("\n").append(shape_str(o.shape()));
      add_vertex(vid,
                 std::string("[shape=box, style=\"rounded,filled\", fillcolor=\"") + fill_for(n.op) + "\", label=" +
                     quote(label) + ", tooltip=" + quote(n.name.empty() ? n.scope + "." + n.op : n.name) + "]",
                 comps);
    }
  }

  // Edges.
  std::set<std::pair<std::string, std::string>> fwd, bwd;
  std::vector<std::pair<std::string, std::string>> fwd_order, bwd_order;
  auto edge = [](std::set<std::pair<std::string, std::string>>& seen,
                 std::vector<std::pair<std::string, std::string>>& order, const std::string& a, const std::string& b) {
    if (a == b || !seen.insert({a, b}).second) return;
    order.emplace_back(a, b);
  };
  for (size_t i = 0; i < nodes.size(); ++i) {
    const Node& n = nodes[i];
    for (const Tensor& in : n.inputs) {
      if (!in.defined()) continue;
      auto it = in.id() ? producer.find(in.id()) : producer.end();
      std::string from;
      if (it != producer.end() && it->second < i) {
        from = vertex_of[it->second];
      } else if (!in.name().empty() && !in.requires_grad()) {
        // a named input (images, token ids)
        from = "input:" + in.name();
        add_vertex(from,
                   "[shape=ellipse, style=filled, fillcolor=\"#fff3b0\", label=" +
                       quote(in.name() + "\n" + shape_str(in.shape())) + "]",
                   {});
      } else if (opt.params && !in.name().empty() && in.requires_grad() && vertex_of[i].rfind("op:", 0) == 0) {
        from = "param:" + in.name();
        add_vertex(from, "[shape=note, fontsize=8, label=" + quote(in.name() + "\n" + shape_str(in.shape())) + "]",
                   inspect::module_components(n.scope));
      } else {
        continue;  // unnamed constants, parameters when not shown
      }
      edge(fwd, fwd_order, from, vertex_of[i]);
      if (opt.backward_edges && in.requires_grad()) edge(bwd, bwd_order, vertex_of[i], from);
    }
  }

  // Clusters.
  Cluster root;
  for (const Vertex& v : vertices) {
    Cluster* c = &root;
    for (const std::string& part : v.cluster) {
      auto& child = c->children[part];
      if (!child) {
        child = std::make_unique<Cluster>();
        c->children_order.push_back(part);
      }
      c = child.get();
    }
    c->vertices.push_back(&v);
  }

  std::ostringstream out;
  out << "digraph clipcu {\n"
      << "  graph [rankdir=TB, newrank=true, fontname=\"Helvetica\", fontsize=11, labelloc=t";
  if (!opt.title.empty()) out << ", label=" << quote(opt.title);
  out << "];\n"
      << "  node [fontname=\"Helvetica\", fontsize=9, height=0.3, margin=\"0.08,0.03\"];\n"
      << "  edge [arrowsize=0.6];\n";
  emit(out, root, "", 1);
  for (const auto& [a, b] : fwd_order) out << "  " << quote(a) << " -> " << quote(b) << ";\n";
  for (const auto& [a, b] : bwd_order)
    out << "  " << quote(a) << " -> " << quote(b)
        << " [style=dashed, color=\"#c0392b\", constraint=false, arrowsize=0.4];\n";
  out << "}\n";
  return out.str();
}

}  // namespace clipcu::graph
