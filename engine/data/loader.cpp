// The data loader (see loader.h). Work is numbered by "slot": slot s is sample s % n of epoch
// s / n's order. Workers claim slots in increasing order, at most `window` ahead of the assembler,
// and leave a result (pixels or an error) per slot; the assembler consumes slots strictly in
// order, so the batches do not depend on thread timing.
#include "engine/data/loader.h"

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <limits>
#include <map>
#include <mutex>
#include <thread>

#include "engine/data/preprocess.h"
#include "engine/error.h"
#include "engine/rng.h"

namespace clipcu::data {

namespace {

struct Result {
  bool ok = false;
  std::string error;
  Tensor pixels;  // [3, N, N]
  int64_t index = 0;  // dataset index
};

// One entry of the ready queue: a batch, the end of the data, or an error.
struct Item {
  std::optional<Batch> batch;
  int64_t trailing_skipped = 0;  // skips after the last batch (with the end marker)
  std::exception_ptr error;
};

struct Stopped {};  // unwinds the assembler when the loader shuts down

}  // namespace

struct Loader::Impl {
  std::shared_ptr<const Dataset> ds;
  LoaderOptions o;
  TokenizeFn tokenize;
  int64_t n = 0;
  int64_t end_slot = 0;
  int64_t window = 0;

  // epoch orders, computed on demand (a few epochs at most are alive at once)
  mutable std::mutex order_mu;
  mutable std::map<int64_t, std::shared_ptr<const std::vector<int64_t>>> orders;

  // shared state of the threads
  std::mutex mu;
  std::condition_variable cv_work, cv_result, cv_ready;
  int64_t claim_slot = 0;  // next slot a worker takes
  int64_t asm_slot = 0;    // next slot the assembler consumes
  std::map<int64_t, Result> results;
  std::deque<Item> ready;
  bool stop = false;
  std::vector<std::thread> workers;
  std::thread assembler;

  // assembler state (only the assembler, or next() in synchronous mode, touches it)
  int64_t pending_skipped = 0;
  int64_t cur_epoch = -1;    // the epoch of the last slot consumed
  int64_t epoch_ok = 0;      // samples of cur_epoch that loaded
  bool epoch_whole = false;  // cur_epoch was consumed from its first slot (not resumed midway)
  std::string last_error;

  // consumer state
  Position pos;
  int64_t skipped_total = 0;
  bool ended = false;
  std::exception_ptr failed;

  std::shared_ptr<const std::vector<int64_t>> order(int64_t epoch) const {
    std::lock_guard<std::mutex> lock(order_mu);
    auto it = orders.find(epoch);
    if (it != orders.end()) return it->second;
    auto v = std::make_shared<std::vector<int64_t>>(size_t(n));
    for (int64_t i = 0; i < n; ++i) (*v)[size_t(i)] = i;
    if (o.shuffle) {
      Rng rng = Rng(o.seed).fork("order/" + std::to_string(epoch));
      for (int64_t i = n - 1; i > 0; --i) std::swap((*v)[size_t(i)], (*v)[rng.below(uint64_t(i + 1))]);
    }
    // keep the newest few; workers only ever need the epochs around the assembler's
    while (orders.size() >= 4) orders.erase(orders.begin());
    orders.emplace(epoch, v);
    return v;
  }

  Result process(int64_t slot) const {
    const int64_t epoch = slot / n, idx = slot % n;
    Result r;
    r.index = (*order(epoch))[size_t(idx)];
    try {
      Image img = ds->load_image(size_t(r.index), o.jpeg);
      if (o.augment) {
        Rng rng = Rng(o.seed).fork("augment/" + std::to_string(epoch) + "/" + std::to_string(idx));
        r.pixels = preprocess(img, o.image_size, true, &rng);
      } else {
        r.pixels = preprocess(img, o.image_size);
      }
      r.ok = true;
    } catch (const std::exception& e) {
      r.ok = false;
      r.error = e.what();
    }
    return r;
  }

  Result get_async(int64_t slot) {
    std::unique_lock<std::mutex> lock(mu);
    cv_result.wait(lock, [&] { return stop || results.count(slot) != 0; });
    if (stop) throw Stopped{};
    Result r = std::move(results[slot]);
    results.erase(slot);
    asm_slot = slot + 1;
    lock.unlock();
    cv_work.notify_all();
    return r;
  }

  Result get_sync(int64_t slot) {
    asm_slot = slot + 1;
    return process(slot);
  }

  static Position to_position(int64_t slot, int64_t n) { return Position{slot / n, slot % n}; }

