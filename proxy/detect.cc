// Detector: lock-free fixed-memory tables of per-key windows and baselines.
// Contracts and approximations: detect.h.
//
// Table layout. A table is an array of groups of 8 cells; a key hashes (XXH3-128
// of the key, seeded by the table's secret random seed plus its slot, i.e. what
// is counted; so which keys share a group, and so could crowd each other into
// the overflow counter, cannot be computed offline) to one group and may live
// in any of its 8 cells. A group stores its cells' words column-wise (8 state
// words, 8 key words, 8 aux words, 8 quiet words; 256 bytes) so the probe reads
// two cache lines. Groups are split into up to 64 shards, which own the overflow
// counters and the fallback counts.
//
//   state  [63:62] status 0 EMPTY, 1 TENTATIVE (being claimed), 2 LIVE
//          [61:60] generation, bumped on every claim
//          [59]    baseline cell (else a counting cell)
//          [58:0]  counting: window end in ms << 16 | count (16 bits)
//                  baseline: interval index (25 bits) << 34 | amount (34 bits)
//                  TENTATIVE: 59 bits of the claimant's fingerprint
//   key    64-bit fingerprint (high half of the hash)
//   aux    [63:62] generation | [61:56] intervals seen | [55:0] EWMA, 8 fraction bits
//   quiet  [63:62] generation | [61:0] no alert before this time (ns)
//
// Claiming a cell is the rate limiter's protocol (filters/rate_limiter.cc, "Why
// K never gets two cells"): CAS to TENTATIVE with the key's tag, store the key,
// re-scan the group with seq_cst loads and give the cell back if another claim
// or cell for the same key is seen; otherwise reset aux and quiet to the new
// generation and publish LIVE with a release store. Hence a key has at most
// one cell, so one quiet word, so one alert per cooldown.
//
// aux and quiet carry the generation of the incarnation that wrote them. A
// thread that found its cell LIVE with generation g only CASes aux/quiet words
// whose generation is g: if the cell has changed hands since, the CAS fails and
// the update is dropped (the old key's state was given up with its cell). The
// acquire load of LIVE makes the claimant's aux/quiet stores visible.
#include "proxy/detect.h"

#include <openssl/rand.h>
#include <xxhash.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "filters/rate_limiter.h"  // ipKey()

