// clipcu make-shapes --out DIR --n N --seed S [--size 64] [--format csv|wds]: writes the synthetic
// shapes dataset (engine/data/shapes.h): images, a training and a held-out split, classes.json
// and templates.json for zero-shot evaluation.
#include <cstdio>
#include <memory>
#include <string>

#include "engine/data/shapes.h"
#include "tools/command.h"

namespace clipcu::tools {
namespace {

int run_make_shapes(const data::MakeShapesOptions& o) {
  const data::MakeShapesResult r = data::make_shapes(o);
  std::printf("wrote %llu training and %llu held-out %dx%d images (seed %llu) to %s\n", (unsigned long long)r.n_train,
              (unsigned long long)r.n_val, o.image_size, o.image_size, (unsigned long long)o.seed, o.out_dir.c_str());
  std::printf("  train: %s\n", r.train_spec.c_str());
  if (r.n_val > 0) std::printf("  val:   %s\n", r.val_spec.c_str());
  std::printf("  zero-shot: %s/classes.json (%zu classes), %s/templates.json\n", o.out_dir.c_str(),
              data::ShapesGenerator::class_names().size(), o.out_dir.c_str());
  return 0;
}

Command make_shapes_cmd("make-shapes", "Write the synthetic shapes dataset (images + captions, train/val splits, zero-shot classes)",
                        [](CLI::App& app) {
                          auto o = std::make_shared<data::MakeShapesOptions>();
                          app.add_option("--out", o->out_dir, "output folder")->required();
                          app.add_option("--n", o->n, "number of images (both splits)")->default_val(1000)->check(CLI::Range(uint64_t(1), uint64_t(1) << 40));
                          app.add_option("--seed", o->seed, "generator seed")->default_val(0);
                          app.add_option("--size", o->image_size, "image side in pixels")->default_val(64)->check(CLI::Range(8, 4096));
                          app.add_option("--format", o->format, "csv (PNG files + CSV) or wds (tar shards)")
                              ->default_val("csv")
                              ->check(CLI::IsMember({"csv", "wds"}));
                          app.add_option("--val-fraction", o->val_fraction, "fraction held out")->default_val(0.1)->check(CLI::Range(0.0, 0.99));
                          app.add_option("--shard-size", o->shard_size, "samples per tar shard (wds)")->default_val(1000)->check(CLI::Range(uint64_t(1), uint64_t(1) << 30));
                          app.add_option("--threads", o->threads, "encoding threads (0: all cores)")->default_val(0)->check(CLI::Range(0, 1024));
                          return [o]() { return run_make_shapes(*o); };
                        });

}  // namespace
}  // namespace clipcu::tools