  Batch finalize(std::vector<Result>& rows, int64_t epoch) {
    Batch b;
    const int64_t B = int64_t(rows.size()), N = o.image_size;
    b.images = Tensor::empty({B, 3, N, N}, DType::F32);
    float* dst = b.images.data<float>();
    const size_t per = size_t(3 * N * N);
    for (int64_t i = 0; i < B; ++i) {
      std::memcpy(dst + size_t(i) * per, rows[size_t(i)].pixels.data<float>(), per * sizeof(float));
      b.indices.push_back(rows[size_t(i)].index);
      b.captions.push_back(ds->caption(size_t(rows[size_t(i)].index)));
      b.labels.push_back(ds->label(size_t(rows[size_t(i)].index)));
    }
    if (tokenize) {
      const int64_t T = o.context_length;
      b.tokens = Tensor::zeros({B, T}, DType::I64);
      int64_t* t = b.tokens.data<int64_t>();
      for (int64_t i = 0; i < B; ++i) {
        std::vector<int64_t> ids = tokenize(b.captions[size_t(i)]);
        if (int64_t(ids.size()) > T) {
          const int64_t last = ids.back();
          ids.resize(size_t(T));
          ids[size_t(T - 1)] = last;
        }
        std::copy(ids.begin(), ids.end(), t + i * T);
      }
    }
    b.epoch = epoch;
    b.position = to_position(asm_slot, n);
    b.skipped = pending_skipped;
    pending_skipped = 0;
    return b;
  }

  // A whole epoch in which no image loaded: the data is unusable (and an endless loader would
  // otherwise spin forever).
  void check_epoch_done() {
    if (cur_epoch >= 0 && epoch_whole && epoch_ok == 0) {
      throw Error("no image loads from " + ds->describe() + ": all " + std::to_string(n) + " samples of epoch " +
                  std::to_string(cur_epoch) + " failed (last error: " + last_error + ")");
    }
  }

  // The next batch from asm_slot on; nullopt at the end of the last epoch.
  template <class Get>
  std::optional<Batch> assemble(Get get) {
    std::vector<Result> rows;
    int64_t batch_epoch = asm_slot / n;
    while (true) {
      const int64_t slot = asm_slot;
      if (slot >= end_slot) {
        check_epoch_done();
        cur_epoch = -1;  // checked once
        if (!rows.empty() && !o.drop_last) return finalize(rows, batch_epoch);
        return std::nullopt;
      }
      if (slot / n != cur_epoch) {
        check_epoch_done();
        cur_epoch = slot / n;
        epoch_ok = 0;
        epoch_whole = slot % n == 0;
      }
      if (slot / n != batch_epoch) {  // a batch never spans two epochs
        if (!rows.empty() && !o.drop_last) return finalize(rows, batch_epoch);
        rows.clear();
        batch_epoch = slot / n;
      }
      Result r = get(slot);
      if (!r.ok) {
        ++pending_skipped;
        if (o.warn) std::fprintf(stderr, "clipcu: warning: skipping sample %lld: %s\n", (long long)r.index, r.error.c_str());
        last_error = std::move(r.error);
        continue;
      }
      ++epoch_ok;
      rows.push_back(std::move(r));
      if (int64_t(rows.size()) == o.batch_size) return finalize(rows, batch_epoch);
    }
  }

  void worker_loop() {
    while (true) {
      int64_t slot;
      {
        std::unique_lock<std::mutex> lock(mu);
        cv_work.wait(lock, [&] { return stop || (claim_slot < end_slot && claim_slot < asm_slot + window); });
        if (stop) return;
        slot = claim_slot++;
      }
      Result r = process(slot);
      {
        std::lock_guard<std::mutex> lock(mu);
        if (stop) return;
        results.emplace(slot, std::move(r));
      }
      cv_result.notify_all();
    }
  }

  void assembler_loop() {
    try {
      while (true) {
        std::optional<Batch> b = assemble([this](int64_t s) { return get_async(s); });
        Item it;
        const bool end = !b.has_value();
        if (end) {
          it.trailing_skipped = pending_skipped;
          pending_skipped = 0;
        }
        it.batch = std::move(b);
        {
          std::unique_lock<std::mutex> lock(mu);
          cv_ready.wait(lock, [&] { return stop || int64_t(ready.size()) < std::max(1, o.prefetch_batches); });
          if (stop) return;
          ready.push_back(std::move(it));
        }
        cv_ready.notify_all();
        if (end) return;
      }
    } catch (const Stopped&) {
      return;
    } catch (...) {
      {
        std::lock_guard<std::mutex> lock(mu);
        Item it;
        it.error = std::current_exception();
        ready.push_back(std::move(it));
      }
      cv_ready.notify_all();
    }
  }