namespace portcullis {
namespace {

constexpr uint64_t kStatusShift = 62;
[[maybe_unused]] constexpr uint64_t kEmpty = 0;  // status of a never-claimed cell (the zero word)
constexpr uint64_t kTentative = 1, kLive = 2;
constexpr uint64_t kGenShift = 60;
constexpr uint64_t kGenMask = uint64_t{3} << kGenShift;
constexpr uint64_t kStatusGenMask = (uint64_t{3} << kStatusShift) | kGenMask;
constexpr uint64_t kBaselineBit = uint64_t{1} << 59;
constexpr uint64_t kValueMask = kBaselineBit - 1;
constexpr uint64_t kPayloadMask = kBaselineBit | kValueMask;

constexpr uint64_t kMaxCount = 0xffff;
constexpr uint64_t kMaxEndMs = (uint64_t{1} << 42) - 1;

constexpr unsigned kAmountBits = 34;
constexpr uint64_t kMaxAmount = (uint64_t{1} << kAmountBits) - 1;
constexpr uint64_t kIntervalMask = (uint64_t{1} << 25) - 1;
constexpr uint64_t kIntervalHalf = uint64_t{1} << 24;

constexpr uint64_t kTagShift = 62;
constexpr uint64_t kTagValueMask = (uint64_t{1} << kTagShift) - 1;
constexpr uint64_t kMaxSeen = 63;
constexpr uint64_t kEwmaMask = (uint64_t{1} << 56) - 1;
constexpr double kEwmaScale = 256.0;

constexpr int kMaxConflicts = 64;
constexpr size_t kMaxShards = 64;

// What a cell counts; also the hash seed and the overflow index.
enum Slot : int { kAuth, kForbiddenIp, kScan, kForbiddenToken, kRate, kBytes, kSlots };

inline uint64_t status(uint64_t s) { return s >> kStatusShift; }
inline uint64_t tagGen(uint64_t w) { return w >> kTagShift; }

inline void backoff(unsigned& n) {
  if (++n > 12) {
    std::this_thread::yield();
    return;
  }
  for (unsigned i = 0; i < (1u << n); ++i) std::atomic_signal_fence(std::memory_order_seq_cst);
}

// The caller's clock, in the units the cells use.
struct Now {
  uint64_t ns, ms, interval;
};

// A counting payload and a baseline payload, decoded.
inline uint64_t windowEndMs(uint64_t p) { return (p & kValueMask) >> 16; }
inline uint64_t windowCount(uint64_t p) { return p & kMaxCount; }
inline uint64_t intervalOf(uint64_t p) { return (p >> kAmountBits) & kIntervalMask; }
inline uint64_t amountOf(uint64_t p) { return p & kMaxAmount; }
inline uint64_t baselinePayload(uint64_t interval, uint64_t amount) {
  return kBaselineBit | (interval << kAmountBits) | std::min(amount, kMaxAmount);
}

// ipKey() without inet_pton for the common case, a dotted-quad IPv4 address:
// the same key bytes ("4" + the 4 address bytes). Anything else goes to ipKey().
IpKey ipKeyFast(std::string_view ip) {
  IpKey k;
  uint32_t part = 0, digits = 0, parts = 0;
  for (char c : ip) {
    if (c >= '0' && c <= '9' && digits < 3 && !(digits > 0 && part == 0)) {  // no leading zero, as inet_pton
      part = part * 10 + static_cast<uint32_t>(c - '0');
      ++digits;
    } else if (c == '.' && digits > 0 && parts < 3 && part <= 255) {
      k.bytes[1 + parts++] = static_cast<char>(part);
      part = digits = 0;
    } else {
      return ipKey(ip);
    }
  }
  if (parts != 3 || digits == 0 || part > 255) return ipKey(ip);
  k.bytes[0] = '4';
  k.bytes[4] = static_cast<char>(part);
  k.len = 5;
  return k;
}

}  // namespace

class Detector::Table {
 public:
  struct alignas(64) Group {
    std::atomic<uint64_t> state[kGroupCells];
    std::atomic<uint64_t> key[kGroupCells];
    std::atomic<uint64_t> aux[kGroupCells];
    std::atomic<uint64_t> quiet[kGroupCells];
  };
  struct alignas(64) Shard {
    std::atomic<uint64_t> overflow[kSlots] = {};
    std::atomic<uint64_t> overflow_quiet[kSlots] = {};
    std::atomic<uint64_t> fallbacks{0};
  };
  // The words of one incarnation of a cell, or of an overflow slot (aux null,
  // generation 0).
  struct Ref {
    std::atomic<uint64_t>* aux = nullptr;
    std::atomic<uint64_t>* quiet = nullptr;
    uint64_t gen = 0;
  };

  Table(size_t capacity_keys, uint64_t interval_ns) : interval_ns_(interval_ns) {
    size_t cells = std::bit_ceil(std::max<size_t>(capacity_keys, 1) * 2);
    groups_ = std::max<size_t>(cells / kGroupCells, 1);
    shard_count_ = std::min(kMaxShards, groups_);
    shift_ = static_cast<unsigned>(std::countr_zero(groups_ / shard_count_));
    // Secret per table, as the rate limiter's (filters/rate_limiter.cc).
    if (RAND_bytes(reinterpret_cast<uint8_t*>(&seed_), sizeof(seed_)) != 1) {
      std::fprintf(stderr, "Detector: RAND_bytes failed\n");
      std::abort();
    }
    table_ = std::make_unique<Group[]>(groups_);
    shards_ = std::make_unique<Shard[]>(shard_count_);
  }

  XXH128_hash_t hash(Slot slot, std::string_view key) const {
    return XXH3_128bits_withSeed(key.data(), key.size(), seed_ + static_cast<uint64_t>(slot));
  }
  size_t groupOf(Slot slot, std::string_view key) const { return hash(slot, key).low64 & (groups_ - 1); }

