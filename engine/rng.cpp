#include "engine/rng.h"

#include <cmath>
#include <cstring>

namespace clipcu {

static uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void Rng::reseed(uint64_t seed) {
  seed_ = seed;
  uint64_t x = seed;
  for (auto& w : s_) w = splitmix64(x);
  has_spare_ = false;
  spare_ = 0.0;
}

uint64_t Rng::next_u64() {
  uint64_t result = rotl(s_[1] * 5, 7) * 9;
  uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

double Rng::uniform() { return double(next_u64() >> 11) * 0x1.0p-53; }

double Rng::normal() {
  if (has_spare_) {
    has_spare_ = false;
    return spare_;
  }
  double u1;
  do {
    u1 = uniform();
  } while (u1 <= 0.0);
  double u2 = uniform();
  double r = std::sqrt(-2.0 * std::log(u1));
  double a = 2.0 * M_PI * u2;
  spare_ = r * std::sin(a);
  has_spare_ = true;
  return r * std::cos(a);
}

uint64_t Rng::below(uint64_t n) {
  if (n <= 1) return 0;
  uint64_t limit = ~uint64_t(0) - (~uint64_t(0) % n);
  uint64_t x;
  do {
    x = next_u64();
  } while (x >= limit);
  return x % n;
}

Rng Rng::fork(const std::string& label) const {
  uint64_t h = 1469598103934665603ull;  // FNV-1a of the label, mixed with the seed
  for (unsigned char c : label) h = (h ^ c) * 1099511628211ull;
  uint64_t x = seed_ ^ h;
  return Rng(splitmix64(x));
}

std::array<uint64_t, 7> Rng::state() const {
  uint64_t spare_bits;
  std::memcpy(&spare_bits, &spare_, 8);
  return {s_[0], s_[1], s_[2], s_[3], uint64_t(has_spare_), spare_bits, seed_};
}

void Rng::set_state(const std::array<uint64_t, 7>& s) {
  for (int i = 0; i < 4; ++i) s_[i] = s[size_t(i)];
  has_spare_ = s[4] != 0;
  std::memcpy(&spare_, &s[5], 8);
  seed_ = s[6];
}

}  // namespace clipcu
