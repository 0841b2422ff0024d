#include "proxy/audit_verify.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/digest.h>
#include <openssl/hkdf.h>
#include <openssl/mem.h>
#include <openssl/sha.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <vector>

#include "proxy/errno_message.h"

namespace portcullis {

const std::string_view kAuditZeroMac =
    "0000000000000000000000000000000000000000000000000000000000000000";

namespace {

constexpr char kHex[] = "0123456789abcdef";

struct HexTable {
  uint8_t bad[256];
  constexpr HexTable() : bad() {
    for (int c = 0; c < 256; ++c) bad[c] = !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'));
  }
};
constexpr HexTable kHexTable;

// Branch-free: hex digits are random, so a per-character branch mispredicts
// about every other character (this was half the verifier's time).
bool isLowerHex64(std::string_view s) {
  if (s.size() != 64) return false;
  unsigned bad = 0;
  for (char c : s) bad |= kHexTable.bad[static_cast<unsigned char>(c)];
  return bad == 0;
}

bool isIdChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}

// Parses a decimal uint64 at the start of `s` (no sign, no leading zero unless
// the number is 0); returns the digits consumed, or 0.
size_t parseU64(std::string_view s, uint64_t& v) {
  size_t i = 0;
  v = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
    const uint64_t d = static_cast<uint64_t>(s[i] - '0');
    if (v > (UINT64_MAX - d) / 10) return 0;
    v = v * 10 + d;
    ++i;
  }
  if (i == 0 || i > 20 || (i > 1 && s[0] == '0')) return 0;
  return i;
}

bool consume(std::string_view& s, std::string_view lit) {
  if (s.substr(0, lit.size()) != lit) return false;
  s.remove_prefix(lit.size());
  return true;
}

void toHex(const uint8_t* b, size_t n, char* out) {
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = kHex[b[i] >> 4];
    out[2 * i + 1] = kHex[b[i] & 0xF];
  }
}

}  // namespace

bool parseAuditLine(std::string_view line, AuditLine& out) {
  // Tail: ,"key_id":"<id>","prev":"<64>","mac":"<64>"}
  constexpr std::string_view kMacTail = "\",\"mac\":\"";
  constexpr std::string_view kPrevTail = "\",\"prev\":\"";
  constexpr std::string_view kKeyIdHead = ",\"key_id\":\"";
  constexpr size_t kTail = kPrevTail.size() + 64 + kMacTail.size() + 64 + 2;
  if (line.size() < kTail + kKeyIdHead.size() + 1 + 20) return false;
  const size_t end = line.size();
  if (line[end - 1] != '}' || line[end - 2] != '"') return false;
  const size_t mac_at = end - 2 - 64;
  const size_t prev_at = mac_at - kMacTail.size() - 64;
  if (line.substr(mac_at - kMacTail.size(), kMacTail.size()) != kMacTail) return false;
  if (line.substr(prev_at - kPrevTail.size(), kPrevTail.size()) != kPrevTail) return false;
  out.mac = line.substr(mac_at, 64);
  out.prev = line.substr(prev_at, 64);
  if (!isLowerHex64(out.mac) || !isLowerHex64(out.prev)) return false;
  const size_t id_end = prev_at - kPrevTail.size();
  size_t id_start = id_end;
  while (id_start > 0 && id_end - id_start < 65 && isIdChar(line[id_start - 1])) --id_start;
  if (id_start == id_end || id_end - id_start > 64 || id_start < kKeyIdHead.size()) return false;
  if (line.substr(id_start - kKeyIdHead.size(), kKeyIdHead.size()) != kKeyIdHead) return false;
  out.key_id = line.substr(id_start, id_end - id_start);
  out.mac_cut = mac_at - kMacTail.size() + 1;  // keeps the closing '"' of prev
  const size_t head_end = id_start - kKeyIdHead.size();

  // Head: {"seq":N,"ts":"<no quote>","event":"
  std::string_view s = line.substr(0, head_end);
  if (!consume(s, "{\"seq\":")) return false;
  const size_t n = parseU64(s, out.seq);
  if (n == 0 || out.seq == 0) return false;
  s.remove_prefix(n);
  if (!consume(s, ",\"ts\":\"")) return false;
  const size_t q = s.find('"');
  if (q == std::string_view::npos || q < 20 || q > 40) return false;
  s.remove_prefix(q);
  if (!consume(s, "\",\"event\":\"")) return false;

  out.is_torn_record = false;
  out.torn_bytes = 0;
  out.torn_sha256 = {};
  if (consume(s, "audit.torn\",\"torn_bytes\":")) {
    const size_t k = parseU64(s, out.torn_bytes);
    if (k == 0) return true;  // a valid record, just not one of ours
    s.remove_prefix(k);
    if (!consume(s, ",\"torn_sha256\":\"") || s.size() != 65 || s[64] != '"') return true;
    if (!isLowerHex64(s.substr(0, 64))) return true;
    out.torn_sha256 = s.substr(0, 64);
    out.is_torn_record = true;
  }
  return true;
}

