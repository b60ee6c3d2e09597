// C++ workload (g++ -O2, exceptions on, no frame pointers): main ->
// work::a -> work::b -> work::c -> work::d -> work::leaf, with std::vector,
// std::sort and a thrown and caught exception every 64 calls.
// Usage: cpp_chain SECONDS
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <vector>

volatile std::uint64_t sink;

namespace work {
__attribute__((noinline)) std::uint64_t leaf(std::uint64_t n) {
  volatile std::uint64_t pad[8];
  std::uint64_t x = n;
  for (int i = 0; i < 200000; i++) {
    pad[i & 7] = x;
    x = x * 6364136223846793005ULL + pad[(i + 3) & 7];
  }
  return x;
}
__attribute__((noinline)) std::uint64_t d(std::uint64_t n) {
  if (n % 64 == 0) throw std::runtime_error("every 64th");
  return leaf(n) ^ 1;
}
__attribute__((noinline)) std::uint64_t c(std::uint64_t n) {
  std::vector<std::uint64_t> v(64);
  for (std::size_t i = 0; i < v.size(); i++) v[i] = (n * 2654435761u + i * 40503u) % 1000;
  std::sort(v.begin(), v.end());
  return d(n + v[3]) ^ v[7];
}
__attribute__((noinline)) std::uint64_t b(std::uint64_t n) {
  try {
    return c(n) ^ 2;
  } catch (const std::runtime_error &) {
    return 7;
  }
}
__attribute__((noinline)) std::uint64_t a(std::uint64_t n) { return b(n + 1) ^ 3; }
}  // namespace work

int main(int argc, char **argv) {
  auto end = std::chrono::steady_clock::now() + std::chrono::seconds(argc > 1 ? std::atoi(argv[1]) : 5);
  std::uint64_t n = 0;
  while (std::chrono::steady_clock::now() < end) sink = sink + work::a(n++);
  return 0;
}
