// Decoded images: PNG, JPEG, BMP and GIF files to 8-bit pixels.
//
// Decoding goes through stb_image (libstb); JPEG goes through libjpeg-turbo's TurboJPEG API when
// the build found it (CLIPCU_WITH_TURBOJPEG), because that is the decoder PIL uses (same IDCT and
// chroma upsampling, so the pixels match the reference preprocessing exactly) and it is faster.
//
// An image keeps the channels of the file (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA) because PIL's
// resize treats them differently (alpha is premultiplied around the resampling; palette images
// are resized with nearest neighbour); conversion to RGB happens after the geometry, as CLIP's
// reference transform does (see preprocess.h). 16-bit files keep their high byte.
//
// Every failure (missing, empty, truncated or corrupt file, unsupported format) throws
// clipcu::Error naming the file and the reason.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace clipcu::data {

struct Image {
  int width = 0;
  int height = 0;
  int channels = 0;      // 1 L, 2 LA, 3 RGB, 4 RGBA
  bool palette = false;  // the file stores palette indices (PNG type 3, GIF, BMP <= 8 bits): PIL
                         // opens it in mode "P"/"1" and resizes it with nearest neighbour
  std::vector<uint8_t> pixels;  // [height, width, channels], row-major

  bool empty() const { return pixels.empty(); }
  const uint8_t* row(int y) const { return pixels.data() + size_t(y) * size_t(width) * size_t(channels); }
  uint8_t* row(int y) { return pixels.data() + size_t(y) * size_t(width) * size_t(channels); }
};

enum class ImageFormat { Unknown, PNG, JPEG, BMP, GIF };
// The format from the file's first bytes (magic numbers), not from its name.
ImageFormat sniff_format(const void* data, size_t size);
const char* format_name(ImageFormat f);

// Which JPEG decoder to use. Auto = TurboJPEG when built with it, else stb_image.
enum class JpegDecoder { Auto, Stb, TurboJpeg };
bool turbojpeg_available();

// Decodes an encoded image held in memory; `origin` names it in errors (a path, "shard.tar:key").
Image decode_image(const void* data, size_t size, const std::string& origin, JpegDecoder jpeg = JpegDecoder::Auto);
// Reads and decodes a file.
Image decode_image_file(const std::string& path, JpegDecoder jpeg = JpegDecoder::Auto);
// The whole file as bytes (throws naming the file when it cannot be read).
std::vector<uint8_t> read_file_bytes(const std::string& path);

// PIL's convert("RGB"): gray is replicated, alpha is dropped (not composited).
Image to_rgb(const Image& img);

}  // namespace clipcu::data
