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

static inline int rlm_digit(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'z') c = (unsigned char)(c - 32);
    switch (c) {
    case 'A': return 10; case 'B': return 11; case 'C': return 12;
    case 'D': return 13; case 'E': return 14; case 'F': return 15;
    case 'G': return 16; case 'H': return 17; case 'J': return 18;
    case 'K': return 19; case 'M': return 20; case 'N': return 21;
    case 'P': return 22; case 'Q': return 23; case 'R': return 24;
    case 'S': return 25; case 'T': return 26; case 'V': return 27;
    case 'W': return 28; case 'X': return 29; case 'Y': return 30;
    case 'Z': return 31;
    default: return -1;
    }
}

/* Parse 26 ASCII characters; 0 on success, -1 if malformed. */
static inline int rlm_parse(const char *s, SidKey *out) {
    uint64_t hi = 0, lo = 0;
    for (int i = 0; i < 26; ++i) {
        int d = rlm_digit((unsigned char)s[i]);
        if (d < 0) return -1;
        if (i == 0 && d > 7) return -1; /* would overflow 128 bits */
        hi = (hi << 5) | (lo >> 59);
        lo = (lo << 5) | (uint64_t)d;
    }
    out->hi = hi;
    out->lo = lo;
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