  size_t memoryBytes() const { return groups_ * sizeof(Group) + shard_count_ * sizeof(Shard); }

  uint64_t fallbacks() const {
    uint64_t n = 0;
    for (size_t i = 0; i < shard_count_; ++i) n += shards_[i].fallbacks.load(std::memory_order_relaxed);
    return n;
  }

  Now now(uint64_t now_ns) const {
    uint64_t ns = std::min(now_ns, kTagValueMask);
    return {ns, ns / 1000000, (ns / interval_ns_) & kIntervalMask};
  }

  // Applies `step` (old payload -> new payload; 0 = fresh) to the key's cell
  // with CAS, inserting the cell if needed. A homeless key uses the shard's
  // overflow word for `slot` when `overflow`, else nothing is updated and false
  // is returned (both counted as a fallback). On success `before`/`after` are
  // the payloads around this thread's CAS and `ref` names the incarnation.
  template <class F>
  bool update(Slot slot, std::string_view key, const Now& t, bool overflow, F&& step, Ref& ref, uint64_t& before,
              uint64_t& after) {
    const XXH128_hash_t h = hash(slot, key);
    const uint64_t gi = h.low64 & (groups_ - 1), fp = h.high64, tag = h.high64 & kValueMask;
    Group& g = table_[gi];
    Shard& sh = shards_[gi >> shift_];
    unsigned waits = 0;
    int conflicts = 0;
    for (;;) {
      int found = -1, empty = -1, stale = -1;
      uint64_t found_s = 0, empty_s = 0, stale_s = 0;
      bool busy = false;
      for (int i = 0; i < static_cast<int>(kGroupCells); ++i) {
        uint64_t s = g.state[i].load(std::memory_order_acquire);
        switch (status(s)) {
          case kLive:
            if (g.key[i].load(std::memory_order_relaxed) == fp) {
              found = i;
              found_s = s;
            } else if (stale < 0 && reclaimable(s, g.quiet[i].load(std::memory_order_relaxed), t)) {
              stale = i;
              stale_s = s;
            }
            break;
          case kTentative:
            if ((s & kValueMask) == tag) busy = true;
            break;
          default:
            if (empty < 0) {
              empty = i;
              empty_s = s;
            }
        }
        if (found >= 0) break;
      }

      if (found >= 0) {
        uint64_t s = found_s;
        for (;;) {
          uint64_t next = (s & kStatusGenMask) | (step(s & kPayloadMask) & kPayloadMask);
          if (g.state[found].compare_exchange_weak(s, next, std::memory_order_acq_rel, std::memory_order_acquire)) {
            before = s & kPayloadMask;
            after = next & kPayloadMask;
            ref = {&g.aux[found], &g.quiet[found], (s & kGenMask) >> kGenShift};
            return true;
          }
          if ((s ^ found_s) & kStatusGenMask) break;  // the cell changed hands: rescan
        }
        continue;
      }
      if (busy) {  // another thread is inserting this key: wait for it
        backoff(waits);
        continue;
      }

      int idx = empty >= 0 ? empty : stale;
      if (idx < 0 || conflicts >= kMaxConflicts) break;  // homeless
      uint64_t observed = empty >= 0 ? empty_s : stale_s;
      uint64_t gen = (((observed & kGenMask) >> kGenShift) + 1) & 3;
      uint64_t tentative = (kTentative << kStatusShift) | (gen << kGenShift) | tag;
      if (!g.state[idx].compare_exchange_strong(observed, tentative, std::memory_order_seq_cst)) continue;
      g.key[idx].store(fp, std::memory_order_relaxed);
      bool conflict = false;
      for (int j = 0; j < static_cast<int>(kGroupCells) && !conflict; ++j) {
        if (j == idx) continue;
        uint64_t s = g.state[j].load(std::memory_order_seq_cst);
        if (status(s) == kLive)
          conflict = g.key[j].load(std::memory_order_relaxed) == fp;
        else if (status(s) == kTentative)
          conflict = (s & kValueMask) == tag;
      }
      if (conflict) {
        g.state[idx].store(gen << kGenShift, std::memory_order_release);  // EMPTY: give it back
        ++conflicts;
        backoff(waits);
        continue;
      }
      g.aux[idx].store(gen << kTagShift, std::memory_order_relaxed);
      g.quiet[idx].store(gen << kTagShift, std::memory_order_relaxed);
      before = 0;
      after = step(0) & kPayloadMask;
      g.state[idx].store((kLive << kStatusShift) | (gen << kGenShift) | after, std::memory_order_release);
      ref = {&g.aux[idx], &g.quiet[idx], gen};
      return true;
    }

    sh.fallbacks.fetch_add(1, std::memory_order_relaxed);
    if (!overflow) return false;
    std::atomic<uint64_t>& ov = sh.overflow[slot];
    uint64_t s = ov.load(std::memory_order_acquire);
    for (;;) {
      uint64_t next = step(s) & kPayloadMask;
      if (ov.compare_exchange_weak(s, next, std::memory_order_acq_rel, std::memory_order_acquire)) {
        before = s;
        after = next;
        ref = {nullptr, &sh.overflow_quiet[slot], 0};
        return true;
      }
    }
  }

