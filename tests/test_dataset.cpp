// Datasets: CSV/TSV parsing (quoting, separators, relative paths, labels), WebDataset tar shards
// made here with libarchive's writer (brace patterns, "::" lists, grouping by key, .txt/.json
// captions, compressed shards), and the errors: bad header, empty CSV, wrong field counts,
// truncated, empty, missing and non-tar shards.
#include <archive.h>
#include <archive_entry.h>

#include <filesystem>
#include <fstream>

#include "engine/data/dataset.h"
#include "engine/data/shapes.h"
#include "engine/data/wds.h"
#include "tests/support.h"

using namespace clipcu;
using namespace clipcu::data;
namespace fs = std::filesystem;

namespace {

void write_text(const std::string& path, const std::string& s) {
  std::ofstream f(path, std::ios::binary);
  f << s;
}
void write_bytes(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

template <class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// A small PNG of shapes sample i (distinct pixels per sample).
std::vector<uint8_t> sample_png(uint64_t i, int size = 24) { return encode_png(ShapesGenerator(size, 99).render(i)); }

struct Member {
  std::string name;
  std::string data;
};
// Writes a tar (optionally gzip-compressed) with libarchive.
void write_tar(const std::string& path, const std::vector<Member>& members, bool gzip = false) {
  struct archive* a = archive_write_new();
  archive_write_set_format_pax_restricted(a);
  if (gzip) archive_write_add_filter_gzip(a);
  REQUIRE(archive_write_open_filename(a, path.c_str()) == ARCHIVE_OK);
  for (const auto& m : members) {
    struct archive_entry* e = archive_entry_new();
    archive_entry_set_pathname(e, m.name.c_str());
    archive_entry_set_size(e, la_int64_t(m.data.size()));
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    REQUIRE(archive_write_header(a, e) == ARCHIVE_OK);
    REQUIRE(archive_write_data(a, m.data.data(), m.data.size()) == la_ssize_t(m.data.size()));
    archive_entry_free(e);
  }
  REQUIRE(archive_write_close(a) == ARCHIVE_OK);
  archive_write_free(a);
}

std::string as_string(const std::vector<uint8_t>& b) { return std::string(b.begin(), b.end()); }

}  // namespace

TEST_CASE("delimited text: quotes, doubled quotes, separators and newlines inside quotes, CRLF, BOM, blank lines") {
  const std::string text =
      "\xEF\xBB\xBF"
      "a,b,c\r\n"
      "1,\"x, y\",\"he said \"\"hi\"\"\"\r\n"
      "\n"
      "2,\"two\nlines\",\r\n"
      "3,plain \"quote\" inside,\"\"\n"
      "4,last,no newline";
  auto recs = parse_delimited(text, ',', "t.csv");
  REQUIRE(recs.size() == 5);
  CHECK(recs[0].fields == std::vector<std::string>{"a", "b", "c"});
  CHECK(recs[1].fields == std::vector<std::string>{"1", "x, y", "he said \"hi\""});
  CHECK(recs[2].fields == std::vector<std::string>{"2", "two\nlines", ""});
  CHECK(recs[2].line == 4);
  CHECK(recs[3].fields == std::vector<std::string>{"3", "plain \"quote\" inside", ""});
  CHECK(recs[3].line == 6);
  CHECK(recs[4].fields == std::vector<std::string>{"4", "last", "no newline"});

  std::string open = error_of([] { parse_delimited("a\tb\n1\t\"never closed\n", '\t', "u.tsv"); });
  CHECK(open.find("u.tsv") != std::string::npos);
  CHECK(open.find("line 2") != std::string::npos);
  std::string after = error_of([] { parse_delimited("a,b\n\"x\"y,2\n", ',', "v.csv"); });
  CHECK(after.find("v.csv") != std::string::npos);
  CHECK(after.find("line 2") != std::string::npos);
}

TEST_CASE("CSV and TSV datasets: open_clip's keys, paths relative to the file, labels") {
  const std::string dir = test::temp_dir("dataset_csv");
  fs::create_directories(dir + "/imgs/sub");
  for (int i = 0; i < 3; ++i) write_bytes(dir + "/imgs/sub/" + std::to_string(i) + ".png", sample_png(uint64_t(i)));
  const std::string abs_png = dir + "/abs.png";
  write_bytes(abs_png, sample_png(7));

  // TSV with the defaults: separator tab, keys filepath / title, extra columns ignored
  write_text(dir + "/train.tsv",
             "id\tfilepath\ttitle\tlabel\n"
             "a\timgs/sub/0.png\ta red circle\t3\n"
             "b\timgs/sub/../sub/1.png\t\"quoted, with \"\"quotes\"\" and\ta tab\"\t4\n"
             "c\t" + abs_png + "\tabsolute\t5\n");
  CsvDataset tsv(dir + "/train.tsv");
  REQUIRE(tsv.size() == 3);
  CHECK(tsv.name(0) == dir + "/imgs/sub/0.png");
  CHECK(tsv.name(1) == dir + "/imgs/sub/1.png");
  CHECK(tsv.name(2) == abs_png);
  CHECK(tsv.caption(1) == "quoted, with \"quotes\" and\ta tab");
  CHECK(tsv.label(2) == 5);
  Image img = tsv.load_image(1);
  CHECK(img.pixels == ShapesGenerator(24, 99).render(1).pixels);
  CHECK(tsv.describe().find("3 samples") != std::string::npos);

  // comma CSV with other keys, from another working folder: paths follow the file, not the cwd
  fs::create_directories(dir + "/lists");
  write_text(dir + "/lists/val.csv", "image,caption\n../imgs/sub/2.png,\"two, three\"\n");
  CsvOptions o;
  o.separator = ",";
  o.image_key = "image";
  o.caption_key = "caption";
  CsvDataset csv(dir + "/lists/val.csv", o);
  REQUIRE(csv.size() == 1);
  CHECK(csv.name(0) == dir + "/imgs/sub/2.png");
  CHECK(csv.caption(0) == "two, three");
  CHECK(csv.label(0) == -1);
  CHECK(csv.load_image(0).width == 24);
  // "\t" written as backslash-t on a command line means a tab
  CsvOptions bt;
  bt.separator = "\\t";
  CHECK(CsvDataset(dir + "/train.tsv", bt).size() == 3);
  // open_dataset picks CSV for other names
  CHECK(open_dataset(dir + "/train.tsv")->size() == 3);

  // a row whose image is missing opens fine and fails when read, naming the file
  write_text(dir + "/missing.tsv", "filepath\ttitle\nimgs/none.png\tghost\n");
  CsvDataset ghost(dir + "/missing.tsv");
  std::string msg = error_of([&] { ghost.load_image(0); });
  CHECK(msg.find(dir + "/imgs/none.png") != std::string::npos);
}

TEST_CASE("bad CSVs are clear errors naming the file") {
  const std::string dir = test::temp_dir("dataset_csv_bad");
  struct Case {
    const char* name;
    std::string text;
    const char* reason;
  } cases[] = {
      {"empty.csv", "", "empty"},
      {"blank.csv", "\n\n", "empty"},
      {"header_only.csv", "filepath\ttitle\n", "no rows"},
      {"wrong_keys.csv", "path\tcaption\nx.png\thello\n", "no 'filepath' and no 'title'"},
      {"commas.csv", "filepath,title\nx.png,hello\n", "separator"},
      {"short_row.csv", "filepath\ttitle\nx.png\n", "line 2 has 1 fields"},
      {"long_row.csv", "filepath\ttitle\nx.png\thello\n y.png\thi\textra\n", "line 3 has 3 fields"},
      {"empty_path.csv", "filepath\ttitle\n\thello\n", "empty image path"},
      {"bad_label.csv", "filepath\ttitle\tlabel\nx.png\thello\tseven\n", "not an integer"},
      {"open_quote.csv", "filepath\ttitle\nx.png\t\"unterminated\n", "never closed"},
  };
  for (const Case& c : cases) {
    const std::string p = dir + "/" + c.name;
    write_text(p, c.text);
    std::string msg = error_of([&] { CsvDataset d(p); });
    std::printf("  %-16s -> %s\n", c.name, msg.c_str());
    CHECK_MESSAGE(msg.find(p) != std::string::npos, c.name << ": " << msg);
    CHECK_MESSAGE(msg.find(c.reason) != std::string::npos, c.name << ": " << msg);
  }
  std::string missing = error_of([&] { CsvDataset d(dir + "/absent.csv"); });
  CHECK(missing.find(dir + "/absent.csv") != std::string::npos);
  std::string sep = error_of([&] {
    CsvOptions o;
    o.separator = ";;";
    CsvDataset d(dir + "/empty.csv", o);
  });
  CHECK(sep.find("one character") != std::string::npos);
}

TEST_CASE("brace patterns and :: lists") {
  CHECK(expand_braces("s-{000..003}.tar") == std::vector<std::string>{"s-000.tar", "s-001.tar", "s-002.tar", "s-003.tar"});
  CHECK(expand_braces("{8..11}") == std::vector<std::string>{"8", "9", "10", "11"});
  CHECK(expand_braces("{3..1}") == std::vector<std::string>{"3", "2", "1"});
  CHECK(expand_braces("{0..6..3}") == std::vector<std::string>{"0", "3", "6"});
  CHECK(expand_braces("{a,b}-{1..2}") == std::vector<std::string>{"a-1", "a-2", "b-1", "b-2"});
  CHECK(expand_braces("x{,y}") == std::vector<std::string>{"x", "xy"});
  CHECK(expand_braces("{a,{b,c}d}") == std::vector<std::string>{"a", "bd", "cd"});
  CHECK(expand_braces("plain.tar") == std::vector<std::string>{"plain.tar"});
  CHECK(expand_shard_spec("a.tar::b-{0..1}.tar") == std::vector<std::string>{"a.tar", "b-0.tar", "b-1.tar"});
  CHECK_THROWS_AS(expand_braces("s-{000..003.tar"), Error);
  CHECK_THROWS_AS(expand_braces("s-000}.tar"), Error);
  CHECK_THROWS_AS(expand_braces("s-{1..x}.tar"), Error);
  CHECK_THROWS_AS(expand_shard_spec("::"), Error);
}

TEST_CASE("WebDataset shards: samples grouped by key, captions from .txt or .json, images read at their offset") {
  const std::string dir = test::temp_dir("dataset_wds");
  std::vector<std::string> pngs;
  for (int i = 0; i < 9; ++i) pngs.push_back(as_string(sample_png(uint64_t(i))));
  const std::string jpg = as_string(read_file_bytes(test::golden_path("images/rocket.jpg")));
  // shard 0: .png + .txt, one .json caption, a subfolder key, a label, an upper-case extension
  write_tar(dir + "/shards-000.tar", {{"000000.png", pngs[0]},
                                      {"000000.txt", "  a small red circle\n"},
                                      {"000000.cls", "7"},
                                      {"000001.txt", "caption before image"},
                                      {"000001.PNG", pngs[1]},
                                      {"sub/000002.png", pngs[2]},
                                      {"sub/000002.json", R"({"caption": "from json", "other": 1})"},
                                      {"000003.png", pngs[3]},
                                      {"000003.json", R"({"text": "text field"})"}});
  // shard 1: a JPEG, a sample with no caption and one with no image (both left out), a
  // multi-dot extension (WebDataset's "seg.png" is not "png"), a long name (pax header)
  const std::string long_key = std::string(150, 'k');
  write_tar(dir + "/shards-001.tar", {{"000004.jpg", jpg},
                                      {"000004.txt", "a rocket"},
                                      {"000005.png", pngs[5]},
                                      {"000006.txt", "no image"},
                                      {"000007.seg.png", pngs[5]},  // not an image extension: ignored
                                      {"000007.png", pngs[7]},
                                      {"000007.txt", "multi dot"},
                                      {long_key + ".png", pngs[8]},
                                      {long_key + ".txt", "long name"}});
  // shard 2: gzip-compressed (images kept in memory)
  write_tar(dir + "/shards-002.tar", {{"a.png", pngs[6]}, {"a.txt", "compressed"}}, true);

  WdsDataset ds(dir + "/shards-{000..002}.tar");
  CHECK(ds.shards().size() == 3);
  REQUIRE(ds.size() == 8);
  CHECK(ds.incomplete() == 2);
  CHECK(ds.samples_in_memory() == 1);  // only the gzip shard's; the others are read at their offsets
  const char* captions[] = {"a small red circle", "caption before image", "from json", "text field",
                            "a rocket",           "multi dot",            "long name", "compressed"};
  const std::string* images[] = {&pngs[0], &pngs[1], &pngs[2], &pngs[3], &jpg, &pngs[7], &pngs[8], &pngs[6]};
  for (size_t i = 0; i < ds.size(); ++i) {
    CHECK(ds.caption(i) == captions[i]);
    CHECK_MESSAGE(as_string(ds.read_image_bytes(i)) == *images[i], "sample " << i << " " << ds.name(i));
    Image img = ds.load_image(i);
    CHECK(img.width > 0);
  }
  CHECK(ds.label(0) == 7);
  CHECK(ds.label(1) == -1);
  CHECK(ds.name(2) == dir + "/shards-000.tar:sub/000002.png");
  CHECK(ds.load_image(0).pixels == ShapesGenerator(24, 99).render(0).pixels);
  CHECK(ds.load_image(4).width == 640);

  // "::" lists and open_dataset's dispatch
  auto two = open_dataset(dir + "/shards-000.tar::" + dir + "/shards-002.tar");
  CHECK(two->size() == 5);
  CHECK(two->caption(4) == "compressed");
  CHECK(two->describe().find("2 shards") != std::string::npos);
}

TEST_CASE("bad shards are clear errors naming the shard") {
  const std::string dir = test::temp_dir("dataset_wds_bad");
  const std::string png = as_string(sample_png(1, 64));
  std::vector<Member> members;
  for (int i = 0; i < 4; ++i) {
    members.push_back({"00000" + std::to_string(i) + ".png", png});
    members.push_back({"00000" + std::to_string(i) + ".txt", "caption " + std::to_string(i)});
  }
  write_tar(dir + "/good.tar", members);
  auto full = read_file_bytes(dir + "/good.tar");
  // cut in the middle of the third image
  write_bytes(dir + "/truncated.tar", std::vector<uint8_t>(full.begin(), full.begin() + long(full.size() / 2)));
  // cut inside a header block
  write_bytes(dir + "/cut_header.tar", std::vector<uint8_t>(full.begin(), full.begin() + 700));
  write_bytes(dir + "/empty.tar", {});
  write_text(dir + "/text.tar", "this is not a tar archive, just some words that go on for a while.\n");
  write_tar(dir + "/no_members.tar", {});
  write_tar(dir + "/no_captions.tar", {{"x.png", png}, {"y.png", png}});
  struct Case {
    std::string spec, named, reason;
  } cases[] = {
      {dir + "/truncated.tar", dir + "/truncated.tar", "runcated"},
      {dir + "/cut_header.tar", dir + "/cut_header.tar", "runcated"},
      {dir + "/empty.tar", dir + "/empty.tar", "empty"},
      {dir + "/text.tar", dir + "/text.tar", "malformed"},
      {dir + "/no_members.tar", dir + "/no_members.tar", "empty"},
      {dir + "/no_captions.tar", dir + "/no_captions.tar", "no samples"},
      {dir + "/good.tar::" + dir + "/absent.tar", dir + "/absent.tar", "No such file"},
      {dir + "/good-{0..1}.tar", dir + "/good-0.tar", "No such file"},
  };
  for (const Case& c : cases) {
    std::string msg = error_of([&] { WdsDataset d(c.spec); });
    std::printf("  %-28s -> %s\n", fs::path(c.named).filename().c_str(), msg.c_str());
    CHECK_MESSAGE(msg.find(c.named) != std::string::npos, c.spec << ": " << msg);
    CHECK_MESSAGE(msg.find(c.reason) != std::string::npos, c.spec << ": " << msg);
  }
  CHECK(WdsDataset(dir + "/good.tar").size() == 4);
}
