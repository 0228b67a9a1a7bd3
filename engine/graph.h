// The recorded graph as Graphviz DOT text (clipcu graph renders it with `dot`).
//
// Vertices are the tape's nodes (op name and output shape; the tooltip is the node's unique
// name), the named inputs the ops read ("input.images", "input.text") and, on request, the
// parameters. Solid edges run forward, from the node that produced a tensor to each node that
// reads it; dashed edges run backward, where a gradient flows (the input requires one).
// Modules become nested clusters; with depth N every module path of N or more components
// (inspect::module_components: "resblocks.3" counts as one) is drawn as one box standing for
// all its ops, so `depth 3` shows one box per transformer block (a module of a single op is
// drawn as that op, labelled "<module>: <op>").
#pragma once
#include <string>

#include "engine/autograd.h"

namespace clipcu::graph {

struct Options {
  int depth = 0;               // 0: every op a vertex; N > 0: collapse module paths of >= N components
  bool backward_edges = true;  // dashed gradient edges
  bool params = false;         // parameter vertices (inside their consumer's cluster)
  std::string title;           // the graph's label
};

std::string to_dot(const Tape& tape, const Options& opt = {});

}  // namespace clipcu::graph
