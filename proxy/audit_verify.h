// Audit log verification (SPEC §8): the record line scanner shared with the
// writer, the audit key derivation, and a streaming verifier of whole files.
//
// The record format and its MAC are defined in proxy/audit_log.h.
#pragma once

#include <openssl/sha.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "proxy/keyring.h"

namespace portcullis {

// The fixed-position parts of one audit record line, as views into the line.
struct AuditLine {
  uint64_t seq = 0;
  std::string_view key_id;
  std::string_view prev;  // 64 lowercase hex digits
  std::string_view mac;   // 64 lowercase hex digits
  // The MAC covers prev, then `line[0, mac_cut)`, then "}" (see audit_log.h).
  size_t mac_cut = 0;
  // Set only for an `audit.torn` record written by AuditLog itself, whose
  // event and fields have exactly the layout
  //   "event":"audit.torn","torn_bytes":K,"torn_sha256":"<64 hex>","key_id":...
  bool is_torn_record = false;
  uint64_t torn_bytes = 0;
  std::string_view torn_sha256;
};

// Parses `line` (without its '\n') as an audit record. Not a JSON parser: it
// checks the fixed prefix `{"seq":N,"ts":"...","event":"` and, from the end,
// the fixed suffix `,"key_id":"<id>","prev":"<64 hex>","mac":"<64 hex>"}` with
// an id of 1..64 characters of [A-Za-z0-9._-]. Because escaped JSON strings
// never contain a bare '"', these positions cannot be forged by a field value.
// Returns false for anything else. No allocation.
bool parseAuditLine(std::string_view line, AuditLine& out);

// Derives the 32-byte audit key from a 32-byte master key:
// HKDF-SHA256(master, salt = empty, info = "portcullis-audit").
bool deriveAuditKey(const uint8_t* master, uint8_t out[32]);

// An HMAC-SHA256 (RFC 2104) context keyed with the audit key of one keyring key
// id. The key schedule is computed once: the SHA-256 states after the
// (key XOR ipad) and (key XOR opad) blocks; mac() copies them and hashes only
// the message and the inner digest, which is HMAC-SHA256 exactly (the 32-byte
// key is shorter than the 64-byte block, so it is only zero-padded) without
// the per-call overhead of the EVP HMAC layer. Not thread-safe: one instance
// per thread. Holds no copy of the key bytes beyond those two states, which are
// cleansed on destruction (and so are mac()'s working copies).
class AuditMac {
 public:
  // Derives the audit key of `key_id` from `keys`; returns nullptr if the
  // keyring has no such key.
  static std::unique_ptr<AuditMac> create(const KeyProvider& keys, std::string_view key_id);
  ~AuditMac();
  AuditMac(const AuditMac&) = delete;
  AuditMac& operator=(const AuditMac&) = delete;

  const std::string& keyId() const { return key_id_; }
  // Writes the 32-byte MAC of `prev_hex || body || "}"` into `out`.
  void mac(std::string_view prev_hex, std::string_view body, uint8_t out[32]);
  // The same, as 64 lowercase hex digits appended to `out`.
  void appendMacHex(std::string_view prev_hex, std::string_view body, std::string& out);

 private:
  AuditMac() = default;
  std::string key_id_;
  SHA256_CTX inner_;  // after (key XOR ipad)
  SHA256_CTX outer_;  // after (key XOR opad)
};

// 64 '0' characters: the `prev` of the first record of a chain.
extern const std::string_view kAuditZeroMac;

struct VerifyResult {
  bool ok = false;
  uint64_t records = 0;         // records read (valid ones, up to the first failure)
  uint64_t first_bad_seq = 0;   // seq of the first bad record; 0 when it has none (torn)
  uint64_t first_bad_line = 0;  // 1-based line number of the first bad record
  // "" when ok. Otherwise one of:
  //   "edited"          the record's mac does not match its content
  //   "deleted"         seq jumps forward: records are missing
  //   "inserted"        a record repeats an earlier seq, or has the right seq
  //                     but a prev that is not the previous record's mac
  //   "reordered"       seq goes backwards, or a missing seq turns up later
  //   "torn"            a line without '\n' at EOF, or an unparsable line,
  //                     not covered by an audit.torn record
  //   "unknown key id"  the keyring has no key with the record's key_id
  //   "io"              the file could not be read (see detail)
  std::string why;
  std::string detail;  // one human-readable sentence about the failure
  // 0 when the file is empty or its first record has seq 1 (and prev = zeros).
  // Otherwise the seq of the first record: the file continues a chain whose
  // earlier records are elsewhere (rotated), and its first prev is taken as is.
  uint64_t continues_from_seq = 0;
  uint64_t last_seq = 0;
  // Torn lines accepted (warnings, not failures): each one non-empty line
  // that does not parse, right before an audit.torn record naming its exact
  // length and SHA-256. Two or more such lines in a row are never accepted.
  uint64_t torn_accepted = 0;
  uint64_t bytes = 0;  // bytes read
};

// Verifies a whole audit log read from `fd` (from its current offset to EOF)
// with keys from `keys`. Streaming: reads 1 MiB at a time and holds at most one
// record line (up to 256 MiB) in memory besides; one HMAC context per key id.
// After the first failure it keeps reading only as needed to classify it
// (deleted vs reordered, inserted vs reordered).
//
// Limits of any hash chain: removing whole records from the end of the file, or
// the first records of a file (then `continues_from_seq` says so), cannot be
// told from a shorter or rotated log; nor can a last record replaced by an
// unterminated line (which a restart covers as torn) be told from a crash.
// Compare `last_seq` with an outside copy (syslog/SIEM) to catch these.
VerifyResult verifyAuditLog(int fd, const KeyProvider& keys);
VerifyResult verifyAuditFile(const std::string& path, const KeyProvider& keys);

}  // namespace portcullis
