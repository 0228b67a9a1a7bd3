// Image decoding: format sniffing, stb_image for PNG/BMP/GIF (and JPEG without TurboJPEG),
// TurboJPEG for JPEG when available, and the PIL-compatible facts the resampler needs (which
// files are palette images). The stb implementation lives in libstb.so; only the header is used.
#include "engine/data/image.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>

#include <stb/stb_image.h>
#include <zlib.h>
#ifdef CLIPCU_WITH_TURBOJPEG
#include <turbojpeg.h>
#endif

#include "engine/error.h"

namespace clipcu::data {

namespace {

[[noreturn]] void fail(const std::string& origin, const std::string& why) {
  throw Error("cannot decode image '" + origin + "': " + why);
}

uint32_t be32(const uint8_t* p) { return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3]; }
uint32_t le32(const uint8_t* p) { return uint32_t(p[3]) << 24 | uint32_t(p[2]) << 16 | uint32_t(p[1]) << 8 | p[0]; }
uint16_t le16(const uint8_t* p) { return uint16_t(p[1] << 8 | p[0]); }

// PNG: IHDR is the first chunk; colour type 3 is a palette; types 0 and 2 carry no alpha channel
// in PIL even with a tRNS chunk (stb expands tRNS into an alpha channel, which is dropped then).
struct PngInfo {
  int color_type = -1;
  int bit_depth = 0;
};
PngInfo png_info(const uint8_t* b, size_t n) {
  PngInfo info;
  if (n >= 26 && std::memcmp(b + 12, "IHDR", 4) == 0) {
    info.bit_depth = b[24];
    info.color_type = b[25];
  }
  return info;
}

// PNG structure: every chunk complete, its CRC right, IEND present. stb_image checks none of this
// (PIL checks CRCs), so without it a cut or damaged file could decode into garbage silently.
void png_check(const uint8_t* b, size_t n, const std::string& origin) {
  size_t off = 8;
  while (true) {
    if (off + 12 > n) fail(origin, "truncated PNG (ends at byte " + std::to_string(n) + " before the IEND chunk)");
    const uint32_t len = be32(b + off);
    const std::string type(reinterpret_cast<const char*>(b + off + 4), 4);
    if (len > 0x7fffffffu || off + 12 + size_t(len) > n) {
      fail(origin, "truncated PNG (chunk " + type + " at byte " + std::to_string(off) + " needs " + std::to_string(len) +
                       " bytes, the file ends at " + std::to_string(n) + ")");
    }
    const uint32_t crc = uint32_t(crc32(crc32(0L, Z_NULL, 0), b + off + 4, uInt(len + 4)));
    if (crc != be32(b + off + 8 + len)) fail(origin, "corrupt PNG (CRC mismatch in chunk " + type + " at byte " + std::to_string(off) + ")");
    off += 12 + size_t(len);
    if (type == "IEND") return;
  }
}

// BMP: bits per pixel from the info header (12-byte OS/2 core header or the larger Windows ones).
int bmp_bits_per_pixel(const uint8_t* b, size_t n) {
  if (n < 30) return 0;
  uint32_t header = le32(b + 14);
  if (header == 12) return le16(b + 24);
  return le16(b + 28);
}

// Uncompressed BMP: the pixel rows must all be in the file (stb_image reads zeros past the end).
void bmp_check(const uint8_t* b, size_t n, const std::string& origin) {
  if (n < 54 || le32(b + 14) < 40) return;  // OS/2 core headers: left to the decoder
  const uint32_t data_off = le32(b + 10);
  const int64_t w = int32_t(le32(b + 18)), h = int32_t(le32(b + 22));
  const int bpp = le16(b + 28);
  const uint32_t compression = le32(b + 30);
  if (compression != 0 && compression != 3) return;  // RLE: sizes vary
  const int64_t stride = ((std::abs(w) * bpp + 31) / 32) * 4;
  const int64_t need = int64_t(data_off) + stride * std::abs(h);
  if (need > int64_t(n)) {
    fail(origin, "truncated BMP (" + std::to_string(need) + " bytes of pixels expected, the file has " + std::to_string(n) + ")");
  }
}

// A JPEG whose data stops before the end-of-image marker that follows its last scan is truncated.
// Inside entropy-coded data 0xFF is always followed by 0x00 or a restart marker, so the byte pairs
// FF DA (start of scan) and FF D9 (end of image) only occur as markers (an EXIF thumbnail has its
// own pair earlier in the file).
bool jpeg_truncated(const uint8_t* b, size_t n) {
  size_t last_sos = 0, last_eoi = 0;
  bool sos = false, eoi = false;
  for (size_t i = 2; i + 1 < n; ++i) {
    if (b[i] != 0xFF) continue;
    if (b[i + 1] == 0xDA) last_sos = i, sos = true;
    if (b[i + 1] == 0xD9) last_eoi = i, eoi = true;
  }
  return !sos || !eoi || last_eoi < last_sos;
}

Image decode_stb(const uint8_t* b, size_t n, const std::string& origin, ImageFormat fmt) {
  if (n > size_t(INT32_MAX)) fail(origin, "file larger than 2 GiB");
  int w = 0, h = 0, comp = 0;
  if (!stbi_info_from_memory(b, int(n), &w, &h, &comp)) {
    const char* why = stbi_failure_reason();
    fail(origin, std::string(format_name(fmt)) + " header: " + (why ? why : "unknown error"));
  }
  if (int64_t(w) * int64_t(h) > (int64_t(1) << 28)) {
    fail(origin, "image of " + std::to_string(w) + "x" + std::to_string(h) + " pixels is too large");
  }
  // stb converts 16-bit samples to 8 bits by keeping the high byte (as PIL's "RGB;16B" raw mode).
  unsigned char* px = stbi_load_from_memory(b, int(n), &w, &h, &comp, 0);
  if (!px) {
    const char* why = stbi_failure_reason();
    fail(origin, std::string(format_name(fmt)) + " data: " + (why ? why : "unknown error"));
  }
  std::unique_ptr<unsigned char, void (*)(void*)> hold(px, stbi_image_free);
  if (w <= 0 || h <= 0 || comp < 1 || comp > 4) fail(origin, "decoder returned an empty image");
  Image img;
  img.width = w;
  img.height = h;
  img.channels = comp;
  img.pixels.assign(px, px + size_t(w) * size_t(h) * size_t(comp));
  return img;
}

// Removes the last (alpha) channel.
void drop_alpha(Image& img) {
  const size_t np = size_t(img.width) * size_t(img.height), C = size_t(img.channels);
  for (size_t i = 0; i < np; ++i)
    for (size_t c = 0; c + 1 < C; ++c) img.pixels[i * (C - 1) + c] = img.pixels[i * C + c];  // in place, forwards
  img.channels -= 1;
  img.pixels.resize(np * (C - 1));
}

#ifdef CLIPCU_WITH_TURBOJPEG
Image decode_turbojpeg(const uint8_t* b, size_t n, const std::string& origin, bool* unsupported) {
  *unsupported = false;
  tjhandle tj = tjInitDecompress();
  if (!tj) fail(origin, "cannot create a TurboJPEG decompressor");
  std::unique_ptr<void, int (*)(tjhandle)> hold(tj, tjDestroy);
  int w = 0, h = 0, subsamp = 0, colorspace = 0;
  if (tjDecompressHeader3(tj, b, (unsigned long)n, &w, &h, &subsamp, &colorspace) != 0) {
    fail(origin, std::string("JPEG header: ") + tjGetErrorStr2(tj));
  }
  if (colorspace == TJCS_CMYK || colorspace == TJCS_YCCK) {
    *unsupported = true;  // TurboJPEG cannot convert these to RGB; stb_image can
    return {};
  }
  if (int64_t(w) * int64_t(h) > (int64_t(1) << 28)) {
    fail(origin, "image of " + std::to_string(w) + "x" + std::to_string(h) + " pixels is too large");
  }
  Image img;
  img.width = w;
  img.height = h;
  img.channels = colorspace == TJCS_GRAY ? 1 : 3;  // PIL opens a gray JPEG in mode "L"
  img.pixels.resize(size_t(w) * size_t(h) * size_t(img.channels));
  // Flags 0: the accurate integer IDCT and fancy (smooth) chroma upsampling, PIL's defaults.
  int rc = tjDecompress2(tj, b, (unsigned long)n, img.pixels.data(), w, 0, h,
                         img.channels == 1 ? TJPF_GRAY : TJPF_RGB, 0);
  // Warnings (extraneous bytes, ...) leave a complete image, as they do in PIL; truncation was
  // rejected before decoding.
  if (rc != 0 && tjGetErrorCode(tj) != TJERR_WARNING) {
    fail(origin, std::string("JPEG data: ") + tjGetErrorStr2(tj));
  }
  return img;
}
#endif

}  // namespace

