/* rlm_fast compiled core: session ids as two 64-bit halves (SidKey), their
 * hash, the 26-character Crockford form and the 16 big-endian bytes. */
#ifndef RLM_FAST_IDS_H
#define RLM_FAST_IDS_H

#include <stddef.h>
#include <stdint.h>

namespace rlm_fast {

struct SidKey {
    uint64_t hi; /* 48-bit ms timestamp << 16 | top 16 random bits */
    uint64_t lo; /* low 64 random bits */
};
static inline bool operator==(const SidKey &a, const SidKey &b) {
    return a.hi == b.hi && a.lo == b.lo;
}
static inline bool operator<(const SidKey &a, const SidKey &b) {
    return a.hi < b.hi || (a.hi == b.hi && a.lo < b.lo);
}
struct SidHash {
    size_t operator()(const SidKey &k) const noexcept {
        /* lo is 64 CSPRNG bits; mixing hi in keeps crafted ids spread. */
        uint64_t x = k.lo ^ (k.hi * 0x9E3779B97F4A7C15ULL);
        x ^= x >> 31;
        return (size_t)x;
    }
};

static const char RLM_ALPHABET[33] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/* 26 uppercase Crockford characters into out (no terminator). */
static inline void rlm_format(SidKey k, char *out) {
    uint64_t hi = k.hi, lo = k.lo;
    for (int i = 25; i >= 0; --i) {
        out[i] = RLM_ALPHABET[lo & 31];
        lo = (lo >> 5) | (hi << 59);
        hi >>= 5;
    }
}

/* Crockford base32 digit values by byte, either case; 128: not a digit. */
static const unsigned char RLM_DIGITS[256] = {
    128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128,
    128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128,
    128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128,
      0,   1,   2,   3,   4,   5,   6,   7,   8,   9, 128, 128, 128, 128, 128, 128,
    128,  10,  11,  12,  13,  14,  15,  16,  17, 128,  18,  19, 128,  20,  21, 128,
     22,  23,  24,  25,  26, 128,  27,  28,  29,  30,  31, 128, 128, 128, 128, 128,
    128,  10,  11,  12,  13,  14,  15,  16,  17, 128,  18,  19, 128,  20,  21, 128,
     22,  23,  24,  25,  26, 128,  27,  28,  29,  30,  31, 128, 128, 128, 128, 128,
    128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128,
    128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128,
    128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128,
    128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128,
    128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128,
    128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128,
    128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128,
    128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128,
};

/* Parse 26 ASCII characters; 0 on success, -1 if malformed. One pass,
 * table-driven, in three independent parts: the first 2 characters (8
 * bits: the first must be 0-7 or 128 bits would overflow) and two runs of
 * 12 (60 bits each), joined at the end. */
static inline int rlm_parse(const char *s, SidKey *out) {
    const unsigned char *p = (const unsigned char *)s;
    unsigned bad = 0;
    uint64_t top = 0, a = 0, b = 0;
    for (int i = 0; i < 2; ++i) {
        unsigned d = RLM_DIGITS[p[i]];
        bad |= d;
        top = (top << 5) | d;
    }
    for (int i = 0; i < 12; ++i) {
        unsigned da = RLM_DIGITS[p[2 + i]], db = RLM_DIGITS[p[14 + i]];
        bad |= da | db;
        a = (a << 5) | da;
        b = (b << 5) | db;
    }
    if ((bad & 0x80) || top > 0xFF) return -1; /* a non-digit; or over 128 bits */
    out->hi = (top << 56) | (a >> 4);
    out->lo = (a << 60) | b;
    return 0;
}

static inline void rlm_key_bytes(SidKey k, unsigned char *out) {
    for (int i = 7; i >= 0; --i) {
        out[i] = (unsigned char)(k.hi & 0xFF);
        out[8 + i] = (unsigned char)(k.lo & 0xFF);
        k.hi >>= 8;
        k.lo >>= 8;
    }
}

static inline SidKey rlm_key_from_bytes(const unsigned char *b) {
    SidKey k = {0, 0};
    for (int i = 0; i < 8; ++i) {
        k.hi = (k.hi << 8) | b[i];
        k.lo = (k.lo << 8) | b[8 + i];
    }
    return k;
}

} /* namespace rlm_fast */

#endif /* RLM_FAST_IDS_H */