bool deriveAuditKey(const uint8_t* master, uint8_t out[32]) {
  static constexpr char kInfo[] = "portcullis-audit";
  return HKDF(out, 32, EVP_sha256(), master, 32, nullptr, 0,
              reinterpret_cast<const uint8_t*>(kInfo), sizeof(kInfo) - 1) == 1;
}

std::unique_ptr<AuditMac> AuditMac::create(const KeyProvider& keys, std::string_view key_id) {
  uint8_t master[32];
  uint8_t key[32];
  if (!keys.masterKey(key_id, master)) {
    OPENSSL_cleanse(master, sizeof master);
    return nullptr;
  }
  const bool derived = deriveAuditKey(master, key);
  OPENSSL_cleanse(master, sizeof master);
  if (!derived) {
    OPENSSL_cleanse(key, sizeof key);
    return nullptr;
  }
  std::unique_ptr<AuditMac> m(new AuditMac());
  m->key_id_ = std::string(key_id);
  // RFC 2104 with B = 64: the key (32 bytes) zero-padded to one block.
  uint8_t pad[SHA256_CBLOCK];
  for (size_t i = 0; i < sizeof pad; ++i) pad[i] = static_cast<uint8_t>((i < sizeof key ? key[i] : 0) ^ 0x36);
  const bool inner_ok = SHA256_Init(&m->inner_) == 1 && SHA256_Update(&m->inner_, pad, sizeof pad) == 1;
  for (size_t i = 0; i < sizeof pad; ++i) pad[i] = static_cast<uint8_t>((i < sizeof key ? key[i] : 0) ^ 0x5c);
  const bool outer_ok = SHA256_Init(&m->outer_) == 1 && SHA256_Update(&m->outer_, pad, sizeof pad) == 1;
  OPENSSL_cleanse(pad, sizeof pad);
  OPENSSL_cleanse(key, sizeof key);
  if (!inner_ok || !outer_ok) return nullptr;
  return m;
}

AuditMac::~AuditMac() {
  OPENSSL_cleanse(&inner_, sizeof inner_);
  OPENSSL_cleanse(&outer_, sizeof outer_);
}

void AuditMac::mac(std::string_view prev_hex, std::string_view body, uint8_t out[32]) {
  // HMAC = H((K ^ opad) || H((K ^ ipad) || message)), message = prev || body || "}".
  SHA256_CTX c = inner_;
  SHA256_Update(&c, prev_hex.data(), prev_hex.size());
  SHA256_Update(&c, body.data(), body.size());
  SHA256_Update(&c, "}", 1);
  uint8_t inner_digest[SHA256_DIGEST_LENGTH];
  SHA256_Final(inner_digest, &c);
  c = outer_;
  SHA256_Update(&c, inner_digest, sizeof inner_digest);
  SHA256_Final(out, &c);
  OPENSSL_cleanse(&c, sizeof c);
  OPENSSL_cleanse(inner_digest, sizeof inner_digest);
}

void AuditMac::appendMacHex(std::string_view prev_hex, std::string_view body, std::string& out) {
  uint8_t m[32];
  mac(prev_hex, body, m);
  char hex[64];
  toHex(m, 32, hex);
  out.append(hex, 64);
}

// ---------------------------------------------------------------------------
// Verifier
// ---------------------------------------------------------------------------

namespace {

constexpr size_t kReadSize = 1 << 20;
constexpr size_t kMaxLine = 256u << 20;

class Verifier {
 public:
  explicit Verifier(const KeyProvider& keys) : keys_(keys) {}

