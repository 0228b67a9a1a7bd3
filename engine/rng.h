// A seeded, reproducible random number generator (xoshiro256**, seeded through splitmix64).
// The same seed gives the same stream on every machine; the state can be saved and restored
// (checkpoints), and independent streams are forked by name (per parameter, per worker).
#pragma once
#include <array>
#include <cstdint>
#include <string>

namespace clipcu {

class Rng {
 public:
  explicit Rng(uint64_t seed = 0) { reseed(seed); }
  void reseed(uint64_t seed);
  uint64_t next_u64();
  double uniform();  // [0, 1), 53 random bits
  double normal();   // standard normal (Box-Muller, both values used)
  // An integer in [0, n) without modulo bias.
  uint64_t below(uint64_t n);
  // An independent generator derived from this one's seed and a label (does not advance this one).
  Rng fork(const std::string& label) const;

  // Serialized state: 4 words of xoshiro, the cached normal flag and value, the seed.
  std::array<uint64_t, 7> state() const;
  void set_state(const std::array<uint64_t, 7>& s);

 private:
  uint64_t s_[4];
  uint64_t seed_ = 0;
  bool has_spare_ = false;
  double spare_ = 0.0;
};

}  // namespace clipcu
