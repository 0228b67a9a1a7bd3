// The training/evaluation data loader: shuffled, epoch-based, prefetching, resumable.
//
// Order: epoch e visits the dataset in a permutation drawn from the seed and e alone
// (Fisher-Yates on clipcu::Rng, integer draws only), so the same seed gives the same order on
// every machine. Samples are consumed in that order; a batch is the next `batch_size` samples
// that load. A sample whose image is missing, unreadable or corrupt is skipped with a warning on
// stderr and counted (Batch::skipped, Loader::skipped()), never a crash; a whole epoch in which
// no image loads is an error (instead of an endless search). Batches never span two
// epochs: with drop_last (training) the partial batch at the end of an epoch is dropped, without
// it (evaluation) it is returned short.
//
// Threads: `workers` threads decode and preprocess samples ahead of the consumer (a bounded
// window of samples); one assembler thread puts them together in order, tokenizes the captions
// and fills a bounded queue of ready batches (`prefetch_batches`). Because the composition of
// every batch depends only on the order and on which samples fail, and the augmentation of a
// sample draws from a generator keyed by (seed, epoch, position in the epoch), any number of
// workers gives the same batches, bit for bit. workers = 0 does all the work inside next().
//
// Resuming: Batch::position (also Loader::position() after next()) is (epoch, index into that
// epoch's order) of the first sample not yet consumed. Save it in a checkpoint; a loader built
// with it (or seek()) produces exactly the batches that would have followed.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/data/dataset.h"
#include "engine/tensor.h"

namespace clipcu::data {

// Caption -> token row (CLIP: start, ids, end). Rows shorter than the context are padded with 0;
// a longer row is cut to the context with its last id (the end token) kept in the last place, as
// CLIP's tokenizer truncates. Called from one thread at a time, never concurrently.
using TokenizeFn = std::function<std::vector<int64_t>(const std::string&)>;

struct Position {
  int64_t epoch = 0;
  int64_t index = 0;  // into the epoch's order
  bool operator==(const Position& o) const { return epoch == o.epoch && index == o.index; }
  std::string str() const { return "epoch " + std::to_string(epoch) + ", sample " + std::to_string(index); }
};

struct LoaderOptions {
  int batch_size = 32;
  int image_size = 224;
  int context_length = 77;
  bool augment = false;    // true: RandomResizedCrop(scale 0.9-1) (training); false: resize + center crop
  bool shuffle = true;     // false: dataset order every epoch
  bool drop_last = true;   // training: every batch full
  int64_t epochs = 1;      // <= 0: endless
  uint64_t seed = 0;
  int workers = 2;         // decoding threads; 0 = everything in the caller's thread
  int prefetch_batches = 2;
  JpegDecoder jpeg = JpegDecoder::Auto;
  bool warn = true;        // print a warning for each skipped sample
};

struct Batch {
  Tensor images;  // [B, 3, N, N] F32, normalized with CLIP's mean and std
  Tensor tokens;  // [B, context] I64 (undefined when the loader has no tokenizer)
  std::vector<std::string> captions;
  std::vector<int64_t> labels;   // -1 where the dataset has none
  std::vector<int64_t> indices;  // dataset indices of the rows
  int64_t epoch = 0;
  Position position;             // the resume point after this batch
  int64_t skipped = 0;           // samples skipped while this batch was assembled
  int64_t size() const { return images.defined() ? images.size(0) : 0; }
};

class Loader {
 public:
  Loader(std::shared_ptr<const Dataset> dataset, const LoaderOptions& opts, TokenizeFn tokenize = {}, Position start = {});
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  // The next batch; nullopt after the last epoch. Rethrows an error of the data path (a
  // tokenizer failure, a dataset in which no image loads).
  std::optional<Batch> next();
  // The resume point after the last batch returned (the start position before any).
  Position position() const;
  // Continues from `p` (a Batch::position of an earlier run).
  void seek(Position p);
  // Samples skipped so far in the batches returned.
  int64_t skipped() const;
  // Full batches per epoch when no sample fails.
  int64_t batches_per_epoch() const;
  // The dataset indices in epoch e's order.
  std::vector<int64_t> epoch_order(int64_t epoch) const;
  const LoaderOptions& options() const;
  const Dataset& dataset() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace clipcu::data
