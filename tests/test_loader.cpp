// The loader: seeded epoch orders (pinned), batch contents and token rows, identical batches for
// any number of workers, resuming from a saved position, skipping and counting corrupt images,
// errors instead of hangs, short last batches for evaluation.
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>

#include "engine/data/loader.h"
#include "engine/data/preprocess.h"
#include "engine/data/shapes.h"
#include "engine/rng.h"
#include "tests/support.h"

using namespace clipcu;
using namespace clipcu::data;
namespace fs = std::filesystem;

namespace {

// A stand-in tokenizer: start, one id per character, end (the loader must pad and truncate).
std::vector<int64_t> fake_tokenize(const std::string& s) {
  std::vector<int64_t> ids{49406};
  for (unsigned char c : s) ids.push_back(1000 + c);
  ids.push_back(49407);
  return ids;
}

std::shared_ptr<const Dataset> shapes(uint64_t n, int size = 16) {
  return std::make_shared<ShapesDataset>(size, 4, 0, n);
}

std::vector<Batch> drain(Loader& l, size_t max = 1000) {
  std::vector<Batch> out;
  while (out.size() < max) {
    auto b = l.next();
    if (!b) break;
    out.push_back(std::move(*b));
  }
  return out;
}

bool same_tensor(const Tensor& a, const Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  return a.shape() == b.shape() && a.dtype() == b.dtype() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

void check_same(const std::vector<Batch>& a, const std::vector<Batch>& b, const std::string& what) {
  REQUIRE_MESSAGE(a.size() == b.size(), what);
  for (size_t i = 0; i < a.size(); ++i) {
    CHECK_MESSAGE(a[i].indices == b[i].indices, what << ": batch " << i);
    CHECK_MESSAGE(same_tensor(a[i].images, b[i].images), what << ": batch " << i << " images");
    CHECK_MESSAGE(same_tensor(a[i].tokens, b[i].tokens), what << ": batch " << i << " tokens");
    CHECK_MESSAGE(a[i].captions == b[i].captions, what << ": batch " << i);
    CHECK_MESSAGE(a[i].position == b[i].position, what << ": batch " << i);
    CHECK_MESSAGE(a[i].skipped == b[i].skipped, what << ": batch " << i);
  }
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

// n images, of which the rows in `bad` are a missing file (row % 3 == 2), a truncated PNG
// (row % 3 == 0) or not an image (row % 3 == 1).
std::string make_csv_with_bad_rows(const std::string& dir, const std::set<int>& bad = {2, 7, 9}, int n = 12) {
  ShapesGenerator g(20, 6);
  std::string csv = "filepath\ttitle\n";
  for (int i = 0; i < n; ++i) {
    const std::string name = "img" + std::to_string(i) + ".png";
    std::vector<uint8_t> png = encode_png(g.render(uint64_t(i)));
    if (bad.count(i)) {
      if (i % 3 == 2) continue;  // missing file
      if (i % 3 == 0) png.resize(png.size() / 2);  // truncated
      if (i % 3 == 1) png.assign({'n', 'o', 'p', 'e'});  // not an image
    }
    write_bytes(dir + "/" + name, png);
  }
  for (int i = 0; i < n; ++i) csv += "img" + std::to_string(i) + ".png\t" + g.caption(uint64_t(i)) + "\n";
  std::ofstream(dir + "/data.tsv") << csv;
  return dir + "/data.tsv";
}

}  // namespace

TEST_CASE("epoch orders are seeded permutations, the same on every machine") {
  LoaderOptions o;
  o.batch_size = 3;
  o.image_size = 16;
  o.seed = 1;
  o.workers = 0;
  Loader a(shapes(10), o), b(shapes(10), o);
  auto e0 = a.epoch_order(0), e1 = a.epoch_order(1);
  for (auto* e : {&e0, &e1}) {
    std::printf("seed 1, n 10, epoch %d order:", e == &e0 ? 0 : 1);
    for (int64_t v : *e) std::printf(" %lld", (long long)v);
    std::printf("\n");
  }
  std::vector<int64_t> sorted = e0;
  std::sort(sorted.begin(), sorted.end());
  std::vector<int64_t> iota(10);
  std::iota(iota.begin(), iota.end(), 0);
  CHECK(sorted == iota);
  CHECK(e0 != e1);
  CHECK(b.epoch_order(0) == e0);
  CHECK(b.epoch_order(1) == e1);
  // pinned: Fisher-Yates over xoshiro256** integer draws, no floating point
  CHECK(e0 == std::vector<int64_t>{6, 7, 5, 4, 8, 2, 0, 3, 1, 9});
  CHECK(e1 == std::vector<int64_t>{9, 1, 7, 8, 6, 0, 4, 2, 3, 5});
  o.seed = 2;
  CHECK(Loader(shapes(10), o).epoch_order(0) != e0);
  o.shuffle = false;
  CHECK(Loader(shapes(10), o).epoch_order(3) == iota);
}

TEST_CASE("batch contents: images, padded and truncated token rows, captions, labels") {
  auto ds = shapes(7, 24);
  LoaderOptions o;
  o.batch_size = 3;
  o.image_size = 20;  // resized + center-cropped from 24
  o.context_length = 30;
  o.epochs = 1;
  o.workers = 2;
  Loader l(ds, o, fake_tokenize);
  auto batches = drain(l);
  REQUIRE(batches.size() == 2);  // 7 samples: two full batches, the last one dropped
  CHECK(l.batches_per_epoch() == 2);
  for (const Batch& b : batches) {
    REQUIRE(b.images.shape() == Shape{3, 3, 20, 20});
    REQUIRE(b.tokens.shape() == Shape{3, 30});
    CHECK(b.tokens.dtype() == DType::I64);
    for (int r = 0; r < 3; ++r) {
      const int64_t idx = b.indices[size_t(r)];
      Tensor ref = preprocess(ds->load_image(size_t(idx)), 20);
      CHECK(std::memcmp(b.images.data<float>() + r * 3 * 400, ref.data<float>(), 3 * 400 * sizeof(float)) == 0);
      CHECK(b.captions[size_t(r)] == ds->caption(size_t(idx)));
      CHECK(b.labels[size_t(r)] == ds->label(size_t(idx)));
      const int64_t* t = b.tokens.data<int64_t>() + r * 30;
      std::vector<int64_t> ids = fake_tokenize(b.captions[size_t(r)]);
      CHECK(t[0] == 49406);
      if (ids.size() <= 30) {
        for (size_t k = 0; k < 30; ++k) CHECK(t[k] == (k < ids.size() ? ids[k] : 0));
      } else {  // cut to the context with the end id kept last
        for (size_t k = 0; k + 1 < 30; ++k) CHECK(t[k] == ids[k]);
        CHECK(t[29] == 49407);
      }
    }
  }
  CHECK(batches[0].position == Position{0, 3});
  CHECK(batches[1].position == Position{0, 6});
  CHECK(!l.next().has_value());
  CHECK(!l.next().has_value());
  // without a tokenizer there are no token rows
  Loader notok(ds, o);
  auto b = notok.next();
  REQUIRE(b.has_value());
  CHECK(!b->tokens.defined());
}

TEST_CASE("any number of workers gives the same batches, with and without augmentation") {
  for (bool augment : {false, true}) {
    LoaderOptions o;
    o.batch_size = 4;
    o.image_size = 16;
    o.context_length = 12;
    o.epochs = 2;
    o.seed = 5;
    o.augment = augment;
    o.workers = 0;
    Loader l0(shapes(23, 24), o, fake_tokenize);
    auto ref = drain(l0);
    CHECK(ref.size() == 10);  // 5 full batches per epoch
    for (int w : {1, 3}) {
      o.workers = w;
      o.prefetch_batches = w;
      Loader lw(shapes(23, 24), o, fake_tokenize);
      check_same(ref, drain(lw), "workers " + std::to_string(w) + (augment ? " augmented" : ""));
    }
    if (augment) {  // the augmentation differs between epochs for the same image
      o.workers = 0;
      o.shuffle = false;
      Loader s(shapes(8, 24), o, fake_tokenize);
      auto e = drain(s);
      REQUIRE(e.size() == 4);
      CHECK(e[0].indices == e[2].indices);
      CHECK(!same_tensor(e[0].images, e[2].images));
    }
  }
}

TEST_CASE("a saved position resumes with exactly the batches that would have followed") {
  LoaderOptions o;
  o.batch_size = 4;
  o.image_size = 16;
  o.context_length = 10;
  o.epochs = 3;
  o.seed = 9;
  o.augment = true;
  o.workers = 2;
  auto ds = shapes(22, 20);  // 5 batches per epoch, 2 samples dropped at each epoch's end
  Loader full(ds, o, fake_tokenize);
  auto all = drain(full);
  REQUIRE(all.size() == 15);
  CHECK(all[4].position == Position{0, 20});
  CHECK(all[5].position == Position{1, 4});
  CHECK(full.position() == Position{2, 20});
  for (size_t k : {1u, 4u, 5u, 9u, 14u}) {
    Loader resumed(ds, o, fake_tokenize, all[k - 1].position);
    CHECK(resumed.position() == all[k - 1].position);
    std::vector<Batch> rest(all.begin() + long(k), all.end());
    check_same(rest, drain(resumed), "resumed after batch " + std::to_string(k));
  }
  // seek() on a running loader, and from a position on an epoch boundary
  Loader l(ds, o, fake_tokenize);
  drain(l, 2);
  l.seek(Position{1, 0});
  auto b = l.next();
  REQUIRE(b.has_value());
  CHECK(b->indices == all[5].indices);
  CHECK(same_tensor(b->images, all[5].images));
  CHECK_THROWS_AS(Loader(ds, o, fake_tokenize, Position{0, 23}), Error);
}

TEST_CASE("missing, truncated and non-image files are skipped with a warning and counted") {
  const std::string dir = test::temp_dir("loader_bad");
  auto ds = std::make_shared<CsvDataset>(make_csv_with_bad_rows(dir));
  std::vector<Batch> ref;
  for (int w : {0, 3}) {
    LoaderOptions o;
    o.batch_size = 2;
    o.image_size = 16;
    o.epochs = 2;
    o.seed = 3;
    o.workers = w;
    o.warn = w == 0;  // one run shows the warnings
    Loader l(ds, o, fake_tokenize);
    auto batches = drain(l);
    CHECK(batches.size() == 8);  // 9 good samples an epoch: 4 full batches, 1 dropped
    int64_t skipped = 0;
    for (const Batch& b : batches) {
      CHECK(b.size() == 2);
      skipped += b.skipped;
      for (int64_t idx : b.indices) CHECK((idx != 2 && idx != 7 && idx != 9));
    }
    CHECK(l.skipped() == 6);  // 3 bad files, 2 epochs
    CHECK(skipped <= 6);      // the rest fell after the last batch of an epoch
    if (w == 0) {
      ref = batches;
    } else {
      check_same(ref, batches, "skipping with 3 workers");
    }
  }
}

TEST_CASE("a dataset in which no image loads is an error, not a hang") {
  const std::string dir = test::temp_dir("loader_allbad");
  auto ds = std::make_shared<CsvDataset>(make_csv_with_bad_rows(dir, {0, 1, 2, 3, 4, 5}, 6));
  for (int w : {0, 2}) {
    LoaderOptions o;
    o.batch_size = 2;
    o.image_size = 8;
    o.epochs = 0;  // endless: the loader must notice by itself
    o.workers = w;
    o.warn = false;
    Loader l(ds, o);
    std::string msg;
    try {
      l.next();
    } catch (const Error& e) {
      msg = e.what();
    }
    CHECK(msg.find("no image loads") != std::string::npos);
    CHECK(msg.find(dir + "/data.tsv") != std::string::npos);
    CHECK_THROWS_AS(l.next(), Error);  // and stays failed
  }
  // mostly bad is not all bad: runs of failures across epoch boundaries are fine
  const std::string dir2 = test::temp_dir("loader_mostlybad");
  auto ds2 = std::make_shared<CsvDataset>(make_csv_with_bad_rows(dir2, {0, 1}, 3));
  LoaderOptions o;
  o.batch_size = 1;
  o.image_size = 8;
  o.epochs = 0;
  o.workers = 0;
  o.warn = false;
  Loader l(ds2, o);
  for (int i = 0; i < 20; ++i) {
    auto b = l.next();
    REQUIRE(b.has_value());
    CHECK(b->indices == std::vector<int64_t>{2});
  }
  CHECK(l.skipped() >= 38);
}

TEST_CASE("evaluation keeps the short last batch, batches never span epochs, endless training") {
  LoaderOptions o;
  o.batch_size = 4;
  o.image_size = 8;
  o.epochs = 2;
  o.drop_last = false;
  o.shuffle = false;
  o.workers = 1;
  Loader l(shapes(10, 8), o);
  auto b = drain(l);
  REQUIRE(b.size() == 6);
  const int64_t sizes[] = {4, 4, 2, 4, 4, 2};
  for (size_t i = 0; i < 6; ++i) {
    CHECK(b[i].size() == sizes[i]);
    CHECK(b[i].epoch == int64_t(i / 3));
  }
  CHECK(b[2].indices == std::vector<int64_t>{8, 9});
  CHECK(b[2].position == Position{1, 0});
  CHECK(l.batches_per_epoch() == 3);

  o.epochs = 0;
  o.drop_last = true;
  o.workers = 2;
  Loader endless(shapes(5, 8), o);
  for (int i = 0; i < 12; ++i) {
    auto e = endless.next();
    REQUIRE(e.has_value());
    CHECK(e->epoch == i);  // one full batch of 4 per 5-sample epoch
  }
  // a loader destroyed while its workers are busy shuts down cleanly
  {
    o.prefetch_batches = 3;
    Loader busy(shapes(1000, 32), o);
    busy.next();
  }
}
