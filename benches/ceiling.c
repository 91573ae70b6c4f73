/* Per-core throughput ceilings of this machine, measured on registers (no memory traffic):
 *   binary MAC/s: XOR + popcount + add on independent vector chains (AVX-512 VPOPCNTDQ vpopcntq; else AVX2
 *                 with the vpshufb nibble lookup; else scalar popcnt), one binary MAC = one bit of XOR+popcount;
 *   fp32 MAC/s:   fused multiply-add on independent vector accumulators (one MAC = one lane of an FMA).
 * Compiled at bench time by benches/bench_kernels.py with `cc -O2 -march=native`; prints one JSON line.
 * Usage: ceiling [iterations]
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <immintrin.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

#define CHAINS 8

static double popcount_macs(long iters, uint64_t seed, const char **isa, uint64_t *sink) {
    double t0 = now();
#if defined(__AVX512VPOPCNTDQ__) && defined(__AVX512F__)
    *isa = "avx512-vpopcntdq";
    __m512i k = _mm512_set1_epi64((long long)seed), x[CHAINS], c[CHAINS];
    for (int j = 0; j < CHAINS; j++) { x[j] = _mm512_set1_epi64((long long)(seed * (j + 3))); c[j] = _mm512_setzero_si512(); }
    for (long i = 0; i < iters; i++) {
        for (int j = 0; j < CHAINS; j++) {
            __m512i v = _mm512_xor_si512(x[j], k);
            c[j] = _mm512_add_epi64(c[j], _mm512_popcnt_epi64(v));
            x[j] = _mm512_add_epi64(x[j], k);  /* keep the chains data dependent, like streaming words */
        }
    }
    uint64_t s = 0;
    for (int j = 0; j < CHAINS; j++) s += (uint64_t)_mm512_reduce_add_epi64(c[j]);
    *sink = s;
    double bits = 512.0;
#elif defined(__AVX2__)
    *isa = "avx2-vpshufb";
    const __m256i lut = _mm256_setr_epi8(0,1,1,2,1,2,2,3,1,2,2,3,2,3,3,4, 0,1,1,2,1,2,2,3,1,2,2,3,2,3,3,4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    __m256i k = _mm256_set1_epi64x((long long)seed), x[CHAINS], c[CHAINS];
    for (int j = 0; j < CHAINS; j++) { x[j] = _mm256_set1_epi64x((long long)(seed * (j + 3))); c[j] = _mm256_setzero_si256(); }
    for (long i = 0; i < iters; i++) {
        for (int j = 0; j < CHAINS; j++) {
            __m256i v = _mm256_xor_si256(x[j], k);
            __m256i p = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v, low)),
                                        _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi64(v, 4), low)));
            c[j] = _mm256_add_epi64(c[j], _mm256_sad_epu8(p, _mm256_setzero_si256()));
            x[j] = _mm256_add_epi64(x[j], k);
        }
    }
    uint64_t s = 0, tmp[4];
    for (int j = 0; j < CHAINS; j++) { _mm256_storeu_si256((__m256i *)tmp, c[j]); s += tmp[0] + tmp[1] + tmp[2] + tmp[3]; }
    *sink = s;
    double bits = 256.0;
#else
    *isa = "scalar-popcnt";
    uint64_t x[CHAINS], c[CHAINS];
    for (int j = 0; j < CHAINS; j++) { x[j] = seed * (j + 3); c[j] = 0; }
    for (long i = 0; i < iters; i++)
        for (int j = 0; j < CHAINS; j++) { c[j] += (uint64_t)__builtin_popcountll(x[j] ^ seed); x[j] += seed; }
    uint64_t s = 0;
    for (int j = 0; j < CHAINS; j++) s += c[j];
    *sink = s;
    double bits = 64.0;
#endif
    double dt = now() - t0;
    return (double)iters * CHAINS * bits / dt;
}

#define FCHAINS 12

static double fma_macs(long iters, float seed, const char **isa, float *sink) {
    double t0 = now();
#if defined(__AVX512F__)
    *isa = "avx512-fma";
    __m512 a = _mm512_set1_ps(seed), b = _mm512_set1_ps(0.999f), acc[FCHAINS];
    for (int j = 0; j < FCHAINS; j++) acc[j] = _mm512_set1_ps((float)j);
    for (long i = 0; i < iters; i++)
        for (int j = 0; j < FCHAINS; j++) acc[j] = _mm512_fmadd_ps(acc[j], b, a);
    float s = 0, tmp[16];
    for (int j = 0; j < FCHAINS; j++) { _mm512_storeu_ps(tmp, acc[j]); for (int l = 0; l < 16; l++) s += tmp[l]; }
    double lanes = 16.0;
#elif defined(__FMA__) && defined(__AVX__)
    *isa = "avx2-fma";
    __m256 a = _mm256_set1_ps(seed), b = _mm256_set1_ps(0.999f), acc[FCHAINS];
    for (int j = 0; j < FCHAINS; j++) acc[j] = _mm256_set1_ps((float)j);
    for (long i = 0; i < iters; i++)
        for (int j = 0; j < FCHAINS; j++) acc[j] = _mm256_fmadd_ps(acc[j], b, a);
    float s = 0, tmp[8];
    for (int j = 0; j < FCHAINS; j++) { _mm256_storeu_ps(tmp, acc[j]); for (int l = 0; l < 8; l++) s += tmp[l]; }
    double lanes = 8.0;
#else
    *isa = "scalar-fma";
    float acc[FCHAINS];
    for (int j = 0; j < FCHAINS; j++) acc[j] = (float)j;
    for (long i = 0; i < iters; i++)
        for (int j = 0; j < FCHAINS; j++) acc[j] = acc[j] * 0.999f + seed;
    float s = 0;
    for (int j = 0; j < FCHAINS; j++) s += acc[j];
    double lanes = 1.0;
#endif
    *sink = s;
    double dt = now() - t0;
    return (double)iters * FCHAINS * lanes / dt;
}

int main(int argc, char **argv) {
    long iters = argc > 1 ? atol(argv[1]) : 50000000L;
    const char *pisa = "", *fisa = "";
    uint64_t psink = 0;
    float fsink = 0;
    double best_p = 0, best_f = 0;
    for (int r = 0; r < 7; r++) { /* best of 7: the ceiling is the fastest run */
        double p = popcount_macs(iters, 0x9E3779B97F4A7C15ull + (uint64_t)argc + r, &pisa, &psink);
        double f = fma_macs(iters, 1e-3f * (float)(argc + r), &fisa, &fsink);
        if (p > best_p) best_p = p;
        if (f > best_f) best_f = f;
    }
    printf("{\"binary_mac_per_s\": %.6e, \"popcount_isa\": \"%s\", \"fp32_mac_per_s\": %.6e, \"fma_isa\": \"%s\", "
           "\"ratio\": %.3f, \"iterations\": %ld, \"sink\": %.1f}\n",
           best_p, pisa, best_f, fisa, best_p / best_f, iters, (double)(psink % 1000) + (double)fsink * 0.0);
    return 0;
}