  VerifyResult run(int fd) {
    buf_.resize(2 * kReadSize);
    size_t begin = 0, end = 0;  // unread bytes are buf_[begin, end)
    bool eof = false;
    while (!done_) {
      const char* nl = static_cast<const char*>(std::memchr(buf_.data() + begin, '\n', end - begin));
      if (nl == nullptr) {
        if (eof) {
          if (end > begin) onLine(std::string_view(buf_.data() + begin, end - begin), false);
          break;
        }
        // Move the partial line to the front, grow if one line fills the buffer.
        if (begin > 0) {
          std::memmove(buf_.data(), buf_.data() + begin, end - begin);
          end -= begin;
          begin = 0;
        }
        if (buf_.size() - end < kReadSize) {
          if (buf_.size() >= kMaxLine) {
            fail("torn", 0, "a line longer than 256 MiB");
            break;
          }
          buf_.resize(buf_.size() * 2);
        }
        ssize_t r;
        do {
          r = ::read(fd, buf_.data() + end, buf_.size() - end);
        } while (r < 0 && errno == EINTR);
        if (r < 0) {
          res_ = VerifyResult{};
          res_.why = "io";
          res_.detail = std::string("read: ") + errnoMessage(errno);
          return res_;
        }
        if (r == 0) eof = true;
        end += static_cast<size_t>(r);
        res_.bytes += static_cast<uint64_t>(r);
        continue;
      }
      const size_t len = static_cast<size_t>(nl - (buf_.data() + begin));
      onLine(std::string_view(buf_.data() + begin, len), true);
      begin += len + 1;
    }
    finish();
    return res_;
  }

 private:
  AuditMac* macFor(std::string_view id) {
    if (cur_ != nullptr && cur_->keyId() == id) return cur_;
    auto it = macs_.find(id);
    if (it == macs_.end()) {
      std::unique_ptr<AuditMac> m = AuditMac::create(keys_, id);
      if (!m) return nullptr;
      it = macs_.emplace(std::string(id), std::move(m)).first;
    }
    cur_ = it->second.get();
    return cur_;
  }

  void fail(const char* why, uint64_t seq, std::string detail) {
    if (failed_) return;
    failed_ = true;
    res_.why = why;
    res_.first_bad_seq = seq;
    res_.first_bad_line = line_no_;
    res_.detail = std::move(detail);
  }

  void failAt(const char* why, uint64_t seq, uint64_t line, std::string detail) {
    fail(why, seq, std::move(detail));
    res_.first_bad_line = line;
  }

  void tornFailure() {
    failAt("torn", 0, torn_line_,
           torn_terminated_ ? "unparsable line(s) not covered by an audit.torn record"
                            : "last line is incomplete (no '\\n' at end of file)");
    done_ = true;
  }

  void addTorn(std::string_view line, bool terminated) {
    if (torn_bytes_ == 0 && torn_line_ == 0) {
      SHA256_Init(&torn_sha_);
      torn_line_ = line_no_;
    } else {
      SHA256_Update(&torn_sha_, "\n", 1);
      ++torn_bytes_;
    }
    SHA256_Update(&torn_sha_, line.data(), line.size());
    torn_bytes_ += line.size();
    ++torn_lines_;
    torn_terminated_ = terminated;
  }

  // An audit.torn covers what a crash can leave: one unterminated, non-empty
  // last line (AuditLog::start adds its '\n'). Several lines, or an empty
  // one, were complete when AuditLog found them: edited, never covered.
  bool tornMatches(const AuditLine& rec) {
    if (!rec.is_torn_record || torn_lines_ != 1 || torn_bytes_ == 0 || rec.torn_bytes != torn_bytes_) return false;
    uint8_t d[32];
    SHA256_Final(d, &torn_sha_);
    char hex[64];
    toHex(d, 32, hex);
    return rec.torn_sha256 == std::string_view(hex, 64);
  }