ImageFormat sniff_format(const void* data, size_t size) {
  const auto* b = static_cast<const uint8_t*>(data);
  if (size >= 8 && std::memcmp(b, "\x89PNG\r\n\x1a\n", 8) == 0) return ImageFormat::PNG;
  if (size >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF) return ImageFormat::JPEG;
  if (size >= 6 && (std::memcmp(b, "GIF87a", 6) == 0 || std::memcmp(b, "GIF89a", 6) == 0)) return ImageFormat::GIF;
  if (size >= 2 && b[0] == 'B' && b[1] == 'M') return ImageFormat::BMP;
  return ImageFormat::Unknown;
}

const char* format_name(ImageFormat f) {
  switch (f) {
    case ImageFormat::PNG: return "PNG";
    case ImageFormat::JPEG: return "JPEG";
    case ImageFormat::BMP: return "BMP";
    case ImageFormat::GIF: return "GIF";
    default: return "unknown";
  }
}

bool turbojpeg_available() {
#ifdef CLIPCU_WITH_TURBOJPEG
  return true;
#else
  return false;
#endif
}

Image decode_image(const void* data, size_t size, const std::string& origin, JpegDecoder jpeg) {
  if (size == 0) fail(origin, "empty file");
  const auto* b = static_cast<const uint8_t*>(data);
  ImageFormat fmt = sniff_format(b, size);
  if (fmt == ImageFormat::Unknown) fail(origin, "unsupported or unrecognized format (expected PNG, JPEG, BMP or GIF)");

  Image img;
  if (fmt == ImageFormat::JPEG) {
    if (jpeg_truncated(b, size)) fail(origin, "truncated JPEG (no end-of-image marker after the last scan)");
    bool use_tj = jpeg == JpegDecoder::TurboJpeg || (jpeg == JpegDecoder::Auto && turbojpeg_available());
    if (jpeg == JpegDecoder::TurboJpeg && !turbojpeg_available()) {
      throw Error("cannot decode image '" + origin + "': this build has no TurboJPEG (libturbojpeg was not found)");
    }
    bool unsupported = true;
#ifdef CLIPCU_WITH_TURBOJPEG
    if (use_tj) img = decode_turbojpeg(b, size, origin, &unsupported);
#else
    (void)use_tj;
#endif
    if (unsupported) img = decode_stb(b, size, origin, fmt);
    return img;
  }

  if (fmt == ImageFormat::PNG) png_check(b, size, origin);
  if (fmt == ImageFormat::BMP) bmp_check(b, size, origin);
  img = decode_stb(b, size, origin, fmt);
  if (fmt == ImageFormat::PNG) {
    PngInfo info = png_info(b, size);
    if (info.color_type == 3 || (info.color_type == 0 && info.bit_depth == 1)) img.palette = true;  // "P" / "1"
    if ((info.color_type == 0 || info.color_type == 2 || info.color_type == 3) && (img.channels == 2 || img.channels == 4)) {
      // alpha that stb made from a tRNS chunk: PIL keeps these images in "L"/"RGB"/"P" mode, so
      // the resize does not premultiply, and convert("RGB") ignores the transparency.
      drop_alpha(img);
    }
  } else if (fmt == ImageFormat::GIF) {
    img.palette = true;  // PIL opens the first frame in mode "P"
    if (img.channels == 4) drop_alpha(img);  // stb returns RGBA; PIL's "P" -> "RGB" ignores transparency
  } else if (fmt == ImageFormat::BMP) {
    if (bmp_bits_per_pixel(b, size) <= 8) img.palette = true;
  }
  return img;
}

