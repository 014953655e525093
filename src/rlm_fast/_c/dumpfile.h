/* rlm_fast compiled core: the lines of a dump file (docs/dump-format.md)
 * written in C++, without the GIL, byte for byte what _dump._dump_line
 * writes through the twin's JSON code (tests/test_dump_c.py holds the two
 * to each other), and _dump.settle's pass over an export read in pieces.
 * Nothing here takes a lock: it works on plain copies (SessionCopy). */
#ifndef RLM_FAST_DUMPFILE_H
#define RLM_FAST_DUMPFILE_H

#include <stdint.h>
#include <string.h>
#include <algorithm>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>

#include "ids.h"
#include "session.h"

namespace rlm_fast {

/* _results.STATES order (status.h): the crate's serde names. */
static const char *const RLM_STATE_NAMES[6] = {"Initializing", "Ready",      "Executing",
                                               "Paused",       "Terminated", "Expired"};

static inline void rlm_put_u64(std::string &o, uint64_t v) {
    char buf[20];
    int n = 0;
    do {
        buf[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n) o.push_back(buf[--n]);
}

/* serde_json's string (and json.dumps(ensure_ascii=False)'s): `"`, `\`
 * and U+0000..U+001F escaped (\b \t \n \f \r or \u00xx, lowercase hex),
 * everything else raw UTF-8. */
static inline void rlm_put_json_string(std::string &o, const std::string &s) {
    static const char hex[] = "0123456789abcdef";
    o.push_back('"');
    for (unsigned char c : s) {
        switch (c) {
        case '"': o.append("\\\""); break;
        case '\\': o.append("\\\\"); break;
        case '\b': o.append("\\b"); break;
        case '\f': o.append("\\f"); break;
        case '\n': o.append("\\n"); break;
        case '\r': o.append("\\r"); break;
        case '\t': o.append("\\t"); break;
        default:
            if (c < 0x20) {
                o.append("\\u00");
                o.push_back(hex[c >> 4]);
                o.push_back(hex[c & 15]);
            } else {
                o.push_back((char)c);
            }
        }
    }
    o.push_back('"');
}

static inline void rlm_put_2(std::string &o, unsigned v) {
    o.push_back((char)('0' + v / 10));
    o.push_back((char)('0' + v % 10));
}

/* _json.format_timestamp: RFC 3339 UTC with `Z`, the fewest fractional
 * digits that keep the value (none when zero). Every int64 of ns is a
 * year 1677..2262, so the year has 4 digits. Civil date from days:
 * Howard Hinnant's days_from_civil inverse. */
static inline void rlm_put_timestamp(std::string &o, int64_t ns) {
    int64_t secs = ns / 1000000000, frac = ns % 1000000000;
    if (frac < 0) { /* floor, as Python's divmod */
        frac += 1000000000;
        secs -= 1;
    }
    int64_t days = secs / 86400, sod = secs % 86400;
    if (sod < 0) {
        sod += 86400;
        days -= 1;
    }
    int64_t z = days + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t y = (int64_t)yoe + era * 400;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    unsigned d = doy - (153 * mp + 2) / 5 + 1;
    unsigned m = mp < 10 ? mp + 3 : mp - 9;
    if (m <= 2) y += 1;
    rlm_put_2(o, (unsigned)(y / 100));
    rlm_put_2(o, (unsigned)(y % 100));
    o.push_back('-');
    rlm_put_2(o, m);
    o.push_back('-');
    rlm_put_2(o, d);
    o.push_back('T');
    rlm_put_2(o, (unsigned)(sod / 3600));
    o.push_back(':');
    rlm_put_2(o, (unsigned)(sod / 60 % 60));
    o.push_back(':');
    rlm_put_2(o, (unsigned)(sod % 60));
    if (frac) {
        char digits[9];
        int64_t f = frac;
        for (int i = 8; i >= 0; --i) {
            digits[i] = (char)('0' + f % 10);
            f /= 10;
        }
        int n = 9;
        while (digits[n - 1] == '0') --n;
        o.push_back('.');
        o.append(digits, (size_t)n);
    }
    o.push_back('Z');
}

static inline void rlm_put_id(std::string &o, SidKey k) {
    char text[26];
    rlm_format(k, text);
    o.push_back('"');
    o.append(text, 26);
    o.push_back('"');
}

/* One dump line, with its newline: the crate's serde document of the
 * session, and for a child its place in the tree after it
 * (_dump._dump_line). May throw bad_alloc. */
static inline void rlm_put_dump_line(std::string &o, const SessionCopy &c) {
    const Session &s = c.s;
    o.append("{\"id\":");
    rlm_put_id(o, c.key);
    o.append(",\"state\":\"");
    o.append(RLM_STATE_NAMES[s.state]);
    o.append("\",\"created_at\":\"");
    rlm_put_timestamp(o, s.created_ns);
    o.append("\",\"expires_at\":\"");
    rlm_put_timestamp(o, s.expires_ns);
    o.append("\",\"extension_count\":");
    rlm_put_u64(o, s.extension_count);
    o.append(",\"recursion_depth\":");
    rlm_put_u64(o, s.depth);
    o.append(",\"budget_status\":{\"token_budget\":");
    rlm_put_u64(o, s.token_budget);
    o.append(",\"tokens_used\":");
    rlm_put_u64(o, s.tokens_used);
    o.append(",\"time_budget_ms\":");
    rlm_put_u64(o, s.time_budget_ms);
    o.append(",\"time_used_ms\":");
    rlm_put_u64(o, s.time_used_ms);
    o.append(",\"max_recursion_depth\":");
    rlm_put_u64(o, s.max_depth);
    o.append(",\"current_recursion_depth\":");
    rlm_put_u64(o, s.depth);
    o.append("},\"vm_instance_id\":");
    if (c.has_vm)
        rlm_put_json_string(o, c.vm);
    else
        o.append("null");
    o.append(",\"context_variables\":{");
    for (size_t i = 0; i < c.context.size(); ++i) { /* sorted by key */
        if (i) o.push_back(',');
        rlm_put_json_string(o, c.context[i].first);
        o.push_back(':');
        rlm_put_json_string(o, c.context[i].second);
    }
    o.append("},\"current_snapshot_id\":");
    if (c.has_snapshot)
        rlm_put_json_string(o, c.snapshot);
    else
        o.append("null");
    o.append(",\"snapshot_count\":");
    rlm_put_u64(o, s.snapshot_count);
    if (c.has_parent) {
        o.append(",\"parent_id\":");
        rlm_put_id(o, c.parent);
        o.append(",\"start_depth\":");
        rlm_put_u64(o, s.start_depth);
    }
    o.append("}\n");
}

/* _dump.settle on rows in id order (`order` into `rows`): the indices of
 * the rows that make a table that loads, into *kept. A child whose parent
 * (or an ancestor) is not among the rows goes; a VM held by two rows (it
 * moved while the export ran) stays with the later one only (its has_vm
 * is cleared in the earlier). Returns RLM_NOMEM (nothing kept) when
 * memory runs out. */
static inline int rlm_settle(std::vector<SessionCopy> &rows, const std::vector<size_t> &order,
                             std::vector<size_t> *kept) {
    try {
        const size_t n = order.size();
        kept->clear();
        kept->reserve(n);
        /* 0: not known yet, 1: rooted, 2: not */
        std::vector<unsigned char> rooted(n, 0);
        auto position = [&](SidKey k) -> size_t { /* n when absent */
            size_t lo = 0, hi = n;
            while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (rows[order[mid]].key < k)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            return lo < n && rows[order[lo]].key == k ? lo : n;
        };
        std::vector<size_t> chain;
        std::unordered_map<std::string, size_t> holder; /* VM -> index into *kept */
        for (size_t i = 0; i < n; ++i) {
            SessionCopy &c = rows[order[i]];
            if (c.has_parent) {
                chain.clear();
                size_t at = i;
                unsigned char verdict = 0;
                while (verdict == 0) {
                    if (rooted[at]) {
                        verdict = rooted[at];
                        break;
                    }
                    const SessionCopy &node = rows[order[at]];
                    if (!node.has_parent) {
                        verdict = 1;
                        break;
                    }
                    chain.push_back(at);
                    at = position(node.parent);
                    if (at == n) verdict = 2;
                    else if (chain.size() > n) verdict = 2; /* a cycle: cannot happen */
                }
                for (size_t link : chain) rooted[link] = verdict;
                if (verdict != 1) continue;
            }
            if (c.has_vm) {
                auto slot = holder.find(c.vm);
                if (slot != holder.end()) {
                    SessionCopy &earlier = rows[(*kept)[slot->second]];
                    earlier.has_vm = false;
                    earlier.vm.clear();
                    slot->second = kept->size();
                } else {
                    holder.emplace(c.vm, kept->size());
                }
            }
            kept->push_back(order[i]);
        }
    } catch (const std::bad_alloc &) {
        kept->clear();
        return RLM_NOMEM;
    }
    return RLM_OK;
}

/* The dump lines of rows[kept[from]] .. rows[kept[to - 1]] into *out
 * (replaced). */
static inline int rlm_dump_lines(const std::vector<SessionCopy> &rows,
                                 const std::vector<size_t> &kept, size_t from, size_t to,
                                 std::string *out) {
    try {
        out->clear();
        for (size_t i = from; i < to; ++i) rlm_put_dump_line(*out, rows[kept[i]]);
    } catch (const std::bad_alloc &) {
        return RLM_NOMEM;
    }
    return RLM_OK;
}

/* ---- load: the lines this writer makes, read back in C++
 *
 * rlm_read_dump_lines reads session lines exactly as rlm_put_dump_line
 * writes them: every line is parsed, written again and compared byte for
 * byte, so only a line in the canonical form is accepted. Anything else
 * (a hand-written file, whitespace, another field order, an escape this
 * writer does not make, a value out of range, a check that fails) is
 * RLM_FALLBACK: the caller then reads the file with the Python path
 * (_dump), which accepts every valid file and names what is wrong with a
 * bad one. The bytes are valid UTF-8 (the caller checked the file). */

enum { RLM_FALLBACK = -100 };

struct LineReader {
    const char *p, *end;

    bool lit(const char *text) {
        size_t n = strlen(text);
        if ((size_t)(end - p) < n || memcmp(p, text, n) != 0) return false;
        p += n;
        return true;
    }
    bool u64(uint64_t *out) {
        uint64_t v = 0;
        const char *start = p;
        while (p < end && *p >= '0' && *p <= '9') {
            unsigned d = (unsigned)(*p - '0');
            if (v > (UINT64_MAX - d) / 10) return false;
            v = v * 10 + d;
            ++p;
        }
        *out = v;
        return p != start;
    }
    bool u32(uint32_t *out) {
        uint64_t v;
        if (!u64(&v) || v > 0xFFFFFFFFULL) return false;
        *out = (uint32_t)v;
        return true;
    }
    bool id(SidKey *out) {
        if ((size_t)(end - p) < 28 || p[0] != '"' || p[27] != '"') return false;
        if (rlm_parse(p + 1, out) != 0) return false;
        p += 28;
        return true;
    }
    static int hexval(char c) {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        return -1;
    }
    bool str(std::string *out) { /* may throw bad_alloc */
        out->clear();
        if (p >= end || *p != '"') return false;
        ++p;
        while (p < end) {
            unsigned char c = (unsigned char)*p++;
            if (c == '"') return true;
            if (c < 0x20) return false;
            if (c != '\\') {
                out->push_back((char)c);
                continue;
            }
            if (p >= end) return false;
            char e = *p++;
            switch (e) {
            case '"': out->push_back('"'); break;
            case '\\': out->push_back('\\'); break;
            case 'b': out->push_back('\b'); break;
            case 'f': out->push_back('\f'); break;
            case 'n': out->push_back('\n'); break;
            case 'r': out->push_back('\r'); break;
            case 't': out->push_back('\t'); break;
            case 'u': { /* only \u00xx below 0x20 is written */
                if (end - p < 4 || p[0] != '0' || p[1] != '0') return false;
                int h = hexval(p[2]), l = hexval(p[3]);
                if (h < 0 || h > 1 || l < 0) return false;
                out->push_back((char)(h * 16 + l));
                p += 4;
                break;
            }
            default: return false;
            }
        }
        return false;
    }
    bool digits(int n, int64_t *out) {
        if (end - p < n) return false;
        int64_t v = 0;
        for (int i = 0; i < n; ++i) {
            if (p[i] < '0' || p[i] > '9') return false;
            v = v * 10 + (p[i] - '0');
        }
        p += n;
        *out = v;
        return true;
    }
    /* "YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z" as ns; a date that does not exist
     * reads as another day and then fails the comparison. */
    bool timestamp(int64_t *out) {
        int64_t y, mo, d, h, mi, sec, frac = 0;
        if (!(lit("\"") && digits(4, &y) && lit("-") && digits(2, &mo) && lit("-") &&
              digits(2, &d) && lit("T") && digits(2, &h) && lit(":") && digits(2, &mi) &&
              lit(":") && digits(2, &sec)))
            return false;
        if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 59) return false;
        if (p < end && *p == '.') {
            ++p;
            int n = 0;
            while (p < end && *p >= '0' && *p <= '9' && n < 9) {
                frac = frac * 10 + (*p++ - '0');
                ++n;
            }
            if (n == 0) return false;
            for (; n < 9; ++n) frac *= 10;
        }
        if (!lit("Z\"")) return false;
        /* days_from_civil (Howard Hinnant) */
        int64_t yy = mo <= 2 ? y - 1 : y;
        int64_t era = (yy >= 0 ? yy : yy - 399) / 400;
        int64_t yoe = yy - era * 400;
        int64_t doy = (153 * (mo > 2 ? mo - 3 : mo + 9) + 2) / 5 + d - 1;
        int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        int64_t days = era * 146097 + doe - 719468;
        int64_t secs = days * 86400 + h * 3600 + mi * 60 + sec; /* |secs| < 2^39 */
        if (secs > 9223372036LL || secs < -9223372037LL) return false;
        if (secs == 9223372036LL && frac > 854775807LL) return false;
        if (secs == -9223372037LL && frac < 145224192LL) return false;
        *out = secs < 0 ? (secs + 1) * 1000000000LL + (frac - 1000000000LL)
                        : secs * 1000000000LL + frac;
        return true;
    }
};

/* One line (without its newline) into *c; false when it is not in the
 * canonical form. `scratch` is reused. May throw bad_alloc. */
static inline bool rlm_read_dump_line(const char *line, size_t n, SessionCopy *c,
                                      std::string *scratch) {
    LineReader r = {line, line + n};
    Session &s = c->s;
    uint32_t current = 0;
    if (!(r.lit("{\"id\":") && r.id(&c->key) && r.lit(",\"state\":\""))) return false;
    s.state = -1;
    for (int i = 0; i < 6; ++i) {
        size_t len = strlen(RLM_STATE_NAMES[i]);
        if ((size_t)(r.end - r.p) > len && memcmp(r.p, RLM_STATE_NAMES[i], len) == 0 &&
            r.p[len] == '"') {
            s.state = i;
            r.p += len + 1;
            break;
        }
    }
    if (s.state < 0) return false;
    if (!(r.lit(",\"created_at\":") && r.timestamp(&s.created_ns) &&
          r.lit(",\"expires_at\":") && r.timestamp(&s.expires_ns) &&
          r.lit(",\"extension_count\":") && r.u32(&s.extension_count) &&
          r.lit(",\"recursion_depth\":") && r.u32(&s.depth) &&
          r.lit(",\"budget_status\":{\"token_budget\":") && r.u64(&s.token_budget) &&
          r.lit(",\"tokens_used\":") && r.u64(&s.tokens_used) &&
          r.lit(",\"time_budget_ms\":") && r.u64(&s.time_budget_ms) &&
          r.lit(",\"time_used_ms\":") && r.u64(&s.time_used_ms) &&
          r.lit(",\"max_recursion_depth\":") && r.u32(&s.max_depth) &&
          r.lit(",\"current_recursion_depth\":") && r.u32(&current) &&
          r.lit("},\"vm_instance_id\":")))
        return false;
    c->has_vm = !r.lit("null");
    if (c->has_vm && !r.str(&c->vm)) return false;
    if (!r.lit(",\"context_variables\":{")) return false;
    c->context.clear();
    if (!r.lit("}")) {
        for (;;) {
            std::string key, value;
            if (!(r.str(&key) && r.lit(":") && r.str(&value))) return false;
            /* strictly increasing: sorted, no key twice */
            if (!c->context.empty() && !(c->context.back().first < key)) return false;
            c->context.emplace_back(std::move(key), std::move(value));
            if (r.lit("}")) break;
            if (!r.lit(",")) return false;
        }
    }
    if (!r.lit(",\"current_snapshot_id\":")) return false;
    c->has_snapshot = !r.lit("null");
    if (c->has_snapshot && !r.str(&c->snapshot)) return false;
    if (!(r.lit(",\"snapshot_count\":") && r.u32(&s.snapshot_count))) return false;
    c->has_parent = r.lit(",\"parent_id\":");
    uint32_t start = 0;
    if (c->has_parent && !(r.id(&c->parent) && r.lit(",\"start_depth\":") && r.u32(&start)))
        return false;
    if (!r.lit("}") || r.p != r.end) return false;
    s.start_depth = start;
    s.extras = NULL;
    c->root = c->key;
    /* written again, byte for byte the line: canonical */
    scratch->clear();
    rlm_put_dump_line(*scratch, *c);
    return scratch->size() == n + 1 && memcmp(scratch->data(), line, n) == 0;
}

/* The checks _dump.check_restore, check_tree and _link_trees make, on rows
 * read by rlm_read_dump_line; sets each child's root. False: one fails
 * (the Python path then names it). May throw bad_alloc. */
static inline bool rlm_check_rows(std::vector<SessionCopy> &rows, uint64_t created,
                                  uint64_t destroyed, uint64_t expired) {
    const size_t n = rows.size();
    if (destroyed > UINT64_MAX - expired || destroyed + expired > UINT64_MAX - n ||
        created != destroyed + expired + n)
        return false;
    std::vector<std::pair<SidKey, size_t>> by_id(n);
    for (size_t i = 0; i < n; ++i) by_id[i] = {rows[i].key, i};
    std::sort(by_id.begin(), by_id.end(),
              [](const std::pair<SidKey, size_t> &a, const std::pair<SidKey, size_t> &b) {
                  return a.first < b.first;
              });
    for (size_t i = 1; i < n; ++i)
        if (by_id[i - 1].first == by_id[i].first) return false; /* an id twice */
    auto find = [&](SidKey k) -> size_t {
        auto it = std::lower_bound(
            by_id.begin(), by_id.end(), k,
            [](const std::pair<SidKey, size_t> &a, SidKey b) { return a.first < b; });
        return it != by_id.end() && it->first == k ? it->second : n;
    };
    std::unordered_map<std::string, size_t> vms;
    for (size_t i = 0; i < n; ++i) {
        const SessionCopy &c = rows[i];
        if (c.has_vm && (c.vm.empty() || !vms.emplace(c.vm, i).second)) return false;
        if (!c.has_parent) continue;
        if (c.s.start_depth < 1 || c.s.start_depth > c.s.depth) return false;
    }
    /* each child's root, by following parents (memo: rows whose root is set) */
    std::vector<unsigned char> done(n, 0);
    std::vector<size_t> chain;
    for (size_t i = 0; i < n; ++i) {
        if (!rows[i].has_parent) done[i] = 1;
    }
    for (size_t i = 0; i < n; ++i) {
        if (done[i]) continue;
        chain.clear();
        size_t at = i;
        while (!done[at]) {
            chain.push_back(at);
            if (chain.size() > n) return false; /* a cycle */
            at = find(rows[at].parent);
            if (at == n) return false; /* a parent not in the file */
        }
        SidKey root = rows[at].root;
        for (size_t link : chain) {
            rows[link].root = root;
            done[link] = 1;
        }
    }
    return true;
}

/* Session lines (each ending in a newline) into *rows, checked: RLM_OK,
 * RLM_FALLBACK or RLM_NOMEM (then *rows is left empty). */
static inline int rlm_read_dump(const char *data, size_t size, size_t count, uint64_t created,
                                uint64_t destroyed, uint64_t expired,
                                std::vector<SessionCopy> *rows) {
    int st = RLM_OK;
    try {
        rows->clear();
        rows->resize(count);
        std::string scratch;
        const char *p = data, *end = data + size;
        size_t i = 0;
        while (p < end) {
            const char *nl = (const char *)memchr(p, '\n', (size_t)(end - p));
            if (!nl || i == count || !rlm_read_dump_line(p, (size_t)(nl - p), &(*rows)[i], &scratch)) {
                st = RLM_FALLBACK;
                break;
            }
            ++i;
            p = nl + 1;
        }
        if (st == RLM_OK && (i != count || !rlm_check_rows(*rows, created, destroyed, expired)))
            st = RLM_FALLBACK;
    } catch (const std::bad_alloc &) {
        st = RLM_NOMEM;
    }
    if (st != RLM_OK) std::vector<SessionCopy>().swap(*rows);
    return st;
}

} /* namespace rlm_fast */

#endif /* RLM_FAST_DUMPFILE_H */