  void onLine(std::string_view line, bool terminated) {
    ++line_no_;
    AuditLine rec;
    const bool parsed = terminated && parseAuditLine(line, rec);
    if (failed_) {
      classify(parsed, rec);
      return;
    }
    if (!parsed) {
      addTorn(line, terminated);
      return;
    }
    AuditMac* m = macFor(rec.key_id);
    if (m == nullptr) {
      fail("unknown key id", rec.seq, "key id '" + std::string(rec.key_id) + "' is not in the keyring");
      done_ = true;
      return;
    }
    uint8_t want[32];
    m->mac(rec.prev, line.substr(0, rec.mac_cut), want);
    char hex[64];
    toHex(want, 32, hex);
    if (std::memcmp(hex, rec.mac.data(), 64) != 0) {
      fail("edited", rec.seq, "mac does not match the record's content");
      done_ = true;
      return;
    }
    if (torn_line_ != 0) {
      if (!tornMatches(rec)) {
        tornFailure();
        return;
      }
      ++res_.torn_accepted;
      torn_line_ = 0;
      torn_bytes_ = 0;
      torn_lines_ = 0;
    }
    if (res_.records == 0 && !have_last_) {
      if (rec.seq == 1) {
        if (rec.prev != kAuditZeroMac) {
          fail("inserted", rec.seq, "seq 1 with a prev that is not 64 zeros");
          done_ = true;
          return;
        }
      } else {
        res_.continues_from_seq = rec.seq;
      }
    } else if (rec.seq == last_seq_ + 1) {
      if (std::memcmp(rec.prev.data(), last_mac_, 64) != 0) {
        fail("inserted", rec.seq, "prev is not the mac of the previous record");
        done_ = true;
        return;
      }
    } else if (rec.seq > last_seq_ + 1) {
      fail("deleted", rec.seq,
           "seq " + std::to_string(last_seq_ + 1) + (rec.seq - 1 > last_seq_ + 1 ? ".." + std::to_string(rec.seq - 1) : "") +
               " missing after seq " + std::to_string(last_seq_));
      gap_lo_ = last_seq_ + 1;
      gap_hi_ = rec.seq - 1;
      return;  // keep reading: a missing seq turning up later means reordered
    } else {
      fail("inserted", rec.seq, "seq " + std::to_string(rec.seq) + " after seq " + std::to_string(last_seq_));
      backwards_ = true;
      return;  // keep reading: the next record decides inserted vs reordered
    }
    ++res_.records;
    res_.last_seq = rec.seq;
    last_seq_ = rec.seq;
    std::memcpy(last_mac_, rec.mac.data(), 64);
    have_last_ = true;
  }

  // Called for records after the first failure, to tell its kind apart.
  void classify(bool parsed, const AuditLine& rec) {
    if (backwards_) {
      // A record whose seq went backwards is a copy ("inserted") if the chain
      // resumes right after it as if it were not there; otherwise it moved.
      const bool resumes = parsed && rec.seq == last_seq_ + 1 &&
                           std::memcmp(rec.prev.data(), last_mac_, 64) == 0;
      if (!resumes) {
        res_.why = "reordered";
        res_.detail = "seq " + std::to_string(res_.first_bad_seq) + " is out of order after seq " +
                      std::to_string(last_seq_);
      }
      done_ = true;
      return;
    }
    if (gap_hi_ != 0 && parsed && rec.seq >= gap_lo_ && rec.seq <= gap_hi_) {
      res_.why = "reordered";
      res_.detail = "seq " + std::to_string(res_.first_bad_seq) + " comes before seq " +
                    std::to_string(rec.seq) + " (line " + std::to_string(line_no_) + ")";
      done_ = true;
    }
  }

  void finish() {
    if (!failed_ && torn_line_ != 0) tornFailure();
    if (!failed_) res_.ok = true;
  }

  const KeyProvider& keys_;
  std::vector<char> buf_;
  std::map<std::string, std::unique_ptr<AuditMac>, std::less<>> macs_;
  AuditMac* cur_ = nullptr;
  VerifyResult res_;
  uint64_t line_no_ = 0;
  bool failed_ = false;
  bool done_ = false;
  bool have_last_ = false;
  uint64_t last_seq_ = 0;
  char last_mac_[64] = {};
  uint64_t gap_lo_ = 0, gap_hi_ = 0;
  bool backwards_ = false;
  // Open torn region: its first line, its length so far and running SHA-256.
  uint64_t torn_line_ = 0;
  uint64_t torn_bytes_ = 0;
  uint64_t torn_lines_ = 0;
  bool torn_terminated_ = false;
  SHA256_CTX torn_sha_;
};

}  // namespace

VerifyResult verifyAuditLog(int fd, const KeyProvider& keys) {
  Verifier v(keys);
  return v.run(fd);
}

VerifyResult verifyAuditFile(const std::string& path, const KeyProvider& keys) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    VerifyResult r;
    r.why = "io";
    r.detail = "cannot open " + path + ": " + errnoMessage(errno);
    return r;
  }
  posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  VerifyResult r = verifyAuditLog(fd, keys);
  ::close(fd);
  return r;
}

}  // namespace portcullis