std::vector<uint8_t> read_file_bytes(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error("cannot open '" + path + "': " + std::strerror(errno));
  std::unique_ptr<int, void (*)(int*)> closer(&fd, [](int* f) { ::close(*f); });
  struct stat sb {};
  if (fstat(fd, &sb) != 0) throw Error("cannot stat '" + path + "': " + std::strerror(errno));
  if (!S_ISREG(sb.st_mode)) throw Error("cannot read '" + path + "': not a regular file");
  std::vector<uint8_t> bytes(size_t(sb.st_size));
  size_t got = 0;
  while (got < bytes.size()) {
    ssize_t r = ::read(fd, bytes.data() + got, bytes.size() - got);
    if (r < 0) {
      if (errno == EINTR) continue;
      throw Error("cannot read '" + path + "': " + std::strerror(errno));
    }
    if (r == 0) break;  // the file shrank while reading
    got += size_t(r);
  }
  bytes.resize(got);
  return bytes;
}

Image decode_image_file(const std::string& path, JpegDecoder jpeg) {
  std::vector<uint8_t> bytes = read_file_bytes(path);
  return decode_image(bytes.data(), bytes.size(), path, jpeg);
}

Image to_rgb(const Image& img) {
  CLIPCU_CHECK(img.channels >= 1 && img.channels <= 4, "to_rgb: image with " << img.channels << " channels");
  if (img.channels == 3) return img;
  Image out;
  out.width = img.width;
  out.height = img.height;
  out.channels = 3;
  out.palette = img.palette;
  size_t np = size_t(img.width) * size_t(img.height);
  out.pixels.resize(np * 3);
  const size_t C = size_t(img.channels);
  const uint8_t* s = img.pixels.data();
  uint8_t* d = out.pixels.data();
  if (C <= 2) {
    for (size_t i = 0; i < np; ++i) d[i * 3] = d[i * 3 + 1] = d[i * 3 + 2] = s[i * C];
  } else {
    for (size_t i = 0; i < np; ++i) {
      d[i * 3] = s[i * 4];
      d[i * 3 + 1] = s[i * 4 + 1];
      d[i * 3 + 2] = s[i * 4 + 2];
    }
  }
  return out;
}

}  // namespace clipcu::data