  void start(Position p) {
    CLIPCU_CHECK(p.epoch >= 0 && p.index >= 0 && p.index <= n,
                 "loader: resume position (" << p.str() << ") outside a dataset of " << n << " samples");
    const int64_t slot = p.epoch * n + p.index;
    claim_slot = asm_slot = slot;
    results.clear();
    ready.clear();
    stop = false;
    pending_skipped = 0;
    cur_epoch = -1;
    epoch_ok = 0;
    epoch_whole = false;
    last_error.clear();
    pos = to_position(slot, n);
    ended = false;
    failed = nullptr;
    if (o.workers > 0) {
      for (int w = 0; w < o.workers; ++w) workers.emplace_back([this] { worker_loop(); });
      assembler = std::thread([this] { assembler_loop(); });
    }
  }

  void shutdown() {
    {
      std::lock_guard<std::mutex> lock(mu);
      stop = true;
    }
    cv_work.notify_all();
    cv_result.notify_all();
    cv_ready.notify_all();
    for (auto& t : workers) t.join();
    workers.clear();
    if (assembler.joinable()) assembler.join();
  }
};

Loader::Loader(std::shared_ptr<const Dataset> dataset, const LoaderOptions& opts, TokenizeFn tokenize, Position start)
    : impl_(std::make_unique<Impl>()) {
  CLIPCU_CHECK(dataset, "loader: no dataset");
  CLIPCU_CHECK(opts.batch_size >= 1, "loader: batch size " << opts.batch_size);
  CLIPCU_CHECK(opts.image_size >= 1, "loader: image size " << opts.image_size);
  CLIPCU_CHECK(!tokenize || opts.context_length >= 1, "loader: context length " << opts.context_length);
  CLIPCU_CHECK(opts.workers >= 0, "loader: " << opts.workers << " workers");
  Impl& m = *impl_;
  m.ds = std::move(dataset);
  m.o = opts;
  m.tokenize = std::move(tokenize);
  m.n = int64_t(m.ds->size());
  CLIPCU_CHECK(m.n > 0, "loader: empty dataset " << m.ds->describe());
  m.end_slot = opts.epochs > 0 ? opts.epochs * m.n : std::numeric_limits<int64_t>::max() / 2;
  m.window = int64_t(opts.batch_size) + 4 * int64_t(opts.workers);
  m.start(start);
}

Loader::~Loader() { impl_->shutdown(); }

std::optional<Batch> Loader::next() {
  Impl& m = *impl_;
  if (m.failed) std::rethrow_exception(m.failed);
  if (m.ended) return std::nullopt;
  Item it;
  if (m.o.workers == 0) {
    try {
      it.batch = m.assemble([&m](int64_t s) { return m.get_sync(s); });
      if (!it.batch) {
        it.trailing_skipped = m.pending_skipped;
        m.pending_skipped = 0;
      }
    } catch (...) {
      it.error = std::current_exception();
    }
  } else {
    {
      std::unique_lock<std::mutex> lock(m.mu);
      m.cv_ready.wait(lock, [&] { return !m.ready.empty(); });
      it = std::move(m.ready.front());
      m.ready.pop_front();
    }
    m.cv_ready.notify_all();
  }
  if (it.error) {
    m.failed = it.error;
    std::rethrow_exception(it.error);
  }
  if (!it.batch) {
    m.skipped_total += it.trailing_skipped;
    m.ended = true;
    return std::nullopt;
  }
  m.skipped_total += it.batch->skipped;
  m.pos = it.batch->position;
  return it.batch;
}

Position Loader::position() const { return impl_->pos; }

void Loader::seek(Position p) {
  impl_->shutdown();
  impl_->start(p);
}

int64_t Loader::skipped() const { return impl_->skipped_total; }

int64_t Loader::batches_per_epoch() const {
  const int64_t n = impl_->n, B = impl_->o.batch_size;
  return impl_->o.drop_last ? n / B : (n + B - 1) / B;
}

std::vector<int64_t> Loader::epoch_order(int64_t epoch) const { return *impl_->order(epoch); }

const LoaderOptions& Loader::options() const { return impl_->o; }

const Dataset& Loader::dataset() const { return *impl_->ds; }

}  // namespace clipcu::data