  // Claims the right to raise the alert of `ref` at `now`: true for exactly one
  // caller per cooldown, false while quiet or if the cell changed hands.
  static bool tryRaise(const Ref& ref, uint64_t now_ns, uint64_t cooldown_ns) {
    uint64_t w = ref.quiet->load(std::memory_order_acquire);
    const uint64_t next = (ref.gen << kTagShift) | std::min(now_ns + cooldown_ns, kTagValueMask);
    for (;;) {
      if (tagGen(w) != ref.gen || (w & kTagValueMask) > now_ns) return false;
      if (ref.quiet->compare_exchange_weak(w, next, std::memory_order_acq_rel, std::memory_order_acquire)) return true;
    }
  }

  // Folds a finished interval's `amount`, then `idle` empty intervals, into
  // the EWMA word. Exactly one thread calls this per roll-over (the winner of
  // the CAS that started the new interval).
  static void fold(const Ref& ref, uint64_t amount, uint64_t idle) {
    uint64_t w = ref.aux->load(std::memory_order_acquire);
    for (;;) {
      if (tagGen(w) != ref.gen) return;
      uint64_t seen = (w >> 56) & kMaxSeen;
      double e = static_cast<double>(w & kEwmaMask) / kEwmaScale;
      e = seen == 0 ? static_cast<double>(amount) : e * (1 - kEwmaAlpha) + kEwmaAlpha * static_cast<double>(amount);
      if (idle > 0) e = idle >= 512 ? 0 : e * std::pow(1 - kEwmaAlpha, static_cast<double>(idle));
      seen = std::min(kMaxSeen, seen + 1 + std::min<uint64_t>(idle, kMaxSeen));
      uint64_t fixed = std::min(static_cast<uint64_t>(std::llround(e * kEwmaScale)), kEwmaMask);
      uint64_t next = (ref.gen << kTagShift) | (seen << 56) | fixed;
      if (ref.aux->compare_exchange_weak(w, next, std::memory_order_acq_rel, std::memory_order_acquire)) return;
    }
  }

 private:
  // Does this LIVE cell carry nothing any more at `t`?
  bool reclaimable(uint64_t s, uint64_t quiet, const Now& t) const {
    if ((quiet & kTagValueMask) > t.ns) return false;  // its cooldown still suppresses alerts
    if (s & kBaselineBit) {
      uint64_t age = (t.interval - intervalOf(s)) & kIntervalMask;
      return age >= kStaleIntervals && age < kIntervalHalf;
    }
    return t.ms >= windowEndMs(s);
  }

