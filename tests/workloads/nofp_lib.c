/* Shared-library half of the nofp_chain workload: lib_d -> lib_e -> lib_f,
 * which calls back into the executable's spin(). Built with
 * gcc -O2 -fomit-frame-pointer -fno-optimize-sibling-calls -shared -fPIC. */
#include <stdint.h>

extern void spin(uint64_t n);

__attribute__((noinline)) void lib_f(uint64_t n) { spin(n); __asm__ volatile("" ::: "memory"); }
__attribute__((noinline)) void lib_e(uint64_t n) { lib_f(n + 1); __asm__ volatile("" ::: "memory"); }
__attribute__((noinline)) void lib_d(uint64_t n) { lib_e(n + 1); __asm__ volatile("" ::: "memory"); }