  std::unique_ptr<Group[]> table_;
  std::unique_ptr<Shard[]> shards_;
  size_t groups_ = 0;
  size_t shard_count_ = 0;
  unsigned shift_ = 0;
  uint64_t interval_ns_ = 1;
  uint64_t seed_ = 0;
};

std::string_view alertKindName(AlertKind k) {
  static constexpr std::string_view kNames[kAlertKinds] = {"auth_failures", "forbidden", "scanning",    "token_rate",
                                                           "exfiltration",  "ban",       "audit_tamper"};
  return k < AlertKind::kCount ? kNames[static_cast<size_t>(k)] : "unknown";
}

Detector::Detector(const DetectConfig& config, AlertSink* sink) : cfg_(config), sink_(sink) {
  auto clampCount = [](uint32_t& c) { c = std::clamp<uint32_t>(c, 1, kMaxCount - 1); };
  clampCount(cfg_.auth_failures_count);
  clampCount(cfg_.forbidden_count);
  clampCount(cfg_.not_found_count);
  cfg_.auth_failures_window_s = std::max<uint32_t>(cfg_.auth_failures_window_s, 1);
  cfg_.forbidden_window_s = std::max<uint32_t>(cfg_.forbidden_window_s, 1);
  cfg_.not_found_window_s = std::max<uint32_t>(cfg_.not_found_window_s, 1);
  cfg_.interval_s = std::max<uint32_t>(cfg_.interval_s, 1);
  cfg_.warmup_intervals = std::min<uint32_t>(cfg_.warmup_intervals, kMaxSeen);
  cooldown_ns_ = uint64_t{cfg_.cooldown_s} * 1000000000ull;
  interval_ns_ = uint64_t{cfg_.interval_s} * 1000000000ull;
  if (!cfg_.enabled) return;
  ips_ = std::make_unique<Table>(cfg_.capacity_keys, interval_ns_);
  tokens_ = std::make_unique<Table>(cfg_.capacity_keys, interval_ns_);
}

Detector::~Detector() = default;

uint64_t Detector::alertsRaised(AlertKind kind) const {
  return kind < AlertKind::kCount ? raised_[static_cast<size_t>(kind)].load(std::memory_order_relaxed) : 0;
}

uint64_t Detector::fallbacks() const { return cfg_.enabled ? ips_->fallbacks() + tokens_->fallbacks() : 0; }

size_t Detector::ipGroupOf(std::string_view ip) const {
  return cfg_.enabled ? ips_->groupOf(kAuth, ipKeyFast(ip).view()) : 0;
}

size_t Detector::memoryBytes() const { return cfg_.enabled ? ips_->memoryBytes() + tokens_->memoryBytes() : 0; }

void Detector::raise(Alert& a) {
  a.kind = alertKindName(a.kind_id);
  raised_[static_cast<size_t>(a.kind_id)].fetch_add(1, std::memory_order_relaxed);
  if (sink_) sink_->onAlert(a);
}

void Detector::count(int slot_index, AlertKind kind, std::string_view ip, std::string_view token, uint32_t threshold,
                     uint64_t window_s, uint64_t now_ns) {
  const Slot slot = static_cast<Slot>(slot_index);
  const bool by_token = slot == kForbiddenToken;
  Table& table = by_token ? *tokens_ : *ips_;
  IpKey ik;
  if (!by_token) ik = ipKeyFast(ip);
  const Now t = table.now(now_ns);
  const uint64_t window_ms = window_s * 1000;
  auto step = [&](uint64_t p) -> uint64_t {
    uint64_t end = windowEndMs(p);
    if (t.ms >= end) return (std::min(t.ms + window_ms, kMaxEndMs) << 16) | 1;
    return (end << 16) | std::min(windowCount(p) + 1, kMaxCount);
  };
  Table::Ref ref;
  uint64_t before, after;
  if (!table.update(slot, by_token ? token : ik.view(), t, true, step, ref, before, after)) return;
  const uint64_t n = windowCount(after);
  if (n < threshold || !Table::tryRaise(ref, t.ns, cooldown_ns_)) return;
  Alert a;
  a.kind_id = kind;
  if (by_token)
    a.token_id = token;
  else
    a.ip = ip;
  a.count = n;
  a.threshold = threshold;
  a.window_s = window_s;
  raise(a);
}

void Detector::baseline(int slot_index, AlertKind kind, std::string_view token, uint64_t amount, double factor,
                        uint64_t min, uint64_t now_ns) {
  Table& table = *tokens_;
  const Now t = table.now(now_ns);
  auto step = [&](uint64_t p) -> uint64_t {
    if (!(p & kBaselineBit)) return baselinePayload(t.interval, amount);
    uint64_t j = intervalOf(p);
    uint64_t d = (t.interval - j) & kIntervalMask;
    // Same interval, or a caller whose clock reads slightly behind: add to it.
    if (d == 0 || d >= kIntervalHalf) return baselinePayload(j, amountOf(p) + amount);
    return baselinePayload(t.interval, amount);
  };
  Table::Ref ref;
  uint64_t before, after;
  if (!table.update(static_cast<Slot>(slot_index), token, t, false, step, ref, before, after)) return;
  if ((before & kBaselineBit) && intervalOf(before) != intervalOf(after)) {
    uint64_t d = (intervalOf(after) - intervalOf(before)) & kIntervalMask;
    Table::fold(ref, amountOf(before), d - 1);
  }
  const uint64_t cur = amountOf(after);
  if (cur <= min) return;
  const uint64_t w = ref.aux->load(std::memory_order_acquire);
  if (tagGen(w) != ref.gen || ((w >> 56) & kMaxSeen) < cfg_.warmup_intervals) return;
  const double base = static_cast<double>(w & kEwmaMask) / kEwmaScale;
  const double limit = factor * base;
  if (!(static_cast<double>(cur) > limit) || !Table::tryRaise(ref, t.ns, cooldown_ns_)) return;
  Alert a;
  a.kind_id = kind;
  a.token_id = token;
  a.count = cur;
  a.threshold = std::max(min, static_cast<uint64_t>(limit));
  a.window_s = cfg_.interval_s;
  a.baseline = base;
  raise(a);
}

void Detector::authFailure(std::string_view ip, uint64_t now_ns) {
  if (!cfg_.enabled || ip.empty()) return;
  count(kAuth, AlertKind::kAuthFailures, ip, {}, cfg_.auth_failures_count, cfg_.auth_failures_window_s, now_ns);
}

void Detector::forbidden(std::string_view ip, std::string_view token_id, uint64_t now_ns) {
  if (!cfg_.enabled) return;
  if (!ip.empty())
    count(kForbiddenIp, AlertKind::kForbidden, ip, {}, cfg_.forbidden_count, cfg_.forbidden_window_s, now_ns);
  if (!token_id.empty())
    count(kForbiddenToken, AlertKind::kForbidden, {}, token_id, cfg_.forbidden_count, cfg_.forbidden_window_s, now_ns);
}

void Detector::notFound(std::string_view ip, uint64_t now_ns) {
  if (!cfg_.enabled || ip.empty()) return;
  count(kScan, AlertKind::kScanning, ip, {}, cfg_.not_found_count, cfg_.not_found_window_s, now_ns);
}

void Detector::ban(std::string_view ip, uint64_t) {
  if (!cfg_.enabled || ip.empty()) return;
  // No table and no cooldown (SPEC §8: a ban is always an alert); the lockout
  // calls this once per ban, so at most once per ban_s per IP.
  Alert a;
  a.kind_id = AlertKind::kBan;
  a.ip = ip;
  a.count = 1;
  a.threshold = 1;
  a.window_s = 1;
  raise(a);
}

void Detector::tokenRequest(std::string_view token_id, uint64_t response_bytes, uint64_t now_ns) {
  if (!cfg_.enabled || token_id.empty()) return;
  baseline(kRate, AlertKind::kTokenRate, token_id, 1, cfg_.rate_factor, cfg_.rate_min, now_ns);
  // An interval with no bytes needs no update: the next roll-over counts the
  // intervals it skipped as zeros, which is the same EWMA.
  if (response_bytes > 0)
    baseline(kBytes, AlertKind::kExfiltration, token_id, response_bytes, cfg_.bytes_factor, cfg_.bytes_min, now_ns);
}

}  // namespace portcullis
